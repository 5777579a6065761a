"""The projection of one post: the seed's insights document plus what the retry decision needs."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.commands import PostContent
from schemas.common import EARLIER_CONTAINER_UNKNOWN, ErrorKind, Platform, PublishTarget, StateTime, platforms_of
from schemas.events import PlatformError
from schemas.insights import PostInsights, PostStatus, PublishResult

# The content fields each platform's post shows: Instagram publishes a caption and an image, never a link.
PUBLISHED_FIELDS: dict[Platform, tuple[str, ...]] = {"facebook": ("caption", "image_url", "link"),
                                                     "instagram": ("caption", "image_url")}


class AttemptState(BaseModel):
    """One publish attempt of one platform, and what came of it so far."""

    model_config = ConfigDict(extra="forbid")

    attempt_id: str
    platform: Platform
    attempt_number: int
    command_id: str
    is_retry: bool = False
    forced: bool = False
    reason: str = ""
    started_at: StateTime
    container_id: str | None = None
    # The platform's post it made, once it succeeded: what a later attempt's look-up must never take for its own.
    platform_post_id: str | None = None
    # Instagram's address of that post (its media id does not give it), so an earlier post a republish left in place
    # can be opened. Left out of the stored state while None, so an attempt without one is stored as before.
    permalink: str | None = Field(default=None, exclude_if=lambda link: link is None)
    # None while the attempt has no result (in flight, or its worker died: to be resolved).
    success: bool | None = None
    recovered: bool = False
    # The operator's command that said what came of the attempt (`ResolveAttemptRequested`), if one did.
    resolved_by: str | None = None
    # The operator's command that found this failed attempt's container (Instagram's) not published, where Meta could
    # not say: it is not asked about again before the platform is published, and the attempt keeps its own failure.
    # Left out of the stored state while None.
    container_cleared_by: str | None = Field(default=None, exclude_if=lambda cleared: cleared is None)
    error_kind: ErrorKind | None = None
    # What the platform said, with a failed result: the attempt's history keeps it after a later result replaces this
    # one in the insights document.
    error: str | None = None
    # The platform's own wait before trying again, with a failed result that gave one (a rate limit's).
    retry_after_s: float | None = None
    finished_at: StateTime | None = None
    # Why the platform could not say whether this attempt, left without a result, went out (the handler
    # keeps asking). Kept once the result is in, as the attempt's history.
    lookup_error: PlatformError | None = None


class CommandRecord(BaseModel):
    """A command the handler has decided, kept so a redelivery of it has no effect."""

    model_config = ConfigDict(extra="forbid")

    command_id: str
    command_type: str
    platforms: list[Platform]
    skipped: dict[Platform, str] = Field(default_factory=dict)
    is_retry: bool = False
    forced: bool = False
    decided_at: StateTime
    note: str = ""
    fingerprint: str | None = None


class PostState(BaseModel):
    """Everything folded from a post's events. `document` is the seed's insights document."""

    model_config = ConfigDict(extra="forbid")

    post_id: str
    publish_target: PublishTarget | None = None
    content: PostContent | None = None
    account: str | None = None
    document: PostInsights = Field(default_factory=PostInsights)
    attempts: dict[str, AttemptState] = Field(default_factory=dict)
    commands: dict[str, CommandRecord] = Field(default_factory=dict)
    # Event ids already applied: a redelivered event changes nothing.
    applied_event_ids: list[str] = Field(default_factory=list)
    # What the user has to do, per platform: before a retry of a failed one can succeed ("fix the image
    # URL"), or before the service can find out whether an interrupted attempt went out ("re-authenticate
    # Facebook").
    needed_action: dict[Platform, str] = Field(default_factory=dict)
    legacy: bool = False
    created_at: StateTime | None = None
    updated_at: StateTime | None = None
    # The command that submitted the post: its redelivery resumes the first publish instead of being refused.
    submitted_by: str | None = None
    # What an imported old-system document said, used only where the events have nothing to say yet.
    legacy_status: PostStatus | None = None
    legacy_error_message: str | None = None
    legacy_post_url: str | None = None
    # Results the old system stored stand for at least one attempt each; counted in the retry history.
    legacy_attempts: dict[Platform, int] = Field(default_factory=dict)
    # The targeted platforms an imported post may have gone out on, as far as its old system's document tells: it was
    # publishing the post, or says when the post went out without a platform's success to show for it. A retry leaves
    # them alone (`fold.may_have_gone_out`); only someone who looked republishes them. Set by every import of a post
    # not published here yet (empty when none); None for every other post, and left out of its stored state, and for
    # an import folded by a version that did not record it (`may_have_gone_out` then reads the old document's word).
    legacy_unsure: list[Platform] | None = Field(default=None, exclude_if=lambda unsure: unsure is None)
    # Fields of the imported content a token was taken out of (`projections.imported`): a retry publishing one of
    # them must correct it first.
    taken_out: list[str] = Field(default_factory=list)
    # The content each platform's post went out with, kept once a retry corrected the post's content without publishing
    # that platform again (its post keeps what it went out with): `published_with` says where it differs. Left out of
    # the stored state while empty, so a post no correction touched is stored as before.
    published_content: dict[Platform, PostContent] = Field(default_factory=dict, exclude_if=lambda kept: not kept)

    @property
    def status(self) -> PostStatus:
        return self.document.status

    def attempts_of(self, platform: Platform) -> list[AttemptState]:
        return sorted((a for a in self.attempts.values() if a.platform == platform), key=lambda a: a.attempt_number)

    def containers_to_ask(self, platform: Platform) -> list[tuple[str, datetime]]:
        """The containers (with their attempts' start) of the platform's attempts that failed since its latest
        success, newest first: one may have been published all the same, and is asked before a new one is made."""
        return [(attempt.container_id or "", attempt.started_at) for attempt in self.earlier_containers(platform)]

    def earlier_containers(self, platform: Platform) -> list[AttemptState]:
        """The attempts of `containers_to_ask`, newest first: those that failed since the platform's latest success with
        a container that no operator has found not published."""
        asked: list[AttemptState] = []
        for attempt in reversed(self.attempts_of(platform)):
            if attempt.success:
                break
            if attempt.success is False and attempt.container_id is not None and attempt.container_cleared_by is None:
                asked.append(attempt)
        return asked

    def in_flight(self, platform: Platform) -> AttemptState | None:
        """The platform's latest attempt if it has no result yet."""
        attempts = self.attempts_of(platform)
        return attempts[-1] if attempts and attempts[-1].success is None else None

    @property
    def targeted(self) -> tuple[Platform, ...]:
        """The platforms the post was submitted for (Facebook first); none before it is submitted."""
        return platforms_of(self.publish_target) if self.publish_target is not None else ()

    def latest_result(self, platform: Platform) -> PublishResult | None:
        """The platform's merged result in the insights document: its newest one."""
        return next((r for r in self.document.insights.publish_results if r.platform == platform), None)

    def recorded_on_word(self, platform: Platform) -> bool:
        """Whether the platform's published post is one an operator recorded (`smartretry resolve`), not one the
        platform's answers named: its address, when missing, was not given then, not left untold by the platform."""
        result = self.latest_result(platform)
        return result is not None and result.success and any(
            a.resolved_by is not None and a.success and a.platform_post_id == result.post_id
            for a in self.attempts_of(platform))

    def settled_by(self, command_id: str) -> AttemptState | None:
        """The attempt an operator's resolution (`command_id`) settled, if it settled one (each settles one): its
        result, or what became of its container (`container_cleared_by`)."""
        return next((a for a in self.attempts.values() if command_id in (a.resolved_by, a.container_cleared_by)), None)

    def held_back_by(self, platform: Platform) -> AttemptState | None:
        """The earlier attempt whose container holds the platform back: its latest failure says Meta says that container
        does not exist and the account's media cannot tell whether it went out (`EARLIER_CONTAINER_UNKNOWN`), and every
        new attempt meets it again until it is a day old. Only an operator who checks the account settles it."""
        result = self.latest_result(platform)
        if result is None or result.success or self.in_flight(platform) is not None:
            return None
        error = result.error or ""
        if not error.startswith(EARLIER_CONTAINER_UNKNOWN):
            return None
        named = error.removeprefix(EARLIER_CONTAINER_UNKNOWN).split(" ", 1)[0]
        return next((a for a in self.earlier_containers(platform) if a.container_id == named), None)

    def published_with(self) -> dict[Platform, PostContent]:
        """The content each platform's live post went out with, where what that platform publishes of it (Instagram: no
        link) is not the post's content now."""
        return {platform: kept for platform, kept in self.published_content.items()
                if (self.content is None or any(getattr(kept, name) != getattr(self.content, name)
                                                for name in PUBLISHED_FIELDS[platform]))
                and (result := self.latest_result(platform)) is not None and result.success}

    def latest_command(self) -> CommandRecord | None:
        """The command decided last (commands are decided in order, one post at a time)."""
        return next(reversed(self.commands.values()), None)


def empty_state(post_id: str, at: datetime | None = None) -> PostState:
    return PostState(post_id=post_id, created_at=at, updated_at=at)
