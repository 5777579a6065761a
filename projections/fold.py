"""The pure fold: a post's events become its state and the seed's insights document.

Nothing here reads a clock or does I/O: every time in the document is an event's `occurred_at`,
so replaying the same events gives the same states, byte for byte.

Rules the fold keeps (the seed's "Result Merging Logic" and "Status Determination", made exact):

- Results merge by platform: a newer result replaces the platform's entry where it stands; a
  platform's first result takes its place in the seed's order (Facebook before Instagram), so the
  document does not depend on which platform answered first. An imported old-system list keeps its
  own order. A result of an attempt older than one that already has a result is kept on the attempt
  but does not replace the newer result.
- Status, from the latest result of every platform that counts (the targeted ones, plus any platform
  that has a result, which only an imported document can give): `publishing` while any of them has
  an attempt without a result, or was chosen by the latest decision and not attempted yet (a post
  being retried shows as being retried, even if its last result failed); else `failed` if any latest
  result failed; else `posted` if every one of them succeeded; else `failed` for an imported post with a
  targeted platform that neither the old system kept a result for nor this service attempted (nothing
  publishes it by itself); else (a submitted post not decided yet) `publishing`, or the imported
  document's status.
- `error_message` is `platform: message` for every platform whose latest result failed, joined with
  "; " in the document's order, and null once none failed.
- `published_at` is when the post first went live on a platform (the first successful result) and
  never changes after; `last_retry_at` is when the latest result of a retry (or forced republish)
  attempt came in. Platform ids (`facebook_post_id`, `instagram_media_id`, `instagram_permalink`)
  come from the latest success of each platform and are kept when a later attempt fails: that post
  still exists on the platform.
- `needed_action` says, per platform, what the user must do: after a failed result, what its error
  asks for ("fix the image URL"); while an interrupted attempt cannot be checked on the platform for
  want of a valid token (`AttemptOutcomeUnknown`), "re-authenticate Facebook"; when the platform refuses
  the look-up itself (what it names is gone), "check Facebook for the post, then resolve the attempt".
  The post stays `publishing` then: its outcome is unknown, not failed.
- An operator's word on an attempt that failed after making a container Meta cannot say anything of (Instagram's, asked
  about before every new attempt): not published, the attempt keeps its failure and the container is not asked about
  again; published, its post is the platform's latest result, over later failures (which published nothing).
- A failed result of an attempt never recorded is refused (the handler records every attempt before
  its call): it would put a failure over a post that went out. A success without its attempt is kept.
- The same event delivered twice (same `event_id`) changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel

from projections.state import AttemptState, CommandRecord, PostState, empty_state
from publishers.redact import scrub_shapes
from schemas.common import (
    DESTINATIONS,
    IG_RESTRICTED_SUBCODE,
    PLATFORM_LABELS,
    PLATFORMS,
    UNKNOWN_OBJECT_CODE,
    ErrorKind,
    Platform,
    is_platform_block,
    platforms_of,
    target_of,
)
from schemas.events import (
    AttemptOutcomeUnknown,
    CommandDecided,
    ContainerCreated,
    Event,
    LegacyInsightsImported,
    PlatformResult,
    PostSubmitted,
    PublishAttempted,
)
from schemas.insights import Insights, PostInsights, PostStatus, PublishResult

FACEBOOK_POST_URL = "https://www.facebook.com/{post_id}"

# The content's fields, and the document's key where the projector lists those a token was taken out of.
CONTENT_FIELDS = ("caption", "image_url", "link")
TAKEN_OUT = "smartretry_taken_out"

# What an attempt only someone who checks the platform can settle asks for, after "check Facebook for the post, ".
RESOLVE_THE_ATTEMPT = "then resolve the attempt"
# What a Page or Instagram account id Meta does not know asks for (the platform's word for it, then " id").
RIGHT_ID = "connect the account again with its right "
# What a platform that refused the post itself (an invalid request) asks for.
FIX_THE_POST = "fix the post"

# Shown when a platform refused without saying why; the seed always has a message, old documents may not.
UNKNOWN_ERROR = "publish failed"
# An imported post's platform the old system kept no result for: not published (as far as anything here knows).
NO_LEGACY_RESULT = "not published: the old system kept no result for it"
NO_LEGACY_RESULT_UNSURE = ("not known to be published: the old system kept no result for it, but was publishing "
                           "the post or says it went out")

E = TypeVar("E")
M = TypeVar("M", bound=BaseModel)


def apply(state: PostState | None, event: Event) -> PostState:
    """The state after `event`: a new object, `state` is left as it was. A redelivered event returns `state`."""
    if state is not None and event.event_id in state.applied_event_ids:
        return state
    return _applied(state, (event,), event.post_id)


def apply_all(state: PostState | None, events: Sequence[Event]) -> PostState | None:
    """The state after a batch of one post's events, in order: the same as `apply` event by event, faster.

    The projector folds a batch per post with this; `state` is left as it was.
    """
    if not events:
        return state
    fresh = [e for e in events if state is None or e.event_id not in state.applied_event_ids]
    if not fresh:
        return state
    return _applied(state, fresh, events[0].post_id)


def apply_valid(state: PostState | None, events: Sequence[Event]) -> tuple[PostState | None, list[tuple[Event, str]]]:
    """Like `apply_all`, but an event the fold refuses is skipped, and returned with the reason.

    All at once while the fold accepts every event (the common case), else event by event so the
    others are still applied.
    """
    try:
        return apply_all(state, events), []
    except Exception:  # which event, and why: found one by one below
        pass
    refused: list[tuple[Event, str]] = []
    for event in events:
        try:
            state = apply(state, event)
        except ValueError as exc:
            refused.append((event, str(exc)))
        except Exception as exc:
            # Not a rule the event broke but a case the fold did not foresee: refused all the same (its
            # dead letter keeps it, to requeue once fixed), so the post's other events still apply.
            refused.append((event, f"{type(exc).__name__}: {exc}"))
    return state, refused


def fold(events: Iterable[Event]) -> dict[str, PostState]:
    """Every post's state from its events, in the order they were written (one post's order is what counts)."""
    by_post: dict[str, list[Event]] = {}
    for event in events:
        by_post.setdefault(event.post_id, []).append(event)
    states: dict[str, PostState] = {}
    for post_id, post_events in by_post.items():
        state = apply_all(None, post_events)
        if state is not None:
            states[post_id] = state
    return states


def _applied(state: PostState | None, events: Sequence[Event], post_id: str) -> PostState:
    if state is None:
        if not isinstance(events[0], (PostSubmitted, LegacyInsightsImported)):
            # Only a submission or an import starts a post: anything else names a post that does not exist.
            raise ValueError(f"post {post_id} does not exist: {events[0].type} {events[0].event_id} "
                             "cannot be its first event")
        state = empty_state(post_id, events[0].occurred_at)
    elif state.post_id != post_id:
        raise ValueError(f"event {events[0].event_id} belongs to post {post_id}, not {state.post_id}")
    # Shallow copy, with fresh copies of the containers the handlers add to: they change those in
    # place, once per event, and replace any model instead of changing it. The old state and the new
    # one share everything else, and the old one stays as it was (a refused batch leaves no trace).
    new = _replaced(state, {"attempts": dict(state.attempts), "commands": dict(state.commands)})
    if state.legacy and state.legacy_unsure is None and imported_only(state):
        # Imported by a version that did not record which platforms may have gone out: recorded now, from the old
        # document's word as it stands, before anything done here changes what the post shows.
        new.__dict__["legacy_unsure"] = list(_legacy_unsure(state))
    applied = list(state.applied_event_ids)
    seen = set(applied)
    updated_at = new.updated_at
    # Results that change the insights, merged into the document together: one new document per
    # batch, not one per result.
    landed: list[tuple[PlatformResult, AttemptState]] = []
    for event in events:
        if event.post_id != post_id:
            raise ValueError(f"event {event.event_id} belongs to post {event.post_id}, not {post_id}")
        if event.event_id in seen:
            continue
        if type(event) is PlatformResult:
            attempt = _on_result(new, event)
            if attempt is not None:
                landed.append((event, attempt))
        else:
            if landed and type(event) is LegacyInsightsImported:
                _merge_landed(new, landed)  # the import merges into the document as it stands
                landed = []
            _HANDLERS[type(event)](new, event)
        applied.append(event.event_id)
        seen.add(event.event_id)
        if updated_at is None or event.occurred_at > updated_at:
            updated_at = event.occurred_at
    if landed:
        _merge_landed(new, landed)
    values = new.__dict__  # set directly: pydantic's __setattr__ costs a microsecond per field
    values["applied_event_ids"] = applied
    values["updated_at"] = updated_at
    if new.created_at is None:
        values["created_at"] = events[0].occurred_at
    # The document's status, message and address are a function of the rest of the state, so deriving
    # them once after the batch gives what deriving after every event would.
    values["document"] = derive_document(new)
    return new


# ---------------------------------------------------------------- one handler per event type


def _on_submitted(state: PostState, event: PostSubmitted) -> None:
    state.__dict__.update(publish_target=event.publish_target, content=event.content, account=event.account,
                          submitted_by=event.command_id)


def _on_decided(state: PostState, event: CommandDecided) -> None:
    # A command is decided once; a second decision for it (a handler that re-emitted) is not a new command.
    if event.command_id in state.commands:
        return
    record = _built(
        CommandRecord,
        command_id=event.command_id,
        command_type=event.command_type,
        platforms=list(event.platforms),
        skipped=dict(event.skipped),
        is_retry=event.is_retry,
        forced=event.forced,
        decided_at=event.occurred_at,
        note=event.note,
        fingerprint=event.fingerprint,
    )
    state.commands[event.command_id] = record
    if event.content is not None and event.platforms:
        # Corrected content applies from now on; results already in stay until new ones arrive. A decision that
        # publishes nothing (every platform had gone out by its turn) leaves the content as it went out.
        if state.taken_out and state.content is not None:
            # A field corrected is no longer one that lost a token at import.
            state.taken_out = [f for f in state.taken_out
                               if getattr(event.content, f) == getattr(state.content, f)]
        if state.content is not None and event.content != state.content:
            # The platforms already published keep what they went out with (a platform's post is not edited): kept,
            # so the post can say so. A platform published again drops it once that succeeds (`_on_result`).
            went_out = {platform: state.published_content.get(platform, state.content) for platform in PLATFORMS
                        if _published(state, platform)}
            if went_out:
                state.__dict__["published_content"] = {**state.published_content, **went_out}
        state.content = event.content
    if event.account is not None:
        state.account = event.account


def _published(state: PostState, platform: Platform) -> bool:
    """Whether the platform's latest result is a success, as the document will say once the batch's results are merged
    (`_merge_landed`): read off the attempts, which each result updates at once."""
    finished = [a for a in state.attempts.values() if a.platform == platform and a.success is not None]
    if finished:
        return max(finished, key=lambda a: a.attempt_number).success is True
    result = state.latest_result(platform)  # an imported one, if any
    return result is not None and result.success


def _on_attempted(state: PostState, event: PublishAttempted) -> None:
    if event.attempt_id in state.attempts:
        return
    # The handler decides a command before it attempts a platform for it (the decision and the attempt go to the
    # partition in that order). An attempt of a command the post never decided is no attempt of the handler's: taken
    # in, it could stand as the platform's latest attempt for good, hold the post "publishing", and once looked up put
    # a failure over a post that went out, which a retry would then publish a second time. Refused (the projector
    # dead-letters it).
    if event.command_id not in state.commands:
        raise ValueError(f"{event.platform} attempt {event.attempt_id} names command {event.command_id}, which this "
                         "post never decided: a command is decided before its attempts")
    attempt = _built(
        AttemptState,
        attempt_id=event.attempt_id,
        platform=event.platform,
        attempt_number=event.attempt_number,
        command_id=event.command_id,
        is_retry=event.is_retry,
        forced=event.forced,
        reason=event.reason,
        started_at=event.occurred_at,
    )
    state.attempts[event.attempt_id] = attempt


def _on_container(state: PostState, event: ContainerCreated) -> None:
    attempt = state.attempts.get(event.attempt_id)
    if attempt is None:
        # Nothing to attach it to: the attempt's own event is what makes an attempt exist.
        return
    with_container = _replaced(attempt, {"container_id": event.container_id})
    state.attempts[event.attempt_id] = with_container


def _on_result(state: PostState, event: PlatformResult) -> AttemptState | None:
    """Records the result on its attempt; returns the attempt when the result is its platform's newest.

    The insights are merged by `_merge_landed`, for all the batch's newest results at once.
    """
    attempt = state.attempts.get(event.attempt_id)
    if attempt is None:
        if not event.success:
            # The handler records an attempt before it calls the platform, so this failure is of no attempt
            # of ours: taken in, it would put a failure over a post that went out, and a retry would post it
            # again. Refused (the projector dead-letters it, with its bytes).
            raise ValueError(f"{event.platform} failed result of attempt {event.attempt_id}, which was never "
                             "recorded: it cannot replace the platform's result")
        # A success whose attempt was never recorded still happened on the platform: keep it, as the next attempt.
        attempt = _built(
            AttemptState,
            attempt_id=event.attempt_id,
            platform=event.platform,
            attempt_number=next_attempt_number(state, event.platform),
            command_id="",
            started_at=event.occurred_at,
        )
    # An operator's word on an attempt that had failed already: what became of its container (Instagram's), which Meta
    # could not say. Not published, the attempt keeps its own failure and its container is not asked about again;
    # published, its post is the platform's.
    operator_on_failed = attempt.success is False and event.resolved_by is not None
    if operator_on_failed and not event.success:
        state.attempts[event.attempt_id] = _replaced(attempt, {"container_cleared_by": event.resolved_by})
        return None
    error = None if event.success else event.error
    error_kind = None if error is None else error.kind
    finished = _replaced(
        attempt,
        {"success": event.success, "recovered": event.recovered, "error_kind": error_kind,
         "error": None if error is None else error.message,
         "platform_post_id": event.platform_post_id if event.success else None,
         "permalink": event.permalink if event.success else None,
         "retry_after_s": None if error is None else error.retry_after_s,
         "finished_at": event.occurred_at, "resolved_by": event.resolved_by},
    )
    superseded = any(
        other.platform == event.platform
        and other.attempt_number > attempt.attempt_number
        and other.success is not None
        # The later attempts failed, so published nothing: the post the operator found is the platform's latest.
        and not (operator_on_failed and event.success and other.success is False)
        for other in state.attempts.values()
    )
    state.attempts[event.attempt_id] = finished
    if superseded:
        return None
    if event.success and event.platform in state.published_content:
        # Its post now is one of the content the post has (commands of a post run one at a time).
        state.__dict__["published_content"] = {platform: kept for platform, kept in state.published_content.items()
                                               if platform != event.platform}

    code, subcode = (None, None) if error is None else (error.code, error.subcode)
    _set_needed_action(state, event.platform,
                       needed_action(event.platform, error_kind, code, subcode) if not event.success else None)
    return attempt


def _on_outcome_unknown(state: PostState, event: AttemptOutcomeUnknown) -> None:
    attempt = state.attempts.get(event.attempt_id)
    if attempt is None or attempt.success is not None:
        return  # its result came in first: the outcome is known
    state.attempts[event.attempt_id] = _replaced(attempt, {"lookup_error": event.error})
    if state.in_flight(event.platform) is not state.attempts[event.attempt_id]:
        return  # a later attempt of the platform speaks for it
    # Only the user can unblock an `auth` or `permission` error. A look-up the platform refuses as such (the
    # container or post it names is gone) will not come right by asking again: someone must check the
    # platform and say what they found. The service keeps asking after any other error.
    kind = event.error.kind
    action = needed_action(event.platform, kind, event.error.code, event.error.subcode) \
        if kind in (ErrorKind.AUTH, ErrorKind.PERMISSION) else None
    if kind in (ErrorKind.INVALID_REQUEST, ErrorKind.INVALID_MEDIA):
        action = f"check {PLATFORM_LABELS[event.platform]} for the post, {RESOLVE_THE_ATTEMPT}"
    _set_needed_action(state, event.platform, action)


def _set_needed_action(state: PostState, platform: Platform, action: str | None) -> None:
    if state.needed_action.get(platform) != action:
        needed = {p: a for p, a in state.needed_action.items() if p != platform}
        if action is not None:
            needed[platform] = action
        state.needed_action = needed


def _merge_landed(state: PostState, landed: Sequence[tuple[PlatformResult, AttemptState]]) -> None:
    """Merges results, in order, into the insights: the seed's merge, `published_at`, `last_retry_at`."""
    insights = state.document.insights
    values = insights.__dict__.copy()
    values["publish_results"] = list(insights.publish_results)
    for event, attempt in landed:
        if event.success:
            result = _built(PublishResult, platform=event.platform, success=True, post_id=event.platform_post_id,
                            permalink=event.permalink)
        else:
            result = _built(
                PublishResult, platform=event.platform, success=False,
                error=event.error.message if event.error is not None else UNKNOWN_ERROR)
        _merge_into(values, result)
        if event.success and values["published_at"] is None:
            values["published_at"] = event.occurred_at
        if (attempt.is_retry or attempt.forced) and (
            values["last_retry_at"] is None or event.occurred_at > values["last_retry_at"]
        ):
            values["last_retry_at"] = event.occurred_at
    state.__dict__["document"] = _replaced(state.document, {"insights": _replaced(insights, values)})


def _on_legacy(state: PostState, event: LegacyInsightsImported) -> None:
    # A post this service has submitted or attempted: what it did is newer than the old system's word, so an import
    # (a migration run again) fills in only what the post lacks. A post known only from imports takes the latest.
    serviced = state.submitted_by is not None or bool(state.attempts)
    state.legacy = True
    content = event.content if event.content is not None and not (serviced and state.content is not None) else None
    if content is not None:
        state.content = content
    if event.account is not None and not (serviced and state.account is not None):
        state.account = event.account

    document = event.document
    raw_insights = document.get("insights")
    # Some old rows stored the insights object itself, not wrapped in a document.
    old: dict[str, Any] = raw_insights if isinstance(raw_insights, dict) else document

    brought = _legacy_results(old)
    current = {r.platform: r for r in state.document.insights.publish_results}
    # A platform the post has published (the service did, or an earlier import said so) stays published: an
    # import run again, with the old system's older word, would make it a failure that a retry posts twice.
    results = [r for r in brought if r.success or not (r.platform in current and current[r.platform].success)]
    if serviced:
        # Nor does it replace the service's own newer results: only a platform without one, or one the old system
        # says went out where the service's attempt failed (it is there: a retry must not post it again).
        results = [r for r in results if r.platform not in current or (r.success and not current[r.platform].success)]
    targeted = state.targeted if serviced and state.publish_target is not None else platforms_of(event.publish_target)
    implied: list[Platform] = []
    # The post's address names its post on a platform (its Facebook post, or an Instagram-only post's permalink),
    # whatever the old status or a failure the old document kept for it says (a post caught mid-publish, a failure of
    # a later try): it went out there, and a retry must not post it again.
    addressed: dict[Platform, PublishResult] = {}
    if (named := _facebook_post_of(document.get("post_url"))) is not None:
        addressed["facebook"] = PublishResult(platform="facebook", success=True, post_id=named)
    if (permalink := _instagram_permalink_of(document.get("post_url"))) is not None:
        addressed["instagram"] = PublishResult(platform="instagram", success=True, permalink=permalink)
    for platform, found in addressed.items():
        now = current.get(platform)
        if platform not in targeted or any(r.platform == platform and r.success for r in results) or (
                now is not None and now.success):
            continue
        results = [r for r in results if r.platform != platform]
        results.append(found)
        implied.append(platform)
    if document.get("status") == "posted":
        # The old system said posted: every platform it targeted went out, whether or not it kept a result
        # for it. Taken as published (with the Facebook post the post's address names, if it does), where the post
        # has no success there (none yet, or a failed attempt: the post is there all the same): a retry must not
        # post it again; a forced republish still can.
        known = {r.platform for r in brought} | {r.platform for r in results} | \
            {p for p, r in current.items() if r.success}
        unkept = [platform for platform in targeted if platform not in known]
        results.extend(PublishResult(platform=platform, success=True) for platform in unkept)
        implied.extend(unkept)
    covered = set(targeted) | {r.platform for r in results}
    # A platform the old system has a result for counts in the status, so it is a target too: a failure
    # there must be one a retry can fix.
    state.publish_target = target_of(tuple(p for p in PLATFORMS if p in covered)) or event.publish_target
    insights = state.document.insights
    for result in results:
        insights = _merged(insights, result, keep_order=True)
    changes: dict[str, Any] = {}
    for name in ("published_at", "last_retry_at"):
        when = _legacy_time(old.get(name))
        if when is not None and getattr(insights, name) is None:
            changes[name] = when
    for name in ("facebook_post_id", "instagram_media_id", "instagram_permalink"):
        value = old.get(name)
        if isinstance(value, str) and value and getattr(insights, name) is None:
            # Scrubbed like the old system's other texts: `post_url` is built from the Facebook one.
            changes[name] = _legacy_text(value)
    if changes:
        insights = insights.model_copy(update=changes)
    state.document = state.document.model_copy(update={"insights": insights})

    status = document.get("status")
    if status in ("publishing", "posted", "failed"):
        state.legacy_status = cast(PostStatus, status)
    state.legacy_error_message = _legacy_text(document.get("error_message")) if isinstance(
        document.get("error_message"), str) else None
    state.legacy_post_url = _legacy_text(document.get("post_url")) if isinstance(document.get("post_url"), str) \
        else None
    if content is not None:
        # The fields the import's own content lost a token from (`projections.imported` says so in the document);
        # a content imported again, without them, clears them.
        marked = document.get(TAKEN_OUT)
        state.taken_out = sorted(f for f in marked if f in CONTENT_FIELDS) if isinstance(marked, list) else []
    # What the old messages say the user must do, where Meta's words make it plain: a platform's own result,
    # else the document's `error_message` ("facebook: ...; instagram: ...") for a platform it kept none for.
    # (A post caught mid-publish may name an earlier try's failure too.)
    told = _legacy_messages(state.legacy_error_message) if status in ("failed", "publishing") else {}
    # A result, or a failure the message names, stands for at least one attempt of the old system; the same document
    # imported again (another event) brings the same results, not more attempts.
    counted = dict(state.legacy_attempts)
    # In the platforms' own order, not a set's: the state's JSON must be the same in every process (replay compares
    # it byte for byte, and a set's order changes with the hash seed).
    brought_for = {r.platform for r in brought} | set(implied) | {p for p in told if p in state.targeted}
    for platform in (p for p in PLATFORMS if p in brought_for):
        counted[platform] = max(counted.get(platform, 0), 1)
    state.legacy_attempts = counted
    if not serviced:
        state.legacy_unsure = list(_legacy_unsure(state))
    for platform in PLATFORMS:
        latest = next((r for r in state.document.insights.publish_results if r.platform == platform), None)
        if latest is not None and any(r.platform == platform for r in results):
            kind = None if latest.success else legacy_error_kind(latest.error)
            _set_needed_action(state, platform, needed_action(platform, kind))
        elif latest is None and platform in told:
            _set_needed_action(state, platform, needed_action(platform, legacy_error_kind(told[platform])))


Handler = Callable[[PostState, Any], None]


def _handler(kind: type[E], handle: Callable[[PostState, E], None]) -> tuple[type[Any], Handler]:
    return kind, cast(Handler, handle)


_HANDLERS: dict[type[Any], Handler] = dict(
    [
        _handler(PostSubmitted, _on_submitted),
        _handler(CommandDecided, _on_decided),
        _handler(PublishAttempted, _on_attempted),
        _handler(ContainerCreated, _on_container),
        _handler(AttemptOutcomeUnknown, _on_outcome_unknown),
        _handler(LegacyInsightsImported, _on_legacy),
    ]
)


# ---------------------------------------------------------------- merging and deriving


_set_attribute = object.__setattr__


def _replaced(model: M, changes: dict[str, Any]) -> M:
    """`model.model_copy(update=changes)`, without pydantic's generic copying: the fold runs it per event.

    Every model here has no extra and no private attributes, and `changes` are values of the fields'
    own types taken from validated events or states, so nothing needs validating or deep copying.
    """
    new = model.__class__.__new__(model.__class__)
    values = model.__dict__.copy()
    values.update(changes)
    _set_attribute(new, "__dict__", values)
    _set_attribute(new, "__pydantic_fields_set__", model.__pydantic_fields_set__ | changes.keys())
    _set_attribute(new, "__pydantic_extra__", None)
    _set_attribute(new, "__pydantic_private__", None)
    return new


# Per model class: every field in declaration order, with its default (None for required ones).
_templates: dict[type[Any], dict[str, Any]] = {}


def _built(cls: type[M], **values: Any) -> M:
    """`cls(**values)` for values taken from validated events, without validating them again.

    Only for models whose omitted fields have plain defaults: a default factory's value would be
    shared between instances.
    """
    template = _templates.get(cls)
    if template is None:
        template = {name: None if field.is_required() else field.get_default()
                    for name, field in cls.model_fields.items()}
        _templates[cls] = template
    new = cls.__new__(cls)
    fields = template.copy()
    fields.update(values)
    _set_attribute(new, "__dict__", fields)
    _set_attribute(new, "__pydantic_fields_set__", set(values))
    _set_attribute(new, "__pydantic_extra__", None)
    _set_attribute(new, "__pydantic_private__", None)
    return new


def _merged(insights: Insights, result: PublishResult, keep_order: bool = False) -> Insights:
    """The seed's merge: replace the platform's result where it stands, else add it (see module docstring)."""
    values = {"publish_results": list(insights.publish_results)}
    _merge_into(values, result, keep_order)
    return _replaced(insights, values)


def _merge_into(values: dict[str, Any], result: PublishResult, keep_order: bool = False) -> None:
    """`_merged` on an insights' field values, in place; `values["publish_results"]` must be a list of its own."""
    results: list[PublishResult] = values["publish_results"]
    index = next((i for i, r in enumerate(results) if r.platform == result.platform), None)
    if index is not None:
        results[index] = result
    elif keep_order:
        results.append(result)
    else:
        rank = PLATFORMS.index(result.platform)
        position = next((i for i, r in enumerate(results) if PLATFORMS.index(r.platform) > rank), len(results))
        results.insert(position, result)
    if result.success and result.post_id is not None:
        if result.platform == "facebook":
            values["facebook_post_id"] = result.post_id
        else:
            values["instagram_media_id"] = result.post_id
            if result.permalink is not None:
                values["instagram_permalink"] = result.permalink


def counted_platforms(state: PostState) -> tuple[Platform, ...]:
    """The platforms whose results decide the status: targeted, or with a result or an attempt."""
    present = set(state.targeted)
    present.update(r.platform for r in state.document.insights.publish_results)
    present.update(a.platform for a in state.attempts.values())
    return tuple(p for p in PLATFORMS if p in present)


def awaiting_attempt(state: PostState) -> tuple[Platform, ...]:
    """Platforms the latest decision chose that have no attempt for that command yet."""
    command = state.latest_command()
    if command is None or not command.platforms:
        return ()
    started = {a.platform for a in state.attempts.values() if a.command_id == command.command_id}
    return tuple(p for p in command.platforms if p not in started)


def latest_attempts(state: PostState) -> dict[Platform, AttemptState]:
    """Each platform's latest attempt (highest number; of equal numbers, the one recorded last)."""
    latest: dict[Platform, AttemptState] = {}
    for attempt in state.attempts.values():
        current = latest.get(attempt.platform)
        if current is None or attempt.attempt_number >= current.attempt_number:
            latest[attempt.platform] = attempt
    return latest


def unresolved(state: PostState) -> tuple[Platform, ...]:
    """Platforms whose latest attempt has no result: in flight, or its worker died before recording one."""
    latest = latest_attempts(state)
    return tuple(p for p in PLATFORMS if p in latest and latest[p].success is None)


def derive_status(state: PostState) -> PostStatus:
    """The post's status by the rule in the module docstring."""
    if unresolved(state) or awaiting_attempt(state):
        return "publishing"
    results = state.document.insights.publish_results
    if any(not r.success for r in results):
        return "failed"
    # Every platform with an attempt has a result by now, so only targeted platforms can lack one.
    with_result = {r.platform for r in results}
    if results and all(p in with_result for p in state.targeted):
        return "posted"
    if without_legacy_result(state):
        # Imported from an old-system document that kept no result for a platform (a draft, or a post caught
        # mid-publish), not published there since: nothing here publishes it by itself, so it is not "publishing" but
        # failed until someone does (its error message and needed action say so).
        return "failed"
    if state.legacy_status is not None:
        return state.legacy_status
    return "publishing"


def imported_only(state: PostState) -> bool:
    """Whether the post is known only from old-system documents: never submitted, decided or attempted here."""
    return state.legacy and state.submitted_by is None and not state.commands and not state.attempts


def _legacy_unsure(state: PostState) -> tuple[Platform, ...]:
    """The targeted platforms an imported post may have gone out on, by its old system's word as the post holds it
    (`told`: the platforms its error message names as failed). Caught mid-publish: any platform not known to have
    succeeded. Said to have gone out (`published_at`): a platform it kept neither a result for nor names as failed;
    where it has none such and no success to account for that time, every platform (the old system republished every
    platform on a retry, so the one that went out may have failed later)."""
    results = {r.platform: r for r in state.document.insights.publish_results}
    told = _told(state)
    unsucceeded = tuple(p for p in state.targeted if p not in results or not results[p].success)
    if state.legacy_status == "publishing":
        return unsucceeded
    if state.document.insights.published_at is None:
        return ()
    unsaid = tuple(p for p in unsucceeded if p not in results and p not in told)
    return unsaid if unsaid or any(r.success for r in results.values()) else unsucceeded


def republish_route(post_id: str, platform: Platform, needs_account: bool) -> str:
    """The API's route for republishing one platform, as a needed action or a refusal names it (the CLI and the page
    say it as their own commands): `needs_account`, the post has none, so the republish names one."""
    account = ", with the account" if needs_account else ""
    return f"POST /posts/{post_id}/republish naming {platform} in platforms{account}"


def may_have_gone_out(state: PostState) -> tuple[Platform, ...]:
    """The targeted platforms an imported post may have gone out on, as far as anything here knows (`legacy_unsure`),
    that this service has not attempted since and that no result says went out. A retry leaves them alone; a forced
    republish, sent by someone who looked, publishes them."""
    if not state.legacy or state.submitted_by is not None:
        return ()
    unsure = state.legacy_unsure
    if unsure is None:
        # Imported by a version that did not record it. Nothing done here since (the fold records it then): the old
        # document's word as the post holds it. Acted on since, what this service's results changed of the document
        # cannot be told from the old system's word: where that said the post was publishing or went out, every
        # platform not published here may have gone out (until the projection is rebuilt).
        if imported_only(state):
            unsure = list(_legacy_unsure(state))
        elif state.legacy_status == "publishing" or state.document.insights.published_at is not None:
            unsure = list(state.targeted)
        else:
            unsure = []
    attempted = {a.platform for a in state.attempts.values()}
    return tuple(p for p in unsure if p not in attempted
                 and ((result := state.latest_result(p)) is None or not result.success))


def without_legacy_result(state: PostState) -> tuple[Platform, ...]:
    """The targeted platforms of an imported post that have neither a result (the old system kept none) nor an attempt
    of this service: nothing has published them here."""
    if not state.legacy or state.submitted_by is not None:
        # A post submitted here: its first publish is for every platform.
        return ()
    with_result = {r.platform for r in state.document.insights.publish_results}
    attempted = {a.platform for a in state.attempts.values()}
    return tuple(p for p in state.targeted if p not in with_result and p not in attempted)


def error_message(results: Iterable[PublishResult]) -> str | None:
    """`facebook: Facebook photo upload failed: ...`, one part per failed platform, or None."""
    parts = [f"{r.platform}: {r.error or UNKNOWN_ERROR}" for r in results if not r.success]
    return "; ".join(parts) if parts else None


def post_url(state: PostState) -> str | None:
    """The Facebook post's address; for an Instagram-only post, Instagram's permalink."""
    insights = state.document.insights
    if insights.facebook_post_id is not None:
        return FACEBOOK_POST_URL.format(post_id=insights.facebook_post_id)
    if state.targeted == ("instagram",) and insights.instagram_permalink is not None:
        return insights.instagram_permalink
    return state.legacy_post_url


def derive_document(state: PostState) -> PostInsights:
    """The seed's document from the merged results: status, `error_message` and `post_url` follow them."""
    status = derive_status(state)
    message = error_message(state.document.insights.publish_results)
    if message is None and status == "failed":
        message = _legacy_message(state)
    elif message is not None and state.legacy and (unsure := may_have_gone_out(state)):
        # Beside a failure, a platform that may have gone out under the old system, which that failure does not say.
        failed = {r.platform for r in state.document.insights.publish_results if not r.success}
        message = "; ".join([message, *(f"{p}: {NO_LEGACY_RESULT_UNSURE}" for p in unsure if p not in failed)])
    url = post_url(state)
    current = state.document
    if (current.status, current.error_message, current.post_url) == (status, message, url):
        return current
    return _replaced(current, {"status": status, "error_message": message, "post_url": url})


def _legacy_message(state: PostState) -> str | None:
    """The error message of an imported post that failed without a failed result: per platform nothing published here,
    what the old document said of it (its own message while nothing was done here), or that it kept no result."""
    told = _told(state)
    unsure = may_have_gone_out(state)
    unpublished = without_legacy_result(state)
    if imported_only(state) and state.legacy_status in ("failed", "publishing") and state.legacy_error_message:
        # The old document's own words, and what they leave unsaid of a platform that may have gone out.
        more = [f"{platform}: {NO_LEGACY_RESULT_UNSURE}" for platform in unpublished
                if platform in unsure and platform not in told]
        return "; ".join([state.legacy_error_message, *more])
    parts = [f"{platform}: {NO_LEGACY_RESULT_UNSURE if platform in unsure else told.get(platform, NO_LEGACY_RESULT)}"
             for platform in unpublished]
    return "; ".join(parts) or None


def needed_action(platform: Platform, kind: ErrorKind | None, code: int | None = None,
                  subcode: int | None = None) -> str | None:
    """What the user must do before a retry of `platform` can succeed; None when the service retries by itself.

    `code` and `subcode` are the platform's, where they say more than the kind: a block is waited out, not fixed.
    """
    label = PLATFORM_LABELS[platform]
    if is_platform_block(code, subcode) and kind is ErrorKind.INVALID_REQUEST:
        # (Recorded as transient by an earlier version, the service retries it by itself, so it asks nothing.)
        return f"wait until {label} lifts its temporary block, then retry"
    if kind is ErrorKind.AUTH and code == UNKNOWN_OBJECT_CODE:
        # Meta does not know the account's Page or Instagram account (or not through its token): a new token for
        # the same wrong id would not help.
        return f"{RIGHT_ID}{DESTINATIONS[platform]} id"
    if kind is ErrorKind.AUTH:
        return f"re-authenticate {label}"
    if kind is ErrorKind.PERMISSION and subcode == IG_RESTRICTED_SUBCODE:
        return f"sign in to {label} and complete what it asks there (it restricted the account)"
    if kind is ErrorKind.PERMISSION:
        return f"grant the missing permission to {label}"
    if kind is ErrorKind.INVALID_MEDIA:
        return "fix the image URL"
    if kind is ErrorKind.INVALID_REQUEST:
        return FIX_THE_POST
    return None


def next_attempt_number(state: PostState, platform: Platform) -> int:
    """The number the platform's next attempt carries (attempts are numbered per platform from 1)."""
    return max((a.attempt_number for a in state.attempts.values() if a.platform == platform), default=0) + 1


# ---------------------------------------------------------------- old-system documents


def _legacy_results(insights: dict[str, Any]) -> list[PublishResult]:
    """The old `publish_results`, entries that name no known platform or outcome left out.

    A platform with a post id in the insights and no readable entry of its own stands for a success:
    documents from before smart retry have no `publish_results`, and some lists are empty or leave a
    platform out. The post exists there, so a retry must not publish it again.
    """
    raw = insights.get("publish_results")
    results: list[PublishResult] = []
    if isinstance(raw, list):
        for entry in raw:
            result = _legacy_result(entry)
            if result is not None:
                results.append(result)
    listed = {r.platform for r in results}
    facebook_id = _legacy_text(insights.get("facebook_post_id"))
    if facebook_id is not None and "facebook" not in listed:
        results.append(PublishResult(platform="facebook", success=True, post_id=facebook_id))
    instagram_id = _legacy_text(insights.get("instagram_media_id"))
    if instagram_id is not None and "instagram" not in listed:
        results.append(PublishResult(platform="instagram", success=True, post_id=instagram_id,
                                     permalink=_legacy_text(insights.get("instagram_permalink"))))
    return results


# Facebook's hosts for a post's address, and Instagram's for a media's permalink.
_FACEBOOK_HOSTS = ("facebook.com", "www.facebook.com", "m.facebook.com", "web.facebook.com", "business.facebook.com")
_INSTAGRAM_HOSTS = ("instagram.com", "www.instagram.com")


def _facebook_post_of(url: object) -> str | None:
    """The post id (`<page id>_<post id>`) an address of a Facebook post names, if it is one: the seed's `post_url`
    (`https://www.facebook.com/<page id>_<post id>`), with or without `www`, a trailing slash or a query, and
    Facebook's own `/<page id>/posts/<post id>` and `permalink.php?story_fbid=<post id>&id=<page id>`."""
    parts = _web_address(url, _FACEBOOK_HOSTS)
    if parts is None:
        return None
    path, query = parts
    steps = [step for step in path.split("/") if step]
    if len(steps) == 1 and re.fullmatch(r"[0-9]+_[0-9]+", steps[0]):
        return steps[0]
    if len(steps) == 3 and steps[1] == "posts" and steps[0].isdigit() and steps[2].isdigit():
        return f"{steps[0]}_{steps[2]}"
    if steps == ["permalink.php"]:
        story, page = query.get("story_fbid", [""])[0], query.get("id", [""])[0]
        if story.isdigit() and page.isdigit():
            return f"{page}_{story}"
    return None


def _instagram_permalink_of(url: object) -> str | None:
    """The address itself when it is an Instagram media's permalink (`https://www.instagram.com/p/<code>/`, or
    `/reel/<code>/`), as an Instagram-only post's `post_url` holds it."""
    parts = _web_address(url, _INSTAGRAM_HOSTS)
    if parts is None:
        return None
    steps = [step for step in parts[0].split("/") if step]
    if len(steps) == 2 and steps[0] in ("p", "reel") and re.fullmatch(r"[A-Za-z0-9_-]+", steps[1]):
        return f"https://www.instagram.com/{steps[0]}/{steps[1]}/"
    return None


def _web_address(url: object, hosts: tuple[str, ...]) -> tuple[str, dict[str, list[str]]] | None:
    """The path and query of an http(s) address on one of `hosts`; None for anything else."""
    if not isinstance(url, str) or len(url) > LEGACY_TEXT_LIMIT:
        return None
    try:
        parsed = urlsplit(url.strip())
    except ValueError:
        return None
    if parsed.scheme.lower() not in ("http", "https") or (parsed.hostname or "").lower() not in hosts:
        return None
    return parsed.path, parse_qs(parsed.query)


# The longest text an import keeps of one of the old document's fields (an error, an id, an address), as a
# platform's own error message is bounded: the insights message must stay well within the broker's 1 MB.
LEGACY_TEXT_LIMIT = 2000


def _legacy_text(value: object) -> str | None:
    """A non-empty string, or a number written as one (old rows stored some ids as numbers). A token the old system
    wrote into it (an error echoing a request's `access_token=...`) is scrubbed out: the projection, the insights
    topic and the pages would show it. Past `LEGACY_TEXT_LIMIT` characters it is cut, and ends with "…"."""
    if isinstance(value, str) and value:
        text = scrub_shapes(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        return None
    return text if len(text) <= LEGACY_TEXT_LIMIT else text[:LEGACY_TEXT_LIMIT - 1] + "…"


# How old rows wrote `success` besides true and false.
_LEGACY_BOOLEANS: dict[object, bool] = {"true": True, "false": False, 1: True, 0: False}


def _legacy_result(entry: object) -> PublishResult | None:
    if not isinstance(entry, dict):
        return None
    platform = entry.get("platform")
    if isinstance(platform, str):
        platform = platform.strip().lower()  # "Facebook", as some rows wrote it
    if platform not in PLATFORMS:
        return None
    known = cast(Platform, platform)

    def text(*names: str) -> str | None:
        return next((found for found in map(_legacy_text, map(entry.get, names)) if found is not None), None)

    post_id = text("postId", "post_id", "id")
    success = entry.get("success")
    if not isinstance(success, bool):
        key = success.strip().lower() if isinstance(success, str) else success
        readable = isinstance(key, (str, int)) and key in _LEGACY_BOOLEANS
        # An entry that does not say clearly but names its post: the post exists on the platform.
        success = _LEGACY_BOOLEANS[key] if readable else (True if post_id is not None else None)
    if success is None:
        return None
    if success:
        return PublishResult(platform=known, success=True, post_id=post_id, permalink=text("permalink"))
    return PublishResult(platform=known, success=False, error=text("error", "message") or UNKNOWN_ERROR)


# Meta's words and codes in old failure messages, for the kinds whose fix is the user's. Anything else (or
# nothing recognised) asks nothing of the user, as a transient failure would not.
# A permission's code first: "(#210) A page access token is required" names a token but asks for a permission.
_LEGACY_KINDS: tuple[tuple[ErrorKind, re.Pattern[str]], ...] = (
    (ErrorKind.PERMISSION, re.compile(r"\(#(?:10|2\d\d)\)|permissions? error|does not have permission",
                                      re.IGNORECASE)),
    (ErrorKind.AUTH, re.compile(r"access token|session has expired|\(#190\)|re-?authenticate|token (?:has )?expired",
                                re.IGNORECASE)),
    (ErrorKind.INVALID_MEDIA, re.compile(r"invalid image|image file|\(#324\)|media download has failed|"
                                         r"media could not be (?:fetched|processed)", re.IGNORECASE)),
)


def _told(state: PostState) -> dict[Platform, str]:
    """What an imported post's old `error_message` says failed, per platform, where the old document failed or was
    publishing the post (one caught mid-publish may name an earlier try's failure)."""
    return _legacy_messages(state.legacy_error_message) if state.legacy_status in ("failed", "publishing") else {}


def _legacy_messages(error_message: str | None) -> dict[Platform, str]:
    """The per-platform parts of an old `error_message` ("facebook: ...; instagram: ..."), as the seed writes it."""
    told: dict[Platform, str] = {}
    for part in (error_message or "").split("; "):
        name, _, message = part.partition(": ")
        platform = name.strip().lower()
        if message and platform in PLATFORMS:
            told[platform] = message
    return told


def legacy_error_kind(message: str | None) -> ErrorKind | None:
    """The kind of an old-system failure, read from its message (old documents kept no kind), if it is plain."""
    if not message:
        return None
    return next((kind for kind, pattern in _LEGACY_KINDS if pattern.search(message)), None)


def _legacy_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    try:
        # Through the contract's own type, so an imported time has the precision of every other time.
        return Insights(published_at=parsed).published_at
    except ValueError:
        return None  # no time in UTC (year 1 at a positive offset): as unreadable as any other
