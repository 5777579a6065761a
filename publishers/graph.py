"""One Graph API call: token in the Authorization header, errors raised as classified `GraphCallFailed`."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
from pydantic import SecretStr

from publishers.errors import classify, classify_transport, may_have_reached_platform
from publishers.redact import register_secret, scrub, scrub_http_client_logs, scrub_url
from schemas.common import ErrorKind, Platform
from schemas.events import PLATFORM_TEXT_LIMIT, PlatformError

# How far Meta's clock may be from ours, where an attempt's post is looked for by its time.
CLOCK_SKEW = timedelta(minutes=2)
# How long after an attempt began its post can still appear: the handler's attempt lease, after which an
# attempt with no post counts as interrupted (and is published again). A look-up's window ends there.
LOOKUP_WINDOW = timedelta(seconds=150)


# Meta's error codes for a failure on its side, whatever HTTP status carries them: "unknown error" (1), "service
# temporarily unavailable" (2), and Instagram's "server error" (-1) and timeout (-2), which come with HTTP 400.
SERVER_SIDE_CODES = frozenset({1, 2, -1, -2})


class GraphCallFailed(Exception):
    """A Graph API call that did not succeed; `outcome_unknown` when it may still have had its effect."""

    def __init__(self, error: PlatformError, *, outcome_unknown: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.outcome_unknown = outcome_unknown


def created_id(body: Mapping[str, Any], *keys: str, action: str) -> str:
    """The id a creating call's answer gives under the first of `keys` it has.

    An answer that names none (an id empty, null or of another type) took the call all the same, so what it
    created may exist: the outcome is unknown, never a success with no id to show for it. An id with a token in it
    (`answered_id`) is one all the same: the call created something, and its outcome is known.
    """
    for key in keys:
        text = answered_id(body.get(key))
        if text is not None:
            return text
    raise GraphCallFailed(PlatformError(
        kind=ErrorKind.TRANSIENT, http_status=200,
        message=f"{action} failed: 200 - the platform's answer named no {' or '.join(keys)}"), outcome_unknown=True)


def answered_id(value: Any) -> str | None:
    """An id a Graph answer gives (a string or a number), as text; None for none (empty, null, another type). A token
    in it (no id of Meta's has one) is scrubbed out: recorded, it would be shown wherever the post is. The answer
    still says the call created something, so a publish that got one is not done again (the id, spoilt, then
    leads nowhere: a link to the post, a later call on a container, fail instead)."""
    text = _id_text(value)
    return None if text is None else _bounded(scrub(text))


def answered_link(value: Any) -> str | None:
    """A permalink a Graph answer gives, with any token in it scrubbed out (`scrub_url`); None for none."""
    return _bounded(scrub_url(value)) if isinstance(value, str) and value.strip() else None


def _bounded(text: str) -> str:
    """An answer's text cut to what an event keeps (Meta's ids and addresses are far shorter): spoilt, like an id a
    token was scrubbed from, but the call's outcome is still recorded."""
    return text if len(text) <= PLATFORM_TEXT_LIMIT else text[:PLATFORM_TEXT_LIMIT - 1] + "…"


def _id_text(value: Any) -> str | None:
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value)
    return None


class GraphApi:
    """The Graph API at one base URL and version, seen from one platform's client."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, version: str, platform: Platform) -> None:
        self._client = client
        self._root = f"{base_url.rstrip('/')}/{version.strip('/')}"
        self.platform: Platform = platform
        scrub_http_client_logs()

    async def get(
        self, node: str, edge: str | None, token: SecretStr, *, params: Mapping[str, str] | None = None, action: str
    ) -> dict[str, Any]:
        return await self._call("GET", node, edge, token, params=params, action=action, creates=False)

    async def post(
        self, node: str, edge: str, token: SecretStr, *, data: Mapping[str, str], action: str
    ) -> dict[str, Any]:
        """A call that creates something on the platform (a post, a container, a publish)."""
        return await self._call("POST", node, edge, token, data=data, action=action, creates=True)

    async def _call(
        self,
        method: str,
        node: str,
        edge: str | None,
        token: SecretStr,
        *,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        action: str,
        creates: bool,
    ) -> dict[str, Any]:
        secret = token.get_secret_value()
        register_secret(secret)
        # Tokens go in a header, never the URL: httpx logs URLs, and Meta's own paging URLs leak them.
        url = f"{self._root}/{quote(node, safe='')}" + (f"/{quote(edge, safe='')}" if edge else "")
        try:
            response = await self._client.request(
                method, url, params=params, data=data, headers={"Authorization": f"Bearer {secret}"}
            )
        except httpx.TransportError as exc:
            error = classify_transport(self.platform, exc, action=action)
            raise GraphCallFailed(error, outcome_unknown=creates and may_have_reached_platform(exc)) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        envelope = body if isinstance(body, dict) else None
        if response.is_success and envelope is not None and "error" not in envelope:
            return envelope
        if response.is_success and envelope is None:
            # The platform took the call but its answer cannot be read: a creating call may have created it.
            raise GraphCallFailed(PlatformError(
                kind=ErrorKind.TRANSIENT, http_status=response.status_code,
                message=f"{action} failed: {response.status_code} - the platform's answer could not be read"),
                outcome_unknown=creates)
        error = classify(self.platform, response.status_code, envelope, response.headers, action=action)
        # A transient error on a creating call, with a 5xx or a success status, or one of Meta's codes for a failure
        # on its side with any status (`SERVER_SIDE_CODES`): Meta may have created it anyway. A rate limit
        # or a bad parameter is a refusal made before anything is created.
        unknown = creates and error.kind is ErrorKind.TRANSIENT and (
            response.status_code >= 500 or response.is_success or error.code in SERVER_SIDE_CODES)
        raise GraphCallFailed(error, outcome_unknown=unknown)


def parse_meta_time(value: Any) -> datetime | None:
    """A Graph API time ("2025-11-17T10:10:13+0000", or ISO 8601), in UTC when no zone is given."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def earliest_match(items: Any, caption: str | tuple[str, ...], since: datetime, *, time_field: str, text_field: str,
                   exclude: Collection[str] = (), only: bool = False) -> dict[str, Any] | None:
    """The earliest item since `since` whose text is the caption (blanks aside, `spaced_text`; a tuple: any of those
    texts), of those not in `exclude` (posts already recorded for the post, which a forced republish
    repeats word for word). With `only`, None unless exactly one item matches.

    How an attempt whose outcome is unknown is matched to what the platform holds, on both platforms.
    """
    # An empty text would match every post without one: never a match.
    wanted = {spaced_text(text) for text in ((caption,) if isinstance(caption, str) else caption)} - {""}
    found: list[tuple[datetime, dict[str, Any]]] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or "id" not in item or str(item["id"]) in exclude:
            continue
        created = parse_meta_time(item.get(time_field))
        if created is not None and created >= since and spaced_text(str(item.get(text_field) or "")) in wanted:
            found.append((created, item))
    if only and len(found) != 1:
        return None
    return min(found, key=lambda pair: pair[0])[1] if found else None


def spaced_text(text: str) -> str:
    """A post's text as look-ups match it: Meta trims it, and may store its line ends and runs of blanks otherwise
    than sent ("\\r\\n" as "\\n"); a text taken for another's over that would publish the post twice."""
    return " ".join(text.split())


# What leads from one page of a listing to the next: a cursor, or (Meta's time-based paging) an earlier end of the
# window and Meta's own paging token.
_PAGING_PARAMS = ("after", "until", "__paging_token")


def next_page(paging: dict[str, Any]) -> dict[str, str]:
    """The parameters that ask for the page after this one: `paging.cursors.after` where Meta pages by cursor, else
    those of `paging.next`'s query (time-based paging), never its access token; empty when neither says."""
    cursors = paging.get("cursors")
    after = cursors.get("after") if isinstance(cursors, dict) else None
    if isinstance(after, str) and after:
        return {"after": after}
    following = paging.get("next")
    if not isinstance(following, str):
        return {}
    try:
        query = dict(parse_qsl(urlsplit(following).query))
    except ValueError:  # an address that cannot be read ("Invalid IPv6 URL") says nothing
        return {}
    return {name: query[name] for name in _PAGING_PARAMS if query.get(name)}
