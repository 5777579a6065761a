"""The faust projector on a real broker: the seed's documents in the store and on the insights topic,
dead letters for poison events, and an exact resume after being killed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiokafka
import pytest
from aiokafka.consumer.fetcher import Fetcher
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy.exc import OperationalError

from projections.fold import fold
from projections.store import ProjectionStore, make_engine
from schemas.deadletters import DeadLetter
from schemas.envelope import encode
from schemas.events import Event, PublishAttempted
from schemas.insights import InsightsMessage
from smartretry.settings import Settings
from streams import projector as projector_module
from streams.kafka import producer
from streams.projector import InsightsProjector, ProjectorConsumer, ProjectorCrashed, run_projector
from streams.topics import Topics
from tests.integration.test_store import (
    AFTER_FAILED_ATTEMPT,
    AFTER_SUCCESSFUL_RETRY,
    FIRST,
    POST_ID,
    RETRY,
    facebook_retry,
    first_attempt,
)

pytestmark = pytest.mark.integration


def produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    p = producer(bootstrap)
    for key, value in messages:
        while True:
            try:
                p.produce(topic, key=key.encode(), value=value)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(30) == 0


def read_topic(bootstrap: str, topic: str, partitions: int) -> list[tuple[bytes | None, bytes]]:
    """Every message of `topic`, in offset order per partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: list[tuple[bytes | None, bytes]] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 20
    while len(at_end) < partitions and time.monotonic() < deadline:
        for m in c.consume(500, timeout=0.5):
            if m.error():
                at_end.add(m.partition())
            else:
                got.append((m.key(), m.value()))
    c.close()
    return got


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def applied(store: ProjectionStore, topics: Topics) -> int:
    with contextlib.suppress(Exception):
        return sum(offset + 1 for offset in store.applied_offsets(topics.post_events).values())
    return 0


@contextlib.asynccontextmanager
async def running_projector(settings: Settings, datadir: Path) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_projector(settings, datadir=datadir, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/var/smartretry.db"
    url: str = request.getfixturevalue("postgres_url")
    name = f"projector_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}"


async def test_seed_events_give_the_seed_documents_and_poison_goes_to_dead_letters(
    kafka_bootstrap: str, topics: Topics, database_url: str, tmp_path: Path
) -> None:
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix, database_url=database_url)
    store = ProjectionStore(make_engine(database_url))
    first = first_attempt()
    produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in first])
    async with running_projector(settings, tmp_path / "faust"):
        await until(lambda: applied(store, topics) >= len(first))
        assert store.get(POST_ID).document.to_document() == AFTER_FAILED_ATTEMPT  # type: ignore[union-attr]

        # Undecodable, invalid, and valid but refused by the fold (an attempt of a post never submitted).
        refused = encode(PublishAttempted(event_id="ghost:a1", post_id="ghost", occurred_at=FIRST,
                                          platform="facebook", attempt_id="ghost-a1", attempt_number=1,
                                          command_id="ghost-c1"))
        poison = [b"\x00not json", b'{"type": "PlatformResult", "post_id": "' + POST_ID.encode() + b'"}', refused]
        produce(kafka_bootstrap, topics.post_events, [(POST_ID, value) for value in poison])
        retry = facebook_retry()
        produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in retry])
        await until(lambda: applied(store, topics) >= len(first) + len(poison) + len(retry))

    assert store.get(POST_ID).document.to_document() == AFTER_SUCCESSFUL_RETRY  # type: ignore[union-attr]
    # The events after the poison were applied and the tracking offset moved past it.
    assert applied(store, topics) == len(first) + len(poison) + len(retry)

    on_topic = read_topic(kafka_bootstrap, topics.insights, topics.partitions)
    insights = [json.loads(v) for k, v in on_topic if k == POST_ID.encode()]
    assert insights[-1] == {"post_id": POST_ID, **AFTER_SUCCESSFUL_RETRY}
    assert {"post_id": POST_ID, **AFTER_FAILED_ATTEMPT} in insights
    # Every message is what its published JSON Schema (schemas/json/insights/InsightsMessage) describes.
    for _key, value in on_topic:
        InsightsMessage.model_validate_json(value)

    raw_letters = read_topic(kafka_bootstrap, topics.dead_letters, 1)
    for _key, value in raw_letters:
        DeadLetter.model_validate_json(value)  # schemas/json/deadletters/DeadLetter
    letters = [json.loads(v) for _, v in raw_letters]
    # Each with its original bytes, the one the fold refused too: once the cause is fixed, it can be requeued.
    assert [base64.b64decode(letter["value_b64"]) for letter in letters] == poison
    assert letters[0]["reason"].startswith("not JSON")
    assert letters[1]["reason"].startswith("invalid PlatformResult")
    assert letters[2]["reason"].startswith("the fold refused PublishAttempted: post ghost does not exist")
    assert {letter["source_topic"] for letter in letters} == {topics.post_events}
    assert [letter["offset"] for letter in letters] == [6, 7, 8]
    store.engine.dispose()


async def test_a_batch_the_store_or_broker_fails_to_take_is_tried_again_and_nothing_after_it_is_lost(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"sqlite:///{tmp_path}/var/smartretry.db"
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix, database_url=url)
    store = ProjectionStore(make_engine(url))
    failures = []
    wait_delivered = InsightsProjector._wait_delivered

    def broker_slow_once(self: InsightsProjector, errors: list[str]) -> None:
        if not failures:
            failures.append(1)
            raise RuntimeError("publishing insights failed: timed out")
        if len(failures) == 1:
            failures.append(2)
            # As SQLAlchemy raises it: its text carries the statement and its values (a post's state).
            raise OperationalError("INSERT INTO posts (post_id, state) VALUES (?, ?)",
                                   ("p1", '{"caption": "Secret launch of the spring line"}'),
                                   sqlite3.OperationalError("database is locked"))
        wait_delivered(self, errors)

    monkeypatch.setattr(InsightsProjector, "_wait_delivered", broker_slow_once)
    first = first_attempt()
    produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in first])
    async with running_projector(settings, tmp_path / "faust"):
        await until(lambda: applied(store, topics) >= len(first))
        retry = facebook_retry()
        produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in retry])
        await until(lambda: applied(store, topics) >= len(first) + len(retry))

    assert failures == [1, 2]
    assert store.get(POST_ID).document.to_document() == AFTER_SUCCESSFUL_RETRY  # type: ignore[union-attr]
    assert any("not stored (RuntimeError: publishing insights failed: timed out); trying again" in r.getMessage()
               for r in caplog.records)
    assert any("not stored (OperationalError: database is locked); trying again" in r.getMessage()
               for r in caplog.records)
    assert not any("spring line" in r.getMessage() for r in caplog.records), "a post's content is no log line's"
    insights = [json.loads(v) for k, v in read_topic(kafka_bootstrap, topics.insights, topics.partitions)
                if k == POST_ID.encode()]
    assert insights[-1] == {"post_id": POST_ID, **AFTER_SUCCESSFUL_RETRY}
    store.engine.dispose()


def sqlite_settings(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Settings:
    return Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix,
                    database_url=f"sqlite:///{tmp_path}/var/smartretry.db")


def sqlite_projection(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> tuple[Settings, ProjectionStore]:
    settings = sqlite_settings(kafka_bootstrap, topics, tmp_path)
    return settings, ProjectionStore(make_engine(settings.database_url))


async def project_first_attempt_then_retry(kafka_bootstrap: str, topics: Topics, tmp_path: Path,
                                           arm: Callable[[], None]) -> None:
    """The seed's first attempt projected, then `arm()` (a fault for the next fetch), then its retry: the store
    ends with the seed's document after the retry all the same."""
    settings, store = sqlite_projection(kafka_bootstrap, topics, tmp_path)
    first = first_attempt()
    produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in first])
    async with running_projector(settings, tmp_path / "faust"):
        await until(lambda: applied(store, topics) >= len(first))
        arm()
        retry = facebook_retry()
        produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in retry])
        await until(lambda: applied(store, topics) >= len(first) + len(retry))
    assert store.get(POST_ID).document.to_document() == AFTER_SUCCESSFUL_RETRY  # type: ignore[union-attr]
    store.engine.dispose()


async def test_the_store_offsets_are_sought_on_the_consumer_thread(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A seek from the event loop changes the client's fetched records while faust's consumer thread
    # reads them: the fetch then fails (KeyError) in a rebalance. Every seek has to run on that thread.
    settings, store = sqlite_projection(kafka_bootstrap, topics, tmp_path)
    seeks: list[tuple[int, int, bool]] = []
    seek = aiokafka.AIOKafkaConsumer.seek

    def recorded(self: aiokafka.AIOKafkaConsumer, tp: Any, offset: int) -> None:
        seeks.append((tp.partition, offset, threading.current_thread() is threading.main_thread()))
        seek(self, tp, offset)

    monkeypatch.setattr(aiokafka.AIOKafkaConsumer, "seek", recorded)
    first = first_attempt()
    produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in first])
    async with running_projector(settings, tmp_path / "faust"):
        await until(lambda: applied(store, topics) >= len(first))

    assert sorted(partition for partition, _offset, _main in seeks) == list(range(topics.partitions))
    assert not [s for s in seeks if s[2]], "seeks made on the event loop's thread"
    store.engine.dispose()


async def test_a_fetch_the_client_fails_is_read_again_from_the_stored_offsets(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fail_next: list[bool] = []
    fetched_records = Fetcher.fetched_records

    async def fails_once(self: Fetcher, *args: Any, **kwargs: Any) -> Any:
        records = await fetched_records(self, *args, **kwargs)
        if records and fail_next:
            fail_next.clear()
            # The worst case: the client has moved past the records it fails to return.
            raise KeyError(next(iter(records)))
        return records

    monkeypatch.setattr(Fetcher, "fetched_records", fails_once)
    await project_first_attempt_then_retry(kafka_bootstrap, topics, tmp_path, lambda: fail_next.append(True))

    assert not fail_next, "the fetch never failed"
    assert any(r.getMessage().startswith("reading post events failed (KeyError: ") for r in caplog.records)


async def test_a_projector_whose_faust_app_crashes_ends_instead_of_running_on_idle(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # faust logs a crashed service and stays up; a projector that projects nothing must not look alive.
    settings = sqlite_settings(kafka_bootstrap, topics, tmp_path)

    async def crashes(self: ProjectorConsumer, fetcher: Any) -> None:
        raise RuntimeError("fetch loop broken")

    monkeypatch.setattr(ProjectorConsumer, "_drain_messages", crashes)
    with pytest.raises(ProjectorCrashed, match=r"stopped projecting \(RuntimeError: fetch loop broken\)"):
        await asyncio.wait_for(run_projector(settings, datadir=tmp_path / "faust", stop=asyncio.Event()), 60)


async def test_a_fetch_that_returns_as_a_rebalance_begins_is_read_again_once_the_flow_resumes(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fetch is dropped (the partitions may be moving), and the client's positions are past its records:
    # fetching on from there would skip them for good.
    rebalance_next: list[bool] = []
    wait_next_records = ProjectorConsumer._wait_next_records

    async def rebalance_begins(self: ProjectorConsumer, timeout: float) -> Any:
        records, active = await wait_next_records(self, timeout)
        if records and rebalance_next:
            rebalance_next.clear()
            self.stop_flow()
            asyncio.get_running_loop().call_later(0.5, self.resume_flow)
        return records, active

    monkeypatch.setattr(ProjectorConsumer, "_wait_next_records", rebalance_begins)
    await project_first_attempt_then_retry(kafka_bootstrap, topics, tmp_path, lambda: rebalance_next.append(True))

    assert not rebalance_next, "no fetch was dropped"


CRASHING_PROJECTOR = """
import asyncio, time
import streams.projector as projector

async def crashes(self, fetcher):
    # A call stuck in a worker thread (a store read over a dead connection), then the crash.
    asyncio.get_running_loop().run_in_executor(None, time.sleep, 3600)
    raise RuntimeError("fetch loop broken")

projector.ProjectorConsumer._drain_messages = crashes
projector.main()
"""


def test_a_crashed_projector_process_exits_1_even_with_a_thread_stuck(
        kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    # `smartretry run` starts a projector process again when it ends: one that stays up is never restarted.
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "SMARTRETRY_TOPIC_PREFIX": topics.prefix,
           "SMARTRETRY_DATABASE_URL": f"sqlite:///{tmp_path}/var/smartretry.db", "TMPDIR": str(tmp_path)}
    ended = subprocess.run([sys.executable, "-c", CRASHING_PROJECTOR], env=env, capture_output=True, text=True,
                           timeout=90)
    assert ended.returncode == 1, ended.stderr[-2000:]
    assert "the projector stopped projecting (RuntimeError: fetch loop broken); exiting" in ended.stderr


async def test_a_projector_whose_flow_stays_stopped_ends_instead_of_running_on_idle(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebalance whose seek hangs never resumes the flow: faust waits on, and nothing crashes.
    settings = sqlite_settings(kafka_bootstrap, topics, tmp_path)
    monkeypatch.setattr(ProjectorConsumer, "stall_limit", 3.0)
    wait_next_records = ProjectorConsumer._wait_next_records

    async def rebalance_begins(self: ProjectorConsumer, timeout: float) -> Any:
        self.stop_flow()  # as a rebalance does, and its recovery never resumes it
        return await wait_next_records(self, timeout)

    monkeypatch.setattr(ProjectorConsumer, "_wait_next_records", rebalance_begins)
    monkeypatch.setattr(ProjectorConsumer, "resume_flow", lambda self: None)
    with pytest.raises(ProjectorCrashed, match=r"stopped projecting \(ProjectorStalled: .* 3s \(a rebalance that "
                                               r"did not end\)\)"):
        await asyncio.wait_for(run_projector(settings, datadir=tmp_path / "faust", stop=asyncio.Event()), 60)


async def test_a_projector_whose_first_seek_hangs_ends_instead_of_never_starting(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # faust gives up on a rebalance whose seek outlasts its wait, and then never starts the fetch loop: the
    # loop cannot watch itself, so `run_projector` does.
    settings = sqlite_settings(kafka_bootstrap, topics, tmp_path)
    monkeypatch.setattr(ProjectorConsumer, "stall_limit", 3.0)

    async def hangs(self: ProjectorConsumer) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(ProjectorConsumer, "seek_to_committed", hangs)
    with pytest.raises(ProjectorCrashed, match=r"ProjectorStalled: the post events have not been fetched for 3s"):
        await asyncio.wait_for(run_projector(settings, datadir=tmp_path / "faust", stop=asyncio.Event()), 60)


async def test_a_projector_whose_fetches_keep_failing_ends_instead_of_running_on_idle(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = sqlite_settings(kafka_bootstrap, topics, tmp_path)
    monkeypatch.setattr(projector_module, "RETRY_FIRST_WAIT", 0.1)

    async def always_fails(self: Fetcher, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("a partition")

    monkeypatch.setattr(Fetcher, "fetched_records", always_fails)
    with pytest.raises(ProjectorCrashed, match=r"stopped projecting \(KeyError: 'a partition'\)"):
        await asyncio.wait_for(run_projector(settings, datadir=tmp_path / "faust", stop=asyncio.Event()), 60)
    failed = [r for r in caplog.records if r.getMessage().startswith("reading post events failed (KeyError")]
    assert len(failed) == projector_module.FETCH_ATTEMPTS - 1


def many_posts(count: int, start: int = 0) -> list[Event]:
    events: list[Event] = []
    for i in range(start, start + count):
        post_id = f"post-{i:05d}"
        events += first_attempt(post_id, FIRST + timedelta(seconds=i))
        if i % 2 == 0:
            events += facebook_retry(post_id, RETRY + timedelta(seconds=i))
    return events


def start_processor(settings: Settings, datadir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
           "SMARTRETRY_TOPIC_PREFIX": settings.topic_prefix, "SMARTRETRY_DATABASE_URL": settings.database_url,
           "TMPDIR": str(datadir)}
    return subprocess.Popen([sys.executable, "-m", "streams.projector"], env=env, stdin=subprocess.DEVNULL)


async def test_a_killed_processor_resumes_exactly_where_it_stopped(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path}/var/smartretry.db"
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix, database_url=database_url)
    store = ProjectionStore(make_engine(database_url))
    before_kill, after_kill = many_posts(3000), many_posts(1000, start=3000)
    produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in before_kill])

    processor = start_processor(settings, tmp_path)
    try:
        await until(lambda: applied(store, topics) > 0, timeout=60)
        processor.send_signal(signal.SIGKILL)
        processor.wait(10)
        killed_at = applied(store, topics)
        produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in after_kill])
        processor = start_processor(settings, tmp_path)
        total = len(before_kill) + len(after_kill)
        await until(lambda: applied(store, topics) >= total, timeout=60)
    finally:
        processor.kill()
        processor.wait(10)

    assert 0 < killed_at < len(before_kill) + len(after_kill), killed_at
    _, states = store.snapshot()
    # One uninterrupted fold of every event is the projection a run without the kill leaves.
    assert states == fold(before_kill + after_kill)
    store.engine.dispose()
