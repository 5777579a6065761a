"""Publishes to a Facebook Page: photo posts through /photos, text and link posts through /feed."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from publishers.base import AccountCredentials, OnContainer, OnObtainedToken, PublishOutcome
from publishers.errors import classify, unreachable_account
from publishers.graph import (
    CLOCK_SKEW,
    LOOKUP_WINDOW,
    GraphApi,
    GraphCallFailed,
    answered_id,
    created_id,
    earliest_match,
    next_page,
    parse_meta_time,
)
from publishers.redact import register_secret
from schemas.commands import PostContent, facebook_text
from schemas.common import ErrorKind, Platform, not_connected
from schemas.events import PlatformError

log = logging.getLogger(__name__)

PageCall = Callable[[SecretStr], Awaitable[dict[str, Any]]]

# Meta serves at most 100 posts a page. Ten pages covers a very busy Page's window; past that the lookup
# answers "could not tell" rather than "not published", because the latter would publish a duplicate.
LOOKUP_PAGE_SIZE = 100
LOOKUP_MAX_PAGES = 10


class FacebookPagePublisher:
    platform: Platform = "facebook"
    finds_by_caption = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        version: str,
        *,
        lookup_page_size: int = LOOKUP_PAGE_SIZE,
        lookup_max_pages: int = LOOKUP_MAX_PAGES,
        lookup_window: timedelta = LOOKUP_WINDOW,
        on_obtained_token: OnObtainedToken | None = None,
    ) -> None:
        self._graph = GraphApi(client, base_url, version, "facebook")
        self._on_obtained_token = on_obtained_token
        self._lookup_page_size = lookup_page_size
        self._lookup_max_pages = lookup_max_pages
        self._lookup_window = lookup_window
        # Page tokens by (page, user token): fetching one per post would double the calls.
        self._page_tokens: dict[tuple[str, str], SecretStr] = {}

    async def publish(
        self,
        content: PostContent,
        account: AccountCredentials,
        *,
        attempt_id: str,
        on_container: OnContainer | None = None,
        earlier_containers: Sequence[tuple[str, datetime]] = (),
        recorded: Collection[str] = (),
    ) -> PublishOutcome:
        # Facebook's attempts make no handle that could say whether they went out: `earlier_containers` is empty, and
        # nothing is looked for by caption here.
        action = "Facebook photo upload" if content.image_url else "Facebook post"
        if not account.page_id:
            return PublishOutcome.failed("facebook", _no_page(action))
        async def create(token: SecretStr) -> dict[str, Any]:
            try:
                return await self._create(content, account, token, action)
            except GraphCallFailed as failed:
                if failed.outcome_unknown or not _may_have_posted(failed.error):
                    raise
                raise GraphCallFailed(failed.error, outcome_unknown=True) from None

        try:
            created = await self._with_page_token(account, action, create)
            # A photo's answer names the photo (`id`) and its post (`post_id`); a text post's, the post (`id`).
            post_id = created_id(created, "post_id", "id", action=action)
        except GraphCallFailed as failed:
            log.info("%s failed (%s)", action, failed.error.kind, extra={"attempt_id": attempt_id})
            return PublishOutcome.failed("facebook", failed.error, outcome_unknown=failed.outcome_unknown)
        log.info("Facebook published post %s", post_id, extra={"attempt_id": attempt_id})
        # No permalink call: the post's address is built from its id, as the seed's `post_url` is. The
        # result is then recorded one Graph call sooner (a shorter window for a crash to leave the attempt
        # unresolved), and a publish spends one call of the Page's rate limit, not two.
        return PublishOutcome.published("facebook", post_id, None)

    async def find_existing(
        self,
        content: PostContent,
        account: AccountCredentials,
        *,
        attempt_id: str,
        container_id: str | None,
        attempted_at: datetime,
        recorded: Collection[str] = (),
    ) -> PublishOutcome | None:
        # Facebook has no idempotency key: the Page's recent posts are matched by caption and time.
        action = "Facebook post lookup"
        if not account.page_id:
            return PublishOutcome.failed("facebook", _no_page(action))
        text = facebook_text(content)
        # An attempt made by an earlier version, which left a photo's link out, published the caption alone.
        texts = (text, content.caption) if text != content.caption and content.caption.strip() else text
        if not text.strip():
            # Any other post without a caption would match: "no post" or a wrong post could both be false. Asking
            # again never tells either, so the kind is one the fold asks the user to resolve the attempt for.
            return PublishOutcome.failed("facebook", PlatformError(
                kind=ErrorKind.INVALID_REQUEST,
                message=f"{action} could not tell: a post without a caption cannot be told apart from the Page's "
                        "other posts, so asking again will not tell either: check the Page and say whether it went "
                        "out (smartretry resolve)"))
        since = attempted_at - CLOCK_SKEW
        try:
            match = await self._earliest_match(account, texts, since, attempted_at + self._lookup_window,
                                               action, recorded)
        except GraphCallFailed as failed:
            return PublishOutcome.failed("facebook", failed.error)
        if match is None:
            log.info("No Facebook post matches the attempt", extra={"attempt_id": attempt_id})
            return None
        # An id with a token in it is none to record: the post went out all the same, its id unknown.
        post_id = answered_id(match["id"])
        log.info("Facebook post %s found for the attempt", post_id or "(id unusable)", extra={"attempt_id": attempt_id})
        # Like a publish's result: the post id, and its address built from it.
        return PublishOutcome.published("facebook", post_id, None)

    async def _earliest_match(
        self, account: AccountCredentials, caption: str | tuple[str, ...], since: datetime, latest: datetime,
        action: str, exclude: Collection[str] = (),
    ) -> dict[str, Any] | None:
        """The Page's earliest post between `since` and `latest` with this caption, reading every page of the window.

        Raises `GraphCallFailed` when the window could not be read to its end: a post not seen then may
        still exist, and only a complete read can say it does not.
        """
        page_id = account.page_id or ""
        # `until` pins the window's end, so posts published while we page do not push older ones further
        # back; the skew allows for Meta's clock being ahead of ours. The end is no later than `latest`:
        # a busy Page's posts after the attempt's post could have appeared do not bury it.
        until = max(min(datetime.now(UTC), latest), since) + CLOCK_SKEW
        params = {
            "fields": "id,message,created_time",
            "since": str(int(since.timestamp())),
            "until": str(int(until.timestamp())),
            "limit": str(self._lookup_page_size),
        }
        first = dict(params)
        match: dict[str, Any] | None = None
        for _ in range(self._lookup_max_pages):
            listing = await self._with_page_token(
                account, action,
                lambda token: self._graph.get(page_id, "published_posts", token, params=params, action=action),
            )
            posts = listing.get("data")
            # Newest first: an earlier match further back replaces a later one.
            match = earliest_match(posts, caption, since, time_field="created_time", text_field="message",
                                   exclude=exclude) or match
            if _reaches_before(posts, since):
                return match
            # `paging.next` is never requested: Meta's paging URLs carry the access token, which must never be in
            # a URL we request or log. Its absence is still Meta's "this is the last page".
            paging = listing.get("paging")
            paging = paging if isinstance(paging, dict) else {}
            if not paging.get("next"):
                return match
            following = next_page(paging)
            if not following or all(params.get(k) == v for k, v in following.items()):
                break
            # From the window as first asked: a cursor of an earlier page is not sent with a time-based page's end.
            params.clear()
            params.update(first, **following)
        if match is not None:
            # Unread pages hold only older posts; this one proves the caption went out after the attempt began.
            return match
        raise GraphCallFailed(PlatformError(
            kind=ErrorKind.TRANSIENT,
            message=f"{action} failed: could not tell whether the post went out (the Page has more posts in the "
                    f"attempt's window than {self._lookup_max_pages} pages of {self._lookup_page_size})"))

    async def _create(
        self, content: PostContent, account: AccountCredentials, token: SecretStr, action: str
    ) -> dict[str, Any]:
        page_id = account.page_id or ""
        if content.image_url:
            data = {"url": content.image_url, "caption": facebook_text(content), "published": "true"}
            return await self._graph.post(page_id, "photos", token, data=data, action=action)
        data = {"message": content.caption}
        if content.link:
            data["link"] = content.link
        return await self._graph.post(page_id, "feed", token, data=data, action=action)

    async def _with_page_token(self, account: AccountCredentials, action: str, call: PageCall) -> dict[str, Any]:
        """Runs `call` with the Page token; a cached token the platform rejects is fetched once more."""
        token = await self._page_token(account, action)
        try:
            return await call(token)
        except GraphCallFailed as failed:
            if failed.error.kind is not ErrorKind.AUTH:
                raise
            # The Page token may have been invalidated while the user token is still good.
            self._page_tokens.pop(self._cache_key(account), None)
            fresh = await self._page_token(account, action)
            if fresh.get_secret_value() == token.get_secret_value():
                raise
            return await call(fresh)

    async def _page_token(self, account: AccountCredentials, action: str) -> SecretStr:
        key = self._cache_key(account)
        cached = self._page_tokens.get(key)
        if cached is not None:
            return cached
        try:
            page = await self._graph.get(
                account.page_id or "", None, account.user_token, params={"fields": "access_token"}, action=action
            )
        except GraphCallFailed as failed:
            # A Page id Meta does not know (or not through this token) is the account's to fix, not the post's.
            unreachable = unreachable_account(failed.error, "facebook", account.page_id or "")
            if unreachable is None:
                raise
            raise GraphCallFailed(unreachable, outcome_unknown=failed.outcome_unknown) from None
        value = page.get("access_token")
        if not isinstance(value, str) or not value:
            error = classify("facebook", 403, {"error": {
                "code": 200, "message": "The user token cannot manage this Page (no Page access token returned)"}},
                action=action)
            raise GraphCallFailed(error)
        register_secret(value)
        if self._on_obtained_token is not None:
            try:
                await self._on_obtained_token(account.account_id, value)
            except Exception as exc:  # the publish goes on: this process's scrubber knows the token already
                log.warning("the Page token of account %s could not be kept among the service's known tokens (%s): "
                            "other processes do not know it until it is fetched again", account.account_id,
                            type(exc).__name__)
                return SecretStr(value)  # not cached: kept on the next fetch
        token = SecretStr(value)
        self._page_tokens[key] = token
        return token

    @staticmethod
    def _cache_key(account: AccountCredentials) -> tuple[str, str]:
        return (account.page_id or "", account.user_token.get_secret_value())


# Meta's refusals made before it creates anything: the token's, a permission's, a rate limit's.
_REFUSED_FIRST = frozenset({ErrorKind.AUTH, ErrorKind.PERMISSION, ErrorKind.RATE_LIMITED})


def _may_have_posted(error: PlatformError) -> bool:
    """Whether a photo or post call Meta answered with `error` may have made the post all the same.

    Facebook's attempts leave no handle to ask about later (Instagram's container), so a failure taken for a
    refusal it was not publishes the post twice at the next attempt. Sure refusals are those made before anything is
    created (`_REFUSED_FIRST`) and a post Meta finds wrong, answered with a 4xx (a bad image, a bad parameter, a
    policy block). Anything else Meta says may be "try again" (`is_transient`, with any status), a failure on its
    side (a 5xx, whatever its code), or an error in a success's answer: the Page is asked before the post goes out
    again (`find_existing`).
    """
    if error.http_status is None or error.kind in _REFUSED_FIRST:
        return False  # no answer: `GraphApi` has told whether the call may have reached Meta
    if error.kind is ErrorKind.TRANSIENT:
        return True
    return not 400 <= error.http_status < 500


def _reaches_before(posts: Any, since: datetime) -> bool:
    """Whether a page of posts goes back past `since`: the window has then been read to its start."""
    for post in posts if isinstance(posts, list) else []:
        created = parse_meta_time(post.get("created_time")) if isinstance(post, dict) else None
        if created is not None and created < since:
            return True
    return False


def _no_page(action: str) -> PlatformError:
    # The account is set up without its Page: connecting the account again, with the Page, is what the
    # user does (an `auth` error's action), not changing the post.
    return PlatformError(kind=ErrorKind.AUTH,
                         message=f"{action} failed: {not_connected('facebook')}")


