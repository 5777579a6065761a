"""The stream processor: a faust app that folds post events into the insights projection, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
from aiokafka import errors as aiokafka_errors
from confluent_kafka import Producer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from projections.imported import without_secrets
from projections.state import PostState
from projections.store import ProjectionStore, database_said, make_engine
from publishers.redact import scrub
from schemas.envelope import decode_event, undecodable
from schemas.events import Event, LegacyInsightsImported
from smartretry.credentials import CredentialStore
from smartretry.settings import Settings, load_settings
from streams.dlq import make_dead_letter
from streams.gc_tuning import CollectEvery, disable_gc
from streams.kafka import producer as kafka_producer
from streams.kafka import stopping
from streams.topics import StoreAheadOfLog, Topics, check_store_matches_log, ensure_topics, misplaced

log = logging.getLogger(__name__)

CONSUMER_NAME = "projector"

# Fetches of at most this many records of a partition are folded on the event loop, not in a thread.
INLINE_RECORDS = 200
# Seconds between commits of the consumer group's offsets (shown to operators as the lag).
GROUP_COMMIT_INTERVAL = 1.0
# Waits before a batch that failed to be stored, or a fetch that failed, is tried again: doubling from the
# first, up to the last.
RETRY_FIRST_WAIT = 1.0
RETRY_MAX_WAIT = 30.0
# Seconds a batch waits for its insights and dead letters to be on the broker before it is tried again. The batch's
# transaction is open meanwhile, and on SQLite it holds the database's write lock: shorter than other writers wait for
# it (`SQLITE_BUSY_TIMEOUT`: the API storing a token while the broker is away), so they get in between two tries.
DELIVERY_WAIT = 20.0
# Seconds between two looks at whether the fetch loop still goes round.
WATCH_INTERVAL = 1.0
# Seconds a crashed app is given to stop before the process ends anyway.
CRASHED_STOP_WAIT = 15.0
# Seconds a rebalance waits for the store's offsets before the projector gives up (to be started again).
STORE_READ_TIMEOUT = 30.0
# Fetches failing one after the other before the projector gives up (to be started again): about 15 s.
FETCH_ATTEMPTS = 5

# (offset, key, value) of one post-events message, in partition order.
RawRecord = tuple[int, bytes | None, bytes | None]


def insights_message(state: PostState) -> bytes:
    """The insights topic's value: the post's seed document plus its post id."""
    return state.document.to_json(post_id=state.post_id)


@dataclass
class BatchOutcome:
    applied: int = 0
    dead_letters: int = 0
    changed: list[PostState] = field(default_factory=list)


class InsightsProjector:
    """Decodes one partition's records, folds them into the store and publishes what changed.

    The insights documents and dead letters of a batch are on the broker before the store commits
    the batch: a crash in between re-applies the batch and publishes them again (the insights topic
    is compacted, so a repeat is harmless), never loses them.
    """

    def __init__(self, store: ProjectionStore, topics: Topics, producer: Producer | None = None,
                 known_tokens: Callable[[], Collection[str]] | None = None, partitions: int | None = None) -> None:
        self.store = store
        self.topics = topics
        self.producer = producer
        # The post-events topic's partition count the projection was built with: an import on another partition
        # than its post's is dead-lettered (`streams.topics.misplaced`). None: not checked.
        self.partitions = partitions
        # Reads every stored token into the scrubber (`CredentialStore.stored_tokens`): called before a batch's
        # dead letters are made, so a token stored since this process started is scrubbed out of them too.
        self.known_tokens = known_tokens

    def project(self, partition: int, records: Sequence[RawRecord]) -> BatchOutcome:
        if not records:
            return BatchOutcome()
        topic = self.topics.post_events
        events: list[tuple[int, Event]] = []
        # (reason, offset, key, value) of each message to dead-letter.
        refused: list[tuple[str, int, bytes | None, bytes | None]] = []
        for offset, key, value in records:
            try:
                events.append((offset, decode_event(value)))
            except Exception as exc:  # one the decoder did not foresee is dead-lettered too: the projector goes on
                refused.append((undecodable(exc), offset, key, value))
        if any(type(event) is LegacyInsightsImported for _, event in events):
            placed = []
            for offset, event in events:
                if (why := misplaced(event, partition, self.partitions)) is None:
                    placed.append((offset, event))
                else:
                    refused.append((why, offset, *next((k, v) for o, k, v in records if o == offset)))
            events = placed
            # An imported document may carry one of the accounts' tokens in an old error text or its content: out
            # of it before the post, the insights topic and the pages get it (imports are rare: one store read for
            # them). Only the stored tokens, which replay reads too.
            secrets = frozenset(self.known_tokens()) if self.known_tokens is not None else frozenset[str]()
            events = [(offset, without_secrets(event, secrets)) for offset, event in events]
        rejects: list[tuple[int, Event, str]] = []
        outcome = BatchOutcome(applied=len(events))
        errors: list[str] = []

        def send(changed: list[PostState], shown: list[PostState]) -> None:
            # Sent as soon as the batch is folded; the store's writes overlap the broker's answer.
            if rejects:
                # With their original bytes, like any dead letter: once the cause is fixed they can be requeued.
                raw = {offset: (key, value) for offset, key, value in records}
                refused.extend((reason, offset, *raw[offset]) for offset, _ev, reason in rejects)
            dead = self._dead_letters(partition, refused)
            outcome.changed = changed
            outcome.dead_letters = len(dead)
            if self.producer is not None:
                # Only the documents that changed: the insights topic's readers get no repeat of the one they have.
                self._send(shown, dead, errors)

        def delivered(_changed: list[PostState]) -> None:
            if self.producer is not None:
                self._wait_delivered(errors)

        self.store.apply_batch(topic, partition, events, through=records[-1][0], rejects=rejects,
                               after_fold=send, before_commit=delivered)
        return outcome

    def _dead_letters(self, partition: int, refused: Sequence[tuple[str, int, bytes | None, bytes | None]]
                      ) -> list[tuple[bytes | None, bytes]]:
        if refused and self.known_tokens is not None:
            self.known_tokens()
        letters = []
        for reason, offset, key, value in refused:
            letter = make_dead_letter(reason=reason, consumer=CONSUMER_NAME, source_topic=self.topics.post_events,
                                      partition=partition, offset=offset, key=key, value=value)
            log.warning("dead letter from %s[%d]@%d: %s", self.topics.post_events, partition, offset, letter.reason)
            # Keyed as the message was (scrubbed, as in the letter), as the handler's dead letters are.
            letters.append((letter.key.encode() if letter.key is not None else None, letter.model_dump_json().encode()))
        return letters

    def _send(self, changed: list[PostState], dead: list[tuple[bytes | None, bytes]], errors: list[str]) -> None:
        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        for state in changed:
            self._produce(self.topics.insights, state.post_id.encode(), insights_message(state), on_delivery)
        for key, letter in dead:
            self._produce(self.topics.dead_letters, key, letter, on_delivery)

    def _wait_delivered(self, errors: list[str]) -> None:
        assert self.producer is not None
        if self.producer.flush(DELIVERY_WAIT) or errors:
            # Not committing the batch makes Kafka hand it to us again: nothing is lost.
            raise RuntimeError(f"publishing insights failed: {errors[:3] or 'timed out'}")

    def _produce(self, topic: str, key: bytes | None, value: bytes, on_delivery: Callable[..., None]) -> None:
        assert self.producer is not None
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)


# ----------------------------------------------------------------------------------- faust


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust reads uncommitted unless it runs transactions itself: an aborted transaction's events
        # would then be folded. Only committed events are the source of truth.
        consumer._isolation_level = "read_committed"
        return consumer


class ProjectorConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, starting at the store's offsets and handing over whole fetches.

    faust delivers each message through a queue, an `Event` and a task (`wait_first`) per message:
    about 15,000 events/s on this machine, `stream.take` included. The projector folds whole fetched
    batches instead; faust still runs the group, rebalances, seeks and the worker's life cycle.
    """

    projector: InsightsProjector
    # Seconds the fetch loop may go without fetching (its flow stopped by a rebalance that does not end, a
    # fetch that does not return) before the projector gives up; None: twice the broker request timeout.
    stall_limit: float | None = None
    # When the fetch loop last went round with its flow active (event loop time): `run_projector` ends a
    # projector whose loop never started or stopped going round.
    alive_at: float | None = None

    @property
    def stall_seconds(self) -> float:
        return self.stall_limit or 2 * self.transport.app.conf.broker_request_timeout
    _uncommitted: dict[TP, int] | None = None
    _next_group_commit = 0.0
    _group_commit: asyncio.Future[None] | None = None

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        # The store, not the consumer group, says where each partition resumes: its offsets were
        # committed with the projection they produced. No stored offset: from the beginning.
        positions = dict(await super().seek_to_committed())
        positions.update(await self._seek_to_store())
        return positions

    async def _seek_to_store(self) -> dict[TP, int]:
        """Each assigned partition of the post-events topic moved to the offset after the store's."""
        topic = self.projector.topics.post_events
        # Bounded: a rebalance waits on this read, and one that hangs would stop the flow for good.
        applied = await asyncio.wait_for(asyncio.to_thread(self.projector.store.applied_offsets, topic),
                                         STORE_READ_TIMEOUT)
        positions = {tp: applied.get(tp.partition, -1) + 1 for tp in self.assignment() if tp.topic == topic}
        # The aiokafka consumer belongs to faust's consumer thread: seeking it from this loop (what
        # `Consumer.seek` does) changes its fetched records while that thread reads them, and the fetch
        # fails with a KeyError. So the seeks run on that thread.
        await self._thread.call_thread(self._seek_on_consumer_thread, positions)
        for tp, position in positions.items():
            self._read_offset[TP(tp.topic, tp.partition)] = position or None
        return positions

    async def _seek_on_consumer_thread(self, positions: Mapping[TP, int]) -> None:
        consumer = self._thread._ensure_consumer()
        for tp, position in positions.items():
            consumer.seek(tp, position)

    async def _drain_messages(self, fetcher: Any) -> None:
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        loop = asyncio.get_running_loop()
        try:
            # With the collector disabled (`python -m streams.projector`), the cycles faust and asyncio make
            # are freed here; where it is enabled, one more collection every 10 s costs nothing worth measuring.
            collect_garbage = CollectEvery()
            # Set when the client's positions may be past records that were never folded: before the next
            # fetch is folded, every partition is moved back to the store's offsets.
            resync = False
            failures = 0
            while not (consumer_should_stop() or fetcher_should_stop()):
                collect_garbage()
                if not self.flow_active:
                    # A rebalance stops the flow until its seeks are done. Not going round meanwhile: one that
                    # never ends is a stall (`run_projector` watches `alive_at`).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.can_resume_flow.wait(), 1.0)
                    continue
                self.alive_at = loop.time()
                if resync:
                    try:
                        await self._seek_to_store()
                        resync = False
                        continue  # the flow looked at again before fetching
                    except Exception as exc:
                        if isinstance(exc, self.consumer_stopped_errors) or self.should_stop:
                            raise
                        # The store away, or the partitions moved meanwhile: tried again (an unfolded record
                        # must not be skipped by fetching on from where the client is).
                        log.error("moving to the stored offsets failed (%s: %s); trying again in %.0f s",
                                  type(exc).__name__, scrub(str(exc))[:500], RETRY_FIRST_WAIT)
                        await asyncio.sleep(RETRY_FIRST_WAIT)
                        continue
                try:
                    # A fetch that waits on for a rebalance that never ends is a stall too (see `alive_at`).
                    records, _active = await self._wait_next_records(1.0)
                    failures = 0
                except Exception as exc:
                    failures += 1
                    if (isinstance(exc, self.consumer_stopped_errors) or self.should_stop
                            or failures >= FETCH_ATTEMPTS
                            or (isinstance(exc, aiokafka_errors.KafkaError) and not exc.retriable)):
                        raise
                    # A fetch the client fails once (a race in a rebalance) must not stop the projector. The
                    # client may have moved past records it never returned, so reading resumes from the
                    # store's offsets: what was applied is skipped again.
                    delay = min(RETRY_FIRST_WAIT * 2 ** (failures - 1), RETRY_MAX_WAIT)
                    log.error("reading post events failed (%s: %s); reading again from the stored offsets in %.0f s",
                              type(exc).__name__, scrub(str(exc))[:500], delay)
                    resync = True
                    await asyncio.sleep(delay)
                    continue
                if not records:
                    continue
                if self.should_stop or not self.flow_active:
                    # Fetched as a rebalance began: dropped. The client's positions are past these records now,
                    # so the next fetch starts from the store's offsets (the rebalance's own seek may have come
                    # before this fetch returned).
                    resync = True
                    continue
                await self._project(records)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def _project(self, records: Mapping[Any, Sequence[Any]]) -> None:
        for tp, batch in records.items():
            raw = [(r.offset, r.key, r.value) for r in batch]
            if not raw:
                continue
            outcome = await self._project_until_stored(tp, raw)
            if outcome is None:
                continue
            if outcome.dead_letters:
                log.info("partition %d: %d events applied, %d dead letters", tp.partition, outcome.applied,
                         outcome.dead_letters)
            if self._uncommitted is None:
                self._uncommitted = {}
            self._uncommitted[TP(tp.topic, tp.partition)] = raw[-1][0] + 1
        # Group offsets only show the lag to operators: the store's offsets decide where we resume. So
        # they are committed now and then, in the background, never between a fetch and the next.
        now = asyncio.get_running_loop().time()
        if self._uncommitted and now >= self._next_group_commit and (
                self._group_commit is None or self._group_commit.done()):
            commits, self._uncommitted = self._uncommitted, {}
            self._next_group_commit = now + GROUP_COMMIT_INTERVAL
            self._group_commit = asyncio.ensure_future(self._commit_group(commits))

    async def _project_until_stored(self, tp: Any, raw: list[RawRecord]) -> BatchOutcome | None:
        """The batch projected, tried again (with a doubling wait) until the store and the broker take it.

        A batch that fails (the database or the broker away, insights not acknowledged in time) is
        neither skipped nor left to stop the consumer: nothing after it can be applied before it is, so
        the processor waits and tries again, and says so. Events the fold refuses never fail a batch:
        they are dead-lettered.
        """
        partition = tp.partition
        delay = RETRY_FIRST_WAIT
        while True:
            # Waiting on the store is no stall: the loop is still going round.
            self.alive_at = asyncio.get_running_loop().time()
            try:
                if len(raw) <= INLINE_RECORDS:
                    # A few events (a live post's next step) fold in about a millisecond: a thread hop
                    # would add a good part of that to the time until the handler sees them.
                    return self.projector.project(partition, raw)
                return await asyncio.to_thread(self.projector.project, partition, raw)
            except Exception as exc:
                if self.should_stop:
                    raise
                # The error's first line, never SQLAlchemy's statement and values (a post's state: its caption).
                log.error("partition %d: events at offsets %d to %d not stored (%s); trying again in %.0f s",
                          partition, raw[0][0], raw[-1][0], database_said(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_WAIT)
                if TP(tp.topic, partition) not in self.assignment():
                    # Given to another processor meanwhile: it reads the batch again from the store's offset.
                    log.info("partition %d was reassigned: its failed batch is left to its new processor", partition)
                    return None

    async def _commit_group(self, commits: dict[TP, int]) -> None:
        with contextlib.suppress(Exception):
            await self._thread.commit(commits)


def create_app(settings: Settings, store: ProjectionStore, *, datadir: Path | None = None,
               producer: Producer | None = None, instance_id: str | None = None,
               known_tokens: Callable[[], Collection[str]] | None = None) -> faust.App:
    """The projector's faust app: consumer group `<prefix>projector` on the post-events topic."""
    topics = settings.topics
    bootstrap = settings.kafka_bootstrap_servers or "127.0.0.1:9092"
    app_id = settings.projector_group
    datadir = datadir or Path(tempfile.gettempdir()) / "smartretry-faust" / app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=[f"kafka://{server}" for server in bootstrap.split(",")],
        datadir=str(datadir),
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        # The leader topic would need auto-created topics; the broker refuses those.
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # Records per fetch, folded as one batch: more fold faster (more of a post's events in one batch)
        # and hold more at once. In the bench, 20,000 peaked at 290 MB RSS, 15,000 at 268 MB.
        broker_max_poll_records=15_000,
        consumer_max_fetch_size=8 * 1024 * 1024,
        # A batch folds in well under this; a slow disk must not make the group think we died.
        broker_max_poll_interval=300.0,
        # Static membership: a processor restarted after a crash takes its old place in the group at
        # once, instead of waiting out the dead member's session timeout. Two processors on one host
        # need ids of their own (SMARTRETRY_PROJECTOR_INSTANCE_ID), or they fence each other out.
        consumer_group_instance_id=instance_id or settings.projector_instance_id
        or f"{app_id}@{socket.gethostname()}",
        # How soon a dead processor's partitions move to a live one.
        broker_session_timeout=settings.projector_session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, settings.projector_session_timeout_seconds / 5),
    )
    projector = InsightsProjector(store, topics, producer, known_tokens,
                                  partitions=store.recorded_partitions(topics.post_events))
    # Each app gets its own consumer class bound to its projector (tests run several apps).
    app.transport.Consumer = type("BoundProjectorConsumer", (ProjectorConsumer,), {"projector": projector})  # type: ignore[misc]
    # Registering the topic makes faust subscribe to it; the consumer above hands its fetches to the
    # projector, so no agent stream is involved.
    app.topics.add(app.topic(topics.post_events, key_serializer="raw", value_serializer="raw"))
    return app


class ProjectorStalled(RuntimeError):
    """The projector has stopped fetching for good: its app crashes, and the process ends."""


class ProjectorCrashed(RuntimeError):
    """The projector's faust app crashed: the process has to end and be started again."""


async def run_projector(settings: Settings, *, datadir: Path | None = None,
                        stop: asyncio.Event | None = None, on_stop: Callable[[], None] | None = None) -> None:
    """Runs the projector in this process until `stop` is set (or forever). `on_stop` is called as it begins to stop,
    however it ends (Ctrl-C, `stop`, a crash): the projector's own process passes `streams.kafka.stopping`."""
    assert settings.kafka_bootstrap_servers, "KAFKA_BOOTSTRAP_SERVERS must be set"
    ensure_topics(settings.kafka_bootstrap_servers, settings.topics.specs())
    store = ProjectionStore(make_engine(settings.database_url))
    store.create_schema()
    # The tokens the API and handler store, scrubbed out of this projector's dead letters.
    credentials = CredentialStore(store.engine, settings.secret_key.get_secret_value())
    credentials.create_schema()
    try:
        check_store_matches_log(settings.kafka_bootstrap_servers, settings.topics.post_events,
                                store.applied_offsets(settings.topics.post_events), partitions_of=store.partitions_of)
    except StoreAheadOfLog as exc:
        store.engine.dispose()
        raise SystemExit(f"error: {exc}") from None
    if store.recorded_partitions(settings.topics.post_events) is None:
        # Recorded by the check above once the broker describes the topic: without it, an import on another
        # partition than its post's would be folded here and skipped by replay.
        store.engine.dispose()
        raise SystemExit(f"error: the broker did not say how many partitions {settings.topics.post_events} has: "
                         "start the projector again once it answers")
    # No linger: a batch's insights are sent while its writes run, and the commit waits for them.
    # Under load they still batch up behind the requests in flight.
    # A message not delivered when the wait for it ends must never be delivered later (after the batch is
    # applied again, possibly by another processor, an old document would land after the new): the
    # producer gives up on it first.
    producer = kafka_producer(settings.kafka_bootstrap_servers,
                              **{"linger.ms": 0, "message.timeout.ms": int(DELIVERY_WAIT * 1000) - 10_000})
    app = create_app(settings, store, datadir=datadir, producer=producer, known_tokens=credentials.stored_tokens)
    # Watched from the start: faust's start waits for the first rebalance's seeks.
    starting = asyncio.ensure_future(app.start())
    try:
        # faust's services log a crash (its fetcher's, say) and stay up, projecting nothing. A crashed app
        # ends the process instead, which is then started again (`smartretry run` does; so would systemd).
        waits = [asyncio.ensure_future(app._crashed.wait())]
        if stop is not None:
            waits.append(asyncio.ensure_future(stop.wait()))
        try:
            await _until_done_or_stalled(app, waits, starting)
        finally:
            for wait in [*waits, starting]:
                wait.cancel()
        if app.crashed:
            reason = app.crash_reason
            raise ProjectorCrashed(f"the projector stopped projecting ({type(reason).__name__}: "
                                   f"{scrub(str(reason))[:500]})")
    finally:
        if on_stop is not None:
            on_stop()
        if app.crashed:
            # Bounded: a crashed app's services (a store read that hung, say) may never stop.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(app.stop(), CRASHED_STOP_WAIT)
        else:
            await app.stop()
        producer.flush(10)
        store.engine.dispose()


async def _until_done_or_stalled(app: faust.App, waits: Sequence[asyncio.Future[Any]],
                                 starting: asyncio.Future[Any]) -> None:
    """Until one of `waits` is done, `starting` (the app's start) failing meanwhile; the app crashed when its
    fetch loop has not gone round for its stall limit.

    The fetch loop watches itself (`_drain_messages`), once it runs: faust starts it after the first
    rebalance's seeks, and when a seek hangs past faust's own wait, faust gives up on the rebalance, never
    starts the loop, and crashes nothing.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        # The start only while it runs: once done, it would end every wait at once (a loop spinning a core).
        watched = [*waits] if starting.done() else [*waits, starting]
        await asyncio.wait(watched, timeout=WATCH_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and not starting.cancelled() and starting.exception() is not None:
            raise starting.exception()  # type: ignore[misc]
        if any(wait.done() for wait in waits):
            return
        consumer = cast(ProjectorConsumer, app.consumer)  # the one faust's start creates, or uses if made here
        limit = consumer.stall_seconds
        if loop.time() - (consumer.alive_at or started) > limit:
            await app.crash(ProjectorStalled(f"the post events have not been fetched for {limit:.0f}s (a "
                                             "rebalance that did not end)"))
            return


async def _run_until_crashed(settings: Settings) -> None:
    try:
        await run_projector(settings, on_stop=stopping)
    except ProjectorCrashed as exc:
        log.error("%s; exiting", exc)
        logging.shutdown()
        # At once: a thread still stuck in the call that crashed the app (a store read over a dead
        # connection) would keep an ordinary exit waiting for it, and the process up, projecting nothing.
        os._exit(1)


def main() -> None:
    """`python -m streams.projector`: settings from the environment, runs until interrupted."""
    from smartretry.logs import configure

    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    # Collections on the projector's own schedule (`ProjectorConsumer` runs them), not the collector's.
    disable_gc()
    if not settings.kafka_bootstrap_servers:
        print("error: set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        raise SystemExit(2)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_until_crashed(settings))


if __name__ == "__main__":
    main()
