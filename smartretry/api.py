"""The HTTP API: publish, retry and read posts; re-authenticate accounts; health, readiness and metrics.

Publish and retry put a command on Kafka and then watch the projection for that command's results,
answering with the product note's response (200) when every platform it chose has one, or 202 with where to
look when `api_wait_seconds` runs out first. Everything is validated before it reaches Kafka: what the
handler would refuse (a retry with nothing to retry, a publish of an existing post) is refused here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.message
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol
from urllib.parse import urlsplit

import uvicorn
from confluent_kafka import Producer
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, ValidationError, field_validator
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from projections.decide import (
    MAY_HAVE_GONE_OUT,
    OVERTAKEN,
    STILL_PUBLISHING,
    container_resolution,
    decide,
    republished_since_asked,
    resolution_refusal,
    retry_preview,
    retry_targets,
    reuses_command_id,
)
from projections.fold import FACEBOOK_POST_URL, RESOLVE_THE_ATTEMPT
from projections.imported import taken_out
from projections.responses import (
    attempt_history,
    attempts_by_platform,
    earlier_posts,
    kept_from_before,
    needed_actions,
    permalink_of,
    publish_response,
    republish_once_looked,
    retried_summary,
    retries_by_platform,
    retry_history,
    unsure_action,
)
from projections.resume import (
    AUTOMATIC_RETRY_LATE,
    AutomaticRetries,
    attempts_by,
    automatic_retries,
    automatic_retry_deadline,
    automatic_retry_times,
    command_settled,
)
from projections.state import PostState
from projections.store import ListPosition, database_said
from publishers.redact import known_secrets, scrub, secret_field, secret_value
from schemas.api import PostSummary, PublishResponse
from schemas.commands import (
    FACEBOOK_TEXT_LIMIT,
    Command,
    ForceRepublishRequested,
    HttpUrlText,
    PostContent,
    PublishRequested,
    ResolveAttemptRequested,
    RetryRequested,
    content_problem,
    says_nothing,
    text_problem,
    url_problem,
)
from schemas.common import (
    ACCOUNT_ID_FIELDS,
    ID_PATTERN,
    MAX_PLATFORM_WAIT_S,
    NOT_CONNECTED,
    PLATFORM_LABELS,
    UNDER_WAY_NOTE,
    Identifier,
    Platform,
    PublishTarget,
    format_timestamp,
    platforms_of,
)
from schemas.envelope import DecodeError, encode, json_object
from schemas.events import MAX_ATTEMPT_NUMBER
from schemas.ids import new_id, post_id_for
from schemas.insights import PostStatus
from smartretry.body_limit import MAX_BODY_BYTES, BodyLimit
from smartretry.bootstrap import Stores
from smartretry.credentials import UnknownAccount, UnreadableToken
from smartretry.metrics import ServiceMetrics
from smartretry.settings import Settings
from streams.kafka import AsyncProducer, admin_client, deliver

log = logging.getLogger("smartretry.api")

API_KEY_HEADER = "X-API-Key"
WRONG_KEY = f"missing or wrong API key: send it as {API_KEY_HEADER} or Authorization: Bearer"
PostId = Annotated[str, Path(pattern=ID_PATTERN.pattern, max_length=128, description="The post's id (a ULID)")]
AccountId = Annotated[str, Path(pattern=ID_PATTERN.pattern, max_length=128, description="An account reference")]
# How often a waiting request looks at the projection; the projector applies events within milliseconds.
POLL_SECONDS = 0.05


# --------------------------------------------------------------------------------------------- request bodies


# How a refused retry with nothing to publish ends: what to do next (the pages put it in their own words).
WAIT_FOR_RESULT = "; wait for its result"
PUBLISH_ANYWAY = "; to publish again anyway"
# The commands that publish a post again: one decided to publish nothing is refused (409).
REPUBLISHING = ("RetryRequested", "ForceRepublishRequested")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PublishBody(Body):
    """A new post: what to publish, where, and with which account's credentials."""

    content: PostContent
    publish_target: PublishTarget
    account: Identifier
    # Given by an upstream service that already named the post; otherwise the service names it.
    post_id: Identifier | None = None
    # Makes a resent request idempotent: the same command_id is the same command.
    command_id: Identifier | None = None


class ContentCorrection(Body):
    """Corrected content for a retry: only the fields given change (the product note's "fix the image URL")."""

    caption: str | None = Field(default=None, max_length=FACEBOOK_TEXT_LIMIT)
    image_url: HttpUrlText | None = None
    link: HttpUrlText | None = None


class RetryBody(Body):
    content: ContentCorrection | None = None
    # For a post without an account (imported from the old system without one): the account to publish with.
    account: Identifier | None = None
    command_id: Identifier | None = None


class RepublishBody(Body):
    @field_validator("reason")
    @classmethod
    def _says_something(cls, value: str) -> str:
        if says_nothing(value):
            raise ValueError("must say why: blanks and invisible characters alone say nothing")
        return value

    @field_validator("platforms")
    @classmethod
    def _each_once(cls, value: list[Platform] | None) -> list[Platform] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("names each platform once")
        return value

    # Recorded with the republish, as its justification.
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
    # The platforms to post again; absent: every platform the post targets.
    platforms: list[Platform] | None = Field(default=None, min_length=1, max_length=2)
    content: ContentCorrection | None = None
    account: Identifier | None = None
    command_id: Identifier | None = None
    seen_attempts: int | None = Field(default=None, ge=0, le=MAX_ATTEMPT_NUMBER, description=(
        "How many publish attempts the post had when the republish was decided on (the entries of `attempts` in GET "
        "/posts/{id}): if the post was published again since (another republish sent at the same time, the service's "
        "own retry), this one publishes nothing and is answered 409. Absent: as many as the API reads when it takes "
        "the request, which a republish sent at the same moment may already have added to."))


class ResolveBody(Body):
    """An operator's word on an attempt the service cannot settle itself: did the post go out on the platform?"""

    platform: Platform
    published: bool
    # The post found on the platform (Facebook's post id, Instagram's media id), when it went out.
    platform_post_id: Identifier | None = None
    permalink: HttpUrlText | None = None
    # The attempt meant, as the post shows it; checked against the one waiting for a result.
    attempt_id: Identifier | None = None
    note: str = Field(default="", max_length=500)
    command_id: Identifier | None = None


class TokenBody(Body):
    """Re-authentication: a new user token for an account, and the Page and Instagram user it publishes to."""

    token: SecretStr = Field(min_length=6, max_length=4096)
    page_id: Annotated[str, Field(pattern=r"^[0-9]{1,32}$")] | None = None
    ig_user_id: Annotated[str, Field(pattern=r"^[0-9]{1,32}$")] | None = None

    @field_validator("token", mode="before")
    @classmethod
    def _long_enough(cls, token: object) -> object:
        # Said in words: pydantic's own message for a secret's length reads "at least 6 items".
        if isinstance(token, str) and len(token) < 6:
            raise ValueError("an access token is at least 6 characters")
        if isinstance(token, str) and len(token) > 4096:
            raise ValueError("an access token is at most 4096 characters")
        return token

    @field_validator("token")
    @classmethod
    def _printable(cls, token: SecretStr) -> SecretStr:
        # Access tokens are printable ASCII; anything else is a paste gone wrong (and never echoed back).
        if not all("!" <= c <= "~" for c in token.get_secret_value()):
            raise ValueError("an access token is printable ASCII, without spaces")
        return token


# --------------------------------------------------------------------------------------------- the front door


class CommandSender(Protocol):
    async def __call__(self, topic: str, key: str, value: bytes) -> None: ...


def platform_link(state: PostState, platform: Platform) -> str | None:
    """The published post's address on `platform`, once its latest result is a success: its permalink, or a Facebook
    post's address built from its id (an Instagram media id gives none). Only a web address: an imported document's
    `javascript:` one would run where it is shown as a link."""
    result = state.latest_result(platform)
    if result is None or not result.success:
        return None
    link = result.permalink or (earlier_link(platform, result.post_id) if result.post_id else None)
    return link if link is not None and link.lower().startswith(("https://", "http://")) else None


# A Facebook post id as Graph gives it ("<page id>_<post id>"), the only kind put into an address.
FACEBOOK_ID = re.compile(r"[0-9]+(_[0-9]+)?")


def earlier_link(platform: Platform, post_id: str) -> str | None:
    """The address of a Facebook post by its id (an Instagram media id does not give its address)."""
    return FACEBOOK_POST_URL.format(post_id=post_id) if platform == "facebook" and FACEBOOK_ID.fullmatch(post_id) \
        else None


# The service's default automatic attempts per platform per command, where no settings are at hand.
DEFAULT_MAX_ATTEMPTS: int = Settings.model_fields["max_automatic_attempts"].default
# The handler's backoff (first wait, longest wait) in seconds, where no settings are at hand.
DEFAULT_BACKOFF: tuple[float, float] = (Settings.model_fields["backoff_base_seconds"].default,
                                        Settings.model_fields["backoff_cap_seconds"].default)
# An attempt's lease (seconds), where no settings are at hand: how long one under way may take.
DEFAULT_LEASE_S: float = Settings.model_fields["attempt_lease_seconds"].default
# Seconds a request waits for the broker to take its command before answering 503.
SEND_TIMEOUT_S = 10.0
# Past any list there is (and within what the databases take as an offset).
MAX_LIST_OFFSET = 1_000_000_000


def list_cursor(state: PostState) -> str | None:
    """The `cursor` that continues a post list after `state` (opaque to clients: base64 of its position).

    None for a post with no update time, which the fold never leaves (its latest event's time).
    """
    if state.updated_at is None:
        return None
    position = json.dumps([state.updated_at.isoformat(), state.post_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def list_position(cursor: str) -> ListPosition:
    """The list position a `cursor` from `list_cursor` stands for; ValueError for any other text."""
    try:
        when, post_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        position = (datetime.fromisoformat(when), post_id)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ValueError("not a cursor this service gave: pass a list answer's next_cursor as it is") from None
    if position[0].tzinfo is None or not isinstance(post_id, str) or not ID_PATTERN.fullmatch(post_id):
        raise ValueError("not a cursor this service gave: pass a list answer's next_cursor as it is")
    return position


def outcome_unknown(state: PostState) -> dict[Platform, str]:
    """Per platform, why its interrupted attempt (no result) could not be checked on the platform yet."""
    unknown: dict[Platform, str] = {}
    for platform in state.targeted:
        attempt = state.in_flight(platform)
        if attempt is not None and attempt.lookup_error is not None:
            unknown[platform] = attempt.lookup_error.message
    return unknown


def not_published_from(state: PostState, lease_s: float, now: datetime) -> dict[Platform, datetime]:
    """Per platform whose interrupted attempt could not be checked, when an operator may say it did not go out, where
    that is still to come: the platform may hold the request until the attempt's lease is over. (A post found on the
    platform may be given at once.)"""
    waiting: dict[Platform, datetime] = {}
    for platform in outcome_unknown(state):
        attempt = state.in_flight(platform)
        if attempt is not None and (at := attempt.started_at + timedelta(seconds=lease_s)) > now:
            waiting[platform] = at
    return waiting


def automatic_retry_fields(state: PostState, max_attempts: int, now: datetime,
                           backoff: tuple[float, float] = DEFAULT_BACKOFF) -> dict[str, Any]:
    """A failed post the service publishes again by itself, as the API gives it (a post and the post list)."""
    times = automatic_retry_times(state, max_attempts, now, backoff)
    return {
        "automatic_retry": {p: format_timestamp(at) if at else None for p, at in times.due.items()},
        "automatic_retry_by": {p: format_timestamp(by) for p, by in times.by.items()},
        "automatic_retry_overdue": times.overdue,
    }


def post_detail(state: PostState, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                token_renewed_at: datetime | None = None, backoff: tuple[float, float] = DEFAULT_BACKOFF,
                now: datetime | None = None, lease_s: float = DEFAULT_LEASE_S) -> dict[str, Any]:
    """GET /posts/{id}: the product note's insights document, then what an operator needs to act on it."""
    now = now or datetime.now(UTC)
    return {
        "id": state.post_id,
        **state.document.to_document(),
        "publish_target": state.publish_target,
        "content": state.content.model_dump(mode="json") if state.content else None,
        "account": state.account,
        "links": {p: link for p in state.targeted if (link := platform_link(state, p))},
        # Published posts an operator recorded (`smartretry resolve`): an address missing was not given then.
        "recorded_by_operator": [p for p in state.targeted if state.recorded_on_word(p)],
        # Posts earlier attempts made that the document no longer shows (a forced republish's first one): still live.
        "earlier_posts": {p: [{"post_id": made, "link": permalink_of(state, p, made) or earlier_link(p, made)}
                              for made in ids]
                          for p, ids in earlier_posts(state).items()},
        # Platforms whose post went out with content since corrected: what it keeps, and the content it went out with.
        "kept_from_before": kept_from_before(state),
        "published_with": {p: kept.model_dump(mode="json") for p, kept in state.published_with().items()},
        "needed_action": needed_actions(state, max_attempts, token_renewed_at),
        "outcome_unknown": outcome_unknown(state),
        "not_published_from": {p: format_timestamp(at) for p, at in not_published_from(state, lease_s, now).items()},
        # Failed for now, and published again by the service itself.
        **automatic_retry_fields(state, max_attempts, now, backoff),
        "retry_preview": retry_note(state, automatic_retry_times(state, max_attempts, now, backoff), now)
        if state.status == "failed" else "",
        "retried": retried_summary(state),
        "attempts_by_platform": attempts_by_platform(state),
        "retries_by_platform": retries_by_platform(state),
        "history": [
            {"command_id": c.command_id, "command_type": c.command_type, "platforms": c.platforms,
             "skipped": c.skipped, "is_retry": c.is_retry, "forced": c.forced,
             "decided_at": format_timestamp(c.decided_at), "note": c.note}
            for c in state.commands.values()
        ],
        "retry_history": [c.command_id for c in retry_history(state)],
        # Every attempt, oldest first, with what came of it (a failure's words too, once a retry replaced it).
        "attempts": attempt_history(state),
        "created_at": format_timestamp(state.created_at) if state.created_at else None,
        "updated_at": format_timestamp(state.updated_at) if state.updated_at else None,
    }


def waits_for_someone(state: PostState, max_attempts: int) -> dict[Platform, str]:
    """What a post still publishing waits for from someone (an attempt only an operator can settle, a token to look it
    up with), per platform: shown in the lists, where a post that waits so would otherwise look as if under way."""
    return needed_actions(state, max_attempts) if state.status == "publishing" else {}


def post_summary(state: PostState, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 backoff: tuple[float, float] = DEFAULT_BACKOFF, now: datetime | None = None) -> dict[str, Any]:
    return {
        "id": state.post_id, "status": state.status, "error_message": state.document.error_message,
        # A failed post the service publishes again by itself needs nobody yet: told apart in the list.
        **automatic_retry_fields(state, max_attempts, now or datetime.now(UTC), backoff),
        # A post publishing that waits for someone: told apart in the list too.
        **({"needed_action": waiting} if (waiting := waits_for_someone(state, max_attempts)) else {}),
        "caption": state.content.caption if state.content is not None else None,
        "publish_target": state.publish_target, "post_url": state.document.post_url,
        # Whose post it is, where one service publishes for several businesses.
        "account": state.account,
        "updated_at": format_timestamp(state.updated_at) if state.updated_at else None,
    }


def _corrected(current: PostContent | None, correction: ContentCorrection | None) -> PostContent | None:
    if correction is None:
        return None
    given = correction.model_dump(exclude_unset=True)
    if current is None:
        return PostContent.model_validate({"caption": "", **given})
    return PostContent.model_validate({**current.model_dump(), **given})


# A database call that failed for the database's state (away, restarting, locked), not for what it asked.
DATABASE_AWAY = (OperationalError, InterfaceError)


def database_unreachable(exc: DBAPIError, *, for_the_log: bool = False) -> str:
    """What a database call that failed for the database's state says: for a client, the error's class; for the log,
    also the driver's own message (its first line, scrubbed), never the statement or its values. Not to clients: a
    driver's message names hosts and users, and can quote a URL's mistyped password ("failed to resolve host")."""
    cause = exc.orig if exc.orig is not None else exc
    if database_busy(exc):
        return f"the database is busy ({type(cause).__name__}: database is locked)"
    return f"the database is unavailable ({database_said(exc) if for_the_log else type(cause).__name__})"


def database_busy(exc: DBAPIError) -> bool:
    """SQLite, its write lock held past the wait for it: the database is there, and busy (`/readyz` says it is up)."""
    return str(exc.orig if exc.orig is not None else exc).startswith("database is locked")


def _same_ids(command: Command) -> str:
    """The ids a request must be sent again with to be the same command (a publish's post id is made from neither
    when the request named none)."""
    again = f'"command_id": "{command.command_id}"'
    if isinstance(command, PublishRequested):
        again += f' and "post_id": "{command.post_id}"'
    return again


@dataclass
class Accepted:
    """A command on Kafka, and the answer to give for it."""

    command: Command
    status_code: int
    response: PublishResponse


class FrontDoor:
    """What the API and the page do with a request, apart from HTTP: validate, put on Kafka, wait, answer."""

    def __init__(self, settings: Settings, stores: Stores, send: CommandSender,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_accepted: Callable[[Command], None] | None = None) -> None:
        self.settings = settings
        self.stores = stores
        self.send = send
        self.clock = clock
        self.on_accepted = on_accepted

    async def read(self, post_id: str) -> PostState | None:
        return await asyncio.to_thread(self.stores.projection.get, post_id)

    async def token_renewed_at(self, state: PostState) -> datetime | None:
        """When the post's account last stored its token, where the post asks to re-authenticate (else None)."""
        if state.account is None or not any(a.startswith("re-authenticate ") for a in state.needed_action.values()):
            return None
        return await asyncio.to_thread(self.stores.credentials.token_updated_at, state.account)

    async def store_token(self, account: str, body: TokenBody, *, where: str = "path") -> dict[str, Any]:
        """Re-authenticates `account` (or connects it): its new token stored, encrypted; the account as listed (never
        its token). 422 for an account name that carries the token."""
        await self.check_account_name(account, where=where, also=(body.token.get_secret_value(),))
        if (which := service_key_named(self.settings, body.token.get_secret_value())) is not None:
            # Stored, every publish of the account would fail on it, and the key would be sent to Meta.
            raise HTTPException(422, [{"loc": ["body", "token"], "type": "value_error",
                                       "msg": f"that is this service's {which}, not the account's access token from "
                                              "Meta"}])
        known = await asyncio.to_thread(self.stores.credentials.account, account) is not None
        await asyncio.to_thread(self.stores.credentials.set_token, account, body.token.get_secret_value(),
                                body.page_id, body.ig_user_id)
        log.info("Token of account %s %s", account, "replaced" if known else "stored (a new account)")
        listed = await asyncio.to_thread(self.stores.credentials.account, account)
        assert listed is not None
        return listed

    async def account_ids(self, account: str) -> dict[str, str | None] | None:
        """The account's Page and Instagram account ids as stored (never its token); None for one never connected."""
        return await asyncio.to_thread(self.stores.credentials.account, account)

    async def state_of(self, post_id: str) -> PostState:
        state = await self.read(post_id)
        if state is None:
            # A publish just accepted has no post until the handler takes its command up: said so, rather than
            # leave "not found" to read as lost.
            raise HTTPException(404, f"post {scrub(post_id)} not found: none was published with this id, or its "
                                     "publish has not been taken up yet (the service may be behind: see /metrics; a "
                                     "publish it refused is in the dead letters)")
        return state

    async def publish(self, body: PublishBody) -> Accepted:
        # A post the caller names none for is named by the caller's command id: the request resent (a
        # client that timed out) names the same post, so the handler publishes it once.
        post_id = body.post_id or (post_id_for(body.command_id) if body.command_id else new_id())
        command_id = body.command_id or new_id()
        _check_urls(body.content)
        _check_caption(body.content.caption)
        _check_fits_target(body.content, body.publish_target)
        try:
            command = PublishRequested(command_id=command_id, post_id=post_id, publish_target=body.publish_target,
                                       content=body.content, account=body.account, requested_at=self.clock())
        except ValidationError as exc:
            raise unprocessable(exc) from None
        await self.check_account_name(body.account)
        await self._check_account(body.account, platforms_of(body.publish_target))
        state = await self.read(post_id)
        # A resent request (same command) is answered, not refused; another publish of the post is a conflict.
        if state is not None and state.submitted_by != command_id:
            raise HTTPException(409, f"post {post_id} already exists: retry it with POST /posts/{post_id}/retry, "
                                     f"or publish it again with POST /posts/{post_id}/republish")
        if state is not None and _another_body(state, command):
            raise HTTPException(409, f"command {command_id} was already used for post {post_id} with a different body: "
                                     "use a new command_id")
        if state is None:
            # Not for a resent request the handler took: that one is answered as it went.
            await self._check_no_secret(command.content, post_id=body.post_id, command_id=body.command_id)
        return await self._submit(command)

    async def _check_no_secret(self, content: PostContent | None, *, where: str = "body", also: Collection[str] = (),
                               **fields: str | None) -> None:
        """422 for content that carries an access token: it would be published for anyone to see, and kept in
        the post's events for good. A stored token (the handler refuses those too), one this process has seen
        (one replaced by re-authentication may still work), or one of Meta's shape. The same for the request's
        other `fields` (ids, notes): they are kept in the events and shown in logs. The field is named, the
        value never repeated. `also`: tokens the request itself brings (one it stores); `where`: the fields' place
        ("body", "path")."""
        if content is None and not any(fields.values()):
            return
        tokens = await self._known_tokens(also)
        field = secret_field(content, *tokens)
        if field is not None:
            raise HTTPException(422, [{"loc": ["body", "content", field], "type": "contains_token",
                                       "msg": f"content.{field} contains an access token: remove it (published, "
                                              "anyone could read it)"}])
        name = secret_value(fields, *tokens)
        if name is not None:
            raise HTTPException(422, [{"loc": [where, name], "type": "contains_token",
                                       "msg": f"{name} contains an access token: remove it (it would be kept in "
                                              "the post's events and shown in logs)"}])

    async def _known_tokens(self, also: Collection[str] = ()) -> tuple[Collection[str], ...]:
        """The tokens no text may carry: the stored ones, those this process has seen, and `also`."""
        return await asyncio.to_thread(self.stores.credentials.stored_tokens), known_secrets(), also

    async def check_account_name(self, account: str, *, where: str = "body", also: Collection[str] = ()) -> None:
        """422 for an account reference that carries an access token: the name is stored in the clear (it is the
        account's id) and goes into every command, event and log line of the account's posts."""
        await self._check_no_secret(None, where=where, also=also, account=account)

    async def _check_account(self, account: str, platforms: Collection[Platform]) -> None:
        """422 unless the account has a token this service can read, and the Page or Instagram account of each of
        `platforms` (what it would publish to). A name scrubbed from logs is not repeated here either."""
        shown = scrub(account)
        try:
            # Read through, not just looked up: a token this service cannot decrypt (stored under another
            # secret key) would fail every platform later; the caller learns it now.
            credentials = await asyncio.to_thread(self.stores.credentials.get, account)
        except UnreadableToken:
            raise HTTPException(422, [{"loc": ["body", "account"], "type": "unreadable_token",
                                       "msg": f"the token of account {shown!r} was stored under another "
                                              f"secret key: store it again with PUT /accounts/{shown}/token"}]
                                ) from None
        except UnknownAccount:
            raise HTTPException(422, [{"loc": ["body", "account"], "type": "unknown_account",
                                       "msg": f"unknown account {shown!r}: connect it (its token, page_id and "
                                              f"ig_user_id) with PUT /accounts/{shown}/token"}]) from None
        missing = [(NOT_CONNECTED[platform], ACCOUNT_ID_FIELDS[platform]) for platform, have in (
            ("facebook", credentials.page_id), ("instagram", credentials.ig_user_id))
            if platform in platforms and not have]
        if missing:
            labels = " and ".join(label for label, _ in missing)
            fields = " and ".join(field for _, field in missing)
            raise HTTPException(422, [{"loc": ["body", "account"], "type": "account_not_connected",
                                       "msg": f"account {shown!r} has no {labels} connected: set its {fields} "
                                              f"with PUT /accounts/{shown}/token"}])

    async def retry(self, post_id: str, body: RetryBody | RepublishBody | None, forced: bool,
                    wait: bool = True, seen_attempts: int | None = None) -> Accepted:
        """`seen_attempts`: for a republish, how many attempts the post had where it was asked for (a page drawn
        earlier); the post's attempts now when None."""
        state = await self.state_of(post_id)
        if seen_attempts is None or not 0 <= seen_attempts <= len(state.attempts):
            seen_attempts = len(state.attempts)
        correction = body.content if body is not None else None
        command_id = (body.command_id if body is not None else None) or new_id()
        try:
            content = _corrected(state.content, correction)
            command: Command
            account = body.account if body is not None else None
            if forced:
                assert isinstance(body, RepublishBody)
                command = ForceRepublishRequested(command_id=command_id, post_id=post_id, content=content,
                                                  account=account, reason=body.reason, requested_at=self.clock(),
                                                  seen_attempts=seen_attempts, platforms=body.platforms)
            else:
                command = RetryRequested(command_id=command_id, post_id=post_id, content=content, account=account,
                                         requested_at=self.clock())
        except ValidationError as exc:
            raise unprocessable(exc, prefix=("body", "content")) from None
        if content is not None:
            # Only the addresses the correction changes: the post's own, taken in before these checks, go out as they
            # are (as `decide` takes them), and the page could not correct a link anyway.
            _check_urls(content, kept=state.content)
        if correction is not None:
            _check_caption(correction.caption)
        if isinstance(body, RepublishBody):
            _check_caption(body.reason, ("body", "reason"))
        if command.account is not None:
            # Before the refusal below, which names the account.
            await self.check_account_name(command.account)
        if command.account is not None and state.account is not None and command.account != state.account:
            # Refused whatever that account is (`decide` says why): connecting it first would change nothing.
            raise HTTPException(409, decide(state, command).reject_reason)
        if command.account is not None:
            await self._check_account(command.account, state.targeted)
        if command_id in state.commands:
            _check_same_command(state, command)
            return await self._answer(command, await self._wait(command) if wait else state)
        await self._check_no_secret(command.content, command_id=body.command_id if body is not None else None,
                                    reason=body.reason if isinstance(body, RepublishBody) else None)
        # The handler's own decision, on the projection as it is now: refuse here what it would do nothing with.
        decision = decide(state, command)
        if decision.refused_content:
            # Against the platforms this retry publishes: Instagram's limits do not bind a Facebook-only retry.
            # With the account a post imported without one lacks too, both are said at once.
            raise HTTPException(422, [{"loc": ["body", "content"], "type": "value_error",
                                       "msg": decision.reject_reason},
                                      *([] if state.account is not None or command.account is not None
                                        else [_no_account(post_id)])])
        if decision.reject_reason:
            raise HTTPException(409, decision.reject_reason)
        if decision.no_op:
            # The product note's line for a retry with nothing to publish, in the service's log as in the answer.
            log.info("%s", decision.log_line, extra={"post_id": post_id, "command_id": command_id})
            raise HTTPException(409, nothing_to_publish(decision.log_line, decision.skipped, post_id, forced, state))
        pending = {p: at for p, at in automatic_retries(state, self.settings.max_automatic_attempts).items()
                   if p in decision.platforms} if forced else {}
        if pending:
            # The same once the service's own retry of a platform is due: the republish would run after it, and
            # post that platform a second time if it goes out.
            when = {PLATFORM_LABELS[p]: f" at {clock_time(at, self.clock())}" if at else " shortly"
                    for p, at in pending.items()}
            raise HTTPException(409, " and ".join(f"{label} is retried by the service itself{at}"
                                                  for label, at in when.items())
                                + f"{WAIT_FOR_RESULT} (GET /posts/{post_id}), then republish if you still want it "
                                  "posted again")
        if command.content is None and state.content is not None:
            # The post's own content, published as it is: it may carry a token stored since it was submitted or
            # imported. Refused at once, as the handler would refuse it (and dead-letter the retry, which would
            # otherwise wait unanswered).
            field = secret_field(state.content, *await self._known_tokens())
            if field is not None:
                raise HTTPException(422, [{"loc": ["body", "content", field], "type": "contains_token",
                                           "msg": f"the post's {_SAID_AS.get(field, field)} contains an access "
                                                  f"token: retry with it corrected (content.{field}), so that it is "
                                                  "not published"}])
        if (why := taken_out(state, command.content or state.content, decision.platforms)) is not None:
            field = why.split(" ", 1)[0].removeprefix("content.")
            raise HTTPException(422, [{"loc": ["body", "content", field], "type": "token_taken_out", "msg": why}])
        if state.account is None and command.account is None:
            # Imported without an account: the retry would fail for want of one, a new failure on the post.
            raise HTTPException(422, [_no_account(post_id)])
        if forced and STILL_PUBLISHING in decision.skipped.values():
            # The republish would run once that attempt has ended, and publish its platform again then too: a post
            # that looks stuck would go out twice. Known first, the user can still republish.
            busy = [PLATFORM_LABELS[p] for p, why in decision.skipped.items() if why == STILL_PUBLISHING]
            last = "its last attempt has" if len(busy) == 1 else "their last attempts have"
            raise HTTPException(409, f"{' and '.join(busy)} still publishing ({last} no result yet)"
                                     f"{WAIT_FOR_RESULT} (GET /posts/{post_id}), then republish if you still want it "
                                     "posted again")
        return await self._submit(command, wait)

    async def resolve(self, post_id: str, body: ResolveBody) -> Accepted:
        """Puts an operator's resolution on Kafka, if the platform has an attempt it can apply to."""
        state = await self.state_of(post_id)
        command_id = body.command_id or new_id()
        try:
            command = ResolveAttemptRequested(
                command_id=command_id, post_id=post_id, platform=body.platform, attempt_id=body.attempt_id,
                published=body.published, platform_post_id=body.platform_post_id, permalink=body.permalink,
                note=body.note, requested_at=self.clock())
        except ValidationError as exc:
            raise unprocessable(exc) from None
        _check_url(body.permalink, ["body", "permalink"])
        if command_id in state.commands:
            if body.attempt_id is None and reuses_command_id(state, command):
                # Sent from here bound to the attempt it settled (below): the same request, sent again.
                settled = state.settled_by(command_id)
                if settled is not None:
                    command = command.model_copy(update={"attempt_id": settled.attempt_id})
            _check_same_command(state, command)
            return await self._answer(command, await self._wait(command))
        await self._check_no_secret(None, command_id=body.command_id, platform_post_id=body.platform_post_id,
                                    attempt_id=body.attempt_id, permalink=body.permalink, note=body.note)
        ids = await self.account_ids(state.account) if state.account is not None else None
        if (problem := found_post_problem(body, ids.get("page_id") if ids else None)) is not None:
            raise HTTPException(422, [problem])
        refusal = resolution_refusal(state, body.platform, body.attempt_id, published=body.published)
        if refusal is not None:
            raise HTTPException(409, refusal)
        waiting = state.in_flight(body.platform)
        if waiting is None:
            # An earlier attempt whose container Meta cannot say anything of (`container_resolution`), named by its id:
            # over long since, so "not published" needs no lease to run out.
            return await self._submit(command)
        age = (self.clock() - waiting.started_at).total_seconds()
        lease = self.settings.attempt_lease_seconds
        if age < lease and not body.published:
            # A post seen on the platform settles the attempt at once. Not seen yet is no proof until the lease is
            # over: the platform may still hold the request, and publish it after it was said not to have gone out.
            # Where the look-up cannot tell (no caption to match, another post's of the same caption), only an
            # operator settles it: the service does not.
            label = PLATFORM_LABELS[body.platform]
            settles = "" if state.needed_action.get(body.platform, "").endswith(RESOLVE_THE_ATTEMPT) else \
                "the service settles it itself, or "
            from_ = waiting.started_at + timedelta(seconds=lease)
            raise HTTPException(409, f"{label} attempt {waiting.attempt_id} started {age:.0f}s ago and may still be "
                                     f"under way: {settles}it can be resolved as not published once it is {lease:.0f}s "
                                     f"old (at {clock_time(from_, self.clock())}); a post found on "
                                     f"{label} can be given now (published, with its id)")
        # Bound to the attempt the operator checked, the one waiting now: never a call the command makes after it
        # (once this one is "not published"), whatever the clocks of this host and the handler's say.
        return await self._submit(command.model_copy(update={"attempt_id": waiting.attempt_id}))

    async def _submit(self, command: Command, wait: bool = True) -> Accepted:
        try:
            await asyncio.wait_for(self.send(self.settings.topics.commands, command.post_id, encode(command)),
                                   SEND_TIMEOUT_S + 1)
        except Exception as exc:
            log.error("%s not confirmed by Kafka in time (it may still arrive): %s", command.type, scrub(str(exc)),
                      extra={"post_id": command.post_id, "command_id": command.command_id})
            # It may still get there (a send that timed out can be delivered later): the same request with
            # the same command id is then the same command, never a second one.
            reason = scrub(str(exc))[:200] or type(exc).__name__
            raise HTTPException(503, f"{NOT_TAKEN} {command.command_id} for post {command.post_id} "
                                     f"in time ({reason}); it may still arrive and be carried out. Send the same "
                                     f"request again with {_same_ids(command)}, which cannot publish twice (a new "
                                     "command or post id could)") from None
        if self.on_accepted is not None:
            self.on_accepted(command)
        log.info("%s accepted", command.type, extra={"post_id": command.post_id, "command_id": command.command_id})
        try:
            state = await self._wait(command) if wait else await self.read(command.post_id)
        except Exception as exc:
            # The command is on Kafka: the handler carries it out (or says why not). Only its results cannot be read
            # now, whatever the reason: answered as accepted, so that the caller does not send it again as a new
            # command (a second publish).
            if isinstance(exc, DATABASE_AWAY):
                why, logged, away = database_unreachable(exc), database_unreachable(exc, for_the_log=True), True
            else:
                why = logged = f"they could not be read ({type(exc).__name__})"
                away = False
            log.error("%s accepted, but its results cannot be read: %s", command.type, logged, exc_info=not away,
                      extra={"post_id": command.post_id, "command_id": command.command_id})
            return Accepted(command, 202, PublishResponse(
                success=False, results={}, command_id=command.command_id, pending=True,
                location=f"/posts/{command.post_id}",
                note=f"accepted: the service carries it out, but its results cannot be shown yet ({why}): see "
                     f"/posts/{command.post_id} later. To send this request again, send it with "
                     f"{_same_ids(command)}, which cannot publish twice",
                post=PostSummary(id=command.post_id, status="publishing", error_message=None)))
        return await self._answer(command, state)

    async def _wait(self, command: Command) -> PostState | None:
        deadline = time.monotonic() + self.settings.api_wait_seconds
        while True:
            state = await self.read(command.post_id)
            if command_settled(state, command.command_id, self.settings.max_automatic_attempts):
                return state
            if _created_by_another(state, command) or time.monotonic() >= deadline or (
                    state is not None and republished_since_asked(state, command) is not None):
                return state
            if state is not None and self._held_beyond(state, command, deadline - time.monotonic()):
                return state
            await asyncio.sleep(POLL_SECONDS)

    def _held_beyond(self, state: PostState, command: Command, seconds: float) -> bool:
        """Whether nothing more can come of `command` within `seconds`, so the answer need not wait for them: not
        decided yet, it waits behind an automatic retry that the platform's own wait holds back longer ("queued behind
        ..."); decided, every platform it publishes has its result, and what remains are automatic retries that the
        platforms' own waits hold back longer (an Instagram rate limit's hour)."""
        if isinstance(command, ResolveAttemptRequested):
            return False
        until = self.clock() + timedelta(seconds=seconds)
        if command.command_id in state.commands:
            return held_by_platform_waits(state, command.command_id, self.settings.max_automatic_attempts, until)
        held = [at for at in automatic_retries(state, self.settings.max_automatic_attempts).values() if at is not None]
        return bool(held) and max(held) > until

    async def _answer(self, command: Command, state: PostState | None) -> Accepted:
        location = f"/posts/{command.post_id}"
        if state is not None:
            # Sent while the post did not show the command id yet, and another command with that id was decided
            # meanwhile (a request resent with a corrected body): the handler refuses this one. Its results are
            # that other command's, not this one's.
            _check_same_command(state, command)
        if state is not None and _created_by_another(state, command):
            # Two requests named the same new post at once: the handler took the first and refuses this one.
            raise HTTPException(409, f"post {command.post_id} already exists: another request created it first, "
                                     f"so this one (command {command.command_id}) was not published: publish it "
                                     "under another post_id, or retry that post with POST "
                                     f"/posts/{command.post_id}/retry")
        if state is not None and (overtaken := _overtaken(state, command)) is not None:
            # Two sent at the same moment: the handler republished the other first, and refuses this one.
            raise HTTPException(409, f"{overtaken}. This request (command {command.command_id}) was not published")
        record = state.commands.get(command.command_id) if state is not None else None
        republish = isinstance(command, RetryRequested | ForceRepublishRequested)
        if record is not None and not record.platforms and republish:
            # Decided with nothing to publish (another retry sent at the same moment published it first): answered
            # as one sent a moment later is, not with a success that would say this one published.
            raise HTTPException(409, nothing_to_publish(record.note, record.skipped, command.post_id,
                                                        forced=isinstance(command, ForceRepublishRequested),
                                                        state=state))
        if state is not None and command_settled(state, command.command_id, self.settings.max_automatic_attempts):
            return Accepted(command, 200, publish_response(state, command.command_id))
        if state is not None and command.command_id in state.commands:
            response = publish_response(state, command.command_id)
            if self._held_beyond(state, command, 0.0) and \
                    (when := platform_waits(state, self.settings.max_automatic_attempts)) is not None:
                # Only what the platforms' own waits hold back is left: said, and when (the CLI stops waiting on it).
                response = response.model_copy(update={"note": when})
        else:
            # Not decided yet: the post is being published again (the API refused a retry with nothing to
            # publish), as the post page shows it. Results and the message are the latest until new ones come.
            # A post's commands run in order, so one behind an automatic retry that waits out a platform's
            # rate limit waits too: the post stays as it is until then, and the answer says so.
            results = {r.platform: r for r in state.document.insights.publish_results} if state else {}
            # Not an operator's resolution of an attempt waiting for a result: the command waiting on it hears of it
            # at once, whatever is queued. One of an earlier attempt's container is recorded in its turn (the CLI says
            # so at once, rather than waiting for it).
            queued = state is not None and (not isinstance(command, ResolveAttemptRequested) or container_resolution(
                state, command.platform, command.attempt_id) is not None)
            note = queued_behind(state, self.settings.max_automatic_attempts, self.clock(),
                                 self.settings.backoff, self.settings.attempt_lease_seconds) \
                if state is not None and queued else None
            response = PublishResponse(
                success=False, results=results, command_id=command.command_id, note=note,
                post=PostSummary(id=command.post_id, status=state.status if note and state else "publishing",
                                 error_message=state.document.error_message if state else None))
        return Accepted(command, 202, response.model_copy(update={"pending": True, "location": location}))

    async def is_settled(self, post_id: str, command_id: str) -> bool:
        return command_settled(await self.read(post_id), command_id, self.settings.max_automatic_attempts)


def held_by_platform_waits(state: PostState, command_id: str, max_attempts: int, until: datetime) -> bool:
    """Whether the decided command `command_id` has every platform's result but for automatic retries that the
    platforms' own waits hold back past `until` (an Instagram rate limit's hour): nothing more comes of it before."""
    record, latest = state.commands.get(command_id), state.latest_command()
    if record is None or latest is None or latest.command_id != command_id:
        return False
    if any(state.in_flight(p) is not None or not attempts_by(state, command_id, p) for p in record.platforms):
        return False
    due = automatic_retries(state, max_attempts)
    return bool(due) and all(at is not None and at > until for at in due.values())


def platform_waits(state: PostState, max_attempts: int) -> str | None:
    """When the post's latest command publishes again by itself where a platform's own wait says ("Instagram is
    retried automatically at 2026-11-30 05:22:36 UTC (the platform's own wait)"); None where none does."""
    due = {p: at for p, at in automatic_retries(state, max_attempts).items() if at is not None}
    if not due:
        return None
    return "; ".join(f"{PLATFORM_LABELS[p]} is retried automatically at {at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC "
                     "(the platform's own wait)" for p, at in due.items())


# How a command the broker did not take in time is refused (503): sent again as it was, it is the same command.
NOT_TAKEN = "Kafka did not take command"


def nothing_to_publish(line: str, skipped: Mapping[Platform, str], post_id: str, forced: bool,
                       state: PostState | None = None) -> str:
    """The refusal of a retry (or republish) that publishes nothing: the product note's line, and what to do (with
    `state`, the post as it is now, what a republish must bring)."""
    if STILL_PUBLISHING in skipped.values():
        # A republish now would run after that attempt and publish its platform a second time.
        hint = f"{WAIT_FOR_RESULT} (GET /posts/{post_id}), then " + (
            "republish if you still want it posted again" if forced else "retry if it failed")
    elif not forced and MAY_HAVE_GONE_OUT in skipped.values():
        # Not "anyway": where it may be there already, someone must look first.
        hint = "".join(f"; {unsure_action(state, p) if state is not None else republish_once_looked(post_id, p)}"
                       for p, why in skipped.items() if why == MAY_HAVE_GONE_OUT)
    else:
        hint = "" if forced else f"{PUBLISH_ANYWAY}, use POST /posts/{post_id}/republish"
    return line + hint


def queued_behind(state: PostState, max_attempts: int, now: datetime,
                  backoff: tuple[float, float] = DEFAULT_BACKOFF, lease_s: float = DEFAULT_LEASE_S) -> str | None:
    """What a command not decided yet waits for, when the post's latest command still retries a platform by itself
    (a rate limit's wait, the service's own backoff, an automatic attempt under way): the post's commands run in
    order, so it is handled after those retries; once they are late (`AUTOMATIC_RETRY_LATE` past the latest the
    handler makes them, or, for an attempt under way, past its lease `lease_s`), it says so. None otherwise."""
    due = automatic_retries(state, max_attempts)
    waits = {p: at for p, at in due.items() if at is not None and at > now}
    if waits:
        platform, at = max(waits.items(), key=lambda item: item[1])
        return (f"queued behind the automatic retry of {PLATFORM_LABELS[platform]} at "
                f"{at.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC (the platform's own wait): handled after it")
    latest = state.latest_command()
    if latest is None:
        return None
    expected = automatic_retry_deadline(state, max_attempts, *backoff)
    for platform in state.targeted:
        running = state.in_flight(platform)
        if running is None or running.command_id != latest.command_id or not (running.is_retry or running.forced) \
                or attempts_by(state, latest.command_id, platform)[0] is running:
            continue
        if running.lookup_error is not None:
            # Not late: its outcome is unknown, and the post says what to check (or resolve).
            return (f"queued behind {PLATFORM_LABELS[platform]}'s automatic retry, whose outcome is not known yet "
                    "(the post says what to check): handled after it")
        expected[platform] = running.started_at + timedelta(seconds=lease_s)
    waited = [p for p in state.targeted if p in expected]
    if not waited:
        # The post's latest command still publishing a platform (a first publish, an Instagram container that takes
        # its time): this one is handled once that has its result, and its answer is not the old results' doing.
        under_way = {p: running for p in state.targeted if (running := state.in_flight(p)) is not None
                     and running.command_id == latest.command_id}
        if not under_way:
            return None
        names = " and ".join(PLATFORM_LABELS[p] for p in under_way)
        if any(running.lookup_error is not None for running in under_way.values()):
            # Not under way as far as anyone knows: its outcome is unknown, and the post says what to check.
            return (f"queued behind the publish of {names}, whose outcome is not known yet (the post says what to "
                    "check): handled after it")
        ends = max(running.started_at for running in under_way.values()) + timedelta(seconds=lease_s)
        if now > ends + AUTOMATIC_RETRY_LATE:
            return (f"queued behind the publish of {names}, overdue since {ends.astimezone(UTC):%Y-%m-%d %H:%M:%S} "
                    "UTC (the service may be away or behind): handled after it")
        return (f"queued behind the publish of {names} {UNDER_WAY_NOTE}, which goes out with the "
                "content it has, its automatic retries too: handled after it, and the results shown until then are "
                "the earlier ones")
    current = [p for p in waited if now <= expected[p] + AUTOMATIC_RETRY_LATE]
    if not current:
        # Still behind them, but the service has not made them in time: said, rather than "publishing".
        names = " and ".join(PLATFORM_LABELS[p] for p in waited)
        since = min(expected[p] for p in waited).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        return (f"queued behind the automatic retries of {names}, overdue since {since} UTC (the service may be away "
                "or behind): handled after them")
    names = " and ".join(PLATFORM_LABELS[p] for p in current)
    left = max(max(1, max_attempts - len(attempts_by(state, latest.command_id, p))) for p in current)
    return (f"queued behind the automatic retries of {names} (the service tries again by itself, up to {left} more "
            f"time{'s' if left > 1 else ''}): handled after them")


def _created_by_another(state: PostState | None, command: Command) -> bool:
    """Whether `command` publishes a new post that another command created (the handler refuses it)."""
    return (isinstance(command, PublishRequested) and state is not None
            and state.submitted_by is not None and state.submitted_by != command.command_id)


def _overtaken(state: PostState, command: Command) -> str | None:
    """Why a forced republish publishes nothing because the post was published again after it was asked for: as the
    handler will decide it, or as it decided it (the same request sent again is refused the same way)."""
    recorded = state.commands.get(command.command_id)
    if recorded is not None:
        return recorded.note.split(": ", 1)[-1] if OVERTAKEN in recorded.skipped.values() else None
    return republished_since_asked(state, command)


def _another_body(state: PostState, command: PublishRequested) -> bool:
    """Whether the publish that created `state` under `command`'s id had another body than `command`.

    Told by the decided command's fingerprint where there is one: the post's content is the latest (a retry may
    have corrected it since), not the one the request carried.
    """
    recorded = state.commands.get(command.command_id)
    if recorded is not None and recorded.fingerprint is not None:
        return reuses_command_id(state, command)
    return (state.content, state.publish_target, state.account) != (
        command.content, command.publish_target, command.account)


# Where each platform's posts are: a permalink elsewhere is no post of it.
POST_HOSTS: dict[str, tuple[str, ...]] = {"facebook": ("facebook.com", "fb.com", "fb.me"),
                                          "instagram": ("instagram.com", "instagr.am")}


def found_post_problem(body: ResolveBody, page_id: str | None) -> dict[str, Any] | None:
    """What makes an operator's word on the post found unlikely to name it (a 422's error), or None: a permalink off
    the platform or with a user name and password in it, a Facebook post id of another Page than the account's."""
    if body.permalink is not None:
        parts = urlsplit(body.permalink.strip())
        host = (parts.hostname or "").lower()
        label = PLATFORM_LABELS[body.platform]
        if parts.username is not None or parts.password is not None:
            return {"loc": ["body", "permalink"], "type": "value_error",
                    "msg": f"a {label} permalink has no user name or password: give the post's address as {label} "
                           "shows it"}
        if not any(host == known or host.endswith("." + known) for known in POST_HOSTS[body.platform]):
            return {"loc": ["body", "permalink"], "type": "value_error",
                    "msg": f"{host!r} is not {label}'s: give the post's address on {POST_HOSTS[body.platform][0]}"}
    made = body.platform_post_id
    if body.platform == "facebook" and made is not None and page_id and re.fullmatch(r"\d+_\d+", made) and \
            not made.startswith(f"{page_id}_"):
        # A Page's post id starts with the Page's own id.
        return {"loc": ["body", "platform_post_id"], "type": "value_error",
                "msg": f"{made} is a post of Page {made.partition('_')[0]}, not of the account's Page {page_id}: "
                       "check the id"}
    return None


def _check_same_command(state: PostState, command: Command) -> None:
    """A command id the post has on record is a resent request only with the same body; else 409.

    Answering the earlier command's result would drop this one (a retry carrying a fixed image URL)
    without a word.
    """
    if reuses_command_id(state, command):
        recorded = state.commands[command.command_id]
        raise HTTPException(409, f"command {command.command_id} was already used for another command on post "
                                 f"{state.post_id} ({recorded.command_type}): use a new command_id")


def _check_url(value: str | None, loc: list[str]) -> None:
    """422 for an address no platform could fetch (no host, a bad port, a line break)."""
    if value is not None and (problem := url_problem(value)) is not None:
        raise HTTPException(422, [{"loc": loc, "type": "value_error", "msg": problem}])


def clock_time(at: datetime, now: datetime) -> str:
    """A time to come or just gone, as the pages say it: the time of day, with its date when that is not today's (a
    platform's wait can run to the next day)."""
    at = at.astimezone(UTC)
    return at.strftime("%H:%M:%S UTC" if at.date() == now.astimezone(UTC).date() else "%Y-%m-%d %H:%M:%S UTC")


# A content field as a refusal names it.
_SAID_AS = {"caption": "caption", "image_url": "image URL", "link": "link"}


def retry_note(state: PostState, times: AutomaticRetries, now: datetime) -> str:
    """The retry button's note ("Note: Will only retry Instagram"), and, where the post's own automatic retry is still
    to come (a platform's wait, or the service's backoff), that a retry sent now runs after it: the post's commands run
    in order, so a platform that automatic retry publishes is not published by this one."""
    line = retry_preview(state)
    if not times.due:
        return line

    def when(platform: Platform) -> tuple[datetime, str]:
        at, by = times.due[platform], times.by.get(platform)
        if at is not None and at > now:
            return at, f"at {clock_time(at, now)} (the platform's own wait)"
        if by is not None and by > now:
            return by, f"by {clock_time(by, now)}"
        if at is not None:
            return at, f"due at {clock_time(at, now)}"  # late: the page says it is overdue
        return now, "in a moment"

    platform = max(times.due, key=lambda p: when(p)[0])
    note = (f"{line}, after the automatic retry of {PLATFORM_LABELS[platform]} {when(platform)[1]}: a post's retries "
            "run in turn")
    again = [p for p in retry_targets(state) if p in times.due]
    if again:
        names = " and ".join(PLATFORM_LABELS[p] for p in again)
        note += f", and it retries {names} only if {'their' if len(again) > 1 else 'its'} automatic retry fails"
    return note


def _check_urls(content: PostContent, kept: PostContent | None = None) -> None:
    """422 for an address of `content` no platform could fetch, but one as the post has it (`kept`)."""
    for field in ("image_url", "link"):
        if kept is None or getattr(content, field) != getattr(kept, field):
            _check_url(getattr(content, field), ["body", "content", field])


def _check_caption(caption: str | None, loc: tuple[str, ...] = ("body", "content", "caption")) -> None:
    """422 for a caption (or another text kept with the post, a republish's reason) holding a control character
    (other than a tab or a line break): no platform shows one, and the post's page and lists would carry it as it
    is."""
    if (problem := text_problem(caption or "")) is not None:
        raise HTTPException(422, [{"loc": list(loc), "type": "value_error", "msg": problem}])


def _check_fits_target(content: PostContent, target: PublishTarget | None, *,
                       publishing: PublishTarget | None = None) -> None:
    """422 for content the post's `target` platforms cannot take (`schemas.commands.content_problem`)."""
    if (problem := content_problem(content, target, publishing=publishing)) is not None:
        raise HTTPException(422, [{"loc": ["body", "content"], "type": "value_error", "msg": problem}])


# FastAPI's whole answer to a body that `json.loads` failed on other than for its syntax.
UNPARSED_BODY = "There was an error parsing the body"


def _errors(exc: ValidationError | RequestValidationError, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """What is wrong, field by field; never the input itself (it may be a token)."""
    raw = exc.errors(include_url=False, include_input=False) if isinstance(exc, ValidationError) else exc.errors()
    # A field's name is the client's own where it is an unknown one: scrubbed like any text an answer repeats.
    return [{"loc": [*prefix, *(scrub(part) if isinstance(part, str) else part for part in error.get("loc", ()))],
             "type": error.get("type", "value_error"),
             # pydantic leads a validator's own words with its error type: the words say it alone.
             "msg": scrub(str(error.get("msg", "invalid")).removeprefix("Value error, "))} for error in raw]


def _said_json(content_type: str | None) -> bool:
    """Whether FastAPI reads a body sent with `content_type` as JSON (a body without one it does not)."""
    if not content_type:
        return False
    header = email.message.Message()
    header["content-type"] = content_type
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def unprocessable(exc: ValidationError, prefix: tuple[str, ...] = ("body",)) -> HTTPException:
    return HTTPException(422, _errors(exc, prefix))


# --------------------------------------------------------------------------------------------- wiring


def _sender(producer: AsyncProducer | Producer) -> CommandSender:
    if isinstance(producer, AsyncProducer):
        return producer.send

    async def send(topic: str, key: str, value: bytes) -> None:
        # confluent-kafka's flush blocks: keep it off the event loop. Not longer than a caller would wait.
        await asyncio.to_thread(deliver, producer, topic, key, value, SEND_TIMEOUT_S)

    return send


def same_secret(given: str, expected: str) -> bool:
    """Compared in constant time, as bytes: `hmac.compare_digest` refuses text with a character beyond ASCII."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def api_key_matches(settings: Settings, presented: str | None) -> bool:
    if not presented:
        return False
    return same_secret(presented, settings.api_key.get_secret_value())


def service_key_named(settings: Settings, token: str) -> str | None:
    """Which of the service's own keys `token` is ("API key", "secret key"), if it is one: never an account's token."""
    if api_key_matches(settings, token):
        return "API key"
    if token and same_secret(token, settings.secret_key.get_secret_value()):
        return "secret key"
    return None


# The ways the key is sent, declared as FastAPI's security schemes so that the OpenAPI document (and /docs'
# "Authorize") names them; the key itself is read by `presented_key`, as the body limit reads it before the body.
KeyHeader = Annotated[str | None, Security(APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, scheme_name="ApiKey",
    description="The service's API key (SMARTRETRY_API_KEY)"))]
KeyBearer = Annotated[HTTPAuthorizationCredentials | None, Security(HTTPBearer(
    auto_error=False, scheme_name="Bearer", description="The API key, as a bearer token"))]


def _no_account(post_id: str) -> dict[str, Any]:
    """The refusal of a retry of a post imported without an account that names none."""
    return {"loc": ["body", "account"], "type": "missing",
            "msg": f"post {post_id} has no account (it was imported without one): name the account to publish it with"}


def presented_key(request: Request) -> str | None:
    key = request.headers.get(API_KEY_HEADER)
    if key:
        return key
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def create_app(settings: Settings, stores: Stores, producer: AsyncProducer | Producer | None = None) -> FastAPI:
    """The API (and the post pages under /ui). No connection is made until the app starts.

    `producer`: an `AsyncProducer` (started here if it is not yet), a confluent `Producer`, or None for
    one the app makes from `settings.kafka_bootstrap_servers` and closes when it stops.
    """
    from smartretry import pages

    holder: dict[str, Any] = {}

    async def send(topic: str, key: str, value: bytes) -> None:
        await holder["send"](topic, key, value)

    metrics = ServiceMetrics(settings, stores)
    front = FrontDoor(settings, stores, send,
                      on_accepted=lambda command: metrics.commands_accepted.labels(command.type).inc())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        owned: AsyncProducer | None = None
        if producer is None:
            if not settings.kafka_bootstrap_servers:
                raise RuntimeError("the API needs a Kafka broker: set KAFKA_BOOTSTRAP_SERVERS")
            # A command not delivered when its request gives up waiting is never delivered later (the 503 says to
            # send it again, and a caller who sends it with new ids would publish twice).
            owned = AsyncProducer(settings.kafka_bootstrap_servers,
                                  **{"message.timeout.ms": int(SEND_TIMEOUT_S * 1000)})
            await owned.start()
            holder["send"] = owned.send
        else:
            if isinstance(producer, AsyncProducer) and not producer.started:
                await producer.start()
            holder["send"] = _sender(producer)
        try:
            yield
        finally:
            metrics.close()
            if owned is not None:
                await owned.close()

    app = FastAPI(
        title="Smart-retry publishing",
        version="1",
        summary="Publish posts to Facebook and Instagram; retry only the platform that failed.",
        lifespan=lifespan,
    )
    app.state.front = front

    def require_api_key(request: Request, _key: KeyHeader = None, _bearer: KeyBearer = None) -> None:
        if not api_key_matches(settings, presented_key(request)):
            raise HTTPException(401, WRONG_KEY, headers={"WWW-Authenticate": "Bearer"})

    authorized = [Depends(require_api_key)]

    async def _database_away(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DBAPIError)
        # One line, not a traceback per request while the database is away; `/readyz` says when it is back.
        why = database_unreachable(exc)
        log.error("%s %s: %s", request.method, request.url.path, database_unreachable(exc, for_the_log=True))
        detail = f"{why}: try again shortly" + ("" if database_busy(exc) else " (GET /readyz says when it is back)")
        if request.url.path.startswith("/ui"):
            return PlainTextResponse(f"The service cannot read its posts just now: {why}. Reload in a moment.",
                                     status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})

    for away in DATABASE_AWAY:
        app.add_exception_handler(away, _database_away)

    # Registered for Starlette's class, which FastAPI raises for a body it cannot read (its docs do the same).
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == UNPARSED_BODY:
            # A body FastAPI could not read as JSON for a reason of Python's (not UTF-8, nested or a number too deep
            # or long for it): said as the commands topic says it.
            try:
                json_object(await request.body(), "request body")
            except DecodeError as problem:
                return JSONResponse({"detail": problem.reason}, status_code=400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _errors(exc)
        if any(error["loc"] == ["body"] and error.get("type") == "missing" for error in errors):
            # "Field required" of the body itself would read as a field of it missing.
            errors = [{"loc": ["body"], "type": "missing",
                       "msg": "the body is missing: send a JSON object, with Content-Type: application/json (its "
                              "fields are in /docs)"}]
        elif any(error["loc"] == ["body"] for error in errors) and not _said_json(request.headers.get("content-type")):
            # Read as JSON only when its Content-Type says JSON (application/json, or application/...+json): a form,
            # plain text or no type at all is not, and "Input should be a valid dictionary" would not say why.
            errors = [{"loc": ["body"], "type": "json_required",
                       "msg": "the body must be JSON, sent with Content-Type: application/json"}]
        return JSONResponse({"detail": errors}, status_code=422)

    def answer(accepted: Accepted) -> JSONResponse:
        headers = {"Location": f"/posts/{accepted.command.post_id}"} if accepted.status_code == 202 else None
        return JSONResponse(accepted.response.to_document(), status_code=accepted.status_code, headers=headers)

    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "Every platform the command chose has a result (the product note's response)"},
        202: {"description": "Accepted; results not all in yet. `location` says where to look"},
        401: {"description": "Missing or wrong API key"},
        404: {"description": "Unknown post"},
        409: {"description": "Refused: the post exists, or there is nothing to retry"},
        422: {"description": "Invalid request: `detail` says what is wrong"},
    }

    @app.post("/posts", dependencies=authorized, response_model=PublishResponse, responses=responses,
              tags=["posts"], summary="Publish a post")
    async def publish_post(body: PublishBody) -> JSONResponse:
        return answer(await front.publish(body))

    @app.post("/posts/{post_id}/retry", dependencies=authorized, response_model=PublishResponse,
              responses=responses, tags=["posts"], summary="Retry only the platforms that failed")
    async def retry_post(post_id: PostId, body: RetryBody | None = None) -> JSONResponse:
        return answer(await front.retry(post_id, body, forced=False))

    @app.post("/posts/{post_id}/republish", dependencies=authorized, response_model=PublishResponse,
              responses=responses, tags=["posts"], summary="Publish again, even where it succeeded")
    async def republish_post(post_id: PostId, body: RepublishBody) -> JSONResponse:
        return answer(await front.retry(post_id, body, forced=True, seen_attempts=body.seen_attempts))

    @app.post("/posts/{post_id}/resolve", dependencies=authorized, response_model=PublishResponse,
              responses=responses, tags=["posts"],
              summary="Say whether an attempt the service cannot settle itself went out on the platform")
    async def resolve_attempt(post_id: PostId, body: ResolveBody) -> JSONResponse:
        return answer(await front.resolve(post_id, body))

    @app.get("/posts/{post_id}", dependencies=authorized, tags=["posts"],
             summary="A post's insights document, needed actions, retry preview and history")
    async def read_post(post_id: PostId, command_id: Annotated[str | None, Query(
            pattern=ID_PATTERN.pattern, description="Also say whether this command has all its results")] = None,
                        within: Annotated[float, Query(ge=0, le=MAX_PLATFORM_WAIT_S, description=(
                            "Seconds the caller still waits for the command: it is `held` only where what remains "
                            "waits on a platform's own time beyond them"))] = 0.0,
                        ) -> dict[str, Any]:
        state = await front.state_of(post_id)
        detail = post_detail(state, settings.max_automatic_attempts, await front.token_renewed_at(state),
                             settings.backoff, front.clock(), settings.attempt_lease_seconds)
        if command_id is not None:
            settled = command_settled(state, command_id, settings.max_automatic_attempts)
            # Not settled, but left to the platforms' own waits: nothing more comes of it for now (the CLI stops
            # waiting), and its answer says when.
            held = not settled and held_by_platform_waits(state, command_id, settings.max_automatic_attempts,
                                                          front.clock() + timedelta(seconds=within))
            response = publish_response(state, command_id) if command_id in state.commands else None
            if response is not None and held:
                response = response.model_copy(update={
                    "note": platform_waits(state, settings.max_automatic_attempts), "pending": True})
            elif response is not None and not settled:
                # Its automatic retry to come, say: not final, though the post is failed for now.
                response = response.model_copy(update={"pending": True})
            record = state.commands.get(command_id)
            # A retry (or republish) decided to publish nothing: refused, as the POST that saw it decided answers 409.
            refused = nothing_to_publish(record.note, record.skipped, post_id, forced=record.forced, state=state) \
                if record is not None and not record.platforms and record.command_type in REPUBLISHING else None
            # A refused one has no answer of its own: the post's results are another command's (its 409 says so).
            detail["command"] = {"command_id": command_id, "settled": settled, "held": held, "refused": refused,
                                 "response": response.to_document() if response is not None and refused is None
                                 else None}
        return detail

    @app.get("/posts", dependencies=authorized, tags=["posts"], summary="Posts, most recently updated first")
    async def list_posts(
        status: PostStatus | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=400, description=(
            "The `next_cursor` of the page before: the next page, with no post repeated. A post updated while "
            "you page moves to the top of the list: a new first page shows it, this pass does not"))] = None,
        offset: Annotated[int, Query(ge=0, le=MAX_LIST_OFFSET, description=(
            "Posts to skip (posts updated while paging by offset can repeat); prefer `cursor`"))] = 0,
    ) -> dict[str, Any]:
        after = None
        if cursor is not None:
            try:
                after = list_position(cursor)
            except ValueError as exc:
                raise HTTPException(422, [{"loc": ["query", "cursor"], "type": "value_error",
                                           "msg": str(exc)}]) from None
        # One more than asked: whether there is a next page.
        states = await asyncio.to_thread(stores.projection.list_posts, status, limit + 1, offset, after)
        page = states[:limit]
        return {"posts": [post_summary(s, settings.max_automatic_attempts, settings.backoff, front.clock())
                          for s in page],
                "status": status,
                "limit": limit, "offset": offset,
                "next_cursor": list_cursor(page[-1]) if len(states) > limit else None}

    @app.put("/accounts/{account}/token", dependencies=authorized, tags=["accounts"],
             summary="Re-authenticate an account (the token is stored encrypted and never shown again)")
    async def set_token(account: AccountId, body: TokenBody) -> dict[str, Any]:
        return {**await front.store_token(account, body), "token_set": True}

    @app.get("/accounts", dependencies=authorized, tags=["accounts"], summary="Accounts (never their tokens)")
    async def list_accounts() -> dict[str, Any]:
        return {"accounts": await asyncio.to_thread(stores.credentials.accounts)}

    @app.get("/healthz", tags=["operations"], summary="The process is up (no API key needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", dependencies=authorized, tags=["operations"], summary="Broker and database reachable")
    def readyz() -> JSONResponse:
        checks = {"database": _check(lambda: _ping_database(stores)),
                  "broker": _check(lambda: _ping_broker(settings))}
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    @app.get("/metrics", dependencies=authorized, tags=["operations"], response_class=PlainTextResponse,
             summary="Prometheus metrics")
    def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.include_router(pages.ui_router(front, settings))
    app.mount("/ui/static", pages.static_files(), name="static")

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    @app.middleware("http")
    async def _key_before_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # FastAPI reads and parses a body before any dependency runs, `require_api_key` too: a request that sends one
        # to the API without the key is refused before any of it is read. (The pages check their session first.)
        if request.method not in ("GET", "HEAD") and not request.url.path.startswith("/ui/") and \
                not api_key_matches(settings, presented_key(request)):
            # Closed after the answer: the body it was sending is not taken.
            return JSONResponse({"detail": WRONG_KEY}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer", "Connection": "close"})
        return await call_next(request)

    @app.middleware("http")
    async def _pages_not_cached(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # A post's page is its state now, and shown to a signed-in browser only: never kept (Back after signing
        # out, a shared machine) nor shown stale from a cache.
        response = await call_next(request)
        if request.url.path.startswith("/ui") and not request.url.path.startswith("/ui/static"):
            response.headers["Cache-Control"] = "no-store"
        return response

    return app


def _check(probe: Callable[[], None]) -> str:
    try:
        probe()
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


def _ping_database(stores: Stores) -> None:
    with stores.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _ping_broker(settings: Settings) -> None:
    if not settings.kafka_bootstrap_servers:
        raise RuntimeError("no broker configured")
    with admin_client(settings.kafka_bootstrap_servers) as admin:
        topics = admin.list_topics(timeout=3).topics
    if settings.topics.commands not in topics:
        raise RuntimeError(f"topic {settings.topics.commands} is missing")


# --------------------------------------------------------------------------------------------- serving


def reachable_host(host: str) -> str:
    """Where a browser on this machine reaches a server listening on `host`: one on every interface (`0.0.0.0`,
    `::`) at the loopback address; an IPv6 address in brackets, as a URL writes it."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class ApiServer:
    """A uvicorn server running in a background thread: `.url`, `.stop()`, and usable as a context manager."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
        self.server = server
        self.thread = thread
        self.url = f"http://{reachable_host(host)}:{port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    # No websockets and no access log: the API has no websocket routes, and request lines are noise.
    # No logging set-up of uvicorn's own: its records (an exception in a request) go to the process's
    # handlers, which scrub secrets and write the format the settings ask for.
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, ws="none",
                          lifespan="on", log_config=None)


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 8080, timeout: float = 15.0) -> ApiServer:
    """Starts `app` with uvicorn in a daemon thread and returns once it accepts connections."""
    server = uvicorn.Server(_config(app, host, port))
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the API did not start on {host}:{port} (port taken?)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the API did not start on {host}:{port} within {timeout}s")
        time.sleep(0.02)
    return ApiServer(server, thread, host, port)


def start_api(settings: Settings, stores: Stores, producer: AsyncProducer | Producer | None = None) -> ApiServer:
    """For `smartretry run`: the API and pages on settings.api_host:api_port, in a thread of this process."""
    server = serve_in_thread(create_app(settings, stores, producer), settings.api_host, settings.api_port)
    log.info("API and pages at %s (post pages: %s/ui/posts)", server.url, server.url)
    return server


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its caller, whose loop it runs on."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, stores: Stores, stop: asyncio.Event,
                producer: AsyncProducer | Producer | None = None) -> None:
    """For an asyncio `run`: serves the API and pages on the running loop until `stop` is set."""
    server = _QuietServer(_config(create_app(settings, stores, producer), settings.api_host, settings.api_port))
    task = asyncio.get_running_loop().create_task(server.serve())
    stopping = asyncio.get_running_loop().create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopping.cancel()
    await task


__all__ = [
    "ApiServer", "FrontDoor", "PublishBody", "RepublishBody", "RetryBody", "TokenBody", "command_settled",
    "create_app", "post_detail", "serve", "serve_in_thread", "start_api",
]
