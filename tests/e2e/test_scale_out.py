"""Scale out on PostgreSQL: two handlers and two projectors; one of each dies and the other takes over."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from projections.store import ProjectionStore, make_engine
from publishers.sandbox import DEMO_ACCOUNT_ID, SandboxControl, SandboxServer
from schemas.commands import PublishRequested, RetryRequested
from schemas.envelope import encode
from schemas.ids import new_id
from streams.kafka import producer
from streams.replay import replay
from tests.support.chaos import chaos_content, command_finished, verdict
from tests.support.service import Service, ServiceProcess

pytestmark = pytest.mark.integration

# The broker's minimum. A dead projector keeps its partitions (static membership) until this runs out.
SESSION_TIMEOUT_S = "6"


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    """A database of this test's own on the session's PostgreSQL server."""
    name = f"scale_out_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Cluster:
    """Two projector and two handler processes of one service, each pair in one consumer group."""

    def __init__(self, service: Service, work_dir: Path) -> None:
        self.service = service
        # Static members need distinct instance ids; by default both would take the host's name and
        # fence each other.
        self.projectors = [
            ServiceProcess(f"projector-{n}", [sys.executable, "-m", "streams.projector"],
                           {**service.env, "SMARTRETRY_PROJECTOR_INSTANCE_ID": f"{service.prefix}projector-{n}"},
                           work_dir)
            for n in (1, 2)]
        self.handlers = [
            ServiceProcess(f"handler-{n}", [sys.executable, "-m", "smartretry.cli", "handler"], service.env, work_dir)
            for n in (1, 2)]
        self._producer = producer(service.bootstrap)
        self.partition_of: dict[str, int] = {}
        self.last_command: dict[str, str] = {}

    def start(self) -> None:
        for process in (*self.projectors, *self.handlers):
            process.start()

    def stop(self) -> None:
        for process in (*self.handlers, *self.projectors):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()[-2500:]}" for p in (*self.handlers, *self.projectors))

    def send(self, post_id: str, command: PublishRequested | RetryRequested) -> None:
        def delivered(err: Any, msg: Any) -> None:
            assert err is None, err
            # Commands and events of a post share the partition number: this is its events partition too.
            self.partition_of[post_id] = msg.partition()

        self._producer.produce(self.service.topics.commands, key=post_id.encode(), value=encode(command),
                               on_delivery=delivered)
        self.last_command[post_id] = command.command_id

    def publish(self, broken: bool) -> str:
        post_id = new_id()
        self.send(post_id, PublishRequested(
            command_id=new_id(), post_id=post_id, publish_target="both", content=chaos_content(post_id, broken),
            account=DEMO_ACCOUNT_ID, requested_at=datetime.now(UTC)))
        return post_id

    def flush(self) -> None:
        assert self._producer.flush(30) == 0

    def wait_finished(self, post_ids: list[str], timeout: float) -> None:
        """Until each post's last command has its final results."""
        deadline = time.monotonic() + timeout
        waiting = list(post_ids)
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if not self._finished(p)]
            time.sleep(0.2)
        assert not waiting, f"{len(waiting)} posts not finished in {timeout:.0f}s: {waiting[:5]}\n{self.logs()}"

    def members(self, group: str) -> list[int]:
        """Partitions held by each member of a consumer group, per the broker."""
        admin = AdminClient({"bootstrap.servers": self.service.bootstrap})
        description = admin.describe_consumer_groups([group])[group].result(30)
        return sorted(len(m.assignment.topic_partitions) for m in description.members)

    def wait_members(self, group: str, expected: list[int], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while (held := self.members(group)) != expected:
            assert time.monotonic() < deadline, f"{group}: members hold {held}, expected {expected}\n{self.logs()}"
            time.sleep(0.5)

    def _finished(self, post_id: str) -> bool:
        state = self.service.stores.projection.get(post_id)
        return state is not None and command_finished(state, self.last_command[post_id])


def test_two_of_each_survive_losing_one_of_each(kafka_bootstrap: str, shared_sandbox: SandboxServer,
                                                database_url: str, tmp_path: Path) -> None:
    control = SandboxControl(shared_sandbox.base_url)
    control.reset()
    control.set_publish_limit(10_000)
    service = Service(kafka_bootstrap, control, tmp_path, database_url=database_url, extra_env={
        "SMARTRETRY_PROJECTOR_SESSION_TIMEOUT_SECONDS": SESSION_TIMEOUT_S})
    cluster = Cluster(service, tmp_path)
    cluster.start()
    try:
        before = [cluster.publish(broken=n % 3 == 0) for n in range(12)]
        cluster.flush()
        cluster.wait_finished(before, timeout=120)
        # Both of each pair share the 6 partitions before anything dies.
        cluster.wait_members(f"{service.prefix}projector", [3, 3])
        cluster.wait_members(f"{service.prefix}command-handler", [3, 3])

        # Mid-way: more posts in flight, then one handler and one projector die without a word.
        during = [cluster.publish(broken=n % 3 == 0) for n in range(6)]
        cluster.flush()
        cluster.handlers[1].kill()
        cluster.projectors[1].kill()
        after: list[str] = []
        # Until every partition has posts sent after the deaths, so each dead process's share moved.
        while len(after) < 12 or {cluster.partition_of.get(p) for p in after} != set(range(6)):
            assert len(after) < 80, "posts keep missing a partition"
            after.append(cluster.publish(broken=len(after) % 3 == 0))
            cluster.flush()
        every = before + during + after
        # Session timeout, rebalance, then the freshness wait of commands that waited on a dead projector.
        cluster.wait_finished(every, timeout=180)
        cluster.wait_members(f"{service.prefix}projector", [6])
        cluster.wait_members(f"{service.prefix}command-handler", [6])

        # The user fixes the image of each failed post and retries it, on the survivors.
        failed = [p for p in every if (s := service.stores.projection.get(p)) is not None and s.status == "failed"]
        assert failed, "the broken image URLs should have failed on Facebook"
        for post_id in failed:
            cluster.send(post_id, RetryRequested(command_id=new_id(), post_id=post_id,
                                                 content=chaos_content(post_id, broken=False),
                                                 requested_at=datetime.now(UTC)))
        cluster.flush()
        cluster.wait_finished(failed, timeout=120)

        states = {p: service.stores.projection.get(p) for p in every}
        assert {s.status if s else None for s in states.values()} == {"posted"}, cluster.logs()
        duplicates, lost, problems = verdict(control.posts(), states, dict.fromkeys(every, "both"))
        assert (duplicates, lost, problems) == (0, 0, [])
        counters = control.counters()
        assert sum(counters["facebook"].values()) == sum(counters["instagram"].values()) == len(every)

        scratch = ProjectionStore(make_engine(f"sqlite:///{tmp_path / 'replay.db'}"))
        report = replay(kafka_bootstrap, service.topics, service.stores.projection, scratch)
        scratch.engine.dispose()
        assert report.identical, report.differing
        assert report.posts == len(every)
    finally:
        cluster.stop()
        service.stop()
        control.close()
