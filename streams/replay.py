"""Replay: rebuild the projection from offset 0 of the post events and compare it with the live one."""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, TopicPartition

from projections.fold import apply_valid
from projections.state import PostState
from projections.store import Offsets, ProjectionStore, digest_of
from schemas.envelope import DecodeError, decode_event
from schemas.events import Event
from streams.projector import GC_THRESHOLDS
from streams.topics import Topics

# Records decoded and folded at a time: one copy and one document per post per batch.
BATCH = 50_000
# Post states a replay keeps in memory before writing them out (about 10 kB each).
MEMORY_STATES = 100_000

Progress = Callable[[int, int], None]


class ReplayError(RuntimeError):
    """The post events could not be read up to the live projection's offsets."""


@dataclass
class ReplayReport:
    live_digest: str
    replay_digest: str
    # Posts whose replayed state differs from the live one, or that only one side has.
    differing: list[str] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)
    events: int = 0
    posts: int = 0
    seconds: float = 0.0

    @property
    def identical(self) -> bool:
        return self.live_digest == self.replay_digest and not self.differing


def replay(bootstrap: str, topics: Topics, live_store: ProjectionStore, scratch_store: ProjectionStore,
           progress: Progress | None = None, timeout: float = 300.0) -> ReplayReport:
    """Folds the post events into `scratch_store` (emptied first) up to the live store's offsets.

    The live offsets and states are read in one transaction first, so the live processor can keep
    running: the replay stops exactly where that snapshot was taken.
    """
    started = time.monotonic()
    offsets, live_prints = live_store.snapshot_fingerprints()
    targets = {partition: offset for (topic, partition), offset in offsets.items()
               if topic == topics.post_events and offset >= 0}
    scratch_store.create_schema()
    scratch_store.reset()
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)  # see streams.projector.tune_gc
    try:
        events, replay_prints = _read_and_fold(bootstrap, topics, targets, scratch_store, progress,
                                               started + timeout)
    finally:
        gc.set_threshold(*thresholds)
    differing = sorted(post_id for post_id in live_prints.keys() | replay_prints.keys()
                       if live_prints.get(post_id) != replay_prints.get(post_id))
    return ReplayReport(live_digest=digest_of(live_prints), replay_digest=digest_of(replay_prints),
                        differing=differing, offsets=targets, events=events, posts=len(replay_prints),
                        seconds=time.monotonic() - started)


class _MemoryFold:
    """Folds the replayed events in memory and writes each post once, at the end.

    The live processor stores every post after each batch; a replay has no reader waiting, so it
    keeps the states in memory and stores each post's final state in one transaction with the
    offsets. Past `limit` posts in memory, the states are written out and read back when their post
    has more events, so memory stays bounded on any topic.
    """

    def __init__(self, store: ProjectionStore, limit: int = MEMORY_STATES) -> None:
        self.store = store
        self.limit = limit
        self.states: dict[str, PostState] = {}
        self.prints: dict[str, bytes] = {}
        self.spilled = False

    def fold(self, values: list[bytes | None]) -> None:
        by_post: dict[str, list[Event]] = {}
        for value in values:
            try:
                event = decode_event(value)
            except DecodeError:
                continue  # a dead letter of the live processor: not part of the projection
            by_post.setdefault(event.post_id, []).append(event)
        if self.spilled:
            self.states.update(self.store.load([p for p in by_post if p not in self.states]))
        for post_id, events in by_post.items():
            # What the fold refuses the live processor sent to the dead letters: skipped here too.
            state, _refused = apply_valid(self.states.get(post_id), events)
            if state is not None:
                self.states[post_id] = state
        if len(self.states) > self.limit:
            self.prints.update(self.store.write_states(self.states.values(), {}))
            self.states.clear()
            self.spilled = True

    def finish(self, offsets: Offsets) -> dict[str, bytes]:
        self.prints.update(self.store.write_states(self.states.values(), offsets))
        self.states.clear()
        return self.prints


def _read_and_fold(bootstrap: str, topics: Topics, targets: dict[int, int], store: ProjectionStore,
                   progress: Progress | None, deadline: float) -> tuple[int, dict[str, bytes]]:
    """Records read, and the fingerprint of each post stored."""
    if not targets:
        return 0, {}
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        # Partitions are assigned by hand and no offset is ever committed: the replay is invisible to
        # the live processor's consumer group.
        "group.id": f"{topics.prefix}replay-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # The same events the live processor folds: those of committed transactions.
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "queued.min.messages": 200_000,
    })
    topic = topics.post_events
    folder = _MemoryFold(store)
    try:
        low = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in targets}
        total = sum(max(0, targets[p] - low[p] + 1) for p in targets)
        consumer.assign([TopicPartition(topic, p, low[p]) for p in targets])
        pending: list[bytes | None] = []
        remaining = set(targets)
        done = 0
        if progress:
            progress(0, total)
        while remaining:
            if time.monotonic() > deadline:
                raise ReplayError(f"timed out reading {topic}; not read to the end: partitions {sorted(remaining)}")
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                partition = message.partition()
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF and partition in remaining:
                        raise ReplayError(f"{topic}[{partition}] ends before the live offset {targets[partition]}")
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise ReplayError(f"reading {topic}: {error}")
                    continue
                offset = message.offset() or 0
                if partition not in remaining or offset > targets[partition]:
                    continue
                pending.append(message.value())
                if offset >= targets[partition]:
                    remaining.discard(partition)
            if len(pending) >= BATCH or (pending and not remaining):
                # Partitions are independent (a post's events are on one), so one batch mixes them.
                folder.fold(pending)
                done += len(pending)
                pending = []
                if progress:
                    progress(done, total)
            # Pause finished partitions so their newer events are not fetched for nothing.
            finished = [TopicPartition(topic, p) for p in targets if p not in remaining]
            if finished:
                consumer.pause(finished)
        return done, folder.finish({(topic, p): offset for p, offset in targets.items()})
    finally:
        consumer.close()
