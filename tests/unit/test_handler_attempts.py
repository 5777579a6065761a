"""A platform call ends within the attempt timeout of its attempt's start, which the attempt's lease counts from."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.exc import OperationalError

from projections.fold import apply_all, unresolved
from projections.resume import resume_wait
from projections.state import PostState
from publishers.base import AccountCredentials, PublishOutcome
from schemas.commands import PostContent, PublishRequested
from schemas.common import ErrorKind, Platform
from schemas.events import AttemptOutcomeUnknown, Event, PlatformError, PlatformResult, PublishAttempted
from schemas.ids import attempt_id_for, derived_id
from smartretry.bootstrap import graph_client
from smartretry.settings import Settings
from streams.handler import _WORK, CommandHandler, HandlerConfig, OutcomeUnknown, StoodDown, _Work, backoff_delay
from streams.topics import Topics
from tests.unit.test_fold import History

STARTED = datetime(2025, 11, 17, 10, 10, 13, tzinfo=UTC)
CONTENT = PostContent(caption="Autumn sale starts today", image_url="https://cdn.example.com/autumn-sale.jpg")
ACCOUNT = AccountCredentials("acme", SecretStr("user-token-value-1"), "747917475065823", None)


class SlowFacebook:
    """A platform that takes its time answering; counts the calls made."""

    def __init__(self) -> None:
        self.calls = 0

    async def publish(self, *_args: Any, **_kwargs: Any) -> PublishOutcome:
        self.calls += 1
        await asyncio.sleep(30)
        return PublishOutcome.published("facebook", "747917475065823_1", None)


def handler(publisher: SlowFacebook, now: datetime, sent: list[Event] | None = None) -> CommandHandler:
    made = CommandHandler(bootstrap="127.0.0.1:1", topics=Topics(), projection=None,  # type: ignore[arg-type]
                          credentials=None, publishers={"facebook": publisher},  # type: ignore[dict-item]
                          config=HandlerConfig(attempt_timeout_seconds=120.0), clock=lambda: now)

    async def emit(event: Event) -> None:
        (sent if sent is not None else []).append(event)

    made.emit = emit  # type: ignore[method-assign]
    return made


async def test_an_attempt_whose_time_ran_out_before_the_call_is_not_sent() -> None:
    # The broker took two minutes to take the attempt: a call now could outlive the attempt's lease, and
    # another handler could publish the post again meanwhile.
    facebook = SlowFacebook()
    made = handler(facebook, STARTED + timedelta(seconds=121))

    outcome = await made._call_platform("post-1", "facebook", CONTENT, ACCOUNT, "a1", STARTED)

    assert facebook.calls == 0
    assert not outcome.success and not outcome.outcome_unknown
    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    assert "not started" in outcome.error.message


async def test_a_call_gets_only_what_is_left_of_the_attempt_timeout() -> None:
    facebook = SlowFacebook()
    sent: list[Event] = []
    made = handler(facebook, STARTED + timedelta(seconds=119.95), sent)

    # With the whole timeout the call would run its 30 s; with what is left it is cut, its outcome unknown.
    with pytest.raises(OutcomeUnknown):
        await asyncio.wait_for(made._call_platform("post-1", "facebook", CONTENT, ACCOUNT, "a1", STARTED), 10)
    assert facebook.calls == 1
    # The post says why it is still publishing while the attempt is looked up.
    (unknown,) = sent
    assert isinstance(unknown, AttemptOutcomeUnknown) and unknown.attempt_id == "a1"
    assert unknown.error.kind is ErrorKind.TRANSIENT
    assert "checking whether the post went out before publishing again" in unknown.error.message


class LongWindedFacebook(SlowFacebook):
    """A platform whose answer may have published the post, with an error message at the contract's longest."""

    async def publish(self, *_args: Any, **_kwargs: Any) -> PublishOutcome:
        self.calls += 1
        return PublishOutcome.failed("facebook", PlatformError(kind=ErrorKind.TRANSIENT, http_status=500,
                                                               message="Facebook photo upload failed: " + "x" * 1970),
                                     outcome_unknown=True)


async def test_an_unknown_outcome_with_the_longest_message_is_still_told_on_the_post() -> None:
    sent: list[Event] = []
    made = handler(LongWindedFacebook(), STARTED, sent)

    with pytest.raises(OutcomeUnknown):
        await made._call_platform("post-1", "facebook", CONTENT, ACCOUNT, "a1", STARTED)

    (unknown,) = sent
    assert isinstance(unknown, AttemptOutcomeUnknown) and len(unknown.error.message) <= 2000
    assert unknown.error.message.endswith("checking whether the post went out before publishing again")


def rate_limited_state() -> tuple[History, PostState]:
    """Facebook refused the command's attempt for a rate limit that lifts in 10 minutes; then the handler died."""
    history = History()
    attempts = history.publish(target="facebook")
    history.events.append(PlatformResult(
        event_id="limited", post_id=history.post_id, occurred_at=STARTED, platform="facebook",
        attempt_id=attempts["facebook"], success=False, error=PlatformError(
            kind=ErrorKind.RATE_LIMITED, code=32, http_status=400, retry_after_s=600.0,
            message="Facebook photo upload failed: 400 - Page request limit reached")))
    state = apply_all(None, history.events)
    assert state is not None
    return history, state


def test_a_resumed_command_waits_out_the_rate_limit_its_last_attempt_met() -> None:
    _history, state = rate_limited_state()

    assert resume_wait(state, "cmd-publish", "facebook", 2.0, STARTED + timedelta(seconds=60)) == 540.0
    assert resume_wait(state, "cmd-publish", "facebook", 2.0, STARTED + timedelta(minutes=11)) == 0.0
    # Its own backoff counts where it is the longer wait.
    assert resume_wait(state, "cmd-publish", "facebook", 900.0, STARTED + timedelta(seconds=60)) == 840.0
    # A platform the command has not attempted yet starts at once.
    assert resume_wait(state, "cmd-publish", "instagram", 2.0, STARTED) == 0.0


def test_two_handlers_taking_up_one_command_name_the_same_attempt_and_the_log_holds_one() -> None:
    # A handler lost the partition in a rebalance while its attempt was on its way to the broker; the new
    # owner decided without it. Both name the command's first Facebook attempt the same way.
    history = History()
    history.submit(target="facebook").decide("cmd-publish", ("facebook",))
    mine, theirs = (PublishAttempted(
        event_id=derived_id(attempt_id_for("cmd-publish", "facebook", 1), "attempted"), post_id=history.post_id,
        occurred_at=STARTED + timedelta(seconds=delay), platform="facebook",
        attempt_id=attempt_id_for("cmd-publish", "facebook", 1), attempt_number=1, command_id="cmd-publish")
        for delay in (0, 2))
    state = apply_all(None, [*history.events, theirs, mine])
    assert state is not None and len(state.attempts) == 1

    long_command = "c" * 128
    assert attempt_id_for(long_command, "instagram", 3) != attempt_id_for(long_command, "instagram", 4)
    assert len(derived_id(attempt_id_for(long_command, "instagram", 3), "unanswered")) <= 128


class QuickFacebook:
    """A platform that publishes at once."""

    async def publish(self, *_args: Any, **_kwargs: Any) -> PublishOutcome:
        return PublishOutcome.published("facebook", "747917475065823_2", None)


async def test_an_automatic_retry_taken_up_after_a_restart_is_recorded_as_a_retry() -> None:
    # Facebook failed for a moment; the handler died before its automatic retry. The next one takes it up.
    history = History()
    attempts = history.publish(target="facebook")
    history.failure("facebook", attempts["facebook"], "server hiccup", ErrorKind.TRANSIENT, when=STARTED)
    state = apply_all(None, history.events)
    assert state is not None
    sent: list[Event] = []
    made = CommandHandler(bootstrap="127.0.0.1:1", topics=Topics(), projection=None,  # type: ignore[arg-type]
                          credentials=None, publishers={"facebook": QuickFacebook()},  # type: ignore[dict-item]
                          config=HandlerConfig(), clock=lambda: STARTED + timedelta(minutes=5))

    async def send(event: Event) -> None:
        sent.append(event)

    made.send = send  # type: ignore[method-assign]
    made._assign([0])
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    reading: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    reading.set_result(ACCOUNT)
    command = state.commands["cmd-publish"]

    await made._publish_platform(state, _publish_command(state), "facebook", CONTENT, "acme", reading, 0,
                                 made._progress[0], is_retry=command.is_retry, forced=False,
                                 reason="resumed after an interruption", recorded=done)

    [attempted] = [e for e in sent if isinstance(e, PublishAttempted)]
    # As it would have been had the handler lived: the platform's second attempt is an automatic retry.
    assert attempted.attempt_number == 2 and attempted.is_retry
    final = apply_all(state, sent)
    assert final is not None and final.status == "posted"
    assert final.document.insights.last_retry_at is not None


async def moved_while_recorded(other_first: bool) -> tuple[FlakyPage, list[Event], PostState, CommandHandler]:
    """A handler whose first Facebook attempt is recorded as the group rebalances (the broker came back after a
    restart): the partition moves away before Facebook is called. `other_first`: the partition's new owner, deciding
    without that attempt, recorded its own of the same id first. (Facebook, the events written, the post, the handler.)
    """
    page, topic = FlakyPage(), []
    history, state = decided_for_facebook()
    if other_first:
        history.events.append(PublishAttempted(
            event_id=derived_id(attempt_id_for("cmd-publish", "facebook", 1), "attempted"), post_id=state.post_id,
            occurred_at=history.at - timedelta(seconds=1), platform="facebook",
            attempt_id=attempt_id_for("cmd-publish", "facebook", 1), attempt_number=1, command_id="cmd-publish"))
    made = handler_on_shared_topic(page, topic, history, 0.0)
    pausing = made._wakeups.setdefault(state.post_id, asyncio.Event())  # the post's command here, waiting to look up
    loop = asyncio.get_running_loop()
    reading: asyncio.Future[Any] = loop.create_future()

    def moved_as_recorded() -> None:
        made._revoke([0])
        reading.set_result(ACCOUNT)

    loop.call_soon(moved_as_recorded)
    await made._publish_platform(state, _publish_command(state), "facebook", CONTENT, "acme", reading, 0,
                                 made._progress[0], is_retry=False, forced=False, reason="first publish",
                                 recorded=ready())
    assert pausing.is_set() is not other_first
    return page, topic, apply_all(None, [*history.events, *topic]) or state, made


async def test_an_attempt_recorded_as_the_partition_moved_away_says_it_was_never_called() -> None:
    # Not called, and said so on the attempt: the partition's next owner publishes instead of looking the attempt up
    # and waiting out its lease (asking someone to check Facebook meanwhile).
    page, _topic, after, _made = await moved_while_recorded(other_first=False)

    assert page.calls == 0
    assert unresolved(after) == ()
    [attempt] = after.attempts.values()
    assert attempt.success is False and attempt.error_kind is ErrorKind.TRANSIENT
    assert attempt.error == ("Facebook publish not attempted: the post's commands moved to another handler "
                             "(partition 0) before Facebook was called")


async def test_an_attempt_the_new_owner_recorded_first_is_left_to_it() -> None:
    # The new owner's attempt of the same id came first: it calls Facebook, and its result (of the same id as this
    # handler's would be) must not be taken for a repeat of a "not called" one.
    page, topic, after, _made = await moved_while_recorded(other_first=True)

    assert page.calls == 0
    assert not [e for e in topic if isinstance(e, PlatformResult)]
    assert unresolved(after) == ("facebook",)


def _publish_command(state: PostState) -> PublishRequested:
    return PublishRequested(command_id="cmd-publish", post_id=state.post_id, publish_target="facebook",
                            content=CONTENT, account="acme", requested_at=STARTED)


class FlakyPage:
    """One Facebook Page shared by two handlers: the first call fails for a moment, each later one is a post."""

    def __init__(self) -> None:
        self.posts: list[str] = []
        self.calls = 0

    async def publish(self, content: Any, account: Any, *, attempt_id: str, on_container: Any = None,
                      earlier_containers: Any = (), recorded: Any = ()) -> PublishOutcome:
        self.calls += 1
        if self.calls == 1:
            return PublishOutcome.failed("facebook", PlatformError(kind=ErrorKind.TRANSIENT,
                                                                   message="Facebook post failed: 500 - hiccup"))
        self.posts.append(attempt_id)
        return PublishOutcome.published("facebook", f"747917475065823_{self.calls}", None)


def handler_on_shared_topic(page: Any, topic: list[Event], history: History, backoff: float,
                            instagram: Any = None, **config: Any) -> CommandHandler:
    """A handler publishing to `page` (and `instagram`) and writing its events to `topic`, which its projection reads
    (caught up) with `history`'s; its backoff always takes the longest it may."""
    publishers = {"facebook": page} if instagram is None else {"facebook": page, "instagram": instagram}
    made = CommandHandler(bootstrap="127.0.0.1:1", topics=Topics(), projection=None,  # type: ignore[arg-type]
                          credentials=None, publishers=publishers,  # type: ignore[arg-type]
                          config=HandlerConfig(backoff_base_seconds=backoff, backoff_cap_seconds=backoff, **config))

    async def send(event: Event) -> None:
        topic.append(event)

    async def fresh_state(post_id: str, _partition: int) -> PostState | None:
        made._read_at[post_id] = asyncio.get_running_loop().time()  # as the real read notes when it read
        return apply_all(None, [*history.events, *topic])

    made.send = send  # type: ignore[method-assign]
    made.fresh_state = fresh_state  # type: ignore[method-assign]
    made._credentials_of = lambda _account: ACCOUNT  # type: ignore[method-assign]
    made._jitter = lambda _attempt_id: Longest()  # type: ignore[method-assign]
    made._assign([0])
    return made


def without_stored_tokens(made: CommandHandler) -> None:
    """The handler's credential store holds no token (a new command is checked against them before it is decided)."""

    async def no_tokens() -> frozenset[str]:
        return frozenset()

    made._stored_tokens = no_tokens  # type: ignore[method-assign]


class Longest(random.Random):
    """A backoff's draw that always takes the longest wait it may."""

    def uniform(self, _low: float, high: float) -> float:
        return high


def ready(value: Any = None) -> asyncio.Future[Any]:
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    done.set_result(value)
    return done


def decided_for_facebook() -> tuple[History, PostState]:
    """A post submitted for Facebook and decided, not attempted yet."""
    history = History(at=datetime.now(UTC))
    history.submit(target="facebook").decide("cmd-publish", ("facebook",))
    state = apply_all(None, history.events)
    assert state is not None
    return history, state


async def first_publish(made: CommandHandler, state: PostState, command: PublishRequested) -> None:
    await made._publish_platform(state, command, "facebook", CONTENT, "acme", ready(ACCOUNT), 0, made._progress[0],
                                 is_retry=False, forced=False, reason="first publish", recorded=ready())


async def test_a_partition_that_moved_away_and_came_back_during_a_backoff_is_not_published_again() -> None:
    page, topic = FlakyPage(), []  # the post-events topic both handlers write
    history, state = decided_for_facebook()

    command = _publish_command(state)
    first, second = (handler_on_shared_topic(page, topic, history, backoff) for backoff in (1.0, 0.0))
    # The first handler's attempt fails for a moment; it waits a second before its automatic retry.
    waiting = asyncio.create_task(first_publish(first, state, command))
    await asyncio.sleep(0.2)
    assert page.calls == 1
    # Meanwhile the partition moves to the second handler, which takes the command up and publishes Facebook ...
    first._revoke([0])
    taken_up = apply_all(None, [*history.events, *topic])
    assert taken_up is not None
    await second._publish_platform(taken_up, command, "facebook", CONTENT, "acme", ready(ACCOUNT), 0,
                                   second._progress[0], is_retry=False, forced=False,
                                   reason="resumed after an interruption", recorded=ready())
    # ... and comes back to the first before its wait is over.
    second._revoke([0])
    first._assign([0])
    await waiting

    assert page.posts == ["cmd-publish:facebook:2"]  # once: the first handler's old state knew nothing of it
    final = apply_all(None, [*history.events, *topic])
    assert final is not None and final.status == "posted"


async def test_a_handler_frozen_through_a_backoff_does_not_publish_what_the_new_owner_of_its_post_did() -> None:
    # Frozen (SIGSTOP, a stalled host) past its session timeout: its partition went to another handler, and it has
    # not heard of that when it runs on, so it still takes the partition for its own.
    page, topic = FlakyPage(), []  # the post-events topic both handlers write
    history, state = decided_for_facebook()

    command = _publish_command(state)
    first, second = (handler_on_shared_topic(page, topic, history, backoff, session_timeout_seconds=0.4)
                     for backoff in (1.0, 0.0))
    waiting = asyncio.create_task(first_publish(first, state, command))
    await asyncio.sleep(0.2)
    assert page.calls == 1
    # The second handler takes the command up and publishes Facebook; the first is never told it lost the partition.
    taken_up = apply_all(None, [*history.events, *topic])
    assert taken_up is not None
    await second._publish_platform(taken_up, command, "facebook", CONTENT, "acme", ready(ACCOUNT), 0,
                                   second._progress[0], is_retry=False, forced=False,
                                   reason="resumed after an interruption", recorded=ready())
    # It reads the post again before calling, and stands down: its command is handled again, from the post as it is.
    with pytest.raises(StoodDown, match="another handler has attempted it"):
        await waiting

    assert page.posts == ["cmd-publish:facebook:2"]  # once
    final = apply_all(None, [*history.events, *topic])
    assert final is not None and final.status == "posted"


async def test_a_handler_back_from_away_reads_its_post_again_once_its_attempt_is_recorded() -> None:
    # Frozen through its backoff, it reads the post on waking and finds nothing new; the post's new owner, resuming
    # the command at that very moment, records the same attempt just before it. Both would call Facebook.
    page, topic = FlakyPage(), []
    history, state = decided_for_facebook()
    made = handler_on_shared_topic(page, topic, history, 1.0, session_timeout_seconds=0.4)
    own_send = made.send

    async def send(event: Event) -> None:
        if isinstance(event, PublishAttempted) and event.attempt_number == 2:
            topic.append(event.model_copy(update={"occurred_at": event.occurred_at - timedelta(milliseconds=20)}))
        await own_send(event)

    made.send = send  # type: ignore[method-assign]
    with pytest.raises(StoodDown, match="another handler has attempted it"):
        await first_publish(made, state, _publish_command(state))
    assert page.calls == 1, "the new owner's attempt is the one that calls"


async def test_the_new_owner_of_a_command_its_old_owner_still_carries_out_reads_the_post_again_once_recorded() -> None:
    # The old owner (frozen past its session timeout, not heard of the move yet) wakes and records the attempt just
    # before the new owner, which read the post a moment ago, records the same one: only one may call Facebook.
    page, topic = FlakyPage(), []
    history, state = decided_for_facebook()
    new_owner = handler_on_shared_topic(page, topic, history, 0.0, session_timeout_seconds=10.0)
    own_send = new_owner.send

    async def send(event: Event) -> None:
        if isinstance(event, PublishAttempted):
            topic.append(event.model_copy(update={"occurred_at": event.occurred_at - timedelta(milliseconds=20)}))
        await own_send(event)

    new_owner.send = send  # type: ignore[method-assign]
    new_owner._read_at[state.post_id] = asyncio.get_running_loop().time()
    with pytest.raises(StoodDown, match="another handler has attempted it"):
        await new_owner._publish_platform(state, _publish_command(state), "facebook", CONTENT, "acme", ready(ACCOUNT),
                                          0, new_owner._progress[0], is_retry=False, forced=False,
                                          reason="first publish", recorded=ready(), inherited=True)
    assert page.calls == 0, "the old owner's attempt is the one that calls"


async def test_an_attempt_the_projection_does_not_have_once_recorded_is_not_called() -> None:
    # The projector refused it (dead-lettered): a call now would have no attempt on record to be looked up by.
    page, topic = FlakyPage(), []
    history, state = decided_for_facebook()
    made = handler_on_shared_topic(page, topic, history, 0.0, session_timeout_seconds=10.0)
    own_send = made.send

    async def send(event: Event) -> None:
        if not isinstance(event, PublishAttempted):
            await own_send(event)

    made.send = send  # type: ignore[method-assign]
    with pytest.raises(StoodDown, match="is not in the projection"):
        await made._publish_platform(state, _publish_command(state), "facebook", CONTENT, "acme", ready(ACCOUNT), 0,
                                     made._progress[0], is_retry=False, forced=False, reason="first publish",
                                     recorded=ready(), inherited=True)
    assert page.calls == 0


async def test_a_command_counts_as_inherited_when_it_was_in_the_partition_before_the_assignment() -> None:
    class Watermarks:
        def get_watermark_offsets(self, partition: Any, timeout: float, cached: bool) -> tuple[int, int]:
            assert partition.topic == Topics().commands
            return 0, 7

    made = handler(SlowFacebook(), STARTED)
    made._watermarks = Watermarks()  # type: ignore[assignment]
    made._assign([3])
    progress = made._progress[3]
    assert progress.inherited(100), "until the partition's end is known, every command counts as inherited"
    for _ in range(100):
        if progress.assigned_end is not None:
            break
        await asyncio.sleep(0.01)
    assert progress.assigned_end == 7
    assert progress.inherited(6) and not progress.inherited(7) and not progress.inherited(None)


async def test_credentials_the_store_cannot_give_fail_the_attempt_for_a_retry_not_leave_it_unanswered() -> None:
    # Read while the attempt is recorded: a database away must not leave a recorded attempt without a result (the
    # post would wait out its lease before anything is tried again, though nothing was called).
    class StoreAway:
        def get(self, _account: str) -> AccountCredentials:
            raise OperationalError("SELECT", {}, ConnectionRefusedError("could not connect to server"))

    page, topic = FlakyPage(), []
    history, state = decided_for_facebook()
    made = handler_on_shared_topic(page, topic, history, 0.0, max_automatic_attempts=1)
    made._credentials_of = CommandHandler._credentials_of.__get__(made)  # type: ignore[method-assign]
    made.credentials = StoreAway()  # type: ignore[assignment]
    reading = asyncio.get_running_loop().run_in_executor(None, made._credentials_of, "acme")

    await made._publish_platform(state, _publish_command(state), "facebook", CONTENT, "acme", reading, 0,
                                 made._progress[0], is_retry=False, forced=False, reason="first publish",
                                 recorded=ready())

    assert page.calls == 0
    (result,) = [e for e in topic if isinstance(e, PlatformResult)]
    assert not result.success and result.error is not None and result.error.kind is ErrorKind.TRANSIENT
    assert "credentials could not be read (ConnectionRefusedError: could not connect to server)" in result.error.message
    final = apply_all(None, [*history.events, *topic])
    assert final is not None and final.status == "failed" and not unresolved(final)


class Answering:
    """A platform that answers every publish with `outcome`."""

    def __init__(self, outcome: PublishOutcome) -> None:
        self.outcome = outcome
        self.calls = 0

    async def publish(self, *_args: Any, **_kwargs: Any) -> PublishOutcome:
        self.calls += 1
        return self.outcome


async def test_a_platform_whose_outcome_is_unknown_is_not_held_back_by_the_others_rate_limit_wait() -> None:
    # Facebook's call may have gone out (a 500); Instagram met a rate limit of an hour. The command is tried again at
    # once (Facebook looked up when its lease ends, an operator's resolution heard), not after Instagram's hour.
    facebook = Answering(PublishOutcome.failed("facebook", PlatformError(
        kind=ErrorKind.TRANSIENT, message="Facebook photo upload failed: 500 - An unknown error occurred",
        http_status=500), outcome_unknown=True))
    instagram = Answering(PublishOutcome.failed("instagram", PlatformError(
        kind=ErrorKind.RATE_LIMITED, message="Instagram publish failed: 400 - Application request limit reached",
        http_status=400, retry_after_s=3600.0)))
    topic: list[Event] = []
    history = History(at=datetime.now(UTC))
    history.submit(target="both").decide("cmd-publish", ("facebook", "instagram"))
    state = history.state()
    made = handler_on_shared_topic(facebook, topic, history, 1.0, instagram)
    command = PublishRequested(command_id="cmd-publish", post_id=state.post_id, publish_target="both",
                               content=CONTENT, account="acme", requested_at=STARTED)

    with pytest.raises(OutcomeUnknown):
        await asyncio.wait_for(made._publish_all(state, command, ("facebook", "instagram"), 0, made._progress[0],
                                                 is_retry=False, forced=False, reason="first publish"), 10)

    assert (facebook.calls, instagram.calls) == (1, 1)
    after = apply_all(state, topic)
    assert after is not None and unresolved(after) == ("facebook",)
    rate_limited = after.latest_result("instagram")
    assert rate_limited is not None and not rate_limited.success  # recorded: the next run waits out the rest


async def test_a_handler_that_lost_the_partition_while_resuming_does_not_log_the_posts_status(
        caplog: pytest.LogCaptureFixture) -> None:
    # Its command redelivered after a restart, it resumes Facebook's automatic retry; the partition moves meanwhile.
    # The post is not "failed": its new handler carries on, and tells the status.
    page, topic = FlakyPage(), []
    history, _ = decided_for_facebook()
    attempt = history.attempt("facebook", "cmd-publish")
    history.failure("facebook", attempt, "Facebook photo upload failed: 500 - hiccup", ErrorKind.TRANSIENT)
    made = handler_on_shared_topic(page, topic, history, 0.0)
    resume = made._publish_all

    async def moved_meanwhile(*args: Any, **kwargs: Any) -> None:
        made._revoke([0])
        await resume(*args, **kwargs)

    made._publish_all = moved_meanwhile  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)

    await made.handle(_publish_command(history.state()), 0, None, made._progress[0])

    assert page.calls == 0
    assert "Facebook not retried here: partition 0 moved to another handler" in caplog.text
    assert "Post status updated" not in caplog.text


async def test_a_command_handled_before_is_logged_with_where_its_post_stands(caplog: pytest.LogCaptureFixture) -> None:
    # Redelivered after the run that published it lost the partition before its status line: the log still says how
    # the post ended.
    page, topic = FlakyPage(), []
    history, _ = decided_for_facebook()
    attempt = history.attempt("facebook", "cmd-publish")
    history.success("facebook", attempt, "747917475065823_1")
    made = handler_on_shared_topic(page, topic, history, 0.0)
    caplog.set_level(logging.INFO)

    await made.handle(_publish_command(history.state()), 0, None, made._progress[0])

    assert page.calls == 0 and topic == []
    assert "Command cmd-publish was handled before; nothing to do (post status: posted)" in caplog.text


@pytest.mark.parametrize("published", [False, True])
async def test_an_operators_word_on_an_earlier_container_meta_cannot_say_anything_of_is_recorded(
        published: bool, caplog: pytest.LogCaptureFixture) -> None:
    from schemas.commands import ResolveAttemptRequested
    from tests.unit.test_fold import held_by_an_earlier_container

    history, first, _second = held_by_an_earlier_container()
    instagram, topic = FlakyPage(), []
    made = handler_on_shared_topic(FlakyPage(), topic, history, 0.0, instagram)
    without_stored_tokens(made)
    caplog.set_level(logging.INFO)
    resolution = ResolveAttemptRequested(
        command_id="resolve-1", post_id=history.post_id, requested_at=STARTED, platform="instagram", attempt_id=first,
        published=published, platform_post_id="18107758234627017" if published else None, note="checked the account")

    await made.handle(resolution, 0, None, made._progress[0])

    assert instagram.calls == 0  # a resolution publishes nothing
    after = apply_all(history.state(), topic)
    assert after is not None and after.containers_to_ask("instagram") == []
    assert after.settled_by("resolve-1") is after.attempts[first]
    assert "resolve-1" in after.commands  # recorded as done: sent again, it is a repeat
    if published:
        assert after.status == "posted" and after.document.insights.instagram_media_id == "18107758234627017"
        assert "its container c1 was published as 18107758234627017 (checked the account)" in caplog.text
    else:
        assert after.status == "failed"
        # The attempt keeps its own failure's words; the operator's are on its container.
        assert after.attempts[first].error == "Instagram container not ready after 30s"
        assert after.attempts[first].container_cleared_by == "resolve-1"
        assert "its container c1 was not published, and is not asked about again" in caplog.text


async def test_a_handler_that_read_its_post_a_moment_ago_calls_without_reading_it_again() -> None:
    made = handler(SlowFacebook(), STARTED)
    reads: list[str] = []

    async def fresh_state(post_id: str, _partition: int) -> PostState | None:
        reads.append(post_id)
        return None

    made.fresh_state = fresh_state  # type: ignore[method-assign]
    known_at = asyncio.get_running_loop().time()
    command = PublishRequested(command_id="cmd-publish", post_id="post-1", publish_target="facebook",
                               content=CONTENT, account="acme", requested_at=STARTED)
    assert await made._check_attempts_unchanged(command, "facebook", 0, 0, None, known_at) == known_at
    assert reads == []  # the usual path: decided and called within moments, no second read


async def test_a_graph_call_may_take_what_its_attempt_allows_not_a_shorter_timeout_of_its_own() -> None:
    # A photo Meta takes 40 s to fetch is published within a 120 s attempt, not cut at 30 s and left to a look-up.
    async with graph_client(Settings(attempt_timeout_seconds=120)) as client:  # type: ignore[call-arg]
        assert client.timeout.read == client.timeout.write == client.timeout.pool == 120
        assert client.timeout.connect == 5


async def test_a_handler_taking_up_an_automatic_retry_waits_as_long_as_the_first_handler_said() -> None:
    # The first handler's attempt failed for a moment and it announced its automatic retry in so many seconds, then
    # stopped. The handler taking the command up waits out the same backoff, not a new draw that may come sooner.
    page, topic = FlakyPage(), []
    history, state = decided_for_facebook()
    command = _publish_command(state)
    config = HandlerConfig(backoff_base_seconds=30.0, backoff_cap_seconds=30.0)
    waits: dict[str, list[float]] = {"first": [], "second": []}

    def recording(name: str) -> CommandHandler:
        made = handler_on_shared_topic(page, topic, history, 30.0)
        made._jitter = CommandHandler._jitter  # type: ignore[method-assign]
        made.config = config

        async def sleep(seconds: float) -> None:
            waits[name].append(seconds)
            raise asyncio.CancelledError  # the handler stops during its wait

        made._sleep = sleep  # type: ignore[method-assign]
        return made

    with pytest.raises(asyncio.CancelledError):
        await first_publish(recording("first"), state, command)
    failed = apply_all(None, [*history.events, *topic])
    assert failed is not None
    failed_at = next(a.finished_at for a in failed.attempts.values() if a.success is False)
    assert failed_at is not None
    second = recording("second")
    second.clock = lambda: failed_at  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await second._publish_platform(failed, command, "facebook", CONTENT, "acme", ready(ACCOUNT), 0,
                                       second._progress[0], is_retry=False, forced=False,
                                       reason="resumed after an interruption", recorded=ready())

    [announced], [resumed] = waits["first"], waits["second"]
    assert 15.0 <= announced <= 30.0
    assert resumed == pytest.approx(announced, abs=0.01)
    assert page.calls == 1


def test_a_rate_limit_that_gives_no_wait_is_waited_out_from_the_backoffs_cap() -> None:
    config = HandlerConfig(backoff_base_seconds=1.0, backoff_cap_seconds=60.0)
    rng = random.Random(3)
    transient = [backoff_delay(n, config, None, rng) for n in range(4)]
    limited = [backoff_delay(n, config, None, rng, rate_limited=True) for n in range(4)]
    hinted = backoff_delay(0, config, 3600.0, rng, rate_limited=True)

    # A hiccup is tried again within seconds; a rate limit with no word on its window not before half a minute,
    # so the automatic attempts are not all spent inside one window of Meta's.
    assert max(transient) <= 8.0
    assert all(30.0 <= d <= 60.0 for d in limited)
    assert hinted == 3600.0  # the platform's own wait, when it gives one


async def test_a_command_counts_as_waiting_only_while_every_platform_of_it_waits() -> None:
    made = handler(SlowFacebook(), STARTED)
    facebook_asleep, instagram_asleep, instagram_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[int] = []

    async def platform(asleep: asyncio.Event, wake: asyncio.Event | None) -> None:
        async with made._waiting():  # a backoff, or a platform's wait
            asleep.set()
            await (wake or instagram_done).wait()

    async def command() -> None:
        _WORK.set(_Work(branches=2))
        work = _WORK.get()
        facebook = asyncio.ensure_future(made._branch(work, platform(facebook_asleep, instagram_done)))
        await facebook_asleep.wait()
        seen.append(made._parked)  # Facebook waits, Instagram is at work: the command is at work
        instagram = asyncio.ensure_future(made._branch(work, platform(instagram_asleep, None)))
        await instagram_asleep.wait()
        seen.append(made._parked)  # both wait
        instagram_done.set()
        await asyncio.gather(facebook, instagram)
        seen.append(made._parked)

    await asyncio.get_running_loop().create_task(command())

    assert seen == [0, 1, 0]


class Unanswered:
    """A platform whose answer leaves it unknown whether the post went out (a connection dropped after sending)."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    async def publish(self, *_args: Any, **_kwargs: Any) -> PublishOutcome:
        return PublishOutcome.failed(self.platform, PlatformError(
            kind=ErrorKind.TRANSIENT, message=f"{self.platform} publish failed: the connection was dropped"),
            outcome_unknown=True)


async def test_both_platforms_left_unknown_raise_one_failure_and_leave_none_unread(
        caplog: pytest.LogCaptureFixture) -> None:
    # Facebook's and Instagram's answers both lost: the command is tried again for both; the second failure is read
    # too, not logged by asyncio as "Task exception was never retrieved" with a traceback that alarms an operator.
    history = History(at=datetime.now(UTC))
    history.submit(target="both").decide("cmd-publish", ("facebook", "instagram"))
    state = apply_all(None, history.events)
    assert state is not None
    topic: list[Event] = []
    made = handler_on_shared_topic(Unanswered("facebook"), topic, history, 0.0, instagram=Unanswered("instagram"))
    command = PublishRequested(command_id="cmd-publish", post_id=state.post_id, publish_target="both",
                               content=CONTENT, account="acme", requested_at=STARTED)
    unread: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unread.append(context))

    with pytest.raises(OutcomeUnknown):
        await made._publish_all(state, command, ("facebook", "instagram"), 0, made._progress[0], is_retry=False,
                                forced=False, reason="first publish")
    gc.collect()
    await asyncio.sleep(0)

    assert {e.platform for e in topic if isinstance(e, AttemptOutcomeUnknown)} == {"facebook", "instagram"}
    assert unread == []


async def test_an_imported_posts_platform_found_there_is_recorded_and_a_reused_command_id_records_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    from schemas.commands import ResolveAttemptRequested
    from schemas.events import LegacyInsightsImported
    from tests.unit.test_fold import CONTENT

    # The old system says when the post went out and that Facebook failed: Instagram may be there. A retry published
    # Facebook (command cmd-x).
    history = History(at=STARTED)
    history.events.append(LegacyInsightsImported(
        event_id="imported", post_id=history.post_id, occurred_at=STARTED, publish_target="both", account="acct-1",
        content=CONTENT, document={"status": "failed", "insights": {"published_at": "2025-11-17T10:10:13Z"},
                                   "error_message": "facebook: token expired"}))
    retried = history.retry("cmd-x", ("facebook",))
    history.success("facebook", retried["facebook"], "747917475065823_1")
    instagram, topic = FlakyPage(), []
    made = handler_on_shared_topic(FlakyPage(), topic, history, 0.0, instagram)
    without_stored_tokens(made)
    caplog.set_level(logging.INFO)

    def found(command_id: str) -> ResolveAttemptRequested:
        return ResolveAttemptRequested(command_id=command_id, post_id=history.post_id, requested_at=STARTED,
                                       platform="instagram", published=True, platform_post_id="18107758234627017")

    # The retry's id reused for the resolution (written to Kafka straight): refused, and nothing recorded for it.
    await made.handle(found("cmd-x"), 0, None, made._progress[0])
    assert topic == [] and "Command id cmd-x was already used for a different command" in caplog.text

    await made.handle(found("found-1"), 0, None, made._progress[0])

    assert instagram.calls == 0
    after = apply_all(history.state(), topic)
    assert after is not None and after.status == "posted"
    assert after.document.insights.instagram_media_id == "18107758234627017"
    assert "found-1" in after.commands and after.settled_by("found-1") is not None
    assert "Instagram post found by an operator, published by the old system as 18107758234627017" in caplog.text
