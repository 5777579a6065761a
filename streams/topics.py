"""The service's Kafka topics, declared once and created idempotently at start."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from schemas.events import Event, LegacyInsightsImported
from streams.kafka import admin_client, client_config, partition_for

DEFAULT_PARTITIONS = 6
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    # Topics of one group must have as many partitions: their messages are keyed alike (by post id),
    # so partition N of each holds the same posts.
    co_partitioned: str | None = None


class TopicMismatch(RuntimeError):
    """Existing topics that break the service's layout (co-partitioned ones with different partition counts)."""


@dataclass(frozen=True)
class Topics:
    """The four topic names under one prefix (tests use a unique prefix each)."""

    prefix: str = "smartretry."
    partitions: int = DEFAULT_PARTITIONS

    @property
    def commands(self) -> str:
        return f"{self.prefix}commands"

    @property
    def post_events(self) -> str:
        return f"{self.prefix}post-events"

    @property
    def insights(self) -> str:
        return f"{self.prefix}insights"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}dead-letters"

    def specs(self) -> list[TopicSpec]:
        # Commands and events share partition count and key (post id), so the handler that owns a
        # post's commands also owns its events partition.
        return [
            TopicSpec(self.commands, self.partitions, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
                      co_partitioned="post"),
            # The source of truth: kept forever.
            TopicSpec(self.post_events, self.partitions, {"cleanup.policy": "delete", "retention.ms": "-1",
                                                          "retention.bytes": "-1"}, co_partitioned="post"),
            TopicSpec(self.insights, self.partitions, {"cleanup.policy": "compact"}),
            TopicSpec(self.dead_letters, 1, {"cleanup.policy": "delete", "retention.ms": str(90 * DAY_MS)}),
        ]


def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], timeout: float = 30.0) -> list[str]:
    """Creates the topics that do not exist yet; returns the names created. Safe to call on every start."""
    with admin_client(bootstrap) as admin:
        return _ensure_topics(admin, list(specs), timeout)


def _ensure_topics(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> list[str]:
    metadata = admin.list_topics(timeout=timeout).topics
    _check_co_partitioned(specs, {name: len(topic.partitions) for name, topic in metadata.items()})
    wanted = [s for s in specs if s.name not in metadata]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config) for s in wanted],
        operation_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    _wait_for_leaders(admin, wanted, timeout)
    return created


def _check_co_partitioned(specs: list[TopicSpec], existing: dict[str, int]) -> None:
    """Raises `TopicMismatch` when co-partitioned topics have, or would be created with, different counts."""
    groups: dict[str, dict[str, int]] = {}
    for spec in specs:
        if spec.co_partitioned is not None:
            groups.setdefault(spec.co_partitioned, {})[spec.name] = existing.get(spec.name, spec.partitions)
    for counts in groups.values():
        if len(set(counts.values())) > 1:
            found = ", ".join(f"{name} {count}" for name, count in counts.items())
            raise TopicMismatch(
                f"topics keyed by post id need as many partitions each ({found}): a post's commands and events "
                "must be on partitions of the same number, so one handler owns both. Use another "
                "SMARTRETRY_TOPIC_PREFIX (new topics), or, only while the one with fewer has no message yet, give "
                "it the other's count (kafka-topics.sh --alter --partitions): adding partitions to a topic that "
                "holds a post's messages puts its later ones on another partition")


def _wait_for_leaders(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> None:
    """A created topic answers "not leader" until every partition has elected one; wait for that."""
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        ready = all(
            spec.name in topics and len(topics[spec.name].partitions) == spec.partitions
            and all(p.leader >= 0 for p in topics[spec.name].partitions.values())
            for spec in specs
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without partition leaders after {timeout:.0f}s")
        time.sleep(0.05)


class StoreAheadOfLog(RuntimeError):
    """The projection holds events the broker's post-events topic does not have: another broker's, or its lost data."""


class PartitionsChanged(StoreAheadOfLog):
    """The post-events topic has another partition count than the projection was built with."""


def check_store_matches_log(bootstrap: str, topic: str, applied: dict[int, int], timeout: float = 10.0,
                            partitions_of: Callable[[str, int], int] | None = None) -> None:
    """Raises `StoreAheadOfLog` when a partition's applied offset is past the end of the topic's partition.

    The projection is then of events this broker does not have (its data was lost, or the database is
    another service's). Deciding on it would take posts it has for published when the log says nothing
    of them, and record new events at offsets the store takes for applied already: duplicates and posts
    that never show. Refusing to start is the only safe answer.

    `partitions_of(topic, count)`: the store's recorded partition count of the topic (recording `count` when it
    has none). Raises `PartitionsChanged` when the topic's count is another: a post's later events would be on
    another partition than its earlier ones, and a replay, a rebuild or two projectors would fold them apart.
    """
    from confluent_kafka import Consumer, TopicPartition

    reader = Consumer(client_config(bootstrap, **{"group.id": "smartretry-store-check", "enable.auto.commit": False}))
    try:
        if partitions_of is not None:
            described = reader.list_topics(topic, timeout=timeout).topics.get(topic)
            if described is not None and described.error is None and described.partitions:
                count = len(described.partitions)
                recorded = partitions_of(topic, count)
                if recorded != count:
                    raise PartitionsChanged(
                        f"{topic} has {count} partitions, but the projection was built when it had {recorded}: "
                        "Kafka places a post by the count, so a post's new events would go to another partition "
                        "than its earlier ones, and they would be folded apart (a retry could publish again what "
                        "went out). Start on new topics (another SMARTRETRY_TOPIC_PREFIX, with a database of its "
                        "own), or recreate this topic with its old count if its events can be given up")
        if not applied:
            return
        behind = []
        deadline = time.monotonic() + timeout
        for partition, offset in sorted(applied.items()):
            while True:
                try:
                    _low, high = reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
                    break
                except KafkaException as exc:
                    error = exc.args[0]
                    if error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION):
                        high = 0  # a partition the topic does not have holds no event
                        break
                    electing = error.code() in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
                    if not (electing or error.retriable()) or time.monotonic() > deadline:
                        raise  # the broker did not answer: that says nothing of the store
                    time.sleep(0.2)  # a leader being elected (a topic just created, a broker just started)
            if offset >= high:
                behind.append(f"partition {partition}: applied through offset {offset}, the topic ends at {high}")
    finally:
        reader.poll(0)  # its log lines, to the log
        reader.close()
    if behind:
        raise StoreAheadOfLog(
            f"the database's projection is ahead of {topic} on this broker ({'; '.join(behind)}): it was built "
            "from events this broker does not have (its data was lost, or the database belongs to another "
            "broker). Point KAFKA_BOOTSTRAP_SERVERS at the broker it was built from; or, if that broker's data "
            "is gone for good, `smartretry reset-projection` empties the projection (account tokens stay) and "
            "the projector rebuilds it from the events this broker has: posts whose events were lost no longer show")


def misplaced(event: Event, partition: int, partitions: int | None) -> str | None:
    """Why an event written by an upstream service (`LegacyInsightsImported`) may not be folded where it came, or None.

    A post's events must all be on one partition, the one its post id is placed on: folded elsewhere, the live
    projection and a replay (whose workers read partitions apart, in no order between them) would fold them apart.
    The service's own events are always on the post's partition. `partitions`: the count the projection was built
    with (None: not recorded, nothing checked)."""
    if partitions is None or type(event) is not LegacyInsightsImported:
        return None
    expected = partition_for(event.post_id, partitions)
    if expected == partition:
        return None
    return (f"LegacyInsightsImported {event.event_id} of post {event.post_id} came on partition {partition}, not on "
            f"its post's, {expected}: a post's events must all be on one partition (key it by post id, with the "
            "Java client's partitioner, murmur2); written again there (`smartretry dlq requeue` keys it so), it is "
            "folded")
