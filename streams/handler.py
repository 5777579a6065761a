"""The retry command consumer: decides from a current projection and publishes only what failed."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import random
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from projections.decide import (
    Decision,
    container_resolution,
    decide,
    legacy_found,
    resolution_refusal,
    reuses_command_id,
)
from projections.fold import RESOLVE_THE_ATTEMPT, apply_all, unresolved
from projections.imported import taken_out
from projections.resume import attempts_by, platforms_to_resume, resume_wait
from projections.state import AttemptState, PostState
from projections.store import database_said
from publishers.base import AccountCredentials, Publisher, PublishOutcome
from publishers.graph import CLOCK_SKEW, spaced_text
from publishers.redact import known_secrets, scrub, secret_field, secret_value
from schemas.commands import (
    Command,
    ForceRepublishRequested,
    PostContent,
    PublishRequested,
    ResolveAttemptRequested,
    RetryRequested,
    corrected,
)
from schemas.common import CHECKING, DESTINATIONS, MAX_PLATFORM_WAIT_S, PLATFORM_LABELS, ErrorKind, Platform
from schemas.envelope import decode_command, encode, undecodable
from schemas.events import (
    AttemptOutcomeUnknown,
    ContainerCreated,
    Event,
    PlatformError,
    PlatformResult,
    PostSubmitted,
    PublishAttempted,
)
from schemas.ids import attempt_id_for, derived_id, new_id
from streams.dlq import make_dead_letter
from streams.gc_tuning import CollectEvery
from streams.kafka import AsyncProducer, consumer, done_metadata, done_offsets, partition_for
from streams.topics import Topics

log = logging.getLogger("smartretry.handler")

T = TypeVar("T")

CONSUMER_NAME = "command-handler"


class ProjectionReader(Protocol):
    """What the handler reads of the projection store."""

    def get(self, post_id: str) -> PostState | None: ...

    def applied_offsets(self, topic: str) -> dict[int, int]: ...

    def get_with_offsets(self, post_id: str, topic: str) -> tuple[dict[int, int], PostState | None]: ...

    def updated_since(self, since: datetime, *, caption: str = "", excluding: str | None = None) -> list[PostState]:
        ...


class CredentialReader(Protocol):
    def get(self, account_id: str) -> AccountCredentials: ...

    def stored_tokens(self) -> frozenset[str]: ...


class StaleProjection(TimeoutError):
    """The projection did not catch up with the events partition in time; the command is tried again."""


# Seconds between two looks, once a command's platform failed, for its other platforms' branches that went to sleep.
SLEEPING_BRANCH_CHECK_S = 0.5
# Earlier failed attempts' containers an Instagram attempt asks about before making its own (newest first): one
# call each, so a post retried many times does not spend its attempt on them.
EARLIER_CONTAINERS_ASKED = 10


class OutcomeUnknown(RuntimeError):
    """A platform could not tell whether an attempt's post exists; the command is tried again later."""

    def __init__(self, message: str, wait_seconds: float | None = None) -> None:
        super().__init__(message)
        self.wait_seconds = wait_seconds


@dataclass(frozen=True)
class HandlerConfig:
    max_automatic_attempts: int = 5
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0
    freshness_timeout_seconds: float = 30.0
    # Commands at work at once across all posts; above it the partitions are paused (still polled). Commands
    # that only wait (a backoff, a rate limit's hour, a look-up asked again later) do not count, so that waits
    # hold up no other post, up to `WAITING_FACTOR` times as many commands held in all.
    max_in_flight: int = 500
    # The longest the consumer may go unpolled before it is taken for dead; it is polled every 0.1 s.
    max_poll_interval_seconds: float = 600.0
    group_id: str = "smartretry-command-handler"
    session_timeout_seconds: float = 10.0
    # The longest one platform call may take; past it, its outcome is looked up instead of awaited.
    attempt_timeout_seconds: float = 120.0
    # How long an attempt without a result may still belong to a live handler (one that lost its
    # partition in a rebalance but is finishing the call). Longer than an attempt can take.
    attempt_lease_seconds: float = 150.0
    # How often an interrupted attempt whose look-up failed (the token refused, or the platform could not tell) is
    # looked up again; a rate limit's own wait when longer.
    reauth_check_seconds: float = 30.0
    # How long the consumer may be out of its group (no member id: it is handed no commands) before the handler
    # ends, to be started again. A rejoin after a broker outage takes seconds.
    membership_limit_seconds: float = 120.0
    # On a stop, how long platform calls under way may go on to their results before they are cancelled: a call cut
    # off leaves its attempt without a result, which the post shows as perhaps under way until its lease ends.
    shutdown_grace_seconds: float = 10.0


MILLISECOND = timedelta(milliseconds=1)

# Seconds a commit that only names more commands finished past the commit point waits for others to gather with it.
METADATA_COMMIT_S = 0.5
# Seconds a rebalance waits for the event loop to hand over the commits gathering for the partitions it revokes.
REVOKE_HANDOVER_S = 2.0
# Seconds a stopping handler gives the commands it cancelled (those only waiting) to end, before it counts the
# commands still at work.
STOPPING_GLANCE_S = 0.5

# How many times `max_in_flight` commands a handler holds at most, those waiting included: a bound on its memory
# when most of them wait (one rate-limited account's hour-long backlog).
WAITING_FACTOR = 10


@dataclass
class _Work:
    """A command's branches (one per platform while it publishes them together) and how many of them only wait."""

    branches: int = 1
    asleep: int = 0
    parked: bool = False
    # The commands partition it came on: a revoked partition's commands that only wait are ended (`_revoke`).
    partition: int | None = None


_WORK: contextvars.ContextVar[_Work | None] = contextvars.ContextVar("smartretry_command_work", default=None)


def _failures(branches: Sequence[asyncio.Future[Any]]) -> list[BaseException]:
    """What the ended branches of a command raised, in their order. Each is read, so that none is logged later as a
    "Task exception was never retrieved" beside the one that decides how the command is tried again."""
    return [failure for branch in branches
            if branch.done() and not branch.cancelled() and (failure := branch.exception()) is not None]


# How the post says, once looked up within the lease, that the platform has no post of the attempt yet.
NO_POST_YET = "has no post of this attempt yet"


def _calls_reason(known: PlatformError | None, label: str) -> str | None:
    """Why an attempt's call left no answer to trust ("Facebook photo upload failed: 500 - ..."), as the post says it
    while the attempt is checked (`known`, its latest word): before "checking ...", or before the look-up's "no post
    yet"; None where it says neither (an attempt of a handler that died, a look-up that failed)."""
    if known is None:
        return None
    if known.message.endswith(CHECKING):
        return _without_checking(known.message, len(known.message))
    call, said, _ = known.message.partition(f"; {label} {NO_POST_YET}: ")
    return call if said and call else None


def _without_checking(message: str, limit: int) -> str:
    """An unknown outcome's reason (`...; checking whether ...`) without its ending, for another to follow it: at most
    `limit` characters, and no full stop of its own before the "; " that joins them."""
    return message[:-len(CHECKING)][:limit].rstrip(".")


class StoodDown(RuntimeError):
    """Another handler attempted the platform since this one read the post: the command is handled again."""


class HandlerOutOfGroup(RuntimeError):
    """The handler's consumer stayed out of its group: it takes no commands, so the process must end."""


def backoff_delay(attempt: int, config: HandlerConfig, hint: float | None, rng: random.Random, *,
                  rate_limited: bool = False) -> float:
    """Capped exponential backoff with full jitter, never shorter than the platform's own wait hint.

    A rate limit that gives no wait of its own is waited out from the cap: Meta's windows are minutes to an hour,
    and retries a second or two apart would spend every automatic attempt inside one.
    """
    ceiling = config.backoff_cap_seconds if rate_limited and not hint else \
        min(config.backoff_cap_seconds, config.backoff_base_seconds * (2 ** attempt))
    delay = rng.uniform(ceiling / 2, ceiling)
    return min(max(delay, hint or 0.0), MAX_PLATFORM_WAIT_S)


# Seconds between reads of the applied offsets after one failed.
FAILED_READ_PAUSE = 0.5


class AppliedOffsets:
    """One reader of the projector's applied offsets, shared by every command waiting for freshness.

    Hundreds of commands in flight would otherwise each poll the store; here one task reads the offsets
    of all partitions per round and wakes the commands whose partition has caught up. Applied offsets
    only grow, so an offset already seen applied needs no new read.
    """

    def __init__(self, read: Callable[[], dict[int, int]], topic: str, interval: float = 0.002) -> None:
        self._read = read
        self._topic = topic
        self._interval = interval
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._reader: asyncio.Task[None] | None = None
        self._applied: dict[int, int] = {}
        self._wake = asyncio.Event()
        # What the last read failed with (`database_said`), until a read succeeds: a wait that times out meanwhile
        # names the store, not the projector.
        self._failure: str | None = None

    async def wait(self, partition: int, offset: int, timeout: float) -> None:
        """Returns once the projector has applied `offset` of `partition`; `StaleProjection` after `timeout`."""
        if self._applied.get(partition, -1) >= offset:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        waiter = (partition, offset, done)
        self._waiters.append(waiter)
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._poll())
        else:
            # A reader between two rounds reads again now rather than after its pause.
            self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            why = f": its store could not be read ({self._failure})" if self._failure is not None else ""
            raise StaleProjection(f"projection of {self._topic}[{partition}] has not applied offset {offset} "
                                  f"within {timeout:.0f}s{why}") from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def saw(self, applied: dict[int, int]) -> None:
        """Offsets read elsewhere: later waits for offsets up to these need no read."""
        for partition, offset in applied.items():
            self._applied[partition] = max(offset, self._applied.get(partition, -1))

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            self._wake.clear()
            try:
                applied = await loop.run_in_executor(None, self._read)
            except Exception as exc:  # a busy or dropped database: read again, the waiters' timeouts bound it
                failure = database_said(exc)
                if failure != self._failure:
                    log.warning("The projection's applied offsets could not be read (%s); reading them again",
                                failure)
                self._failure = failure
                await asyncio.sleep(max(self._interval, FAILED_READ_PAUSE))
                continue
            self._failure = None
            self.saw(applied)
            for partition, offset, done in list(self._waiters):
                if applied.get(partition, -1) >= offset and not done.done():
                    done.set_result(None)
            if self._waiters and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)


class PartitionEnds:
    """End offsets of the events partitions, asked of the broker once per partition for all who wait.

    A query already under way may have been answered before a newcomer's command arrived, so the newcomer
    waits for the next query, which starts as soon as that one ends and answers everyone who came meanwhile:
    hundreds of commands arriving together cost a few queries, not one each.
    """

    def __init__(self, query: Callable[[int], int]) -> None:
        self._query = query
        self._running: set[int] = set()
        self._next: dict[int, asyncio.Future[int]] = {}

    async def end_of(self, partition: int) -> int:
        answer = self._next.get(partition)
        if answer is None:
            answer = self._next[partition] = asyncio.get_running_loop().create_future()
            if partition not in self._running:
                self._start(partition)
        return await asyncio.shield(answer)

    def _start(self, partition: int) -> None:
        answer = self._next.pop(partition)
        self._running.add(partition)
        loop = asyncio.get_running_loop()
        asked = loop.run_in_executor(None, self._query, partition)

        def answered(done: asyncio.Future[int]) -> None:
            self._running.discard(partition)
            if not answer.done():
                if done.exception() is not None:
                    answer.set_exception(done.exception())  # type: ignore[arg-type]
                else:
                    answer.set_result(done.result())
            if partition in self._next:
                self._start(partition)

        asked.add_done_callback(answered)


@dataclass
class _PartitionProgress:
    """Offsets of one partition in progress; the commit point is the oldest one not finished.

    A command that waits (a platform's hour-long limit) holds the commit point back while the commands after it
    finish. Those are named in the commit's metadata, as Confluent's Parallel Consumer does, so that the handler
    the partition goes to next skips them instead of handling them again: a command dead-lettered once is not
    decided anew (by a handler that may know fewer tokens), nor set aside again.
    """

    # Each offset fetched and not yet at the commit point, finished or not; `order` holds them oldest first.
    pending: dict[int, bool] = field(default_factory=dict)
    order: deque[int] = field(default_factory=deque)
    # The partition's end when this handler was assigned it; None until known. A command below it may also be in
    # the hands of the partition's previous owner (frozen, stalled), which has not heard of the move yet.
    assigned_end: int | None = None
    # Offsets past the committed one that the partition's previous handler finished (its commit's metadata).
    done_before: set[int] = field(default_factory=set)
    # The offset committed last by this handler (the next to read), if any.
    committed: int | None = None
    # The commit point this handler last sent, and its commit of metadata alone waiting to be sent (`_commit`).
    sent_to: int | None = None
    coalescing: asyncio.TimerHandle | None = None
    # Set when a rebalance takes the partition away: its commits were handed to the rebalance, and none follows them.
    handed_over: bool = False

    def inherited(self, offset: int | None) -> bool:
        """Whether the command at `offset` was in the partition before this handler was assigned it (so when not
        known yet)."""
        return offset is not None and (self.assigned_end is None or offset < self.assigned_end)

    def add(self, offset: int) -> None:
        if offset not in self.pending:
            if self.order and offset < self.order[-1]:
                # Fetched again from further back (offsets come in order otherwise): placed in order.
                self.order = deque(sorted([*self.order, offset]))
            else:
                self.order.append(offset)
        self.pending[offset] = False

    def finish(self, offset: int) -> int | None:
        """Marks the offset done; returns the commit point now (the next offset to read), if any: `point` adds the
        metadata, built only for a commit sent. Each call costs the offsets it moves the commit point past, however
        many wait behind a command that holds it back."""
        if offset not in self.pending:
            return None
        self.pending[offset] = True
        order, pending = self.order, self.pending
        while order and pending[order[0]]:
            del pending[order[0]]
            self.committed = order.popleft() + 1
        if not order and self.committed is not None:
            # The next ones to read that the previous handler finished: committed past as well (skipped when they come),
            # so that a stop before they are read does not leave them to be handled again.
            while self.committed in self.done_before:
                self.committed += 1
        return self.order[0] if self.order else self.committed

    def point(self) -> tuple[int, str] | None:
        """What to commit: the next offset to read and the metadata naming the commands finished past it."""
        commit_to = self.order[0] if self.order else self.committed
        if commit_to is None:
            return None
        # With those the previous handler finished that this one has not reached yet: a commit of this one must not
        # drop them from the list.
        done = [o for o in self.order if self.pending[o]]
        if self.done_before:
            done = sorted({*done, *(o for o in self.done_before if o > commit_to)})
        return commit_to, done_metadata(commit_to, done)


class CommandHandler:
    """Consumes commands; per post strictly in order, across posts concurrently (key-ordered concurrency)."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Topics,
        projection: ProjectionReader,
        credentials: CredentialReader,
        publishers: Mapping[Platform, Publisher],
        config: HandlerConfig | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.projection = projection
        self.credentials = credentials
        self.publishers = publishers
        self.config = config or HandlerConfig()
        self.clock = clock
        self.producer = AsyncProducer(bootstrap)
        self._rng = random.Random()
        self._consumer: Consumer | None = None
        # A separate client for end offsets, so the consumer loop never blocks on it.
        self._watermarks: Consumer | None = None
        self._asking_ends: ThreadPoolExecutor | None = None
        self._closing = False  # its consumer closing: the partitions it gives up are not moved by a rebalance
        # The partitions held, each with its commands in progress: a new object at each assignment, so a command
        # can tell the partition it was fetched from still held from one that moved away and came back.
        self._progress: dict[int, _PartitionProgress] = {}
        self._chains: dict[str, asyncio.Task[None]] = {}
        # Per post, its latest command being sent on to its own partition: the next one waits for it, so one post's
        # commands reach their partition in the order they came.
        self._forwards: dict[str, asyncio.Task[None]] = {}
        self._in_flight = 0
        # Of those, how many only wait: every branch of theirs asleep in a backoff or a platform's wait (`_waiting`).
        self._parked = 0
        # Partitions of the commands topic (read at the first assignment): where each post's commands belong.
        self._command_partitions: int | None = None
        self._applied = AppliedOffsets(lambda: self.projection.applied_offsets(self.topics.post_events),
                                       self.topics.post_events)
        self._ends = PartitionEnds(self._end_offset)
        # Events each command in progress has sent, by post: its outcome is folded from them.
        self._sent: dict[str, list[Event]] = {}
        # Operators' word on attempts left without a result, by post and platform, in the order consumed, from the
        # moment their command is consumed: the post's command waiting on such an attempt applies the latest that
        # names it (`_resolve_interrupted`), even though the resolving command itself runs after it.
        self._resolutions: dict[str, dict[Platform, list[ResolveAttemptRequested]]] = {}
        # Set when a resolution comes in for a post whose command is waiting to ask the platform again.
        self._wakeups: dict[str, asyncio.Event] = {}
        # When each attempt left open by its platform's look-up may be looked up again (a rate limit's end, a lease's),
        # by attempt id: another platform of the post, asked again sooner, does not ask it before then.
        self._look_up_after: dict[str, datetime] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None  # the loop's thread (`threading.get_ident`)
        self.ready = asyncio.Event()
        # Set when the handler stops: no attempt starts any more, and those under way have a grace to finish.
        self._stopping = False
        # Every command task in progress (`_track`).
        self._tasks: set[asyncio.Task[None]] = set()
        # Per post, when (loop time) its projection was last read: what this handler knows of its attempts is that old.
        self._read_at: dict[str, float] = {}
        # Commands asleep in a backoff or a platform's wait, with their commands partition: cancelled at once on a stop,
        # or when their partition is revoked (nothing of theirs under way).
        self._sleepers: dict[asyncio.Task[Any], int | None] = {}
        # Whether fetching is paused now for capacity; None: not known (partitions assigned since), set anew.
        self._fetch_paused: bool | None = False

    # --- the consumer loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.producer.start()
        self._consumer = consumer(self.bootstrap, self.config.group_id, **{
            # The poll loop never stalls (at capacity it pauses the partitions and goes on polling).
            "max.poll.interval.ms": int(self.config.max_poll_interval_seconds * 1000),
            # A dead handler's partitions move to a live one after this long.
            "session.timeout.ms": int(self.config.session_timeout_seconds * 1000),
            "heartbeat.interval.ms": max(500, int(self.config.session_timeout_seconds * 1000) // 5),
        })
        self._watermarks = consumer(self.bootstrap, self.config.group_id + "-watermarks")
        # Before subscribing: the rebalance callbacks hand their changes to this loop.
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._consumer.subscribe([self.topics.commands], on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("Command handler consuming %s", self.topics.commands)
        # Polling blocks in a thread of its own until commands arrive: a command is picked up as soon as the
        # broker hands it over, and an idle handler spends nothing on asking.
        consuming = ThreadPoolExecutor(max_workers=1, thread_name_prefix="command-consumer")
        # Where the automatic collector is off (`smartretry handler`), the cycles asyncio, httpx and
        # aiohttp make (a failed call's traceback) are freed here, within seconds.
        collect_garbage = CollectEvery()
        self._fetch_paused = False
        loop = self._loop
        out_since: float | None = None
        next_check = 0.0
        try:
            while not stop.is_set():
                collect_garbage()
                if loop.time() >= next_check:
                    # A consumer that stays out of its group polls on and is handed nothing: commands would wait
                    # with nobody saying so. Ended, the handler is started again (`smartretry run` does).
                    next_check = loop.time() + 1.0
                    # The offsets reader is never polled otherwise: its log lines are handed over here.
                    await loop.run_in_executor(consuming, self._watermarks.poll, 0)
                    if await loop.run_in_executor(consuming, self._member_id):
                        out_since = None
                    else:
                        out_since = out_since or loop.time()
                        if loop.time() - out_since > self.config.membership_limit_seconds:
                            raise HandlerOutOfGroup(
                                f"the command handler has not been a member of consumer group {self.config.group_id} "
                                f"for {self.config.membership_limit_seconds:.0f}s, so it is handed no commands")
                full = (self._in_flight - self._parked >= self.config.max_in_flight
                        or self._in_flight >= self.config.max_in_flight * WAITING_FACTOR)
                if full != self._fetch_paused:
                    # Paused, not left unpolled: a consumer unpolled for `max.poll.interval.ms` leaves the group,
                    # and its partitions go to another handler while its own commands are still running.
                    await self._loop.run_in_executor(consuming, self._pause_fetching, full)
                    self._fetch_paused = full
                messages = await self._loop.run_in_executor(consuming, self._next_commands)
                for message in messages:
                    self._dispatch(message)
        finally:
            # The loop waits for the consuming thread now: a rebalance callback there must not wait for the loop.
            self._loop_thread = None
            consuming.shutdown(wait=True)
            self._loop_thread = threading.get_ident()
            await self._drain()
            self._send_gathered(list(self._progress))
            self._closing = True
            self._consumer.close()
            if self._asking_ends is not None:
                self._asking_ends.shutdown(wait=True)
            self._watermarks.close()
            await self.producer.close()

    @contextlib.asynccontextmanager
    async def _waiting(self) -> AsyncIterator[None]:
        """Marks this branch of the running command as only waiting meanwhile: a command all of whose branches wait
        does not hold a place among those at work, and a stop cancels it at once (nothing of it is under way)."""
        self._check_not_stopping()
        task = asyncio.current_task()
        work = _WORK.get()
        if task is not None:
            self._sleepers[task] = work.partition if work is not None else None
        try:
            if work is None:
                yield
                return
            work.asleep += 1
            self._settle(work)
            try:
                yield
            finally:
                work.asleep -= 1
                self._settle(work)
        finally:
            if task is not None:
                self._sleepers.pop(task, None)

    def _settle(self, work: _Work) -> None:
        parked = 0 < work.branches <= work.asleep
        if parked != work.parked:
            self._parked += 1 if parked else -1
            work.parked = parked

    async def _branch(self, work: _Work | None, call: Awaitable[T]) -> T:
        """One of a command's platforms, published beside the others: its end leaves one branch fewer."""
        try:
            return await call
        finally:
            if work is not None:
                work.branches -= 1
                self._settle(work)

    async def _drain(self) -> None:
        """The commands in progress ended: those only waiting at once, those calling a platform once their calls have
        their results (or when the grace ends). No new attempt starts meanwhile (`_check_not_stopping`)."""
        self._stopping = True
        # Every command in progress, not only each post's latest: an earlier one may be in its call while the later
        # one waits for it.
        tasks = [t for t in self._tasks if not t.done()]
        for task in list(self._sleepers):
            task.cancel()
        grace = self.config.shutdown_grace_seconds
        if tasks and grace > 0:
            # Those that only waited end within a moment of their cancellation; the others are at work.
            _, busy = await asyncio.wait(tasks, timeout=min(grace, STOPPING_GLANCE_S))
            if busy:
                log.info("Stopping: %d command%s in progress %s up to %.0fs to record the results of %s calls",
                         len(busy), *(("s", "get") if len(busy) > 1 else ("", "gets")), grace,
                         "their" if len(busy) > 1 else "its")
                await asyncio.wait(busy, timeout=grace - min(grace, STOPPING_GLANCE_S))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _check_not_stopping(self) -> None:
        """Cancels the running command when the handler is stopping: its next attempt is left to the next handler."""
        if self._stopping:
            raise asyncio.CancelledError

    async def _sleep(self, seconds: float) -> None:
        async with self._waiting():
            await asyncio.sleep(seconds)

    def _member_id(self) -> str | None:
        assert self._consumer is not None
        return self._consumer.memberid()

    def _pause_fetching(self, pause: bool) -> None:
        """Pauses (or resumes) fetching from every partition assigned now; one assigned later starts unpaused."""
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        if assignment:
            (self._consumer.pause if pause else self._consumer.resume)(assignment)

    def _next_commands(self) -> list[Message]:
        """The commands that have arrived, waiting up to 0.1 s for the first (`consume` would wait for a
        full batch)."""
        assert self._consumer is not None
        first = self._consumer.poll(0.1)
        if first is None:
            return []
        return [first, *self._consumer.consume(num_messages=499, timeout=0)]

    # The rebalance callbacks run in the consuming thread, inside `consume`; their changes are made on the
    # event loop, where they land before the messages of the same `consume` are dispatched.

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._loop is not None
        if self._command_partitions is None:
            with contextlib.suppress(Exception):  # asked again at the next assignment
                topic = consumer.list_topics(self.topics.commands, timeout=10).topics[self.topics.commands]
                self._command_partitions = len(topic.partitions) or None
        # The commands the partitions' previous handler finished past its commit (its metadata): read here, in the
        # rebalance, so that they are known before any of the partitions' commands is dispatched.
        done: dict[int, set[int]] = {}
        try:
            for committed in consumer.committed(
                    [TopicPartition(self.topics.commands, tp.partition) for tp in partitions], timeout=10):
                if committed.error is None:
                    done[committed.partition] = done_offsets(committed.offset, committed.metadata)
        except Exception as exc:
            # Handled again, as they would be without it: each command has one effect however often it is handled.
            log.warning("The commands finished past the committed offsets of %s could not be read (%s): any such "
                        "command is handled again", self.topics.commands, scrub(str(exc))[:300])
        self._loop.call_soon_threadsafe(self._assign, [tp.partition for tp in partitions], done)

    def _assign(self, partitions: list[int], done: Mapping[int, set[int]] | None = None) -> None:
        # A partition assigned while fetching is paused for capacity starts unpaused: the loop pauses (or resumes)
        # every assigned partition anew.
        self._fetch_paused = None
        for partition in partitions:
            progress = self._progress[partition] = _PartitionProgress(done_before=set((done or {}).get(partition, ())))
            if progress.done_before:
                log.info("Partition %d of %s: %d commands past the committed offset were finished before: they are "
                         "skipped", partition, self.topics.commands, len(progress.done_before))
            if self._watermarks is not None:
                # Asked in a thread of its own: the rebalance does not wait on the broker for it, nor do the reads of
                # the projection and the credentials in the loop's pool.
                if self._asking_ends is None:
                    self._asking_ends = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assigned-ends")
                asking = asyncio.get_running_loop().run_in_executor(self._asking_ends, self._end_offset, partition,
                                                                    self.topics.commands)
                asking.add_done_callback(functools.partial(self._assigned_end, progress))
        self.ready.set()

    @staticmethod
    def _assigned_end(progress: _PartitionProgress, asking: asyncio.Future[int]) -> None:
        # Not told (the broker away): every command of the partition counts as inherited, read again once recorded.
        if not asking.cancelled() and asking.exception() is None:
            progress.assigned_end = asking.result()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._loop is not None
        revoked = [tp.partition for tp in partitions]
        # The commits still gathering for these partitions are sent from here, inside the rebalance, which waits for
        # them: sent by the loop afterwards, one could reach a group that has moved on (refused, or read by the next
        # owner before it lands), and the commands it names would be handled again. (From here: a commit another thread
        # sends waits for this callback to return.) The partitions commit nothing more from the loop after them.
        points = self._on_loop(functools.partial(self._hand_over, revoked))
        if points:
            with contextlib.suppress(Exception):
                consumer.commit(offsets=[TopicPartition(self.topics.commands, partition, offset, metadata=metadata)
                                         for partition, (offset, metadata) in points.items()], asynchronous=True)
        self._loop.call_soon_threadsafe(self._revoke, revoked)

    def _on_loop(self, call: Callable[[], dict[int, tuple[int, str]]]) -> dict[int, tuple[int, str]]:
        """`call()` run on the event loop, from the consuming thread (or at once on the loop's own: a consumer closed
        there); {} when the loop does not take it up within `REVOKE_HANDOVER_S` (it may be sending a commit, which
        waits for the rebalance callback) or waits for this thread: `_revoke` sends those commits then."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            return call()
        if self._loop_thread is None:
            return {}
        answer: ThreadFuture[dict[int, tuple[int, str]]] = ThreadFuture()

        def run() -> None:
            if answer.set_running_or_notify_cancel():
                try:
                    answer.set_result(call())
                except BaseException as exc:
                    answer.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(run)
            try:
                return answer.result(REVOKE_HANDOVER_S)
            except TimeoutError:
                # Taken up just now: its commits are taken from the partitions, so they are sent here all the same.
                return {} if answer.cancel() else answer.result()
        except Exception:
            return {}

    def _hand_over(self, partitions: Iterable[int]) -> dict[int, tuple[int, str]]:
        """The commits of metadata alone still gathering for `partitions`, taken from them to be sent by the caller;
        from now on the loop sends no commit of theirs (a later one could land before these)."""
        points = {}
        for partition in partitions:
            progress = self._progress.get(partition)
            if progress is None:
                continue
            progress.handed_over = True
            if progress.coalescing is not None:
                progress.coalescing.cancel()
                progress.coalescing = None
                if (point := progress.point()) is not None:
                    progress.sent_to = point[0]
                    points[partition] = point
        return points

    def _revoke(self, partitions: list[int]) -> None:
        # A platform call already under way finishes and records its result; nothing new starts for these
        # posts here (no queued command, no automatic retry). Only the new owner commits past them, and it
        # recognises a redelivered command by its id and its attempts in the projection.
        if partitions and self._closing:
            log.info("Partitions %s of %s released: this handler is stopping", sorted(partitions), self.topics.commands)
        elif partitions:
            # Not always to another handler: a handler that lost its place in the group (a broker restart, a
            # session that ran out) gets them back in the rebalance that follows.
            log.info("Partitions %s of %s revoked by a rebalance: the handler the group assigns them to next (this one "
                     "too) carries on with their commands", sorted(partitions), self.topics.commands)
        self._send_gathered(partitions)
        for partition in partitions:
            self._progress.pop(partition, None)
        # Commands of theirs that only wait (a rate limit's hour, a backoff) would keep their places here, and hold up
        # the partitions' redelivered commands if they come back: ended now, uncommitted, and resumed by the next
        # owner with what is left of their waits. Those at a platform's call finish it and record its result.
        revoked = set(partitions)
        waiting = [task for task, partition in self._sleepers.items() if partition in revoked]
        for task in waiting:
            task.cancel()
        if waiting:
            log.info("Commands of partitions %s that were only waiting are ended here: their next handler resumes "
                     "them", sorted(revoked))

    def _dispatch(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("Kafka error on %s: %s", self.topics.commands, error)
            return
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:  # a consumed message has both; the types allow None
            return
        progress = self._progress.get(partition)
        if progress is None:
            # Fetched just before its partition moved to another handler (the move is applied first): the new
            # owner reads it from the last committed offset and handles it; committing it here would skip past
            # commands the new owner has not finished.
            log.info("Command at %s[%d]@%d left to the partition's new handler", self.topics.commands, partition,
                     offset)
            return
        progress.add(offset)
        if offset in progress.done_before:
            # Finished by the partition's previous handler (or this one, before the partition moved), past the
            # command that held its commit back.
            progress.done_before.discard(offset)
            self._commit(partition, progress.finish(offset))
            return
        try:
            command = decode_command(message.value())
        except Exception as exc:  # one the decoder did not foresee is dead-lettered too: the consumer goes on
            task = asyncio.get_running_loop().create_task(self._dead_letter_until_sent(message, undecodable(exc)))
            self._track(task, partition, offset)
            return
        count = self._command_partitions
        if count is not None and partition != partition_for(command.post_id, count):
            # Not on its post's partition (keyed by something else, or by another partitioner than the Java
            # client's): run here, it could run beside the post's other commands on another handler, and its
            # freshness would be read on the wrong events partition. Sent on to its post's partition instead.
            ahead = self._forwards.get(command.post_id)
            task = asyncio.get_running_loop().create_task(self._forward(message, command, ahead))
            self._forwards[command.post_id] = task
            task.add_done_callback(functools.partial(self._forwarded, command.post_id))
            self._track(task, partition, offset)
            return
        if isinstance(command, ResolveAttemptRequested) and _token_in_fields(command, known_secrets()) is None:
            # (One carrying a token is refused when handled: it must settle no attempt meanwhile.)
            self._register_resolution(command)
        previous = self._chains.get(command.post_id)
        task = asyncio.get_running_loop().create_task(self._after(previous, command, partition, message, progress))
        self._chains[command.post_id] = task
        self._track(task, partition, offset, command.post_id)

    def _track(self, task: asyncio.Task[None], partition: int, offset: int, post_id: str | None = None) -> None:
        self._in_flight += 1
        self._tasks.add(task)
        progress = self._progress[partition]

        def finished(done: asyncio.Task[None]) -> None:
            self._in_flight -= 1
            self._tasks.discard(done)
            if post_id is not None and self._chains.get(post_id) is done:
                del self._chains[post_id]
                self._read_at.pop(post_id, None)
            if done.cancelled():
                return
            if done.exception() is not None:
                # Not committed: the command comes back after a restart and is handled then.
                log.error("Command at %s[%d]@%d failed: %s", self.topics.commands, partition, offset,
                          scrub(repr(done.exception())))
                return
            if self._progress.get(partition) is not progress:
                # The partition moved (and maybe came back) since: its offsets are its owner's to commit now.
                return
            self._commit(partition, progress.finish(offset))

        task.add_done_callback(finished)

    def _commit(self, partition: int, commit_to: int | None) -> None:
        """Commits the partition's next offset to read, with the commands finished past it (`_PartitionProgress`).

        A commit that moves the commit point goes at once. One that only names more commands finished past it
        waits up to `METADATA_COMMIT_S`, gathering those that finish meanwhile: a commit per command, in a burst,
        cost a fifth of the handler's throughput. A handler that dies meanwhile leaves those few to be handled again,
        as every command past the commit point was before the metadata named them."""
        progress = self._progress.get(partition)
        if commit_to is None or progress is None or progress.handed_over:
            return
        if commit_to == progress.sent_to:
            if progress.coalescing is None:
                progress.coalescing = asyncio.get_running_loop().call_later(
                    METADATA_COMMIT_S, self._commit_gathered, partition, progress)
            return
        if (point := progress.point()) is not None:
            self._send_commit(partition, progress, point)

    def _commit_gathered(self, partition: int, progress: _PartitionProgress) -> None:
        progress.coalescing = None
        if self._progress.get(partition) is progress and (point := progress.point()) is not None:
            self._send_commit(partition, progress, point)

    def _send_commit(self, partition: int, progress: _PartitionProgress, point: tuple[int, str]) -> None:
        if progress.coalescing is not None:
            progress.coalescing.cancel()
            progress.coalescing = None
        progress.sent_to = point[0]
        if self._consumer is not None:
            offsets = [TopicPartition(self.topics.commands, partition, point[0], metadata=point[1])]
            with contextlib.suppress(Exception):
                # Asynchronous also as the handler stops: its consumer's close sends it, and a broker away then would
                # otherwise hold the stop up.
                self._consumer.commit(offsets=offsets, asynchronous=True)

    def _send_gathered(self, partitions: Iterable[int]) -> None:
        """Sends at once the commits of metadata alone still gathering for `partitions` (they are given up, or the
        handler stops)."""
        for partition in partitions:
            progress = self._progress.get(partition)
            if progress is not None and progress.coalescing is not None and (point := progress.point()) is not None:
                self._send_commit(partition, progress, point)

    async def _after(self, previous: asyncio.Task[None] | None, command: Command, partition: int,
                     source: Message | None = None, owner: _PartitionProgress | None = None) -> None:
        # This command's own count of its branches at work and asleep (`_waiting`), seen by the tasks it starts.
        _WORK.set(_Work(partition=partition))
        if previous is not None:
            # Commands of one post run strictly in order; the outcome of the previous one is its own.
            # (`wait` neither raises that outcome nor swallows this task's own cancellation.)
            async with self._waiting():
                await asyncio.wait([previous])
        context = {"post_id": command.post_id, "command_id": command.command_id}
        failures = 0
        while True:
            try:
                self._check_not_stopping()
                await self.handle(command, partition, source, owner)
                return
            except StaleProjection as exc:
                log.warning("%s; trying the command again", exc, extra=context)
            except StoodDown as exc:
                # Never finished (committed) this way: handled again, it finds the partition moved, or decides anew
                # from the post as another handler left it.
                log.warning("%s; handling the command again from the post as it is now", exc, extra=context)
            except OutcomeUnknown as exc:
                # Publishing now could duplicate the post; the attempt stays open until the platform answers,
                # or an operator says what came of it (which ends the wait at once).
                log.warning("%s; asking again shortly", exc, extra=context)
                async with self._waiting():
                    await self._pause(command.post_id,
                                      exc.wait_seconds or max(1.0, backoff_delay(1, self.config, None, self._rng)))
            except Exception as exc:
                # The command is not committed while it fails, and running it again is safe: its decision
                # and attempts are recorded events, so a second run resumes instead of repeating.
                failures += 1
                log.error("Command failed (%s); trying it again", scrub(repr(exc)), extra=context)
                # Not counted as waiting: while the broker or the database is away, more commands taken up would
                # only fail the same way.
                await asyncio.sleep(backoff_delay(min(failures, 6), self.config, None, self._rng))

    async def _pause(self, post_id: str, seconds: float) -> None:
        """Sleeps `seconds`, or less if an operator's resolution for the post came in since the last pause."""
        wakeup = self._wakeups.setdefault(post_id, asyncio.Event())
        if not wakeup.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), seconds)
        wakeup.clear()
        if post_id not in self._resolutions and self._wakeups.get(post_id) is wakeup:
            del self._wakeups[post_id]

    async def _dead_letter_until_sent(self, message: Message, reason: str) -> None:
        """`_dead_letter`, tried again until the broker has it: the partition's commits wait for it meanwhile."""
        await self._until_sent(lambda: self._dead_letter(message, reason),
                               f"Dead letter from {message.topic()}[{message.partition()}]@{message.offset()}")

    def _forwarded(self, post_id: str, done: asyncio.Task[None]) -> None:
        if self._forwards.get(post_id) is done:
            del self._forwards[post_id]

    async def _forward(self, message: Message, command: Command, ahead: asyncio.Task[None] | None = None) -> None:
        """Puts a command that came on another post's partition on its own post's (until the broker has it), after
        `ahead`, the post's command that came before it on that partition, is there."""
        log.warning("%s %s came on %s[%d] keyed %r, not on its post's partition: sent on there (producers key "
                    "commands by post id, with the Java client's partitioner: murmur2)", command.type,
                    command.command_id, message.topic(), message.partition(),
                    scrub((message.key() or b"").decode("utf-8", "replace"))[:200],
                    extra={"post_id": command.post_id, "command_id": command.command_id})
        content = command.content if isinstance(command, PublishRequested | RetryRequested |
                                                ForceRepublishRequested) else None
        tokens = await self._stored_tokens()
        if (carrying := _token_in_fields(command, tokens) or _token_in(content, tokens)) is not None:
            # Not copied on: the new owner would refuse it anyway, and the copy would be one more place for it.
            await self._dead_letter_until_sent(message, f"refused {command.type}: {carrying}")
            return
        value = message.value() or b""
        if ahead is not None:
            # Its token check reads the store in a thread: without this wait, a retry sent right after its publish
            # could overtake it, and be refused for a post not published yet.
            await asyncio.wait([ahead])  # (not gather: this one cancelled must not cancel the one ahead)
        await self._until_sent(lambda: self.producer.send(self.topics.commands, command.post_id, value),
                               f"Command {command.command_id}, sent on to its post's partition,")

    async def _stored_tokens(self) -> frozenset[str]:
        """What content and ids may not carry: every token the store holds (the accounts' own, and the Page tokens
        the handlers fetched), read until the store answers, and those this process has fetched or used (a Page token
        the store could not take), as the API refuses them too."""
        stored = await self._until_done(lambda: asyncio.to_thread(self.credentials.stored_tokens),
                                        "Stored tokens not read")
        return stored | frozenset(known_secrets())

    async def _until_sent(self, send: Callable[[], Awaitable[None]], what: str) -> None:
        """`send()`, tried again (with the handler's backoff) until it goes through."""
        await self._until_done(send, f"{what} not written")

    async def _until_done(self, call: Callable[[], Awaitable[T]], failure: str) -> T:
        """`call()`, tried again (with the handler's backoff) until it answers; each failure logged as `failure`."""
        failures = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                failures += 1
                log.error("%s (%s); trying again", failure, scrub(repr(exc)))
                await asyncio.sleep(backoff_delay(min(failures, 6), self.config, None, self._rng))

    async def _dead_letter(self, message: Message, reason: str) -> None:
        # Every stored token made known to the scrubber first, one stored since this handler started included.
        await self._stored_tokens()
        letter = make_dead_letter(reason=reason, consumer=CONSUMER_NAME,
                                  source_topic=message.topic() or self.topics.commands,
                                  partition=message.partition(), offset=message.offset(), key=message.key(),
                                  value=message.value(), at=self.clock())
        log.warning("Dead letter from %s[%d]@%d: %s", message.topic(), message.partition(), message.offset(),
                    letter.reason)
        await self.producer.send(self.topics.dead_letters, letter.key or "", encode(letter))

    # --- one command -----------------------------------------------------------------------------

    async def fresh_state(self, post_id: str, partition: int) -> PostState | None:
        """The post's projection once it has applied every event already in its events partition."""
        loop = asyncio.get_running_loop()
        self._read_at[post_id] = loop.time()
        # The partition's end and the projection are asked at the same time. The post and the applied
        # offsets are read in one transaction, so the post is exactly as current as those offsets: when
        # they already reach the end, it is the current projection, with no second read.
        high, (applied, state) = await asyncio.gather(
            self._ends.end_of(partition), loop.run_in_executor(None, self._read_projection, post_id))
        self._applied.saw(applied)
        if high <= 0 or applied.get(partition, -1) >= high - 1:
            return state
        await self._applied.wait(partition, high - 1, self.config.freshness_timeout_seconds)
        return await loop.run_in_executor(None, self.projection.get, post_id)

    def _end_offset(self, partition: int, topic: str | None = None) -> int:
        """The end of `topic`'s partition (the post events by default)."""
        assert self._watermarks is not None
        tp = TopicPartition(topic or self.topics.post_events, partition)
        _low, high = self._watermarks.get_watermark_offsets(tp, timeout=10, cached=False)
        return int(high)

    def _read_projection(self, post_id: str) -> tuple[dict[int, int], PostState | None]:
        return self.projection.get_with_offsets(post_id, self.topics.post_events)

    async def emit(self, event: Event) -> None:
        await self.send(event)

    def send(self, event: Event) -> asyncio.Future[None]:
        """Hands the event to the producer; the future completes when it is durable."""
        sent = self._sent.get(event.post_id)
        if sent is not None:
            sent.append(event)
        return self.producer.enqueue(self.topics.post_events, event.post_id, encode(event))

    async def handle(self, command: Command, partition: int, source: Message | None = None,
                     owner: _PartitionProgress | None = None) -> None:
        """Decides and carries out one command; `source` is its Kafka message, for a dead letter if refused.

        `owner` is the partition's progress when the command was fetched (else now): the command goes on only
        while that is still the partition's. A partition that moved away and came back is another ownership:
        its new owner took the command up meanwhile, and this handler reads it again from the committed offset.
        """
        # A post's commands run one at a time, so the events sent meanwhile for the post are this command's.
        self._sent[command.post_id] = []
        try:
            await self._handle(command, partition, source, owner or self._progress.get(partition))
        finally:
            del self._sent[command.post_id]
            if isinstance(command, ResolveAttemptRequested):
                self._forget_resolution(command)

    async def _check_attempts_unchanged(self, command: Command, platform: Platform, partition: int, known: int,
                                        mine: tuple[str, datetime] | None, known_at: float,
                                        *, away: bool = False) -> float:
        """Raises `StoodDown` when another handler made an attempt of the platform since this one read the post at
        `known_at` (loop time), knowing of `known` attempts (and `mine`, the id and start of the attempt it recorded
        since). Returns when the post was last read. `away`: read again however recently it was read, because the check
        before recording the attempt had to read it (the handler may have been frozen meanwhile, or only waited a
        long backoff: it cannot tell which), and the post's new owner may be recording the same attempt at this very
        moment. That covers the new owner's attempt recorded first; recorded after this one's, the new owner reads the
        post again once its attempt is recorded (a command it inherited) and stands down.

        Read again only after a while: a partition moves to another handler only once this one has been silent for
        its session timeout (frozen, or its host stalled), and until this one polls it has not heard of that. A
        call made then would publish the post a second time; the other handler's attempts, in the post, say so.
        """
        if not away and asyncio.get_running_loop().time() - known_at < self.config.session_timeout_seconds / 2:
            return known_at
        fresh = await self.fresh_state(command.post_id, partition)
        attempts = fresh.attempts_of(platform) if fresh is not None else []
        theirs = len(attempts) > known + (mine is not None) or (
            # The same attempt id started by another (times are kept to the millisecond).
            mine is not None and any(a.attempt_id == mine[0] and abs(a.started_at - mine[1]) >= MILLISECOND
                                     for a in attempts))
        if theirs:
            raise StoodDown(f"{PLATFORM_LABELS[platform]} not called: another handler has attempted it since this one "
                            "read the post (this one was stopped or stalled meanwhile)")
        if mine is not None and fresh is not None and not any(a.attempt_id == mine[0] for a in attempts):
            # Recorded, but not in the projection (the projector refused it): a call now would not be durable first.
            raise StoodDown(f"{PLATFORM_LABELS[platform]} not called: its attempt {mine[0]} is not in the projection "
                            "(the projector refused it: see the dead letters)")
        return self._read_at.get(command.post_id, known_at)

    def _owns(self, partition: int, owner: _PartitionProgress | None) -> bool:
        """Whether the partition is still held as it was when `owner` was its progress."""
        return owner is not None and self._progress.get(partition) is owner

    async def _handle(self, command: Command, partition: int, source: Message | None,
                      owner: _PartitionProgress | None) -> None:
        context = {"post_id": command.post_id, "command_id": command.command_id}
        if not self._owns(partition, owner):
            log.info("Partition %d moved to another handler; it handles the command", partition, extra=context)
            return
        inherited = owner is not None and source is not None and owner.inherited(source.offset())
        state = await self.fresh_state(command.post_id, partition)
        # Its ids and notes would be kept in the post's events and the projection: a new command carrying an access
        # token (a stored one, as the API refuses it too, or one of Meta's shape) is refused before anything is
        # written. One decided before (a redelivery) goes on as it was decided.
        new = state is None or command.command_id not in state.commands
        tokens = await self._stored_tokens() if new else frozenset[str]()
        if new and (carrying := _token_in_fields(command, tokens)) is not None:
            log.warning("Command refused: %s", carrying, extra=context)
            if source is not None:
                await self._dead_letter(source, f"refused {command.type}: {carrying}")
            return
        # The post before interrupted attempts were settled here, when they were: their results may settle it.
        settled_from: PostState | None = None
        if isinstance(command, ResolveAttemptRequested) and state is not None and \
                self._resolution_for(state, command.platform) is not command:
            # It names no attempt waiting for a result: `decide` refuses it, without waiting on any attempt.
            self._forget_resolution(command)
        elif state is not None and unresolved(state):
            # Commands of a post run one at a time here and the projection is current, so an attempt with no
            # result is another worker's: one that died between the platform call and its result, or one
            # that lost this partition in a rebalance and may still be finishing (hence the lease).
            settled_from = state
            await self._resolve_interrupted(state)
            state = await self.fresh_state(command.post_id, partition)

        if isinstance(command, ResolveAttemptRequested) and state is not None and new and \
                (earlier := container_resolution(state, command.platform, command.attempt_id)) is not None:
            # An earlier attempt whose container Meta cannot say anything of: recorded now, and `decide` then accepts
            # the resolution as done, as it does one the command waiting on an attempt recorded. Only a command not
            # decided before: a reused id is refused first, having recorded nothing.
            await self._apply_container_resolution(earlier, command, context)
            state = await self.fresh_state(command.post_id, partition)
        elif isinstance(command, ResolveAttemptRequested) and state is not None and legacy_found(state, command):
            # An imported post's platform the old system may have published, found there: recorded now, and `decide`
            # then accepts the resolution as done.
            await self._apply_legacy_found(command, context)
            state = await self.fresh_state(command.post_id, partition)
        decision = decide(state, command)
        if decision.duplicate_command and state is not None and reuses_command_id(state, command):
            log.warning("Command id %s was already used for a different command; refused", command.command_id,
                        extra=context)
            if source is not None:
                await self._dead_letter(source, f"command id {command.command_id} was already used for a "
                                                "different command on this post: use a new command_id")
            return
        if decision.duplicate_command:
            owed = platforms_to_resume(state, command.command_id, self.config.max_automatic_attempts) if state else ()
            if not owed:
                if settled_from is not None:
                    self._log_status(settled_from, command.post_id, context)
                # With where the post stands: the run that handled it may have lost the partition before it said so.
                log.info("Command %s was handled before; nothing to do (post status: %s)", command.command_id,
                         state.status if state is not None else "none", extra=context)
                return
            assert state is not None
            record = state.commands[command.command_id]
            log.info("Resuming %s after an interruption", " and ".join(PLATFORM_LABELS[p] for p in owed),
                     extra=context)
            await self._publish_all(state, command, owed, partition, owner, is_retry=record.is_retry,
                                    forced=record.forced, reason="resumed after an interruption",
                                    inherited=inherited)
            if self._owns(partition, owner):
                # As below: where the partition moved, the post's status is its new handler's to tell.
                self._log_status(settled_from or state, command.post_id, context)
            return
        if not decision.reject_reason and decision.platforms and \
                isinstance(command, PublishRequested | RetryRequested | ForceRepublishRequested):
            # A new decision only: a command decided before (a redelivery) carries on as it was decided. The
            # content it would publish (a retry's correction, else the post's own): published, anyone could read
            # it; recorded, the post's events would keep it. Refused before anything is written: its dead letter
            # keeps the message with the token scrubbed out.
            publishing = _content_for(state, command) if state is not None else command.content
            carrying = _token_in(publishing, tokens) or taken_out(state, publishing, decision.platforms)
            if carrying is not None:
                decision = replace(decision, reject_reason=carrying)
        elif not decision.reject_reason and isinstance(command, RetryRequested | ForceRepublishRequested) and \
                (carrying := _token_in(command.content, tokens)) is not None:
            # Publishing nothing (everything went out by its turn), but recorded with the correction it carried: the
            # post's events would keep the token all the same.
            decision = replace(decision, reject_reason=carrying)
        if decision.reject_reason:
            log.warning("Command refused: %s", decision.reject_reason, extra=context)
            if source is not None:
                # A valid command that cannot apply (a retry of a post that was never published) is kept
                # with its reason, like any input the service could not use.
                await self._dead_letter(source, f"refused {command.type}: {decision.reject_reason}")
            return

        state, decided = self._record_decision(state, command, decision)
        log.info(decision.log_line, extra=context)
        if not decision.platforms or state is None:
            await decided
            return
        await self._publish_all(state, command, decision.platforms, partition, owner, is_retry=decision.is_retry,
                                forced=decision.forced, reason=_reason(command, decision.is_retry),
                                recorded=decided, inherited=inherited)
        if self._owns(partition, owner):
            # Not where the partition moved to another handler: the post's status is that handler's to tell.
            self._log_status(state, command.post_id, context)

    def _log_status(self, before: PostState, post_id: str, context: dict[str, str]) -> None:
        """The product note's "✅ Post status updated to: posted" (or failed), once this command's events settle
        the post: published, resumed, or found on the platform after an interruption."""
        # The projection will show what the pure fold of our own events shows: no need to wait for it.
        final = apply_all(before, self._sent[post_id])
        if final is not None and final.status in ("posted", "failed"):
            mark = "✅" if final.status == "posted" else "❌"
            log.info("%s Post status updated to: %s", mark, final.status, extra=context)

    def _record_decision(self, state: PostState | None, command: Command,
                         decision: Decision) -> tuple[PostState | None, asyncio.Future[Any]]:
        """Sends the post's submission (first publish) and the decision: the state they lead to, and a future
        done when they are durable. The first attempt waits for it together with its own event."""
        at = self.clock()
        events: list[Event] = []
        if isinstance(command, PublishRequested) and state is None and decision.accepted:
            events.append(PostSubmitted(
                event_id=derived_id(command.command_id, "submitted"), post_id=command.post_id, occurred_at=at,
                command_id=command.command_id, publish_target=command.publish_target, content=command.content,
                account=command.account))
        if decision.accepted:
            events.append(decision.to_event(command, derived_id(command.command_id, "decided"), at))
        durable = asyncio.gather(*(self.send(event) for event in events))
        # The same pure fold the projector runs: no need to wait for it to see our own two events.
        return apply_all(state, events), durable

    async def _publish_all(self, state: PostState, command: Command, platforms: tuple[Platform, ...],
                           partition: int, owner: _PartitionProgress | None, *, is_retry: bool, forced: bool,
                           reason: str,
                           recorded: asyncio.Future[Any] | None = None, inherited: bool = False) -> None:
        """Publishes `platforms`; `recorded` (the decision's events) is durable before any platform is called.
        `inherited`: the command was in its partition before this handler was assigned it."""
        content = _content_for(state, command)
        account = state.account or (command.account if isinstance(command, PublishRequested) else None)
        # Read once for all platforms of the command (an automatic retry later reads it again), in a thread
        # while the attempts are on their way to the broker.
        credentials = asyncio.get_running_loop().run_in_executor(None, self._credentials_of, account)
        recorded = recorded or _done()
        work = _WORK.get()
        if work is not None:
            work.branches = len(platforms)
        branches = [asyncio.ensure_future(self._branch(work, self._publish_platform(
            state, command, platform, content, account, credentials, partition, owner, is_retry=is_retry,
            forced=forced, reason=reason, recorded=recorded, inherited=inherited))) for platform in platforms]
        try:
            await self._until_branches_end(branches)
        except BaseException:
            for branch in branches:
                branch.cancel()
            _failures(branches)
            raise
        finally:
            if work is not None:
                work.branches = 1
                self._settle(work)
        # Every platform's call has ended before the command is tried again: no two calls for one post overlap.
        if failures := _failures(branches):
            raise failures[0]
        if any(branch.cancelled() for branch in branches):
            # A branch stopped while it only waited (its automatic retry's backoff, a rate limit's wait), as the
            # handler stops: the command is not done. Left uncommitted, the next handler resumes it.
            raise asyncio.CancelledError
        await asyncio.gather(recorded, credentials)

    async def _until_branches_end(self, branches: Sequence[asyncio.Future[None]]) -> None:
        """Until each platform's branch has ended. Once one has failed, the command is to be tried again: a branch that
        only waits then (an automatic retry's backoff, as long as a platform's rate-limit window) is stopped, not
        waited for, as it would hold that back (an attempt whose outcome is unknown waiting an hour for its look-up,
        an operator's resolution for it unheard). The next run resumes it with what remains of its wait. A branch
        calling a platform is always waited for."""
        pending: set[asyncio.Future[None]] = set(branches)
        failed = False
        while pending:
            done, pending = await asyncio.wait(pending, timeout=SLEEPING_BRANCH_CHECK_S if failed else None,
                                               return_when=asyncio.FIRST_EXCEPTION)
            failed = failed or any(not d.cancelled() and d.exception() is not None for d in done)
            if failed:
                for branch in pending:
                    if branch in self._sleepers:
                        branch.cancel()

    async def _publish_platform(self, state: PostState, command: Command, platform: Platform,
                                content: PostContent | None, account: str | None,
                                reading: asyncio.Future[AccountCredentials | PlatformError | None], partition: int,
                                owner: _PartitionProgress | None, *, is_retry: bool, forced: bool, reason: str,
                                recorded: asyncio.Future[Any], inherited: bool = False) -> None:
        label = PLATFORM_LABELS[platform]
        mine = attempts_by(state, command.command_id, platform)
        made = len(mine)
        # The handles of the attempts that failed since the platform's latest success (Instagram's containers),
        # newest first: the platform is asked whether one went out after all before it is published again.
        earlier = state.containers_to_ask(platform)
        number = len(state.attempts_of(platform))
        # When this handler last knew the post's attempts of the platform as they are: when `state` was read.
        known_at = self._read_at.get(command.post_id, asyncio.get_running_loop().time())
        if made:
            # Resumed after a restart or a rebalance: the backoff (or the platform's own wait) the last failed
            # attempt asked for still holds.
            limited = mine[-1].error_kind is ErrorKind.RATE_LIMITED
            delay = backoff_delay(made - 1, self.config, mine[-1].retry_after_s, self._jitter(mine[-1].attempt_id),
                                  rate_limited=limited)
            wait = resume_wait(state, command.command_id, platform, delay, self.clock())
            if wait > 0:
                log.info("🔄 %s will be retried automatically in %.1fs", label, wait,
                         extra={"post_id": command.post_id, "command_id": command.command_id})
                await self._sleep(wait)
        for automatic in range(made, self.config.max_automatic_attempts):
            # First the post read again if this handler may have been away (the read can take a while), then the
            # partition: a handler waking from a freeze hears of the move while it reads.
            read_before = known_at
            known_at = await self._check_attempts_unchanged(command, platform, partition, number, None, known_at)
            if not self._owns(partition, owner):
                # The post's new owner resumes this platform (the command is not committed here). Also when the
                # partition came back meanwhile: `state` may be behind what another handler did with it since.
                log.info("%s not retried here: partition %d moved to another handler", label, partition,
                         extra={"post_id": command.post_id, "command_id": command.command_id})
                return
            number += 1
            attempt_id = attempt_id_for(command.command_id, platform, number)
            context = {"post_id": command.post_id, "attempt_id": attempt_id, "platform": platform,
                       "command_id": command.command_id}
            attempt_reason = reason if automatic == made else f"automatic retry {automatic} of {reason}"
            # Every attempt after the command's first on this platform is an automatic retry, also one taken up
            # after a restart (the post counts it, and its `last_retry_at`, as it would have had the handler lived).
            # Durable before the platform is called: a crash after the call leaves an attempt without a
            # result, which the next handler resolves by asking the platform instead of publishing again.
            # The decision's events and the attempt go to the broker together: one wait for both.
            self._check_not_stopping()
            started = self.clock()
            attempted = self.send(PublishAttempted(
                event_id=derived_id(attempt_id, "attempted"), post_id=command.post_id, occurred_at=started,
                platform=platform, attempt_id=attempt_id, attempt_number=number, command_id=command.command_id,
                is_retry=is_retry or automatic > 0, forced=forced, reason=attempt_reason))
            if automatic > made:
                # Time has passed since the command began: the account may have been re-authenticated.
                reading = asyncio.get_running_loop().run_in_executor(None, self._credentials_of, account)
            _, _, credentials = await asyncio.gather(recorded, attempted, reading)
            # Read again also for a command the partition's previous owner may be carrying out at this very moment
            # (not heard of the move yet): its same attempt, recorded just before this one, is told apart only so.
            known_at = await self._check_attempts_unchanged(command, platform, partition, number - 1,
                                                            (attempt_id, started), known_at,
                                                            away=known_at != read_before or
                                                            (inherited and automatic == made))
            if not self._owns(partition, owner):
                # Lost while the attempt was recorded: nothing went out, and the attempt says so (where it is this
                # handler's), so its next owner goes on rather than looking it up and waiting out its lease for a call
                # that was never made.
                log.info("%s not called: partition %d moved to another handler", label, partition, extra=context)
                await self._record_not_called(command, platform, number, (attempt_id, started), partition, context)
                return
            outcome = await self._call_platform(command.post_id, platform, content, credentials, attempt_id, started,
                                                earlier[:EARLIER_CONTAINERS_ASKED], recorded_post_ids(state, platform))
            await self._record_result(command.post_id, attempt_id, outcome)
            if outcome.success:
                log.info("✅ %s published successfully", label, extra=context)
                return
            assert outcome.error is not None
            if outcome.container_id is not None:
                earlier.insert(0, (outcome.container_id, started))
            log.warning("❌ %s failed (%s): %s", label, outcome.error.kind.value, outcome.error.message, extra=context)
            if not outcome.error.kind.retried_automatically or automatic + 1 >= self.config.max_automatic_attempts:
                return
            delay = backoff_delay(automatic, self.config, outcome.error.retry_after_s, self._jitter(attempt_id),
                                  rate_limited=outcome.error.kind is ErrorKind.RATE_LIMITED)
            log.info("🔄 %s will be retried automatically in %.1fs", label, delay, extra=context)
            await self._sleep(delay)

    async def _record_not_called(self, command: Command, platform: Platform, number: int, mine: tuple[str, datetime],
                                 partition: int, context: dict[str, Any]) -> None:
        """Records that this handler's attempt `mine` (its id and start), number `number` of the platform, recorded as
        the partition moved away, was never called, and wakes the post's command here if it waits to look the attempt
        up. Only where the post's attempt of that id is this one: the partition's new owner, deciding without it, names
        its own attempt the same (and its result too), and stands down only where this one's came first."""
        label, attempt_id = PLATFORM_LABELS[platform], mine[0]
        try:
            # The post read again, whatever how recently: `StoodDown` where the attempt of that id is another's.
            await self._check_attempts_unchanged(command, platform, partition, number - 1, mine,
                                                 asyncio.get_running_loop().time(), away=True)
            message = (f"{label} publish not attempted: the post's commands moved to another handler (partition "
                       f"{partition}) before {label} was called")
            await self._record_result(command.post_id, attempt_id, PublishOutcome.failed(platform, PlatformError(
                kind=ErrorKind.TRANSIENT, message=message)))
        except StoodDown as exc:
            log.info("%s attempt %s left to the new owner: %s", label, attempt_id, exc, extra=context)
            return
        except Exception as exc:
            # Not recorded: the new owner looks the attempt up, finds no post, and goes on once its lease is over.
            log.warning("%s attempt %s not recorded as not called (%s)", label, attempt_id, scrub(repr(exc)),
                        extra=context)
            return
        if (wakeup := self._wakeups.get(command.post_id)) is not None:
            wakeup.set()

    @staticmethod
    def _jitter(attempt_id: str) -> random.Random:
        """The draw of the backoff after the failed attempt `attempt_id`: the same in every handler, so one that resumes
        the command (after a restart or a takeover) waits what the first announced, not a new draw that may be sooner.
        Attempts of different posts still spread out."""
        return random.Random(attempt_id)

    def _credentials_of(self, account: str | None) -> AccountCredentials | PlatformError | None:
        """The account's credentials; the error to record when it has none; None when there is no account."""
        if account is None:
            return None
        try:
            return self.credentials.get(account)
        except LookupError as exc:
            return PlatformError(kind=ErrorKind.AUTH, message=scrub(str(exc)))
        except Exception as exc:
            # The store away (a database error): read while the attempt is being recorded, so the attempt gets this
            # result (nothing was called) and is tried again by itself, rather than waiting out its lease unanswered.
            return PlatformError(kind=ErrorKind.TRANSIENT,
                                 message=f"publish not attempted: the account's credentials could not be read "
                                         f"({database_said(exc)})")

    async def _call_platform(self, post_id: str, platform: Platform, content: PostContent | None,
                             credentials: AccountCredentials | PlatformError | None,
                             attempt_id: str, started: datetime,
                             earlier: Sequence[tuple[str, datetime]] = (), recorded: Collection[str] = ()
                             ) -> PublishOutcome:
        """The platform's answer to the attempt that `started` (its `PublishAttempted` time), which bounds the call;
        `earlier`: the handles of earlier failed attempts to ask about first, `recorded`: the platform's posts the post
        has (`Publisher.publish`)."""
        label = PLATFORM_LABELS[platform]
        if content is None:
            return PublishOutcome.failed(platform, PlatformError(
                kind=ErrorKind.INVALID_REQUEST, message=f"{label} publish failed: the post has no content"))
        if credentials is None:
            # An imported post without an account: a retry that names one (`account`) publishes it. The post is
            # what lacks it, not an account's token: no "re-authenticate".
            return PublishOutcome.failed(platform, PlatformError(
                kind=ErrorKind.INVALID_REQUEST,
                message=f"{label} publish failed: the post has no account: retry it naming the account to publish "
                        "with"))
        if isinstance(credentials, PlatformError):
            return PublishOutcome.failed(platform, credentials)
        # The attempt's lease counts from when it started, so its call must end within the attempt timeout of
        # that moment, however long the broker took to take the attempt and the store to give the credentials.
        timeout = self.config.attempt_timeout_seconds - (self.clock() - started).total_seconds()
        if timeout <= 0:
            return PublishOutcome.failed(platform, PlatformError(
                kind=ErrorKind.TRANSIENT, message=f"{label} publish not started: recording the attempt took longer "
                                                  f"than {self.config.attempt_timeout_seconds:.0f}s"))

        containers: list[str] = []

        async def on_container(container_id: str) -> None:
            containers.append(container_id)
            await self.emit(ContainerCreated(
                event_id=derived_id(attempt_id, "container"), post_id=post_id, occurred_at=self.clock(),
                platform=platform, attempt_id=attempt_id, container_id=container_id))

        publisher = self.publishers[platform]
        try:
            outcome = await asyncio.wait_for(
                publisher.publish(content, credentials, attempt_id=attempt_id, on_container=on_container,
                                  earlier_containers=earlier, recorded=recorded), timeout)
        except TimeoutError:
            # Bounded, so that an attempt's lease (see `_resolve_interrupted`) outlasts any live call.
            outcome = PublishOutcome.failed(platform, PlatformError(
                kind=ErrorKind.TRANSIENT,
                message=f"{label} publish did not finish within {self.config.attempt_timeout_seconds:.0f}s"),
                containers[-1] if containers else None, outcome_unknown=True)
        if outcome.outcome_unknown:
            # The request may have reached the platform, and may still be on its way there: looking now
            # could miss a post that appears a moment later. The attempt stays open, and is resolved by
            # asking the platform, once its lease has run out if the post is not there (see
            # `_resolve_interrupted`).
            # Cut so the event's message stays within its 2,000 characters with the words added to it.
            why = outcome.error.message[:1900] if outcome.error else "no answer"
            # The post says why it is still publishing (not a silent wait of up to the lease).
            await self.emit(AttemptOutcomeUnknown(
                event_id=derived_id(attempt_id, "unanswered"), post_id=post_id, occurred_at=self.clock(),
                platform=platform, attempt_id=attempt_id, error=PlatformError(
                    kind=ErrorKind.TRANSIENT, code=outcome.error.code if outcome.error else None,
                    http_status=outcome.error.http_status if outcome.error else None,
                    message=f"{why}{CHECKING}")))
            raise OutcomeUnknown(f"{label} attempt {attempt_id} may have published ({why})")
        return outcome

    async def _record_result(self, post_id: str, attempt_id: str, outcome: PublishOutcome,
                             recovered: bool = False, resolved_by: str | None = None) -> None:
        await self.emit(PlatformResult(
            event_id=derived_id(attempt_id, "result"), post_id=post_id, occurred_at=self.clock(),
            platform=outcome.platform, attempt_id=attempt_id, success=outcome.success,
            platform_post_id=outcome.platform_post_id, permalink=outcome.permalink, error=outcome.error,
            recovered=recovered, resolved_by=resolved_by))

    def _claims(self, state: PostState, attempt: AttemptState) -> tuple[tuple[str, ...], list[datetime]]:
        """What a look-up of `attempt` must not take for its post: the platform's posts on record for this post
        and for the service's other posts of the same caption around that time (a platform's post ids are its
        own, so any post's are no match); and when those others' attempts started that, publishing to the same
        Page or Instagram account (through this post's account or another connected to it), are still without
        a result then (their post could be the one found).
        """
        assert state.content is not None
        # As the look-up matches them: blanks aside (`spaced_text`).
        platform, caption = attempt.platform, spaced_text(state.content.caption)
        margin = timedelta(seconds=self.config.attempt_lease_seconds) + CLOCK_SKEW
        claimed = set(recorded_post_ids(state, platform))
        contenders: list[datetime] = []
        for other in self.projection.updated_since(attempt.started_at - margin, caption=caption,
                                                   excluding=state.post_id):
            if other.content is None or spaced_text(other.content.caption) != caption:
                continue
            claimed.update(recorded_post_ids(other, platform))
            waiting = [a.started_at for a in other.attempts.values()
                       if a.platform == platform and a.success is None
                       and abs(a.started_at - attempt.started_at) <= margin]
            if waiting and self._same_destination(state.account, other.account, platform):
                contenders.extend(waiting)
        return tuple(sorted(claimed)), contenders

    def _same_destination(self, account: str | None, other: str | None, platform: Platform) -> bool:
        """Whether two accounts publish `platform`'s posts to the same Page or Instagram account; True when
        either cannot be told (an account removed since, or none), so a look-up never takes a post on a guess."""
        if account == other:
            return True
        mine, theirs = self._credentials_of(account), self._credentials_of(other)
        if not isinstance(mine, AccountCredentials) or not isinstance(theirs, AccountCredentials):
            return True
        ours, others = (mine.page_id, theirs.page_id) if platform == "facebook" else (mine.ig_user_id,
                                                                                      theirs.ig_user_id)
        return ours is None or others is None or ours == others

    def _register_resolution(self, command: ResolveAttemptRequested) -> None:
        """Makes an operator's resolution known to the post's command waiting on an attempt, and wakes that command."""
        self._resolutions.setdefault(command.post_id, {}).setdefault(command.platform, []).append(command)
        self._wakeups.setdefault(command.post_id, asyncio.Event()).set()

    def _resolution_for(self, state: PostState, platform: Platform) -> ResolveAttemptRequested | None:
        """The latest operator's resolution of the platform's attempt without a result that names that attempt, and
        has settled no attempt yet."""
        pending = self._resolutions.get(state.post_id, {}).get(platform, [])
        return next((r for r in reversed(pending) if state.settled_by(r.command_id) is None
                     and resolution_refusal(state, platform, r.attempt_id, r.requested_at) is None), None)

    def _drop_misdirected_resolutions(self, state: PostState, platform: Platform) -> None:
        """Drops, with a warning, the resolutions that name another attempt than the platform's waiting one.

        They can never apply: only the waiting attempt takes a resolution, and an id names one attempt. The
        operator hears at once, not when the command waiting on the attempt ends; their own turn in the post's
        commands still refuses them to the dead letters.
        """
        for resolution in list(self._resolutions.get(state.post_id, {}).get(platform, [])):
            if resolution.attempt_id is not None and any(
                    a.attempt_id == resolution.attempt_id for a in state.earlier_containers(platform)):
                continue  # of an earlier attempt's container, settled in its own turn (`container_resolution`)
            if state.settled_by(resolution.command_id) is not None:
                # It settled an earlier attempt (and came in again after a restart): what the operator found was of
                # that attempt's call, never of a later one's. Its own turn accepts it as done.
                self._forget_resolution(resolution)
                continue
            reason = resolution_refusal(state, platform, resolution.attempt_id, resolution.requested_at)
            if reason is not None:
                log.warning("Resolution %s does not apply: %s", resolution.command_id, reason,
                            extra={"post_id": state.post_id, "command_id": resolution.command_id})
                self._forget_resolution(resolution)

    def _forget_resolution(self, command: ResolveAttemptRequested) -> None:
        pending = self._resolutions.get(command.post_id, {})
        left = [r for r in pending.get(command.platform, []) if r is not command]
        if left:
            pending[command.platform] = left
        else:
            pending.pop(command.platform, None)
        if not pending and command.post_id in self._resolutions:
            del self._resolutions[command.post_id]
            self._wakeups.pop(command.post_id, None)

    async def _apply_resolution(self, post_id: str, attempt_id: str, resolution: ResolveAttemptRequested,
                                context: dict[str, Any]) -> None:
        label = PLATFORM_LABELS[resolution.platform]
        note = f" ({resolution.note})" if resolution.note else ""
        if resolution.published:
            assert resolution.platform_post_id is not None
            outcome = PublishOutcome.published(resolution.platform, resolution.platform_post_id, resolution.permalink)
            log.info("%s attempt %s resolved by an operator: published as %s%s", label, attempt_id,
                     resolution.platform_post_id, note, extra=context)
        else:
            # Not published: the command that made the attempt carries on, and may publish the platform again.
            outcome = PublishOutcome.failed(resolution.platform, PlatformError(
                kind=ErrorKind.TRANSIENT,
                message=f"{label} publish was interrupted before its result was recorded; an operator found it "
                        f"was not published{note}"))
            log.info("%s attempt %s resolved by an operator: not published%s", label, attempt_id, note,
                     extra=context)
        await self._record_result(post_id, attempt_id, outcome, resolved_by=resolution.command_id)
        # One resolution settles one attempt: a later attempt of the command (after "not published") is another call.
        self._forget_resolution(resolution)

    async def _apply_container_resolution(self, attempt: AttemptState, resolution: ResolveAttemptRequested,
                                          context: dict[str, Any]) -> None:
        """An operator's word on an attempt that failed with a container (Instagram's) Meta cannot say anything of:
        published (the post is recorded as that attempt's, the platform's latest), or not (the container is not asked
        about again, so the next attempt publishes). Its own result event, beside the attempt's first."""
        label = PLATFORM_LABELS[resolution.platform]
        note = f" ({resolution.note})" if resolution.note else ""
        if resolution.published:
            assert resolution.platform_post_id is not None
            outcome = PublishOutcome.published(resolution.platform, resolution.platform_post_id, resolution.permalink)
            log.info("%s attempt %s resolved by an operator: its container %s was published as %s%s", label,
                     attempt.attempt_id, attempt.container_id, resolution.platform_post_id, note, extra=context)
        else:
            outcome = PublishOutcome.failed(resolution.platform, PlatformError(
                kind=ErrorKind.TRANSIENT,
                message=f"{label} publish failed: Meta could not say whether this attempt's container "
                        f"{attempt.container_id} was published; an operator found it was not published{note}"))
            log.info("%s attempt %s resolved by an operator: its container %s was not published, and is not asked "
                     "about again%s", label, attempt.attempt_id, attempt.container_id, note, extra=context)
        await self.emit(PlatformResult(
            event_id=derived_id(attempt.attempt_id, "resolved"), post_id=resolution.post_id,
            occurred_at=self.clock(), platform=resolution.platform, attempt_id=attempt.attempt_id,
            success=outcome.success, platform_post_id=outcome.platform_post_id, permalink=outcome.permalink,
            error=outcome.error, resolved_by=resolution.command_id))

    async def _apply_legacy_found(self, resolution: ResolveAttemptRequested, context: dict[str, Any]) -> None:
        """An operator found an imported post's platform published by the old system: its post, recorded as the result
        of the old system's attempt that made it (an attempt of this resolution's own id, none of the service's)."""
        assert resolution.platform_post_id is not None
        label = PLATFORM_LABELS[resolution.platform]
        attempt_id = attempt_id_for(resolution.command_id, resolution.platform, 1)
        log.info("%s post found by an operator, published by the old system as %s%s", label,
                 resolution.platform_post_id, f" ({resolution.note})" if resolution.note else "", extra=context)
        await self.emit(PlatformResult(
            event_id=derived_id(attempt_id, "found"), post_id=resolution.post_id, occurred_at=self.clock(),
            platform=resolution.platform, attempt_id=attempt_id, success=True,
            platform_post_id=resolution.platform_post_id, permalink=resolution.permalink,
            resolved_by=resolution.command_id))

    async def _resolve_interrupted(self, state: PostState) -> None:
        """Gives every attempt without a result one, by asking the platform whether the post went out (or, where
        it cannot say, taking an operator's `ResolveAttemptRequested` for it: one that found the post at once, one
        that did not once the attempt's lease is over)."""
        # Each platform on its own, at the same time: one whose look-up cannot settle yet (or takes up to the attempt
        # timeout) never keeps the other's look-up, or an operator's resolution of the other, waiting.
        waits: list[OutcomeUnknown] = []
        asked: dict[Platform, AttemptState] = {}
        # A time passed is as none (the attempt is asked now): those go, whatever became of their attempts (resolved
        # here or by another handler), so the times kept stay few.
        now = self.clock()
        for passed in [attempt_id for attempt_id, after in self._look_up_after.items() if after <= now]:
            del self._look_up_after[passed]
        open_platforms = unresolved(state)
        for platform in open_platforms:
            attempt = state.in_flight(platform)
            assert attempt is not None
            after = self._look_up_after.get(attempt.attempt_id)
            if after is not None and self.clock() < after and self._resolution_for(state, platform) is None:
                waits.append(OutcomeUnknown(f"{PLATFORM_LABELS[platform]} attempt {attempt.attempt_id} is looked up "
                                            f"again at {after.astimezone(UTC):%H:%M:%S} UTC",
                                            wait_seconds=max(1.0, (after - self.clock()).total_seconds())))
            else:
                asked[platform] = attempt
        outcomes = await asyncio.gather(*(self._resolve_attempt(state, p) for p in asked), return_exceptions=True)
        failures: list[BaseException] = []
        for attempt, outcome in zip(asked.values(), outcomes, strict=True):
            if isinstance(outcome, OutcomeUnknown):
                waits.append(outcome)
                if len(open_platforms) > 1:
                    self._look_up_after[attempt.attempt_id] = \
                        self.clock() + timedelta(seconds=outcome.wait_seconds or 1.0)
            elif isinstance(outcome, BaseException):
                failures.append(outcome)  # raised once every look-up has ended: what the others found is recorded
            else:
                self._look_up_after.pop(attempt.attempt_id, None)
        if failures:
            raise failures[0]
        if len(waits) == 1:
            raise waits[0]
        if waits:
            # Asked again as soon as the first of them may have changed; the others are not asked before their time.
            raise OutcomeUnknown("; ".join(str(w) for w in waits),
                                 wait_seconds=min(w.wait_seconds or 1.0 for w in waits))

    async def _resolve_attempt(self, state: PostState, platform: Platform) -> None:
        """`_resolve_interrupted` for one platform's attempt without a result: `OutcomeUnknown` while it stays open."""
        attempt = state.in_flight(platform)
        assert attempt is not None
        label = PLATFORM_LABELS[attempt.platform]
        context = {"post_id": state.post_id, "attempt_id": attempt.attempt_id, "platform": attempt.platform}
        found: PublishOutcome | None = None
        # "No post" speaks for the moment it was asked: a look-up can take up to the attempt timeout, and a
        # call still settling at the platform can make its post meanwhile.
        asked_age = (self.clock() - attempt.started_at).total_seconds()
        if state.content is not None and state.account is not None:
            publisher = self.publishers[attempt.platform]
            claimed, contenders = await asyncio.get_running_loop().run_in_executor(
                None, self._claims, state, attempt)
            try:
                credentials = self.credentials.get(state.account)
                # Bounded like an attempt: a Graph API that hangs must not hold the post's commands for the
                # look-up's every call in turn.
                found = await asyncio.wait_for(publisher.find_existing(
                    state.content, credentials, attempt_id=attempt.attempt_id,
                    container_id=attempt.container_id, attempted_at=attempt.started_at, recorded=claimed),
                    self.config.attempt_timeout_seconds)
            except TimeoutError:
                found = PublishOutcome.failed(attempt.platform, PlatformError(
                    kind=ErrorKind.TRANSIENT, message=f"{label} post lookup did not finish within "
                                                      f"{self.config.attempt_timeout_seconds:.0f}s"))
            except LookupError as exc:
                # No usable credentials: the platform cannot be asked, which says nothing about the post.
                found = PublishOutcome.failed(attempt.platform, PlatformError(
                    kind=ErrorKind.AUTH, message=f"{label} post lookup failed: {scrub(str(exc))}"))
            if found is not None and found.success and contenders and publisher.finds_by_caption:
                # The post found may be the other post's, whose result is not in yet: asked again once it is.
                found = PublishOutcome.failed(attempt.platform, PlatformError(
                    kind=ErrorKind.TRANSIENT, message=f"{label} post lookup could not tell: another post with the "
                                                      "same caption was being published at the same time"))
                lease = timedelta(seconds=self.config.attempt_lease_seconds)
                if asked_age >= lease.total_seconds() and all(self.clock() - s >= lease for s in contenders):
                    # No call of either is still under way, so each result can only come from a look-up, and
                    # each look-up waits for the other's: someone has to tell them apart (the fold asks for it).
                    found = PublishOutcome.failed(attempt.platform, PlatformError(
                        kind=ErrorKind.INVALID_REQUEST,
                        message=f"{label} post lookup could not tell: another post with the same caption, "
                                f"published to the same {DESTINATIONS[attempt.platform]} at the same time, "
                                "is waiting to be told apart from this one: check "
                                f"{label} for the post, {RESOLVE_THE_ATTEMPT} (smartretry resolve)"))
        self._drop_misdirected_resolutions(state, attempt.platform)
        resolution = self._resolution_for(state, attempt.platform)
        age = (self.clock() - attempt.started_at).total_seconds()
        if resolution is not None and _token_in_fields(resolution, await self._stored_tokens()) is not None:
            # Its note or ids carry a stored token (of another process's, unknown here when it came in): it
            # settles nothing, and its own turn refuses it to the dead letters.
            self._forget_resolution(resolution)
            resolution = None
        if resolution is not None and (found is None or not found.success) and \
                (resolution.published or age >= self.config.attempt_lease_seconds):
            # The platform could not settle it (no answer, or no post yet): the operator's word settles it. A post
            # found on the platform at once; "not published" only once no live call can still be under way (the
            # platform may still hold the request until then, and publish it).
            await self._apply_resolution(state.post_id, attempt.attempt_id, resolution, context)
            return
        if found is not None and not found.success:
            assert found.error is not None
            known = attempt.lookup_error
            if known is None or known.kind != found.error.kind or not known.message.endswith(found.error.message):
                # The post shows why it is still publishing, and what would unblock it (once per reason). The
                # reason the call itself left ("...: 500 - ...") stays in view before the look-up's own.
                telling = found.error
                # Cut from the call's reason, never the look-up's: the post says each look-up's reason once, by
                # the message it ends with.
                room = 2000 - len(telling.message) - 2
                if known is not None and known.message.endswith(CHECKING) and room > 0:
                    telling = telling.model_copy(update={
                        "message": f"{_without_checking(known.message, room)}; {telling.message}"})
                log.warning("%s cannot tell whether attempt %s went out: %s", label, attempt.attempt_id,
                            found.error.message, extra=context)
                await self.emit(AttemptOutcomeUnknown(
                    event_id=new_id(), post_id=state.post_id, occurred_at=self.clock(),
                    platform=attempt.platform, attempt_id=attempt.attempt_id, error=telling))
            if found.error.kind in (ErrorKind.AUTH, ErrorKind.PERMISSION):
                # Nothing changes until someone re-authenticates: say so, and ask less often.
                raise OutcomeUnknown(
                    f"{label} cannot be asked whether attempt {attempt.attempt_id} went out until the account "
                    f"is re-authenticated ({found.error.message})", wait_seconds=self.config.reauth_check_seconds)
            # Asked again after a while (a look-up is up to ten Graph calls), and never before a rate limit's end.
            wait = max(found.error.retry_after_s or 0.0, self.config.reauth_check_seconds)
            raise OutcomeUnknown(f"{label} could not say whether attempt {attempt.attempt_id} went out",
                                 wait_seconds=wait)
        if found is not None and found.success:
            log.info("♻️ %s post of an interrupted attempt found on the platform; recorded, not republished",
                     label, extra=context)
            await self._record_result(state.post_id, attempt.attempt_id, found, recovered=True)
            return
        if asked_age < self.config.attempt_lease_seconds:
            # The attempt's handler may be alive and still calling the platform (it lost the partition in
            # a rebalance), or its call still settling there: declaring "not published" on a look-up asked
            # before the lease ended could publish the post twice.
            # Asked again when the lease ends: before then, "no post" could not settle it anyway.
            known = attempt.lookup_error
            asked = state.content is not None and state.account is not None
            lease_ends = attempt.started_at + timedelta(seconds=self.config.attempt_lease_seconds)
            waiting = (f"{label} {NO_POST_YET}: it may still be under way, so it is looked "
                       f"up again when its lease ends ({lease_ends.astimezone(UTC):%H:%M:%S} UTC), and published "
                       "again if none shows")
            said = known is not None and known.message.endswith(waiting)
            if known is not None and known.message.endswith(CHECKING):
                # Why the call left no answer to trust ("...: 500 - ...") stays in view beside the wait.
                waiting = f"{_without_checking(known.message, 1800)}; {waiting}"
            if asked and found is None and not said:
                # The post says what it waits for (after a restart, or once the account was re-authenticated
                # and the look-up went through), instead of "publishing" with no word for minutes.
                await self.emit(AttemptOutcomeUnknown(
                    event_id=new_id(), post_id=state.post_id, occurred_at=self.clock(),
                    platform=attempt.platform, attempt_id=attempt.attempt_id, error=PlatformError(
                        kind=ErrorKind.TRANSIENT, message=waiting)))
            raise OutcomeUnknown(
                f"{label} attempt {attempt.attempt_id} has no result and no post yet; it may still be under "
                f"way ({age:.0f}s old, lease {self.config.attempt_lease_seconds:.0f}s)",
                wait_seconds=max(1.0, self.config.attempt_lease_seconds - asked_age))
        log.info("%s attempt got no answer to trust and the platform has no such post", label, extra=context)
        message = (f"{label} publish failed: its call got no answer to trust (an error, a timeout or a restart), and "
                   f"{label} has no such post")
        if (call := _calls_reason(attempt.lookup_error, label)) is not None:
            # What the call itself got (Meta's "500 - An unknown error has occurred", a timeout) stays the failure's
            # first words, as on the post while it was checked.
            message = f"{call[:1800]}; {message}"
        await self._record_result(state.post_id, attempt.attempt_id, PublishOutcome.failed(
            attempt.platform, PlatformError(kind=ErrorKind.TRANSIENT, message=message)), recovered=True)


def recorded_post_ids(state: PostState, platform: Platform) -> tuple[str, ...]:
    """Every post of the platform the post has on record (each forced republish made one more, with the same
    caption): never an interrupted later attempt's."""
    result = state.latest_result(platform)
    recorded = {a.platform_post_id for a in state.attempts.values()
                if a.platform == platform and a.success and a.platform_post_id}
    if result is not None and result.success and result.post_id:
        recorded.add(result.post_id)  # an imported document's, of no attempt
    return tuple(sorted(recorded))


def _done() -> asyncio.Future[Any]:
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


def _token_in_fields(command: Command, tokens: Collection[str]) -> str | None:
    """Why `command` may not be recorded, when one of its ids or notes carries an access token (one of `tokens`,
    or one of Meta's shape); None when none does."""
    fields = {name: value for name, value in command.model_dump(exclude={"content"}).items() if isinstance(value, str)}
    field = secret_value(fields, tokens)
    return None if field is None else f"{field} contains an access token; send it again without the token"


def _token_in(content: PostContent | None, tokens: frozenset[str]) -> str | None:
    """Why `content` may not be published, when it carries an access token (one of `tokens`, as the API refuses
    them too, or one of Meta's shape); None when it carries none."""
    field = secret_field(content, tokens)
    return None if field is None else f"content.{field} contains an access token; send it again without the token"


def _content_for(state: PostState, command: Command) -> PostContent | None:
    if isinstance(command, (RetryRequested, ForceRepublishRequested)) and command.content is not None:
        return corrected(state.content, command.content)
    if state.content is not None:
        return state.content
    return command.content if isinstance(command, PublishRequested) else None


def _reason(command: Command, is_retry: bool) -> str:
    if isinstance(command, ForceRepublishRequested):
        return f"forced republish: {command.reason}"
    if is_retry:
        return "smart retry"
    return "first publish"
