"""Events on the post-events topic: the source of truth that the insights projection is folded from."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Strict

from schemas.commands import PostContent
from schemas.common import ErrorKind, Frozen, Identifier, Platform, PublishTarget, Timestamp

EVENT_SCHEMA_VERSION = 1

CommandType = Literal["PublishRequested", "RetryRequested", "ForceRepublishRequested", "ResolveAttemptRequested"]


class EventBase(Frozen):
    """What every event carries: its schema version, a unique id, the post it belongs to and when."""

    # Strict and bounded: pydantic alone then refuses what the envelope refuses ("1", 1.0, true, a
    # version this service does not read), so `schemas.envelope` can decode in one pass.
    schema_version: Annotated[int, Strict(), Field(ge=1, le=EVENT_SCHEMA_VERSION)] = EVENT_SCHEMA_VERSION
    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    post_id: Identifier
    occurred_at: Timestamp


class PostSubmitted(EventBase):
    """A post was accepted for publishing: its target, content and account reference (never a token)."""

    type: Literal["PostSubmitted"] = "PostSubmitted"
    command_id: Identifier
    publish_target: PublishTarget
    content: PostContent
    account: Identifier


class CommandDecided(EventBase):
    """The handler decided what a command publishes; recorded so a redelivered command has no effect."""

    type: Literal["CommandDecided"] = "CommandDecided"
    command_id: Identifier
    command_type: CommandType
    platforms: tuple[Platform, ...]
    # Why each targeted platform that is not published was left alone, in words for the log and page.
    skipped: dict[Platform, str] = Field(default_factory=dict)
    is_retry: bool = False
    forced: bool = False
    # Corrected content that this command brought (a retry after fixing the image URL).
    content: PostContent | None = None
    # The account this command gave the post (one imported without an account), from now on.
    account: Identifier | None = None
    note: str = ""
    # `schemas.commands.fingerprint` of the command: a redelivery matches it, a reused id does not.
    fingerprint: str | None = None


class PublishAttempted(EventBase):
    """The handler is about to call a platform; a result, or a recovery check, must follow."""

    type: Literal["PublishAttempted"] = "PublishAttempted"
    platform: Platform
    attempt_id: Identifier
    attempt_number: Annotated[int, Field(ge=1, description=(
        "The platform's attempts at this post so far, this one included: 1 for the first, 2 or more for a retry"))]
    command_id: Identifier = Field(description=(
        "The command that made the attempt. A second or later attempt of one command on the same platform is the "
        "service's own automatic retry (a hiccup or a rate limit met); the first is what the command asked for"))
    is_retry: bool = Field(default=False, description=(
        "Any attempt after the platform's first: a user's retry, a forced republish, or an automatic retry"))
    forced: bool = Field(default=False, description="Made by a forced republish (ForceRepublishRequested)")
    # "first publish", "smart retry", "automatic retry after transient error", "forced republish", ...
    reason: str = Field(default="", description="Why, in words, for people: not to be parsed")


class ContainerCreated(EventBase):
    """A platform-side handle for an attempt (Instagram's media container), kept to resolve unknown outcomes."""

    type: Literal["ContainerCreated"] = "ContainerCreated"
    platform: Platform
    attempt_id: Identifier
    container_id: Annotated[str, Field(min_length=1, max_length=200)]


class PlatformError(Frozen):
    """A classified platform error; `message` reads like the seed's and never holds a token."""

    kind: ErrorKind
    message: Annotated[str, Field(max_length=2000)]
    code: int | None = None
    subcode: int | None = None
    http_status: int | None = None
    # Seconds the platform asks us to wait before trying again (rate limits), when it says.
    retry_after_s: float | None = None


class PlatformResult(EventBase):
    """The outcome of one attempt: the platform's post id and permalink, or a classified error."""

    type: Literal["PlatformResult"] = "PlatformResult"
    platform: Platform
    attempt_id: Identifier
    success: bool
    platform_post_id: str | None = None
    permalink: str | None = None
    error: PlatformError | None = None
    # True when an attempt without a result was resolved by asking the platform, not by publishing.
    recovered: bool = False
    # The `ResolveAttemptRequested` command whose operator said what came of an attempt left without a result.
    resolved_by: Identifier | None = None


class AttemptOutcomeUnknown(EventBase):
    """An attempt without a result (its handler died) whose outcome the platform could not be asked about.

    The attempt stays open: the handler asks again later and publishes the platform again only once the
    platform says the post does not exist. `error` says why it could not ask; an `auth` or `permission`
    error means nothing changes until the account is re-authenticated, and the post says so.
    """

    type: Literal["AttemptOutcomeUnknown"] = "AttemptOutcomeUnknown"
    platform: Platform
    attempt_id: Identifier
    error: PlatformError


class LegacyInsightsImported(EventBase):
    """A post from the old system, imported as it was (with or without `publish_results`)."""

    type: Literal["LegacyInsightsImported"] = "LegacyInsightsImported"
    publish_target: PublishTarget
    content: PostContent | None = None
    account: Identifier | None = None
    # The old document: `insights`, `status`, `error_message`, `post_url` as the old system stored them.
    document: dict[str, Any]


Event = Annotated[
    PostSubmitted | CommandDecided | PublishAttempted | ContainerCreated | PlatformResult | AttemptOutcomeUnknown
    | LegacyInsightsImported,
    Field(discriminator="type"),
]
EVENT_TYPES: dict[str, type[EventBase]] = {
    "PostSubmitted": PostSubmitted,
    "CommandDecided": CommandDecided,
    "PublishAttempted": PublishAttempted,
    "ContainerCreated": ContainerCreated,
    "PlatformResult": PlatformResult,
    "AttemptOutcomeUnknown": AttemptOutcomeUnknown,
    "LegacyInsightsImported": LegacyInsightsImported,
}
