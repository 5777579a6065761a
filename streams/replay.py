"""Replay: rebuild the projection from offset 0 of the post events and compare it with the live one."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, TopicPartition

from projections.store import ProjectionStore, digest_of
from streams.projector import InsightsProjector, RawRecord
from streams.topics import Topics

# Records folded per store transaction: large batches amortise loading and writing each post.
BATCH = 20_000

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
    events = _read_and_fold(bootstrap, topics, targets, scratch_store, progress, started + timeout)
    replay_prints = scratch_store.fingerprints()
    differing = sorted(post_id for post_id in live_prints.keys() | replay_prints.keys()
                       if live_prints.get(post_id) != replay_prints.get(post_id))
    return ReplayReport(live_digest=digest_of(live_prints), replay_digest=digest_of(replay_prints),
                        differing=differing, offsets=targets, events=events, posts=len(replay_prints),
                        seconds=time.monotonic() - started)


def _read_and_fold(bootstrap: str, topics: Topics, targets: dict[int, int], store: ProjectionStore,
                   progress: Progress | None, deadline: float) -> int:
    if not targets:
        return 0
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
    projector = InsightsProjector(store, topics, producer=None)
    topic = topics.post_events
    try:
        low = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in targets}
        total = sum(max(0, targets[p] - low[p] + 1) for p in targets)
        consumer.assign([TopicPartition(topic, p, low[p]) for p in targets])
        pending: dict[int, list[RawRecord]] = {p: [] for p in targets}
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
                batch = pending[partition]
                batch.append((offset, message.key(), message.value()))
                if offset >= targets[partition]:
                    remaining.discard(partition)
                if len(batch) >= BATCH or partition not in remaining:
                    projector.project(partition, batch)
                    done += len(batch)
                    pending[partition] = []
                    if progress:
                        progress(done, total)
            # Pause finished partitions so their newer events are not fetched for nothing.
            finished = [TopicPartition(topic, p) for p in targets if p not in remaining]
            if finished:
                consumer.pause(finished)
        return done
    finally:
        consumer.close()
