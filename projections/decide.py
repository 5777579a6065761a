"""The retry decision: from a post's state and a command, which platforms to publish and why (no I/O).

The seed's cases, for a post that targets both platforms:

- first publish: both ("Publishing to both Facebook and Instagram...");
- retry after Facebook failed and Instagram succeeded: Facebook only ("🔄 Smart retry: Publishing only to
  Facebook (Instagram already succeeded)"), and the mirror case for Instagram;
- retry after both failed: both;
- retry after both succeeded: nothing, and the decision says so. Only `ForceRepublishRequested` publishes
  a platform that succeeded (the seed's case 4, "e.g. for testing"), and the decision is marked `forced`.

A platform whose latest attempt has no result is never chosen: its worker may have published before
dying. It is listed in `unresolved` so the handler can ask the platform whether the post exists (and
record the recovered result) before a later command publishes it again. Where the platform cannot say,
an operator's `ResolveAttemptRequested` gives that result instead; it publishes nothing, and is accepted
once the handler has recorded it on the attempt (`resolved_by`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from projections.fold import awaiting_attempt, may_have_gone_out, republish_route
from projections.state import AttemptState, PostState
from schemas.commands import (
    Command,
    ForceRepublishRequested,
    PostContent,
    PublishRequested,
    ResolveAttemptRequested,
    RetryRequested,
    content_problem,
    corrected,
    fields_problem,
    fingerprint,
    says_nothing,
    text_problem,
)
from schemas.common import PLATFORM_LABELS, Platform, platforms_of, target_of
from schemas.events import CommandDecided, CommandType

ALREADY_SUCCEEDED = "already succeeded"
STILL_PUBLISHING = "still publishing (its last attempt has no result yet)"
# A forced republish's platforms, when the post was published again after it was asked for.
OVERTAKEN = "published again after this republish was asked for"
# A platform of the post a forced republish does not name (`ForceRepublishRequested.platforms`).
NOT_ASKED = "not asked to be republished"
# A platform of an imported post that the old system may have published (`fold.may_have_gone_out`): a retry leaves it
# to someone who looks, and republishes it only if it is not there.
MAY_HAVE_GONE_OUT = "may have gone out under the old system, which kept no result for it"


@dataclass(frozen=True)
class Decision:
    """What one command publishes. `platforms` empty with `no_op`, `duplicate_command` or `reject_reason` set."""

    platforms: tuple[Platform, ...] = ()
    # Targeted platforms left alone, with the reason in words ("already succeeded").
    skipped: dict[Platform, str] = field(default_factory=dict)
    is_retry: bool = False
    forced: bool = False
    no_op: bool = False
    duplicate_command: bool = False
    reject_reason: str | None = None
    log_line: str = ""
    # Platforms whose latest attempt has no result: to be checked on the platform, not published blindly.
    unresolved: tuple[Platform, ...] = ()
    # For a redelivered command: the platforms its recorded decision chose but never attempted (the handler
    # died between deciding and attempting). These were never sent to the platform, so they are safe to publish.
    unstarted: tuple[Platform, ...] = ()
    # A retry's or a republish's corrected content over the post's (`schemas.commands.corrected`): published from
    # now on. None: the post's own.
    content: PostContent | None = None
    # The reject reason is about the content (the platforms cannot take it), not the post's state.
    refused_content: bool = False

    @property
    def accepted(self) -> bool:
        """True when the decision is to be recorded (a `CommandDecided`), even one that publishes nothing."""
        return self.reject_reason is None and not self.duplicate_command

    def to_event(self, command: Command, event_id: str, occurred_at: datetime) -> CommandDecided:
        """The `CommandDecided` event that records this decision, so a redelivered command has no effect."""
        command_type: CommandType = command.type
        return CommandDecided(
            event_id=event_id,
            post_id=command.post_id,
            occurred_at=occurred_at,
            command_id=command.command_id,
            command_type=command_type,
            platforms=self.platforms,
            skipped=dict(self.skipped),
            is_retry=self.is_retry,
            forced=self.forced,
            content=self.content,
            account=command.account if isinstance(command, (RetryRequested, ForceRepublishRequested)) else None,
            note=self.log_line,
            fingerprint=fingerprint(command),
        )


def decide(state: PostState | None, command: Command) -> Decision:
    """The platforms `command` publishes to, given the post's current state (see the module docstring)."""
    if state is not None and command.command_id in state.commands:
        return _duplicate(state, command.command_id)
    if isinstance(command, PublishRequested):
        return _first_publish(state, command)
    if state is None or state.publish_target is None:
        return Decision(
            reject_reason=f"post {command.post_id} is unknown: publish it with PublishRequested first",
            log_line=f"Cannot retry post {command.post_id}: it was never published",
        )
    if isinstance(command, ResolveAttemptRequested):
        return _resolution(state, command)
    if command.account is not None and state.account is not None and command.account != state.account:
        # Naming an account is for a post imported without one: moving a post to another account would publish it
        # on another business's Page, next to what its own account already published.
        reason = (f"post {command.post_id} publishes with account {state.account!r}: a retry cannot move it to "
                  f"{command.account!r} (publish a new post with that account instead)")
        return Decision(reject_reason=reason, log_line=f"Refused {command.type} {command.command_id}: {reason}")
    if (overtaken := republished_since_asked(state, command)) is not None:
        # Recorded, publishing nothing, rather than only refused: the same request sent again (a client that timed
        # out) is then that command, answered as it was decided, not a new republish that goes out.
        return Decision(skipped=dict.fromkeys(state.targeted, OVERTAKEN), is_retry=True, forced=True, no_op=True,
                        log_line=f"Refused {command.type} {command.command_id}: {overtaken}")
    if isinstance(command, ForceRepublishRequested) and (unsaid := _unsaid(command.reason)) is not None:
        # What the API answers 422 for, from a command written on Kafka: a republish posts the post again on purpose,
        # and its reason is what the post keeps to say why.
        return Decision(reject_reason=unsaid, log_line=f"Refused {command.type} {command.command_id}: {unsaid}")
    only = command.platforms if isinstance(command, ForceRepublishRequested) else None
    if only is not None and (elsewhere := [p for p in only if p not in state.targeted]):
        reason = (f"post {command.post_id} is not published to {_names(tuple(elsewhere))}: it targets "
                  f"{_names(state.targeted)} only")
        return Decision(reject_reason=reason, log_line=f"Refused {command.type} {command.command_id}: {reason}")
    decision = _republish(state, forced=isinstance(command, ForceRepublishRequested),
                          reason=command.reason if isinstance(command, ForceRepublishRequested) else "", only=only)
    # The correction over the post's content: what is published from now on, and what the decision records (None:
    # the post's own, unchanged).
    content = corrected(state.content, command.content)
    recorded = content if command.content is not None else None
    if decision.no_op:
        if recorded is not None and content != state.content:
            # The post keeps the content that went out: a user who fixed the image URL in vain is told so.
            return replace(decision, content=recorded,
                           log_line=f"{decision.log_line}; the corrected content it carried was not applied")
        return replace(decision, content=recorded)
    if content is None:
        # Imported without content, and the retry carries none: every platform would fail on it, counted as attempts.
        missing = ("the post has no content to publish (imported without it): retry it with its content "
                   "(content.caption, content.image_url)")
        return Decision(reject_reason=missing, refused_content=True,
                        log_line=f"Refused {command.type} {command.command_id}: {missing}")
    # Against the platforms published now, the post's own content too: a caption a retry of Facebook alone made
    # longer than Instagram takes is refused when a republish would send it to Instagram.
    problem = (fields_problem(command.content, state.content) if command.content is not None else None) or \
        content_problem(content, state.publish_target, publishing=target_of(decision.platforms))
    if problem is None and "facebook" not in decision.platforms and content.link is not None and \
            content.link != (state.content.link if state.content is not None else None):
        # A link the correction adds would go nowhere: this retry publishes Instagram alone, which takes none.
        problem = "Instagram posts carry no link, and this retry publishes Instagram only: put it in the caption"
    if problem is not None and command.content is None:
        # The post's own content (a retry of Facebook alone may have lengthened its caption past Instagram's): the
        # command, which carried none, can carry what fits.
        asked = "republish" if isinstance(command, ForceRepublishRequested) else "retry"
        problem = f"{problem} ({CONTENT_AS_IT_IS}: send the {asked} with corrected content)"
    if problem is not None:
        # What the API answers 422 for, from a command written on Kafka: refused, not an attempt the platform fails.
        return Decision(reject_reason=problem, refused_content=True,
                        log_line=f"Refused {command.type} {command.command_id}: {problem}")
    return replace(decision, content=recorded)


def republished_since_asked(state: PostState, command: Command) -> str | None:
    """Why a forced republish not decided yet is refused because the post was published again after it was asked
    for (two sent at the same moment would otherwise both go out); None when it was not, or it does not say."""
    if not isinstance(command, ForceRepublishRequested) or command.seen_attempts is None \
            or command.command_id in state.commands:
        return None
    since = len(state.attempts) - command.seen_attempts
    if since <= 0:
        return None
    return (f"post {command.post_id} was published again after this republish was asked for ({since} attempt"
            f"{'s' if since > 1 else ''} since, by another request or the service's own retry): look at it again, "
            "and republish once more only if it still should go out again")


def retry_targets(state: PostState) -> tuple[Platform, ...]:
    """The platforms a retry decided now would publish (none when it would publish nothing)."""
    if state.publish_target is None:
        return ()
    return _republish(state, forced=False, reason="").platforms


def retry_preview(state: PostState | None) -> str:
    """The page's note under the retry button ("Note: Will only retry Facebook"), from the same rule as `decide`."""
    if state is None or state.publish_target is None:
        return ""
    decision = _republish(state, forced=False, reason="")
    if decision.no_op:
        return f"Note: {decision.log_line}"
    only = "only " if decision.skipped else ""
    # Imported without content: the retry publishes only with the content it brings (`decide` refuses it without).
    given = " once given the post's content (caption, image URL)" if state.content is None else ""
    # A platform that went out before and whose later attempt (a forced republish) failed: its post is still there.
    again = tuple(p for p in decision.platforms if went_out_before(state, p))
    many = len(again) > 1
    besides = (f" ({_names(again)} went out before: {'those posts are' if many else 'that post is'} still there, and "
               f"this posts beside {'them' if many else 'it'})") if again else ""
    return f"Note: Will {only}retry {_names(decision.platforms)}{given}{besides}"


def went_out_before(state: PostState, platform: Platform) -> bool:
    """Whether the platform's latest result is a failure after one of its attempts went out: a retry of it posts beside
    that post, which is still there."""
    finished = [a for a in state.attempts_of(platform) if a.success is not None]
    return bool(finished) and finished[-1].success is False and any(a.success for a in finished[:-1])


def _resolution(state: PostState, command: ResolveAttemptRequested) -> Decision:
    """Accepted once the handler has recorded the operator's result on the attempt (`resolved_by`), or when the
    attempt it names was settled otherwise before its turn (the platform's look-up); refused when the platform has no
    attempt waiting for a result, or not the one named."""
    label = PLATFORM_LABELS[command.platform]
    resolved = state.settled_by(command.command_id)
    if resolved is not None:
        outcome = f"published as {command.platform_post_id}" if command.published else "not published"
        return Decision(no_op=True, log_line=f"{label} attempt {resolved.attempt_id} resolved by an operator: "
                                             f"{outcome}")
    named = state.attempts.get(command.attempt_id) if command.attempt_id is not None else None
    if named is not None and named.platform == command.platform and named.success is not None:
        # Settled between the request and its turn (the platform's own look-up found what the operator went to check):
        # nothing left to do, and the operator's word does not overrule the platform's.
        found = f"published as {named.platform_post_id}" if named.success else "not published"
        said = f"published as {command.platform_post_id}" if command.published else "not published"
        return Decision(no_op=True, log_line=f"{label} attempt {named.attempt_id} was settled before this resolution's "
                                             f"turn: {found} (the resolution said {said})")
    reason = resolution_refusal(state, command.platform, command.attempt_id, command.requested_at, command.published)
    if reason is None:
        # It did name the attempt waiting for a result, but another resolution was applied in its place.
        reason = f"a later resolution of {label}'s attempt took the place of this one"
    return Decision(reject_reason=reason, log_line=f"Refused ResolveAttemptRequested {command.command_id}: {reason}")


def reuses_command_id(state: PostState, command: Command) -> bool:
    """Whether the post has `command`'s id on record for another command (another type or body).

    Then it is no redelivery: answering or skipping it as one would drop it without a word, and doing it
    would break the promise that a command id has one effect.
    """
    recorded = state.commands.get(command.command_id)
    if recorded is None:
        return False
    return recorded.command_type != command.type or (
        recorded.fingerprint is not None and recorded.fingerprint != fingerprint(command))


def resolution_refusal(state: PostState, platform: Platform, attempt_id: str | None,
                       requested_at: datetime | None = None, published: bool | None = None) -> str | None:
    """Why an operator's resolution of the platform's attempt cannot apply; None when it names the attempt that
    is waiting for a result (any attempt id, or none, when it does not name one), or an earlier attempt whose container
    Meta may be unable to say anything of (`container_resolution`).

    One that names no attempt speaks of the one that was waiting when it was sent (`requested_at`): never of a
    call the post's command made after it, which the operator cannot have checked.
    """
    label = PLATFORM_LABELS[platform]
    waiting = state.in_flight(platform)
    if waiting is None and container_resolution(state, platform, attempt_id) is not None:
        return None
    if waiting is None and attempt_id is None and platform in may_have_gone_out(state):
        # An imported post's platform the old system may have published (`legacy_found`): found there, it is recorded;
        # not found, it is republished, which no resolution does.
        if published:
            return None
        return (f"nothing to resolve: the post has no {label} attempt; if it is not on {label}, republish it "
                f"({republish_route(state.post_id, platform, state.account is None)})")
    if waiting is None:
        if not any(a.platform == platform for a in state.attempts.values()):
            return f"nothing to resolve: the post has no {label} attempt"
        named = state.attempts.get(attempt_id) if attempt_id is not None else None
        if attempt_id is not None and (named is None or named.platform != platform):
            return f"nothing to resolve: the post has no {label} attempt {attempt_id}"
        return f"nothing to resolve: {label}'s latest attempt has its result"
    if attempt_id not in (None, waiting.attempt_id):
        return f"{label}'s attempt waiting for a result is {waiting.attempt_id}, not {attempt_id}"
    if attempt_id is None and requested_at is not None and waiting.started_at > requested_at:
        return (f"{label}'s attempt waiting for a result, {waiting.attempt_id}, began after this resolution was sent: "
                "what was checked was an earlier call (name the attempt to resolve this one)")
    return None


def legacy_found(state: PostState, command: ResolveAttemptRequested) -> bool:
    """Whether `command`, not decided before, says an imported post's platform that the old system may have published
    (`may_have_gone_out`) is there, with its id: recorded as that platform's post (the old system's attempt that made
    it), so that nothing publishes it again. (A command id decided before is a redelivery, or reused for another
    command: `decide` answers either, before anything is recorded for it.)"""
    return command.published and command.attempt_id is None and command.command_id not in state.commands and \
        command.platform in may_have_gone_out(state) and state.in_flight(command.platform) is None


def container_resolution(state: PostState, platform: Platform, attempt_id: str | None) -> AttemptState | None:
    """The attempt `attempt_id` names, where it is one an operator's resolution settles though it has a result: the
    earlier attempt whose container holds the platform back, as its latest failure says (`PostState.held_back_by`:
    Meta says it does not exist, and the account's media cannot tell). Named by its id only."""
    held = state.held_back_by(platform)
    return held if held is not None and attempt_id == held.attempt_id else None


def _duplicate(state: PostState, command_id: str) -> Decision:
    record = state.commands[command_id]
    started = {a.platform for a in state.attempts.values() if a.command_id == command_id}
    unstarted = tuple(p for p in record.platforms if p not in started)
    line = f"Command {command_id} was already decided; nothing new to do"
    if unstarted:
        line = f"Command {command_id} was already decided; resuming {_names(unstarted)}"
    return Decision(duplicate_command=True, is_retry=record.is_retry, forced=record.forced, log_line=line,
                    unstarted=unstarted, unresolved=_unresolved(state))


def _first_publish(state: PostState | None, command: PublishRequested) -> Decision:
    if state is not None and not _resumable_submission(state, command):
        return Decision(
            reject_reason=(f"post {command.post_id} already exists: use RetryRequested to publish what failed, "
                           "or ForceRepublishRequested to publish again"),
            log_line=f"Refused PublishRequested {command.command_id}: post {command.post_id} already exists",
        )
    # (A submission taken up again after a crash was accepted as it is: its post exists, and it goes on.)
    if state is None and (problem := fields_problem(command.content)
                          or content_problem(command.content, command.publish_target)) is not None:
        # What the API answers 422 for, from a command written on Kafka: refused, not an attempt the platform fails.
        return Decision(reject_reason=problem, refused_content=True,
                        log_line=f"Refused PublishRequested {command.command_id}: {problem}")
    platforms = platforms_of(command.publish_target)
    return Decision(platforms=platforms, log_line=f"Publishing to {_names(platforms, both=True)}...")


def _resumable_submission(state: PostState, command: PublishRequested) -> bool:
    """The post was submitted by this very command and nothing was decided yet (a crash in between)."""
    return state.submitted_by == command.command_id and not state.commands and not state.legacy


# How a refusal of the post's own content (a command carrying none) says so.
CONTENT_AS_IT_IS = "the post's content as it is now"


def _republish(state: PostState, forced: bool, reason: str, only: Sequence[Platform] | None = None) -> Decision:
    unresolved = _unresolved(state)
    # Chosen by the latest decision but not attempted yet: the handler is about to (or will resume).
    awaiting = set(awaiting_attempt(state))
    unsure = may_have_gone_out(state)
    chosen: list[Platform] = []
    skipped: dict[Platform, str] = {}
    for platform in state.targeted:
        result = state.latest_result(platform)
        if only is not None and platform not in only:
            skipped[platform] = NOT_ASKED
        elif platform in unresolved or platform in awaiting:
            skipped[platform] = STILL_PUBLISHING
        elif result is not None and result.success and not forced:
            skipped[platform] = ALREADY_SUCCEEDED
        elif platform in unsure and not forced:
            skipped[platform] = MAY_HAVE_GONE_OUT
        else:
            chosen.append(platform)
    platforms = tuple(chosen)
    if not platforms:
        return Decision(skipped=skipped, is_retry=True, forced=forced, no_op=True, unresolved=unresolved,
                        log_line=f"Nothing to {'republish' if forced else 'retry'}: {_reasons(skipped)}")
    if forced:
        why = f" ({reason})" if reason else ""
        line = f"Forced republish: Publishing to {_names(platforms, both=True)} again{why}"
    elif skipped:
        line = f"🔄 Smart retry: Publishing only to {_names(platforms)} ({_reasons(skipped)})"
    else:
        line = f"🔄 Smart retry: Publishing to {_names(platforms, both=True)} ({_previous(state, platforms)})"
    return Decision(platforms=platforms, skipped=skipped, is_retry=True, forced=forced, unresolved=unresolved,
                    log_line=line)


def _unsaid(reason: str) -> str | None:
    """Why a forced republish's reason says nothing it can keep; None when it says why."""
    if says_nothing(reason):
        return "reason must say why the post is republished: blanks and invisible characters alone say nothing"
    if (problem := text_problem(reason)) is not None:
        return f"reason {problem}"
    return None


def _unresolved(state: PostState) -> tuple[Platform, ...]:
    return tuple(p for p in state.targeted if state.in_flight(p) is not None)


def _names(platforms: tuple[Platform, ...], both: bool = False) -> str:
    labels = [PLATFORM_LABELS[p] for p in platforms]
    if len(labels) == 2:
        return f"{'both ' if both else ''}{labels[0]} and {labels[1]}"
    return labels[0] if labels else "no platform"


def _reasons(skipped: dict[Platform, str]) -> str:
    """"Facebook and Instagram already succeeded", "Instagram already succeeded; Facebook still publishing"."""
    by_reason: dict[str, list[Platform]] = {}
    for platform, why in skipped.items():
        by_reason.setdefault(why, []).append(platform)
    return "; ".join(f"{_names(tuple(platforms))} {_plural(why) if len(platforms) > 1 else why}"
                     for why, platforms in by_reason.items())


def _plural(why: str) -> str:
    """A reason said of two platforms: "their last attempts have", not "its last attempt has"."""
    return why.replace("its last attempt has", "their last attempts have").replace("result for it", "result for them")


def _previous(state: PostState, platforms: tuple[Platform, ...]) -> str:
    failed = tuple(p for p in platforms if (r := state.latest_result(p)) is not None and not r.success)
    never = tuple(p for p in platforms if state.latest_result(p) is None)
    parts = []
    if failed:
        parts.append(f"{'both' if len(failed) == 2 else _names(failed)} failed")
    if never:
        parts.append(f"{_names(never)} not published yet")
    return "; ".join(parts)
