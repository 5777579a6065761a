"""Resolving an attempt left without a result when the platform cannot be asked whether it went out."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from projections.decide import decide
from projections.fold import apply_all
from projections.state import PostState
from publishers.base import AccountCredentials, PublishOutcome
from schemas.commands import ADDRESS_LIMIT, PostContent, ResolveAttemptRequested
from schemas.common import ErrorKind
from schemas.events import AttemptOutcomeUnknown, Event, PlatformError, PlatformResult
from smartretry.credentials import UnknownAccount
from streams.handler import CommandHandler, HandlerConfig, OutcomeUnknown
from streams.topics import Topics
from tests.unit.test_fold import CONTENT, History


class NoCredentials:
    def stored_tokens(self) -> frozenset[str]:
        return frozenset()

    def get(self, account_id: str) -> AccountCredentials:
        raise UnknownAccount(
            f"no credentials for account {account_id!r}: set them with `smartretry accounts set-token`")


class Lookups:
    """A publisher whose look-up answers as told, and that must never publish."""

    finds_by_caption = True

    def __init__(self, answer: PublishOutcome | None = None) -> None:
        self.answer = answer
        self.asked = 0
        self.recorded: tuple[str, ...] = ()

    async def find_existing(self, *_args: Any, **kwargs: Any) -> PublishOutcome | None:
        self.asked += 1
        self.recorded = tuple(kwargs.get("recorded", ()))
        return self.answer

    async def publish(self, *_args: Any, **_kwargs: Any) -> PublishOutcome:
        raise AssertionError("an attempt whose outcome is unknown must not be published again")


class Projection:
    """The service's other posts, as the store gives them to a look-up."""

    def __init__(self, *others: PostState) -> None:
        self.others = others

    def updated_since(self, since: datetime, *, caption: str = "", excluding: str | None = None) -> list[PostState]:
        return [o for o in self.others if o.post_id != excluding and o.updated_at is not None and o.updated_at >= since]


class Credentials:
    def __init__(self, *stored: str) -> None:
        self.stored = frozenset(stored)

    def stored_tokens(self) -> frozenset[str]:
        return self.stored

    def get(self, account_id: str) -> AccountCredentials:
        return AccountCredentials(account_id, SecretStr("user-token-value-1"), "747917475065823", None)


def interrupted() -> tuple[History, PostState]:
    history = History()
    history.publish(target="facebook")
    state = apply_all(None, history.events)
    assert state is not None and state.in_flight("facebook") is not None
    return history, state


def handler(credentials: Any, lookups: Lookups, history: History, sent: list[Event],
            projection: Projection | None = None) -> CommandHandler:
    # Long past the attempt's lease: only a look-up saying "no post" may declare it interrupted.
    later = history.at + timedelta(hours=1)
    made = CommandHandler(bootstrap="127.0.0.1:1", topics=Topics(), projection=projection or Projection(),
                          credentials=credentials, publishers={"facebook": lookups},  # type: ignore[dict-item]
                          config=HandlerConfig(reauth_check_seconds=7.0), clock=lambda: later)

    async def emit(event: Event) -> None:
        sent.append(event)

    made.emit = emit  # type: ignore[method-assign]
    return made


async def test_missing_credentials_are_not_taken_for_no_post() -> None:
    history, state = interrupted()
    sent: list[Event] = []
    lookups = Lookups()

    with pytest.raises(OutcomeUnknown) as raised:
        await handler(NoCredentials(), lookups, history, sent)._resolve_interrupted(state)

    assert raised.value.wait_seconds == 7.0
    assert lookups.asked == 0
    assert not any(isinstance(e, PlatformResult) for e in sent), "recording 'not published' would publish it again"
    (unknown,) = sent
    assert isinstance(unknown, AttemptOutcomeUnknown) and unknown.error.kind is ErrorKind.AUTH
    assert "set them with `smartretry accounts set-token`" in unknown.error.message
    after = apply_all(state, sent)
    assert after is not None and after.needed_action == {"facebook": "re-authenticate Facebook"}


async def test_a_refused_look_up_is_recorded_once_and_asked_again_later() -> None:
    history, state = interrupted()
    sent: list[Event] = []
    refused = PublishOutcome.failed("facebook", PlatformError(
        kind=ErrorKind.AUTH, message="Facebook post lookup failed: Error validating access token", http_status=401))
    lookups = Lookups(refused)
    made = handler(Credentials(), lookups, history, sent)

    for _ in range(3):
        with pytest.raises(OutcomeUnknown):
            await made._resolve_interrupted(state)
        state = apply_all(state, sent) or state

    assert lookups.asked == 3
    assert [type(e) for e in sent] == [AttemptOutcomeUnknown], "one event, not one per look-up"
    assert state.status == "publishing" and state.needed_action == {"facebook": "re-authenticate Facebook"}


def resolution(state: PostState, *, published: bool, attempt_id: str | None = None,
               command_id: str = "resolve-1") -> ResolveAttemptRequested:
    return ResolveAttemptRequested(
        command_id=command_id, post_id=state.post_id, platform="facebook", attempt_id=attempt_id,
        published=published, platform_post_id="747917475065823_122104567890123" if published else None,
        note="checked the Page", requested_at=datetime.now(UTC))


REFUSED = PublishOutcome.failed("facebook", PlatformError(
    kind=ErrorKind.AUTH, message="Facebook post lookup failed: Error validating access token", http_status=401))


@pytest.mark.parametrize("published", [True, False])
async def test_an_operators_resolution_settles_an_attempt_the_platform_cannot_be_asked_about(published: bool) -> None:
    history, state = interrupted()
    sent: list[Event] = []
    made = handler(Credentials(), Lookups(REFUSED), history, sent)
    made._register_resolution(resolution(state, published=published))

    await made._resolve_interrupted(state)

    (result,) = sent
    assert isinstance(result, PlatformResult) and result.resolved_by == "resolve-1"
    assert result.success is published and not result.recovered
    after = apply_all(state, sent)
    assert after is not None and after.in_flight("facebook") is None
    if published:
        assert after.status == "posted"
        assert after.document.insights.facebook_post_id == "747917475065823_122104567890123"
    else:
        # Not published: the command that made the attempt carries on (a transient error is retried).
        assert result.error is not None and result.error.kind is ErrorKind.TRANSIENT
        assert "an operator found it was not published (checked the Page)" in result.error.message


async def test_a_post_found_on_the_platform_settles_an_attempt_at_once_and_not_published_waits_for_its_lease() -> None:
    history, state = interrupted()
    attempt = state.in_flight("facebook")
    assert attempt is not None
    for published in (True, False):
        sent: list[Event] = []
        made = handler(Credentials(), Lookups(REFUSED), history, sent)
        made.clock = lambda: attempt.started_at + timedelta(seconds=20)  # type: ignore[method-assign]
        made._register_resolution(resolution(state, published=published))
        if published:
            await made._resolve_interrupted(state)
            (result,) = sent
            assert isinstance(result, PlatformResult) and result.success and result.resolved_by == "resolve-1"
        else:
            # The platform may still hold the request: "not published" could make a retry post it twice.
            with pytest.raises(OutcomeUnknown):
                await made._resolve_interrupted(state)
            assert not any(isinstance(e, PlatformResult) for e in sent)


async def test_a_resolution_settles_one_attempt_never_the_next_call_its_command_makes() -> None:
    # "Not published": the command carries on and calls Facebook again. That call may go out and leave no answer
    # either: what the operator found was of the first call, so the second must wait for its own look-up or word.
    history, state = interrupted()
    sent: list[Event] = []
    made = handler(Credentials(), Lookups(REFUSED), history, sent)
    made._register_resolution(resolution(state, published=False))
    await made._resolve_interrupted(state)
    (settled,) = sent
    assert isinstance(settled, PlatformResult) and settled.resolved_by == "resolve-1"
    history.events.append(settled)
    second = history.attempt("facebook", "cmd-publish")
    state = history.state()
    waiting = state.in_flight("facebook")
    assert waiting is not None and waiting.attempt_id == second

    # The same handler, and one that read the resolution again after a restart (its offset was not committed).
    restarted = handler(Credentials(), Lookups(REFUSED), history, sent)
    restarted._register_resolution(resolution(state, published=False))
    for resolver in (made, restarted):
        sent.clear()
        with pytest.raises(OutcomeUnknown):
            await resolver._resolve_interrupted(state)
        assert not [e for e in sent if isinstance(e, PlatformResult)], "a second call taken for not published"
        assert resolver._resolution_for(state, "facebook") is None
    # Its own turn in the post's commands takes it as done.
    decision = decide(state, resolution(state, published=False))
    assert decision.reject_reason is None and decision.no_op


async def test_a_resolution_naming_no_attempt_never_settles_one_that_began_after_it_was_sent(
        caplog: pytest.LogCaptureFixture) -> None:
    # Sent while the first call waited; that call was settled otherwise (a look-up), and the command called again.
    history, state = interrupted()
    first = state.in_flight("facebook")
    assert first is not None
    sent_at = first.started_at + timedelta(minutes=3)
    history.failure("facebook", first.attempt_id, "Facebook post lookup found no post", ErrorKind.TRANSIENT)
    history.at = sent_at + timedelta(minutes=2)
    second = history.attempt("facebook", "cmd-publish")
    state = history.state()
    late = resolution(state, published=False).model_copy(update={"requested_at": sent_at})
    sent: list[Event] = []
    made = handler(Credentials(), Lookups(REFUSED), history, sent)
    made._register_resolution(late)

    with pytest.raises(OutcomeUnknown):
        await made._resolve_interrupted(state)

    assert not [e for e in sent if isinstance(e, PlatformResult)], "a call the operator never checked was settled"
    (warning,) = [r for r in caplog.records if "resolve-1" in r.getMessage()]
    assert f"{second}, began after this resolution was sent" in warning.getMessage()
    decision = decide(state, late)
    assert decision.reject_reason is not None and "name the attempt to resolve this one" in decision.reject_reason
    # Named, it is the operator's word on that call.
    assert made._resolution_for(state, "facebook") is None
    made._register_resolution(late.model_copy(update={"attempt_id": second, "command_id": "resolve-2"}))
    assert made._resolution_for(state, "facebook") is not None


async def test_a_resolution_with_the_longest_address_a_command_takes_is_recorded() -> None:
    history, state = interrupted()
    sent: list[Event] = []
    made = handler(Credentials(), Lookups(REFUSED), history, sent)
    prefix = "https://www.facebook.com/747917475065823/posts/"
    address = prefix + "1" * (ADDRESS_LIMIT - len(prefix))
    made._register_resolution(resolution(state, published=True).model_copy(update={"permalink": address}))

    await made._resolve_interrupted(state)

    (result,) = sent
    assert isinstance(result, PlatformResult) and result.permalink == address


async def test_a_resolution_whose_note_carries_a_stored_token_settles_nothing() -> None:
    # Stored by another process (the API): this handler had not seen it when the resolution came in.
    token = "another-shops-stored-token-5a6b7c"
    history, state = interrupted()
    sent: list[Event] = []
    made = handler(Credentials(token), Lookups(REFUSED), history, sent)
    carrying = resolution(state, published=False).model_copy(update={"note": f"checked with {token}"})
    made._register_resolution(carrying)

    with pytest.raises(OutcomeUnknown):
        await made._resolve_interrupted(state)

    assert not [e for e in sent if isinstance(e, PlatformResult)]
    assert not [e for e in sent if token in e.model_dump_json()]
    assert made._resolution_for(state, "facebook") is None


async def test_a_resolution_waits_for_the_attempts_lease_and_names_the_right_attempt() -> None:
    history, state = interrupted()
    attempt = state.in_flight("facebook")
    assert attempt is not None
    sent: list[Event] = []

    # Within the lease the attempt's own handler may still be calling Facebook: the operator's word waits.
    early = handler(Credentials(), Lookups(REFUSED), history, sent)
    early.clock = lambda: attempt.started_at + timedelta(seconds=10)
    early._register_resolution(resolution(state, published=False))
    with pytest.raises(OutcomeUnknown):
        await early._resolve_interrupted(state)
    assert not any(isinstance(e, PlatformResult) for e in sent)

    # Another attempt's resolution is not this one's.
    sent.clear()
    other = handler(Credentials(), Lookups(REFUSED), history, sent)
    other._register_resolution(resolution(state, published=False, attempt_id="another"))
    with pytest.raises(OutcomeUnknown):
        await other._resolve_interrupted(state)
    assert not any(isinstance(e, PlatformResult) for e in sent)


async def test_the_platforms_own_answer_comes_before_an_operators_resolution() -> None:
    history, state = interrupted()
    sent: list[Event] = []
    found = PublishOutcome.published("facebook", "747917475065823_999", None)
    made = handler(Credentials(), Lookups(found), history, sent)
    made._register_resolution(resolution(state, published=False))

    await made._resolve_interrupted(state)

    (result,) = sent
    assert isinstance(result, PlatformResult) and result.success and result.recovered
    assert result.resolved_by is None and result.platform_post_id == "747917475065823_999"


async def test_a_resolution_naming_another_attempt_is_dropped_at_once_and_takes_no_others_place(
        caplog: pytest.LogCaptureFixture) -> None:
    history, state = interrupted()
    attempt = state.in_flight("facebook")
    assert attempt is not None
    sent: list[Event] = []
    made = handler(Credentials(), Lookups(REFUSED), history, sent)
    made._register_resolution(resolution(state, published=True, attempt_id=attempt.attempt_id))
    made._register_resolution(resolution(state, published=False, attempt_id="another", command_id="resolve-2"))

    await made._resolve_interrupted(state)

    (result,) = sent
    assert isinstance(result, PlatformResult) and result.resolved_by == "resolve-1" and result.success
    (warning,) = [r for r in caplog.records if "resolve-2" in r.getMessage()]
    assert warning.levelname == "WARNING"
    assert f"attempt waiting for a result is {attempt.attempt_id}, not another" in warning.getMessage()
    # Both gone: one refused, the other spent on the attempt it settled.
    assert state.post_id not in made._resolutions


async def test_within_the_lease_a_look_up_that_finds_no_post_is_asked_again_when_the_lease_ends() -> None:
    history, state = interrupted()
    attempt = state.in_flight("facebook")
    assert attempt is not None
    sent: list[Event] = []
    made = handler(Credentials(), Lookups(None), history, sent)
    made.clock = lambda: attempt.started_at + timedelta(seconds=40)

    with pytest.raises(OutcomeUnknown) as raised:
        await made._resolve_interrupted(state)

    # Not every second or two: a Facebook look-up is up to ten Graph calls against the Page's rate limit.
    assert raised.value.wait_seconds == pytest.approx(made.config.attempt_lease_seconds - 40)
    # Meanwhile the post says what it waits for (a handler restarted mid-call), not "publishing" with no word.
    (unknown,) = sent
    assert isinstance(unknown, AttemptOutcomeUnknown)
    ends = attempt.started_at + timedelta(seconds=made.config.attempt_lease_seconds)
    assert (f"looked up again when its lease ends ({ends:%H:%M:%S} UTC), and published again if none shows"
            in unknown.error.message)
    after = apply_all(state, sent)
    assert after is not None and after.status == "publishing" and after.needed_action == {}


async def looked_up_within_the_lease(history: History, state: PostState, lookups: Lookups | None = None,
                                           rounds: int = 2) -> tuple[PostState, list[Event]]:
    """The post after its attempt was looked up `rounds` times 40 s into its lease, `lookups` answering (default:
    no post); and what was sent."""
    attempt = state.in_flight("facebook")
    assert attempt is not None
    sent: list[Event] = []
    made = handler(Credentials(), lookups or Lookups(None), history, sent)
    made.clock = lambda: attempt.started_at + timedelta(seconds=40)
    for _ in range(rounds):
        with pytest.raises(OutcomeUnknown):
            await made._resolve_interrupted(state)
        state = apply_all(state, sent) or state
    return state, sent


def left_unanswered(reason: str) -> tuple[History, PostState]:
    """A Facebook attempt whose call left no answer to trust (`reason`, a 5xx: the post may exist all the same)."""
    history = History()
    attempts = history.publish(target="facebook")
    history.unknown("facebook", attempts["facebook"], ErrorKind.TRANSIENT,
                    f"{reason}; checking whether the post went out before publishing again")
    state = apply_all(None, history.events)
    assert state is not None
    return history, state


async def test_while_the_lease_runs_the_post_keeps_saying_why_its_call_left_no_answer_to_trust() -> None:
    # Meta's words end with a full stop: joined to what follows by "; " without it.
    history, state = left_unanswered("Facebook photo upload failed: 500 - An unknown error occurred. Please retry "
                                     "your request later.")
    attempt = state.in_flight("facebook")
    assert attempt is not None
    state, sent = await looked_up_within_the_lease(history, state)

    (unknown,) = sent  # said once
    assert isinstance(unknown, AttemptOutcomeUnknown)
    ends = attempt.started_at + timedelta(seconds=HandlerConfig().attempt_lease_seconds)
    assert unknown.error.message == (
        "Facebook photo upload failed: 500 - An unknown error occurred. Please retry your request later; Facebook has "
        "no post of this attempt yet: it may still be under way, so it is looked up again when its lease ends "
        f"({ends:%H:%M:%S} UTC), and published again if none shows")


@pytest.mark.parametrize("detail", ["An unknown error", "x" * 1500], ids=["short", "long"])
async def test_a_look_up_that_fails_too_keeps_the_calls_own_reason_in_view_and_says_it_once(detail: str) -> None:
    history, state = left_unanswered("Facebook photo upload failed: 500 - Service temporarily unavailable")
    lookup = f"Facebook post lookup failed: 500 - {detail}"
    failing = Lookups(PublishOutcome.failed("facebook", PlatformError(
        kind=ErrorKind.TRANSIENT, http_status=500, message=lookup)))

    state, sent = await looked_up_within_the_lease(history, state, failing, rounds=4)

    (unknown,) = sent  # said once, however long the look-up's reason
    assert isinstance(unknown, AttemptOutcomeUnknown) and len(unknown.error.message) <= 2000
    assert unknown.error.message.startswith("Facebook photo upload failed: 500 - Service")
    assert unknown.error.message.endswith(f"; {lookup}")


async def test_past_the_lease_a_look_up_that_finds_no_post_records_a_failure_that_says_so() -> None:
    history, state = interrupted()
    sent: list[Event] = []

    await handler(Credentials(), Lookups(None), history, sent)._resolve_interrupted(state)

    (result,) = sent
    assert isinstance(result, PlatformResult) and not result.success and result.recovered
    assert result.error is not None and result.error.message == (
        "Facebook publish failed: its call got no answer to trust (an error, a timeout or a restart), and Facebook "
        "has no such post")
    after = apply_all(state, sent)
    assert after is not None and after.status == "failed"


@pytest.mark.parametrize("looked_up_before", [False, True], ids=["first look-up", "looked up within the lease"])
async def test_past_the_lease_a_call_that_failed_on_metas_side_keeps_metas_words_first(looked_up_before: bool) -> None:
    history, state = left_unanswered("Facebook photo upload failed: 500 - An unknown error has occurred")
    attempt = state.in_flight("facebook")
    assert attempt is not None
    if looked_up_before:
        # The usual way: looked up once while the lease ran (the post then said "no post of this attempt yet").
        state, _ = await looked_up_within_the_lease(history, state)
    sent: list[Event] = []
    made = handler(Credentials(), Lookups(None), history, sent)
    made.clock = lambda: attempt.started_at + timedelta(seconds=made.config.attempt_lease_seconds + 1)

    await made._resolve_interrupted(state)

    (result,) = sent
    assert isinstance(result, PlatformResult) and not result.success and result.recovered
    assert result.error is not None and result.error.message == (
        "Facebook photo upload failed: 500 - An unknown error has occurred; Facebook publish failed: its call got no "
        "answer to trust (an error, a timeout or a restart), and Facebook has no such post")


async def test_no_post_found_by_a_look_up_asked_within_the_lease_is_no_failure_though_it_ends_after() -> None:
    history, state = interrupted()
    attempt = state.in_flight("facebook")
    assert attempt is not None
    sent: list[Event] = []
    lookups = Lookups(None)
    made = handler(Credentials(), lookups, history, sent)
    lease = made.config.attempt_lease_seconds
    now = [attempt.started_at + timedelta(seconds=lease - 5)]
    made.clock = lambda: now[0]
    slow_answer = lookups.find_existing

    async def slow(*args: Any, **kwargs: Any) -> PublishOutcome | None:
        # Meta is slow (as when the attempt's own call timed out): the answer comes 30 s after it was asked.
        now[0] += timedelta(seconds=30)
        return await slow_answer(*args, **kwargs)

    lookups.find_existing = slow  # type: ignore[method-assign]

    with pytest.raises(OutcomeUnknown) as raised:
        await made._resolve_interrupted(state)

    # "No post" as of 5 s before the lease ended: the attempt's call may still have been settling at Facebook.
    # Recorded as a failure, its retry could publish the post a second time.
    assert not any(isinstance(e, PlatformResult) for e in sent)
    assert raised.value.wait_seconds == pytest.approx(5)
    # Asked again once the lease is over, "no post" settles it.
    await made._resolve_interrupted(apply_all(state, sent) or state)
    assert isinstance(sent[-1], PlatformResult) and not sent[-1].success


async def test_once_re_authenticated_the_post_stops_asking_for_it_while_it_waits_out_the_lease() -> None:
    history = History()
    attempts = history.publish(target="facebook")
    history.unknown("facebook", attempts["facebook"])  # the look-up was refused for the token
    state = apply_all(None, history.events)
    assert state is not None and state.needed_action == {"facebook": "re-authenticate Facebook"}
    state, sent = await looked_up_within_the_lease(history, state)  # renewed: the look-up goes through

    (unknown,) = sent  # said once
    assert isinstance(unknown, AttemptOutcomeUnknown) and unknown.error.kind is ErrorKind.TRANSIENT
    assert "looked up again when its lease ends" in unknown.error.message
    assert state.needed_action == {} and state.status == "publishing"


async def test_a_rate_limited_look_up_is_not_asked_again_before_the_limit_ends() -> None:
    history, state = interrupted()
    limited = PublishOutcome.failed("facebook", PlatformError(
        kind=ErrorKind.RATE_LIMITED, message="Facebook post lookup failed: 400 - Application request limit reached",
        code=4, http_status=400, retry_after_s=600.0))
    made = handler(Credentials(), Lookups(limited), history, [])

    with pytest.raises(OutcomeUnknown) as raised:
        await made._resolve_interrupted(state)

    assert raised.value.wait_seconds == 600.0


async def test_a_look_up_is_told_the_post_the_platform_already_has_on_record() -> None:
    # Published once, then force-republished; the republish's handler died before its result.
    history = History()
    first = history.publish(target="facebook")
    history.success("facebook", first["facebook"], "747917475065823_1")
    history.retry("cmd-force", ("facebook",), forced=True)
    state = apply_all(None, history.events)
    assert state is not None and state.in_flight("facebook") is not None
    lookups = Lookups(None)

    await handler(Credentials(), lookups, history, [])._resolve_interrupted(state)

    assert lookups.recorded == ("747917475065823_1",)


async def test_a_look_up_is_told_every_post_the_platform_has_on_record_not_only_the_latest() -> None:
    # Published, force-republished (a second post, same caption), then force-republished again: that handler died
    # before its result. Facebook's first post must not be taken for the third attempt's either.
    history = History()
    first = history.publish(target="facebook")
    history.success("facebook", first["facebook"], "747917475065823_1")
    second = history.retry("cmd-force-1", ("facebook",), forced=True)
    history.success("facebook", second["facebook"], "747917475065823_2")
    history.retry("cmd-force-2", ("facebook",), forced=True)
    state = apply_all(None, history.events)
    assert state is not None and state.in_flight("facebook") is not None
    lookups = Lookups(None)

    await handler(Credentials(), lookups, history, [])._resolve_interrupted(state)

    assert lookups.recorded == ("747917475065823_1", "747917475065823_2")


async def test_another_posts_earlier_posts_are_no_match_either() -> None:
    other = History(post_id="01KA8MNE2DT1E31F8Z3TJHF97Z")
    first = other.publish(target="facebook")
    other.success("facebook", first["facebook"], "747917475065823_77")
    again = other.retry("cmd-force", ("facebook",), forced=True)
    other.success("facebook", again["facebook"], "747917475065823_78")
    other_state = apply_all(None, other.events)
    assert other_state is not None
    history, state = interrupted()
    lookups = Lookups(None)

    await handler(Credentials(), lookups, history, [], Projection(other_state))._resolve_interrupted(state)

    assert lookups.recorded == ("747917475065823_77", "747917475065823_78")


def other_post(*, published: bool, caption: str | None = None) -> PostState:
    """Another post of the account's with the same caption (unless told), published at the same time."""
    other = History(post_id="01KA8MNE2DT1E31F8Z3TJHF97Z")
    attempts = other.publish(target="facebook")
    if caption is not None:
        other.retry("cmd-fix", ("facebook",), content=PostContent(caption=caption, image_url=CONTENT.image_url))
    if published:
        other.success("facebook", attempts["facebook"], "747917475065823_77")
    state = apply_all(None, other.events)
    assert state is not None
    return state


async def test_a_look_up_never_takes_another_posts_recorded_post_for_its_own() -> None:
    # Two posts with one caption: the other went out, this one's call failed before Facebook made anything.
    history, state = interrupted()
    lookups = Lookups(None)

    await handler(Credentials(), lookups, history, [], Projection(other_post(published=True)))._resolve_interrupted(
        state)

    assert lookups.recorded == ("747917475065823_77",)


async def test_a_post_found_while_another_with_its_caption_awaits_its_result_is_not_taken_for_this_ones() -> None:
    history, state = interrupted()
    sent: list[Event] = []
    found = PublishOutcome.published("facebook", "747917475065823_77", None)
    made = handler(Credentials(), Lookups(found), history, sent, Projection(other_post(published=False)))

    with pytest.raises(OutcomeUnknown):
        await made._resolve_interrupted(state)

    # Asked again once the other post's result is in (and its post then never taken for this one's).
    (unknown,) = sent
    assert isinstance(unknown, AttemptOutcomeUnknown) and "could not tell" in unknown.error.message


@pytest.mark.parametrize("seconds", [40, 3600], ids=["within the lease", "both past their leases"])
async def test_two_posts_of_one_caption_waiting_on_each_others_look_ups_ask_someone_to_tell_them_apart(
        seconds: int) -> None:
    history, state = interrupted()
    attempt = state.in_flight("facebook")
    assert attempt is not None
    sent: list[Event] = []
    found = PublishOutcome.published("facebook", "747917475065823_77", None)
    # The other post's attempt started with this one's, and has no result either.
    made = handler(Credentials(), Lookups(found), history, sent, Projection(other_post(published=False)))
    made.clock = lambda: attempt.started_at + timedelta(seconds=seconds)

    with pytest.raises(OutcomeUnknown):
        await made._resolve_interrupted(state)

    (unknown,) = sent
    after = apply_all(state, sent)
    assert after is not None and after.status == "publishing"
    if seconds < made.config.attempt_lease_seconds:
        # The other's call may still come back with its result, which settles whose post was found.
        assert unknown.error.kind is ErrorKind.TRANSIENT and after.needed_action == {}
    else:
        # Neither call can come back any more, and each look-up waits for the other's: without a word to
        # the user, both posts would show "publishing" for ever.
        assert after.needed_action == {"facebook": "check Facebook for the post, then resolve the attempt"}
        assert "check Facebook for the post, then resolve the attempt (smartretry resolve)" in unknown.error.message


async def test_a_post_whose_caption_differs_only_in_blanks_is_a_claim_as_the_look_up_matches_them_alike() -> None:
    # The look-up takes a post whose text differs in blanks alone for the attempt's (Meta may store them otherwise):
    # another post of ours with such a caption, recorded, is no post of this one's.
    history, state = interrupted()
    assert state.content is not None
    lookups = Lookups(None)
    spaced = state.content.caption.replace(" ", "  ", 1) + "\r\n"
    others = Projection(other_post(published=True, caption=spaced))

    await handler(Credentials(), lookups, history, [], others)._resolve_interrupted(state)

    assert lookups.recorded == ("747917475065823_77",)


async def test_posts_with_another_caption_are_no_claim_on_what_a_look_up_finds() -> None:
    history, state = interrupted()
    sent: list[Event] = []
    found = PublishOutcome.published("facebook", "747917475065823_5", None)
    lookups = Lookups(found)
    others = Projection(other_post(published=True, caption="Winter sale"))

    await handler(Credentials(), lookups, history, sent, others)._resolve_interrupted(state)

    assert lookups.recorded == ()
    (result,) = sent
    assert isinstance(result, PlatformResult) and result.recovered and result.platform_post_id == "747917475065823_5"


async def test_the_look_ups_own_reason_takes_the_place_of_the_unanswered_calls() -> None:
    history = History()
    attempts = history.publish(target="facebook")
    history.unknown("facebook", attempts["facebook"], ErrorKind.TRANSIENT,
                    "Facebook photo upload failed: 500 - error; checking whether the post went out")
    state = apply_all(None, history.events)
    assert state is not None
    too_busy = PublishOutcome.failed("facebook", PlatformError(
        kind=ErrorKind.TRANSIENT, message="Facebook post lookup could not tell: the Page has too many posts"))
    sent: list[Event] = []
    made = handler(Credentials(), Lookups(too_busy), history, sent)

    for _ in range(2):
        with pytest.raises(OutcomeUnknown):
            await made._resolve_interrupted(state)
        state = apply_all(state, sent) or state

    (unknown,) = sent
    assert isinstance(unknown, AttemptOutcomeUnknown) and "too many posts" in unknown.error.message
    attempt = state.in_flight("facebook")
    assert attempt is not None and attempt.lookup_error == too_busy.error


class PagesByAccount:
    """Accounts and the Facebook Page each publishes to: two businesses' accounts may share one Page."""

    def __init__(self, pages: dict[str, str]) -> None:
        self.pages = pages

    def stored_tokens(self) -> frozenset[str]:
        return frozenset()

    def get(self, account_id: str) -> AccountCredentials:
        return AccountCredentials(account_id, SecretStr("user-token-value-1"), self.pages[account_id], None)


def of_account(state: PostState, account: str) -> PostState:
    return state.model_copy(update={"account": account})


async def test_a_post_another_account_on_record_for_the_same_page_is_never_taken_for_this_ones() -> None:
    # Two accounts connected to one Page, one caption: the other account's post went out; this one's call failed
    # before Facebook made anything. The look-up finds the other's post: it must not take it.
    history, state = interrupted()
    lookups = Lookups(None)
    others = Projection(of_account(other_post(published=True), "acct-2"))
    pages = PagesByAccount({"acct-1": "747917475065823", "acct-2": "747917475065823"})

    await handler(pages, lookups, history, [], others)._resolve_interrupted(state)

    assert lookups.recorded == ("747917475065823_77",)


async def test_a_post_found_while_another_account_on_the_same_page_awaits_its_result_is_not_taken() -> None:
    history, state = interrupted()
    sent: list[Event] = []
    found = PublishOutcome.published("facebook", "747917475065823_77", None)
    others = Projection(of_account(other_post(published=False), "acct-2"))
    pages = PagesByAccount({"acct-1": "747917475065823", "acct-2": "747917475065823"})

    with pytest.raises(OutcomeUnknown):
        await handler(pages, Lookups(found), history, sent, others)._resolve_interrupted(state)
    (unknown,) = sent
    assert isinstance(unknown, AttemptOutcomeUnknown) and "could not tell" in unknown.error.message


async def test_an_attempt_awaiting_its_result_on_another_page_does_not_hold_up_a_look_up() -> None:
    history, state = interrupted()
    sent: list[Event] = []
    found = PublishOutcome.published("facebook", "747917475065823_5", None)
    others = Projection(of_account(other_post(published=False), "acct-2"))
    pages = PagesByAccount({"acct-1": "747917475065823", "acct-2": "102938475610293"})

    await handler(pages, Lookups(found), history, sent, others)._resolve_interrupted(state)

    (result,) = sent
    assert isinstance(result, PlatformResult) and result.recovered and result.platform_post_id == "747917475065823_5"


async def test_an_attempt_on_record_for_an_account_whose_page_is_not_known_now_holds_up_a_look_up() -> None:
    # The other account was connected again without its Page since: which Page its attempt went to cannot be told.
    history, state = interrupted()
    sent: list[Event] = []
    found = PublishOutcome.published("facebook", "747917475065823_77", None)
    others = Projection(of_account(other_post(published=False), "acct-2"))

    class SomePagesKnown(PagesByAccount):
        def get(self, account_id: str) -> AccountCredentials:
            return AccountCredentials(account_id, SecretStr("user-token-value-1"), self.pages.get(account_id), None)

    with pytest.raises(OutcomeUnknown):
        await handler(SomePagesKnown({"acct-1": "747917475065823"}), Lookups(found), history, sent,
                      others)._resolve_interrupted(state)
    (unknown,) = sent
    assert isinstance(unknown, AttemptOutcomeUnknown) and "could not tell" in unknown.error.message


class HangingLookups(Lookups):
    async def find_existing(self, *_args: Any, **kwargs: Any) -> PublishOutcome | None:
        self.asked += 1
        await asyncio.sleep(3600)
        return None


async def test_a_look_up_the_graph_api_never_answers_is_given_up_after_the_attempt_timeout_and_asked_again() -> None:
    history, state = interrupted()
    sent: list[Event] = []
    made = handler(Credentials(), HangingLookups(), history, sent)
    made.config = replace(made.config, attempt_timeout_seconds=0.2)

    with pytest.raises(OutcomeUnknown):
        await asyncio.wait_for(made._resolve_interrupted(state), 10)

    (unknown,) = sent
    assert isinstance(unknown, AttemptOutcomeUnknown)
    assert unknown.error.kind is ErrorKind.TRANSIENT
    assert "Facebook post lookup did not finish within" in unknown.error.message


def both_interrupted(facebook: Lookups, instagram: Lookups, sent: list[Event]) -> tuple[CommandHandler, PostState]:
    history = History()
    history.publish(target="both")
    state = apply_all(None, history.events)
    assert state is not None and state.in_flight("facebook") and state.in_flight("instagram")
    later = history.at + timedelta(hours=1)
    made = CommandHandler(bootstrap="127.0.0.1:1", topics=Topics(), projection=Projection(), credentials=Credentials(),
                          publishers={"facebook": facebook, "instagram": instagram},  # type: ignore[dict-item]
                          config=HandlerConfig(reauth_check_seconds=7.0), clock=lambda: later)

    async def emit(event: Event) -> None:
        sent.append(event)

    made.emit = emit  # type: ignore[method-assign]
    return made, state


INSTAGRAM_FOUND = PublishOutcome.published("instagram", "18107758234627017",
                                           "https://www.instagram.com/p/DRJ1nlKDgY9/")
CANNOT_TELL = PublishOutcome.failed("facebook", PlatformError(
    kind=ErrorKind.TRANSIENT, message="Facebook post lookup could not tell: the Page's posts could not be read"))


async def test_one_platforms_look_up_that_cannot_tell_does_not_keep_the_others_waiting() -> None:
    sent: list[Event] = []
    facebook, instagram = Lookups(CANNOT_TELL), Lookups(INSTAGRAM_FOUND)
    made, state = both_interrupted(facebook, instagram, sent)

    with pytest.raises(OutcomeUnknown) as raised:
        await made._resolve_interrupted(state)

    assert (facebook.asked, instagram.asked) == (1, 1)
    assert "Facebook could not say whether attempt" in str(raised.value)
    after = apply_all(state, sent)
    assert after is not None
    assert after.in_flight("instagram") is None, "Instagram's post was found: recorded, whatever Facebook says"
    assert after.document.insights.instagram_media_id == "18107758234627017"
    assert after.in_flight("facebook") is not None and after.status == "publishing"


async def test_an_operators_resolution_of_one_platform_applies_while_the_other_cannot_be_told() -> None:
    sent: list[Event] = []
    instagram_refused = PublishOutcome.failed("instagram", PlatformError(
        kind=ErrorKind.TRANSIENT, message="Instagram post lookup could not tell: the media could not be read"))
    facebook, instagram = Lookups(CANNOT_TELL), Lookups(instagram_refused)
    made, state = both_interrupted(facebook, instagram, sent)
    made._register_resolution(ResolveAttemptRequested(
        command_id="resolve-ig", post_id=state.post_id, platform="instagram", published=True,
        platform_post_id="18107758234627017", permalink="https://www.instagram.com/p/DRJ1nlKDgY9/",
        note="checked the account", requested_at=datetime.now(UTC)))

    with pytest.raises(OutcomeUnknown):
        await made._resolve_interrupted(state)

    (result,) = [e for e in sent if isinstance(e, PlatformResult)]
    assert result.platform == "instagram" and result.success and result.resolved_by == "resolve-ig"
    after = apply_all(state, sent)
    assert after is not None and after.in_flight("instagram") is None and after.in_flight("facebook") is not None


async def test_a_platform_whose_look_up_waits_out_a_rate_limit_is_not_asked_when_the_other_is_asked_again() -> None:
    sent: list[Event] = []
    limited = PublishOutcome.failed("instagram", PlatformError(
        kind=ErrorKind.RATE_LIMITED, message="Instagram post lookup failed: 400 - Application request limit reached",
        code=4, http_status=400, retry_after_s=600.0))
    facebook, instagram = Lookups(CANNOT_TELL), Lookups(limited)
    made, state = both_interrupted(facebook, instagram, sent)

    start = made.clock()
    for now in (start, start + timedelta(seconds=8), start + timedelta(seconds=16)):
        made.clock = lambda now=now: now  # type: ignore[misc]
        with pytest.raises(OutcomeUnknown) as raised:
            await made._resolve_interrupted(state)
        state = apply_all(state, sent) or state

    # Asked again after Facebook's wait (the shorter), and Instagram not before its limit's end.
    assert raised.value.wait_seconds == 7.0
    assert (facebook.asked, instagram.asked) == (3, 1)
    assert "Instagram attempt" in str(raised.value) and "is looked up again at" in str(raised.value)
    # Once its time has passed, the time kept goes, whatever became of the attempt: none pile up.
    made.clock = lambda: start + timedelta(seconds=700)  # type: ignore[misc]
    with pytest.raises(OutcomeUnknown):
        await made._resolve_interrupted(state)
    assert instagram.asked == 2 and made._look_up_after.keys() <= state.attempts.keys()
    made._look_up_after = {"resolved-elsewhere": start}
    made.clock = lambda: start + timedelta(seconds=701)  # type: ignore[misc]
    with pytest.raises(OutcomeUnknown):
        await made._resolve_interrupted(state)
    assert "resolved-elsewhere" not in made._look_up_after


class SlowLookups(Lookups):
    """A look-up that takes its time (a Page too busy to read, up to the attempt timeout)."""

    def __init__(self, answer: PublishOutcome | None, seconds: float, log: list[str]) -> None:
        super().__init__(answer)
        self.seconds, self.log = seconds, log

    async def find_existing(self, *args: Any, **kwargs: Any) -> PublishOutcome | None:
        await asyncio.sleep(self.seconds)
        self.log.append("facebook answered")
        return await super().find_existing(*args, **kwargs)


async def test_a_slow_look_up_of_one_platform_does_not_hold_back_the_others_result() -> None:
    sent: list[Event] = []
    log: list[str] = []
    facebook, instagram = SlowLookups(CANNOT_TELL, 0.3, log), Lookups(INSTAGRAM_FOUND)
    made, state = both_interrupted(facebook, instagram, sent)

    async def emit(event: Event) -> None:
        if isinstance(event, PlatformResult):
            log.append(f"{event.platform} recorded")
        sent.append(event)

    made.emit = emit  # type: ignore[method-assign]
    with pytest.raises(OutcomeUnknown):
        await made._resolve_interrupted(state)

    assert log == ["instagram recorded", "facebook answered"], "Instagram's post is recorded while Facebook is asked"
