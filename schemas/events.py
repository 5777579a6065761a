"""Events on the post-events topic: the source of truth that the insights projection is folded from."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Strict, field_validator

from schemas.commands import ADDRESS_LIMIT, PostContent
from schemas.common import ErrorKind, Frozen, Identifier, Platform, PublishTarget, Timestamp

EVENT_SCHEMA_VERSION = 1
# The highest attempt number: far more attempts than any post is published with.
MAX_ATTEMPT_NUMBER = 1_000_000

CommandType = Literal["PublishRequested", "RetryRequested", "ForceRepublishRequested", "ResolveAttemptRequested"]


class EventBase(Frozen):
    """What every event carries: its schema version, a unique id, the post it belongs to and when."""

    # Strict and bounded: pydantic alone then refuses what the envelope refuses ("1", 1.0, true, a
    # version this service does not read), so `schemas.envelope` can decode in one pass.
    schema_version: Annotated[int, Strict(), Field(ge=1, le=EVENT_SCHEMA_VERSION)] = EVENT_SCHEMA_VERSION
    event_id: Annotated[str, Field(min_length=1, max_length=200, description=(
        "Unique within its post, not across posts: most are derived from a command_id (`<command_id>:decided`, "
        "`<attempt_id>:result`), and two posts may use the same command_id. An event delivered twice carries the "
        "same one: key on (post_id, event_id) to count it once"))]
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
    platforms: tuple[Platform, ...] = Field(description=(
        "The platforms this command publishes. Empty: it publishes nothing (a retry with nothing left to retry, a "
        "forced republish refused because the post was published again after it was asked for, an operator's "
        "ResolveAttemptRequested, whose word is a PlatformResult with `resolved_by`). A command refused outright "
        "(a retry of a post never published, one naming another account) has no CommandDecided: it is "
        "dead-lettered"))
    skipped: dict[Platform, str] = Field(default_factory=dict, description=(
        "Each targeted platform this command leaves alone, with why, in words for the log and the page: "
        "\"already succeeded\" (a retry's platform whose latest result succeeded), \"still publishing (its last "
        "attempt has no result yet)\" (its latest attempt has no result, or the decision before chose it and has "
        "not attempted it yet), \"published again after this republish was asked for\" (every targeted platform "
        "of a forced republish refused by its `seen_attempts`), \"not asked to be republished\" (a platform a forced "
        "republish's `platforms` leaves out), \"may have gone out under the old system, which kept no result for it\" "
        "(a retry's platform of an imported post that the old system was publishing or says went out, with no result "
        "for it). Those are this version's texts"))
    is_retry: bool = Field(default=False, description=(
        "True for a RetryRequested or ForceRepublishRequested, also one that publishes nothing; false for a "
        "first publish (PublishRequested) and an operator's ResolveAttemptRequested"))
    forced: bool = Field(default=False, description=(
        "True for a ForceRepublishRequested (platforms that succeeded are published too), also one that publishes "
        "nothing"))
    content: PostContent | None = Field(default=None, description=(
        "The corrected content a retry or forced republish carried (a fixed image URL); null when it carried none. "
        "The post publishes it from now on only when this decision publishes something (`platforms` not empty): "
        "otherwise the post keeps the content that went out"))
    account: Identifier | None = Field(default=None, description=(
        "The account a retry or forced republish named, which the post publishes with from now on (a post "
        "imported without one); null when it named none"))
    note: str = Field(default="", description=(
        "The decision in the words the handler logs (\"Publishing to both Facebook and Instagram...\", \"Nothing "
        "to retry: ...\"), for people: not to be parsed. The API gives it as the `note` of a command that "
        "publishes nothing"))
    fingerprint: str | None = Field(default=None, description=(
        "A hash of the command's body (its time and version aside): the same command delivered again matches it; "
        "another command reusing this command_id does not, and is dead-lettered. Not for analytics"))


class PublishAttempted(EventBase):
    """The handler is about to call a platform; a result, or a recovery check, must follow."""

    type: Literal["PublishAttempted"] = "PublishAttempted"
    platform: Platform
    attempt_id: Identifier = Field(description=(
        "Unique within its post, not across posts: derived from the command_id, the platform and attempt_number "
        "(hashed when long; not to be parsed), and two posts may use the same command_id. Join this attempt to "
        "its PlatformResult, ContainerCreated and AttemptOutcomeUnknown on (post_id, attempt_id)"))
    attempt_number: Annotated[int, Field(ge=1, le=MAX_ATTEMPT_NUMBER, description=(
        "The platform's attempts at this post so far, this one included: 1 for the first, 2 or more for a retry. "
        "This service's own attempts only: the first after an imported old-system document is 1, with is_retry "
        "true"))]
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
    attempt_id: Identifier = Field(description=(
        "The attempt (PublishAttempted) this belongs to: join on (post_id, attempt_id), as attempt ids are unique "
        "within a post only"))
    container_id: Annotated[str, Field(min_length=1, max_length=200)]


# The longest text a platform's answer puts in an event (an error's message, a post's id or address).
PLATFORM_TEXT_LIMIT = 2000


class PlatformError(Frozen):
    """A classified platform error; `message` reads like the seed's and never holds a token."""

    kind: ErrorKind
    message: Annotated[str, Field(max_length=PLATFORM_TEXT_LIMIT)]
    code: int | None = Field(default=None, description="Meta's error code, when the platform answered with one")
    subcode: int | None = Field(default=None, description="Meta's error_subcode, when it gave one")
    http_status: int | None = Field(default=None, ge=100, le=999, description=(
        "The HTTP status of the platform's answer; null when none came (a dropped connection, a timeout) or the "
        "service found the failure itself (an account without credentials)"))
    retry_after_s: float | None = Field(default=None, ge=0, allow_inf_nan=False, description=(
        "Seconds to wait before trying again, when known: a rate limit's (from the platform's headers, or until "
        "Instagram's publishing limit has room), or the wait Meta advises for Instagram's temporary publishing error"))


class PlatformResult(EventBase):
    """The outcome of one attempt: the platform's post id and permalink, or a classified error."""

    type: Literal["PlatformResult"] = "PlatformResult"
    platform: Platform
    attempt_id: Identifier = Field(description=(
        "The attempt (PublishAttempted) this belongs to: join on (post_id, attempt_id), as attempt ids are unique "
        "within a post only"))
    success: bool
    # Bounded, as an error's message is: the insights message carries both, and must stay within the broker's 1 MB.
    # The address as long as a command's (an operator's resolution gives one).
    platform_post_id: Annotated[str, Field(max_length=PLATFORM_TEXT_LIMIT)] | None = Field(default=None, description=(
        "The post's id on the platform (Facebook's post id, Instagram's media id), on success"))
    permalink: Annotated[str, Field(max_length=ADDRESS_LIMIT)] | None = Field(
        default=None, description="The post's address on Instagram, on success")
    error: PlatformError | None = None
    recovered: bool = Field(default=False, description=(
        "The result of an attempt whose outcome was unknown (no answer came, or a failure on Meta's side, or its "
        "handler died), found by asking the platform for the post rather than by publishing again: true with "
        "success means the attempt did publish; true without success means the platform had no post of it once "
        "the attempt's lease ran out, so it did not publish (error kind `transient`, no code or http_status; the "
        "service retries it as it retries a transient failure). Counts as that attempt's result, not as another "
        "attempt"))
    resolved_by: Identifier | None = Field(default=None, description=(
        "The ResolveAttemptRequested command of the operator who said what came of an attempt the service could "
        "not settle itself"))


class AttemptOutcomeUnknown(EventBase):
    """An attempt whose outcome is not known yet, and why.

    Recorded when the platform's answer left it open whether the post went out (no answer came, or a failure
    on Meta's side: a 5xx, Meta's codes 1 and 2), and again whenever a look-up of the attempt (after its call,
    or after its handler died) leaves it open for another reason: the platform could not be asked (an expired
    token) or could not tell, or it shows no post yet while the call may still be under way there. Not a
    result: the attempt stays open,
    the handler asks the platform again later and publishes again only once the platform shows no post of
    it; its `PlatformResult` (`recovered` when found by asking) follows. `error` says why the outcome is
    unknown; an `auth` or `permission` error means nothing changes until the account is re-authenticated,
    and the post says so.
    """

    type: Literal["AttemptOutcomeUnknown"] = "AttemptOutcomeUnknown"
    platform: Platform
    attempt_id: Identifier = Field(description=(
        "The attempt (PublishAttempted) this belongs to: join on (post_id, attempt_id), as attempt ids are unique "
        "within a post only"))
    error: PlatformError


# How deep an old document's objects and lists may nest. The old system's documents nest four levels; a deeper one
# is refused at the door, as every place that walks a document (taking tokens out, writing the state) recurses.
MAX_DOCUMENT_DEPTH = 32


def _depth_within(value: Any, limit: int) -> bool:
    """Whether `value` nests no deeper than `limit` levels of objects and lists (walked without recursion)."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return True
    return False


class LegacyInsightsImported(EventBase):
    """A post from the old system, imported as it was (with or without `publish_results`)."""

    type: Literal["LegacyInsightsImported"] = "LegacyInsightsImported"
    publish_target: PublishTarget
    content: PostContent | None = None
    account: Identifier | None = None
    document: dict[str, Any] = Field(description=(
        "The old document: `insights`, `status`, `error_message`, `post_url` as the old system stored them. The "
        "post's earlier results are only here: an import writes no PublishAttempted or PlatformResult for them, "
        "and the API's `attempts_by_platform` counts each imported result as one attempt"))

    @field_validator("document")
    @classmethod
    def _not_too_deep(cls, document: dict[str, Any]) -> dict[str, Any]:
        if not _depth_within(document, MAX_DOCUMENT_DEPTH):
            raise ValueError(f"the document nests deeper than {MAX_DOCUMENT_DEPTH} levels: no old-system document does")
        return document


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
