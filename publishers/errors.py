"""Classifies Graph API errors by the envelope's code, subcode and is_transient, not by HTTP status."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from publishers.redact import scrub
from schemas.common import (
    ACTIVITY_BLOCK,
    DESTINATIONS,
    IG_RESTRICTED_SUBCODE,
    MAX_PLATFORM_WAIT_S,
    PLATFORM_LABELS,
    POLICY_BLOCK_CODE,
    UNKNOWN_OBJECT_CODE,
    UNKNOWN_OBJECT_SUBCODE,
    ErrorKind,
    Platform,
)
from schemas.events import PLATFORM_TEXT_LIMIT, PlatformError

AUTH_CODES = frozenset({102, 190})
# Subcodes Meta puts on 190 (expired, password changed, app removed, checkpoint, ...): all mean re-login.
AUTH_SUBCODES = frozenset({458, 459, 460, 463, 464, 467, 492})
PERMISSION_CODES = frozenset({10, *range(200, 300)})
# 341, "application limit reached": Meta's throttling ("examine your API request volume"), waited out as a limit.
RATE_LIMIT_CODES = frozenset({4, 17, 32, 341, 613, *range(80000, 80015)})
# Instagram's -1 ("Instagram server error") and -2 (a timeout) come with HTTP 400.
TRANSIENT_CODES = frozenset({1, 2, -1, -2})
INVALID_MEDIA_CODES = frozenset({324})
# Instagram's media error: where no subcode says more, refused with a 4xx ("Only photo or video can be accepted as
# media type"), the image URL's, not the caption's. With a 5xx, Meta's own failure as any unknown code's.
IG_MEDIA_CODE = 9004
# Meta's "temporarily blocked for policy violations": its advice is to wait and try again, but a block lasts
# hours or days, and calls repeated meanwhile by the service itself would hold the post's turn for hours and may
# count against the Page. The user is told (Meta's own words say why), whatever `is_transient` says.
# Bad parameter, duplicate post, bad link: the user must change the post; and a policy block, to wait out.
INVALID_REQUEST_CODES = frozenset({100, 506, 1609005, POLICY_BLOCK_CODE})

# Instagram subcodes. Those that mean "try the same container again shortly": not ready, server hiccup.
IG_RETRY_SAME_CONTAINER = frozenset({2207001, 2207003, 2207008, 2207027})
# Those that mean the container is unusable (expired, failed, an unknown upload error): a new container is needed;
# still transient.
IG_NEW_CONTAINER = frozenset({2207020, 2207032, 2207006, 2207053})
IG_INVALID_MEDIA = frozenset({2207052, 2207004, 2207005, 2207009, 2207010, 2207026, 2207023})
IG_DAILY_LIMIT = 2207042
IG_RESTRICTED = frozenset({IG_RESTRICTED_SUBCODE})
# "Temporary error publishing a container": Meta advises trying again once or twice within 30 s to 2 minutes, then
# with a new container. Tried again at once by the attempt itself; after that, not before this wait.
IG_TEMPORARY_PUBLISH_ERROR = 2207008
IG_TEMPORARY_PUBLISH_WAIT_S = 30.0
IG_NOT_READY_CODE = 9007
# A failed container's status text names its subcode: "Error: 2207052 ...".
_SUBCODE_IN_STATUS = re.compile(r"\b(22070\d\d)\b")
# What a PlatformError's message holds at most.
MESSAGE_LENGTH = PLATFORM_TEXT_LIMIT

# Meta prefixes messages with "(#324) "; the seed's messages read without it.
_CODE_PREFIX = re.compile(r"^\(#\d+\)\s*")
# How long to wait when a usage header (the app's, the Page's) says 100% but not for how long (their windows are a
# rolling hour).
APP_USAGE_FULL_WAIT_S = 300.0
# Instagram's publishing limit counts an account's posts over a rolling 24 hours, and nothing says when a post
# leaves the window: an hour between automatic tries, not the minute-scale backoff that would spend them all.
IG_DAILY_LIMIT_WAIT_S = 3600.0


def default_action(platform: Platform) -> str:
    return f"{PLATFORM_LABELS[platform]} publish"


def classify(
    platform: Platform,
    http_status: int | None,
    body: Mapping[str, Any] | None,
    headers: Mapping[str, str] | None = None,
    *,
    action: str | None = None,
) -> PlatformError:
    """The classified error of one Graph API response; `action` words the message ("Facebook photo upload")."""
    envelope = body.get("error") if isinstance(body, Mapping) else None
    envelope = envelope if isinstance(envelope, Mapping) else {}
    code = _int(envelope.get("code"))
    subcode = _int(envelope.get("error_subcode"))
    detail = str(envelope.get("error_user_msg") or envelope.get("message") or "").strip()
    detail = _CODE_PREFIX.sub("", detail) or _status_text(http_status)
    kind = _kind(code, subcode, bool(envelope.get("is_transient")), http_status)
    retry_after = rate_limit_wait(headers or {}) if kind is ErrorKind.RATE_LIMITED else None
    if retry_after is None and subcode == IG_DAILY_LIMIT:
        retry_after = IG_DAILY_LIMIT_WAIT_S
    if retry_after is None and subcode == IG_TEMPORARY_PUBLISH_ERROR:
        retry_after = IG_TEMPORARY_PUBLISH_WAIT_S
    status = "" if http_status is None else f"{http_status} - "
    return PlatformError(
        kind=kind,
        message=scrub(f"{action or default_action(platform)} failed: {status}{detail}")[:MESSAGE_LENGTH],
        code=code,
        subcode=subcode,
        http_status=http_status,
        retry_after_s=retry_after,
    )


def classify_transport(platform: Platform, exc: httpx.TransportError, *, action: str | None = None) -> PlatformError:
    """A timeout or a broken connection: transient, since nothing the user can fix caused it."""
    if isinstance(exc, httpx.TimeoutException):
        what = "timed out waiting for the platform"
    elif isinstance(exc, httpx.RemoteProtocolError):
        what = "the platform closed the connection without answering"
    elif isinstance(exc, httpx.ConnectError):
        what = "could not connect to the platform"
    else:
        what = f"network error ({type(exc).__name__})"
    message = scrub(f"{action or default_action(platform)} failed: {what}")
    return PlatformError(kind=ErrorKind.TRANSIENT, message=message)


def may_have_reached_platform(exc: httpx.TransportError) -> bool:
    """False only when the request surely never got to the platform (no connection, no pool slot)."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def container_error_kind(subcode: int | None) -> ErrorKind:
    """The kind of an Instagram container that ended in ERROR, by the subcode its status names.

    Instagram's own failures (a server error, a timeout, "create the container again") are transient: the
    next attempt makes a new container. Any other, or none named, is the image's: the user must fix it.
    """
    if subcode in IG_RETRY_SAME_CONTAINER or subcode in IG_NEW_CONTAINER:
        return ErrorKind.TRANSIENT
    if subcode in IG_RESTRICTED:
        return ErrorKind.PERMISSION
    return ErrorKind.INVALID_MEDIA


def container_failed(status: str) -> PlatformError:
    """The error of an Instagram container that ended in ERROR, from the `status` text Meta gave it.

    Meta's words, kept in the result, the insights and the pages like any error's: scrubbed as `classify` scrubs
    an error envelope's message.
    """
    detail = scrub(status.strip())
    match = _SUBCODE_IN_STATUS.search(detail)
    subcode = int(match.group(1)) if match else None
    return PlatformError(
        kind=container_error_kind(subcode), subcode=subcode,
        message=f"Instagram media processing failed: {detail or 'the image could not be processed'}"[:MESSAGE_LENGTH])


def is_retry_same_container(error: PlatformError) -> bool:
    """Instagram asks to publish the same container again after a moment (not ready, server hiccup)."""
    return error.subcode in IG_RETRY_SAME_CONTAINER or error.code == IG_NOT_READY_CODE


def rate_limit_wait(headers: Mapping[str, str]) -> float | None:
    """Seconds until access returns, from Meta's usage headers; None when they do not say."""
    lowered = {k.lower(): v for k, v in headers.items()}
    waits: list[float] = []
    buc = _json(lowered.get("x-business-use-case-usage"))
    if isinstance(buc, Mapping):
        for entries in buc.values():
            for entry in entries if isinstance(entries, list) else []:
                minutes = entry.get("estimated_time_to_regain_access") if isinstance(entry, Mapping) else None
                # (An estimate of 0 is under a minute, Meta counting in whole minutes: the backoff's own wait.)
                if isinstance(minutes, int | float) and minutes > 0:
                    waits.append(float(minutes) * 60.0)
    if _used_up(_json(lowered.get("x-app-usage"))) or _used_up(_json(lowered.get("x-page-usage"))):
        waits.append(APP_USAGE_FULL_WAIT_S)
    retry_after = lowered.get("retry-after", "")
    if retry_after.strip().isdigit():
        waits.append(float(retry_after.strip()))
    return min(max(waits), MAX_PLATFORM_WAIT_S) if waits else None


def _used_up(usage: Any) -> bool:
    """Whether a usage header (X-App-Usage, X-Page-Usage) is at 100% of any share."""
    return isinstance(usage, Mapping) and any(isinstance(usage.get(k), int | float) and usage[k] >= 100
                                              for k in ("call_count", "total_cputime", "total_time"))


def _kind(code: int | None, subcode: int | None, is_transient: bool, http_status: int | None) -> ErrorKind:
    # Subcodes first: Instagram reuses generic codes (9004, 100, 25) and the subcode carries the meaning.
    if subcode in IG_INVALID_MEDIA:
        return ErrorKind.INVALID_MEDIA
    if subcode == IG_DAILY_LIMIT:
        return ErrorKind.RATE_LIMITED
    if (code, subcode) == ACTIVITY_BLOCK:
        # Instagram's "we restrict certain activity" (code 4, as a rate limit's): a block on the account for hours
        # or more, like Facebook's 368. Tried again and again by the service, it would only look more like spam.
        return ErrorKind.INVALID_REQUEST
    if subcode in IG_RETRY_SAME_CONTAINER or subcode in IG_NEW_CONTAINER or code == IG_NOT_READY_CODE:
        return ErrorKind.TRANSIENT
    if subcode in IG_RESTRICTED:
        return ErrorKind.PERMISSION
    if code in AUTH_CODES or (code is None and subcode in AUTH_SUBCODES):
        return ErrorKind.AUTH
    if code in RATE_LIMIT_CODES:
        return ErrorKind.RATE_LIMITED
    if code == POLICY_BLOCK_CODE:
        return ErrorKind.INVALID_REQUEST
    if is_transient or code in TRANSIENT_CODES:
        return ErrorKind.TRANSIENT
    if code in PERMISSION_CODES:
        return ErrorKind.PERMISSION
    if code in INVALID_MEDIA_CODES or (code == IG_MEDIA_CODE and http_status is not None and http_status < 500):
        return ErrorKind.INVALID_MEDIA
    if code in INVALID_REQUEST_CODES:
        return ErrorKind.INVALID_REQUEST
    # A code we do not know: the HTTP status is the best hint left.
    if http_status is None or http_status >= 500:
        return ErrorKind.TRANSIENT
    if http_status == 429:
        return ErrorKind.RATE_LIMITED
    return ErrorKind.INVALID_REQUEST


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _status_text(http_status: int | None) -> str:
    if http_status is None:
        return "no response"
    try:
        return httpx.codes.get_reason_phrase(http_status) or "error"
    except ValueError:
        return "error"



def is_unknown_object(error: PlatformError) -> bool:
    """Meta's "does not exist, cannot be loaded due to missing permissions, or does not support this operation"
    (100/33): of an object it has at times too, or one the token cannot see."""
    return (error.code, error.subcode) == (UNKNOWN_OBJECT_CODE, UNKNOWN_OBJECT_SUBCODE)


def unreachable_account(error: PlatformError, platform: Platform, node: str) -> PlatformError | None:
    """An `auth` error in the user's terms when `error` says the account's Page or Instagram account (with id
    `node`) is unknown to Meta or out of the token's reach, which no change to the post fixes; else None. Its
    code stays Meta's 100: with `auth`, what the fold asks the user to do (`needed_action`)."""
    if not is_unknown_object(error):
        return None
    action, said, _ = error.message.partition(" failed: ")
    if not said:
        action = f"{PLATFORM_LABELS[platform]} call"
    what = DESTINATIONS[platform]
    status = f"{error.http_status} - " if error.http_status is not None else ""
    return error.model_copy(update={"kind": ErrorKind.AUTH, "message": (
        f"{action[:200]} failed: {status}the {what} {node[:100]} cannot be used with the account's token (Meta does "
        f"not know it, or the token has no access to it): connect the account again with its {what}'s right id")})
