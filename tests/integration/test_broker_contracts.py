"""Every command and event survives the real broker; bad bytes decode to a clear error."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions

from projections.store import ProjectionStore, make_engine
from schemas.envelope import DecodeError, decode_command, decode_event, encode
from streams.broker import BrokerUnavailable, LocalBroker
from streams.kafka import consumer, murmur2, partition_for, producer
from streams.topics import (
    PartitionsChanged,
    StoreAheadOfLog,
    TopicMismatch,
    Topics,
    check_store_matches_log,
    ensure_topics,
)
from tests.support.samples import POST_ID, all_commands, all_events

pytestmark = pytest.mark.integration


def _consume_all(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[tuple[bytes, bytes | None]]:
    c = consumer(bootstrap, f"test-{topic}")
    c.subscribe([topic])
    got: list[tuple[bytes, bytes | None]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            message = c.poll(0.5)
            if message is None or message.error():
                continue
            got.append((message.key(), message.value()))
    finally:
        c.close()
    return got


def test_commands_and_events_round_trip_through_the_broker(kafka_bootstrap: str, topics: Topics) -> None:
    p = producer(kafka_bootstrap)
    for command in all_commands():
        p.produce(topics.commands, key=command.post_id.encode(), value=encode(command))  # type: ignore[attr-defined]
    for event in all_events():
        p.produce(topics.post_events, key=event.post_id.encode(), value=encode(event))  # type: ignore[attr-defined]
    assert p.flush(30) == 0

    commands = _consume_all(kafka_bootstrap, topics.commands, len(all_commands()))
    events = _consume_all(kafka_bootstrap, topics.post_events, len(all_events()))
    assert sorted((decode_command(v) for _, v in commands), key=lambda c: c.command_id) == all_commands()
    decoded_events = {e.event_id: e for e in (decode_event(v) for _, v in events)}
    assert [decoded_events[e.event_id] for e in all_events()] == all_events()  # type: ignore[attr-defined]
    assert {k for k, _ in commands} == {POST_ID.encode()}


def test_bad_bytes_from_the_broker_decode_to_clear_errors(kafka_bootstrap: str, topics: Topics) -> None:
    bad = [b"not json at all", b'"a string"', b'{"type": "PostDeleted", "post_id": "p"}',
           b'{"type": "PublishAttempted", "schema_version": 7}', b'{"type": "PlatformResult", "post_id": "p"}']
    p = producer(kafka_bootstrap)
    for value in bad:
        p.produce(topics.post_events, key=b"p", value=value)
    assert p.flush(30) == 0
    reasons = []
    for _, value in _consume_all(kafka_bootstrap, topics.post_events, len(bad)):
        with pytest.raises(DecodeError) as caught:
            decode_event(value)
        reasons.append(caught.value.reason)
    assert sorted(r.split(":")[0].split(" ")[0] for r in reasons) == sorted(
        ["not", "event", "unknown", "unsupported", "invalid"])


def test_topics_are_created_once_with_their_retention(kafka_bootstrap: str) -> None:
    names = Topics(prefix=f"t{os.getpid()}x{time.monotonic_ns()}.")
    assert len(ensure_topics(kafka_bootstrap, names.specs())) == 4
    assert ensure_topics(kafka_bootstrap, names.specs()) == []
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = admin.list_topics(timeout=10).topics
    assert len(metadata[names.commands].partitions) == len(metadata[names.post_events].partitions) == 6
    resources = [ConfigResource("topic", names.post_events), ConfigResource("topic", names.insights)]
    configs = {r.name: f.result(10) for r, f in admin.describe_configs(resources).items()}
    assert configs[names.post_events]["retention.ms"].value == "-1"
    assert configs[names.insights]["cleanup.policy"].value == "compact"


def test_commands_and_events_topics_with_different_partition_counts_are_refused(kafka_bootstrap: str) -> None:
    prefix = f"mismatch{uuid.uuid4().hex[:8]}."
    ensure_topics(kafka_bootstrap, [Topics(prefix=prefix, partitions=3).specs()[0]])  # commands only, 3 partitions
    with pytest.raises(TopicMismatch, match=r"commands 3, .*post-events 6.*one handler owns both"):
        ensure_topics(kafka_bootstrap, Topics(prefix=prefix).specs())
    assert ensure_topics(kafka_bootstrap, Topics(prefix=prefix, partitions=3).specs()) != []  # same count: fine


@pytest.mark.parametrize(("key", "java"), [
    # org.apache.kafka.common.utils.UtilsTest's murmur2 cases (signed ints, as Java prints them).
    (b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829), (b"abc", 479470107),
])
def test_murmur2_is_the_java_clients(key: bytes, java: int) -> None:
    assert murmur2(key) == java & 0xFFFFFFFF


def test_a_post_ids_partition_is_where_the_services_producer_puts_it(kafka_bootstrap: str, topics: Topics) -> None:
    p = producer(kafka_bootstrap)
    landed: dict[str, int] = {}
    keys = [f"post-{n}" for n in range(40)]
    for key in keys:
        p.produce(topics.commands, key=key.encode(), value=b"{}",
                  on_delivery=lambda _err, msg: landed.__setitem__(msg.key().decode(), msg.partition()))
    assert p.flush(30) == 0
    assert landed == {key: partition_for(key, topics.partitions) for key in keys}


def test_a_projection_ahead_of_the_brokers_events_is_refused_and_one_within_them_is_not(kafka_bootstrap: str) -> None:
    topics = Topics(prefix=f"ahead{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka_bootstrap, topics.specs())
    check_store_matches_log(kafka_bootstrap, topics.post_events, {})  # an empty projection: nothing to compare
    # A projection of 201 events on partition 0, against a topic that has none (its broker's data lost).
    with pytest.raises(StoreAheadOfLog, match=r"partition 0: applied through offset 200, the topic ends at 0"):
        check_store_matches_log(kafka_bootstrap, topics.post_events, {0: 200})
    with pytest.raises(StoreAheadOfLog, match="partition 9"):  # a partition the topic does not have
        check_store_matches_log(kafka_bootstrap, topics.post_events, {9: 0})
    p = producer(kafka_bootstrap)
    p.produce(topics.post_events, key=b"p", value=b"{}", partition=0)
    assert p.flush(30) == 0
    check_store_matches_log(kafka_bootstrap, topics.post_events, {0: 0})


def test_a_local_broker_on_kept_data_starts_with_its_topics_and_messages_on_the_same_port(tmp_path: Path) -> None:
    data = tmp_path / "kafka"
    first = LocalBroker.start(data_dir=data)
    try:
        topics = Topics(prefix="kept.")
        ensure_topics(first.bootstrap, topics.specs())
        p = producer(first.bootstrap)
        p.produce(topics.post_events, key=b"post-1", value=b"kept", partition=0)
        assert p.flush(30) == 0
    finally:
        first.stop()
    assert data.exists()  # a broker given its directory never deletes it
    controller = _controller_port(data)
    # Its controller's port taken meanwhile (it is one the system hands out): the broker starts on another.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", controller))
        taken.listen()
        # Asked for by its setting, the taken port is refused in words that say why.
        with pytest.raises(BrokerUnavailable, match="Address already in use"):
            LocalBroker.start(data_dir=data, controller_port=controller)
        again = LocalBroker.start(data_dir=data)
        try:
            assert again.port == first.port and _controller_port(data) != controller
            assert ensure_topics(again.bootstrap, topics.specs()) == []
            assert [value for _, value in _consume_all(again.bootstrap, topics.post_events, 1)] == [b"kept"]
        finally:
            again.stop()


def _controller_port(data: Path) -> int:
    found = re.search(r"CONTROLLER://127\.0\.0\.1:(\d+)", (data / "server.properties").read_text())
    assert found is not None
    return int(found.group(1))


def test_local_broker_leaves_no_jvm_when_its_parent_is_killed(tmp_path: object) -> None:
    """A killed test run or `make run` must not leave an orphan broker behind."""
    script = (
        "import sys, time\n"
        "from streams.broker import LocalBroker\n"
        "b = LocalBroker.start()\n"
        "print(b.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": ""})
    assert parent.stdout is not None and parent.stderr is not None
    line = parent.stdout.readline()
    parent.stdout.close()
    if not line.strip():
        parent.wait()
        errors = parent.stderr.read()
        parent.stderr.close()
        pytest.fail(f"the local broker did not start: {errors[-3000:]}")
    parent.stderr.close()
    jvm_pid = int(line)
    os.kill(jvm_pid, 0)  # the broker runs
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(jvm_pid, 0)
        except ProcessLookupError:
            return
        # Reap it if it became our child after the parent died.
        time.sleep(0.2)
    pytest.fail(f"broker JVM {jvm_pid} still runs after its parent was killed")


def test_a_projection_built_on_another_partition_count_is_refused_even_after_a_reset(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = Topics(prefix=f"layout{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka_bootstrap, topics.specs())
    store = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/projection.db"))
    store.create_schema()
    # The first start records the count; the starts after it find it unchanged.
    for _ in range(2):
        check_store_matches_log(kafka_bootstrap, topics.post_events, {}, partitions_of=store.partitions_of)
    # An operator adds partitions (to both keyed topics, as the service asks of them).
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_partitions([NewPartitions(topics.post_events, 8),
                                           NewPartitions(topics.commands, 8)]).values():
        future.result(30)
    deadline = time.monotonic() + 30
    while len(admin.list_topics(topics.post_events, timeout=10).topics[topics.post_events].partitions) != 8:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for _ in range(2):  # emptying the projection changes nothing: the events keep the layout they were written with
        with pytest.raises(PartitionsChanged, match=r"has 8 partitions, but the projection was built when it had 6"):
            check_store_matches_log(kafka_bootstrap, topics.post_events, {}, partitions_of=store.partitions_of)
        store.reset()
    # A store of its own for other topics records theirs.
    other = Topics(prefix=f"layout{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka_bootstrap, other.specs())
    check_store_matches_log(kafka_bootstrap, other.post_events, {}, partitions_of=store.partitions_of)


def test_a_commit_sent_inside_the_revoke_callback_is_what_the_partitions_next_owner_reads(
        kafka_bootstrap: str, topics: Topics) -> None:
    # The command handler sends the commits gathering for revoked partitions from its rebalance callback, without
    # waiting for them: librdkafka must deliver them, metadata included, before the group moves the partitions on.
    group = f"revoke-{uuid.uuid4().hex[:8]}"
    first = consumer(kafka_bootstrap, group, **{"session.timeout.ms": 6000})
    handed: list[int] = []

    def on_revoke(revoking: Any, partitions: list[TopicPartition]) -> None:
        handed.extend(tp.partition for tp in partitions)
        revoking.commit(offsets=[TopicPartition(topics.commands, tp.partition, 41, metadata="done:1-3")
                                 for tp in partitions], asynchronous=True)

    first.subscribe([topics.commands], on_revoke=on_revoke)
    deadline = time.monotonic() + 30
    while not first.assignment() and time.monotonic() < deadline:
        first.poll(0.2)
    assert len(first.assignment()) == topics.partitions
    second = consumer(kafka_bootstrap, group, **{"session.timeout.ms": 6000})
    second.subscribe([topics.commands])
    try:
        deadline = time.monotonic() + 60
        while not second.assignment() and time.monotonic() < deadline:
            second.poll(0.2)  # its join is answered once the first has rejoined, polled just below
            first.poll(0.2)
        moved = [tp.partition for tp in second.assignment()]
        assert moved and set(moved) <= set(handed)
        committed = second.committed([TopicPartition(topics.commands, p) for p in moved], timeout=10)
        assert [(tp.offset, tp.metadata) for tp in committed] == [(41, "done:1-3")] * len(moved)
    finally:
        first.close()
        second.close()
