"""Replay on a real broker: the rebuilt projection equals the live one, even while the processor runs."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import update
from typer.testing import CliRunner

from projections.fold import fold
from projections.store import ProjectionStore, make_engine, posts
from schemas.envelope import encode
from schemas.events import Event
from smartretry.cli import app as cli
from smartretry.settings import Settings
from streams import replay as replay_module
from streams.replay import ReplayError, replay
from streams.topics import Topics
from tests.integration.test_projector import applied, many_posts, produce, running_projector, until
from tests.integration.test_store import FIRST, RETRY, facebook_retry, first_attempt

pytestmark = pytest.mark.integration


async def test_replay_equals_live_while_the_processor_runs_and_names_a_post_that_differs(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database_url = f"sqlite:///{tmp_path}/live.db"
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix, database_url=database_url)
    live = ProjectionStore(make_engine(database_url))
    first, more = many_posts(300), many_posts(300, start=300)
    produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in first])
    seen: list[tuple[int, int]] = []
    async with running_projector(settings, tmp_path / "faust"):
        await until(lambda: applied(live, topics) >= len(first))
        # More events arrive while the replay reads: it stops at the live snapshot's offsets.
        produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in more])
        report = await asyncio.to_thread(replay, kafka_bootstrap, topics, live,
                                         ProjectionStore(make_engine(f"sqlite:///{tmp_path}/scratch.db")),
                                         lambda done, total: seen.append((done, total)))
        assert report.identical and report.differing == []
        assert report.live_digest == report.replay_digest
        assert report.events >= len(first) and report.posts >= 300
        assert seen[-1][0] == seen[-1][1] == report.events
        await until(lambda: applied(live, topics) >= len(first) + len(more))

    # A live row that no longer matches its events is named by the replay, and the command fails.
    with live.engine.begin() as conn:
        conn.execute(update(posts).where(posts.c.post_id == "post-00042").values(status="posted", state="{}"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("SMARTRETRY_TOPIC_PREFIX", topics.prefix)
    monkeypatch.setenv("SMARTRETRY_DATABASE_URL", database_url)
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["replay"])
    assert result.exit_code == 1, result.output
    assert "post-00042" in result.output
    assert "differ" in result.output
    # And what to do about it.
    assert "`smartretry reset-projection --yes`, then a start, rebuilds the projection" in result.output

    live.engine.dispose()


def _folded_live_store(bootstrap: str, topics: Topics, path: Path, events: list[Event]) -> ProjectionStore:
    """A live store holding the pure fold of `events`, at the offsets they were written to."""
    produce(bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in events])
    live = ProjectionStore(make_engine(f"sqlite:///{path}"))
    live.create_schema()
    ends = _end_offsets(bootstrap, topics)
    live.write_states(fold(events).values(), {(topics.post_events, p): end - 1 for p, end in ends.items() if end > 0})
    return live


def _end_offsets(bootstrap: str, topics: Topics) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "replay-test-watermarks"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topics.post_events, p), timeout=10)[1]
                for p in range(topics.partitions)}
    finally:
        c.close()


def test_replay_in_worker_processes_stores_what_one_process_stores(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    events = many_posts(200)
    live = _folded_live_store(kafka_bootstrap, topics, tmp_path / "live.db", events)
    stores = {}
    for workers in (1, 3):
        scratch = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/scratch-{workers}.db"))
        seen: list[tuple[int, int]] = []
        report = replay(kafka_bootstrap, topics, live, scratch, progress=lambda done, total, seen=seen: seen.append(
            (done, total)), workers=workers)
        assert report.identical, report.differing
        assert (report.events, report.posts) == (len(events), 200)
        assert seen[-1] == (len(events), len(events))
        stores[workers] = scratch.snapshot()
    # Every post, state for state, and every partition's offset, whichever way it was folded.
    assert stores[3] == stores[1]
    assert len(stores[3][1]) == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_a_replay_with_little_memory_writes_posts_out_and_reads_them_back_to_the_same_projection(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, workers: int
) -> None:
    # Every post's first attempt, then every post's retry: a post written out long before its retry
    # comes must be read back for it.
    post_ids = [f"post-{i:05d}" for i in range(120)]
    events = [e for i, p in enumerate(post_ids) for e in first_attempt(p, FIRST + timedelta(seconds=i))]
    events += [e for i, p in enumerate(post_ids) for e in facebook_retry(p, RETRY + timedelta(seconds=i))]
    live = _folded_live_store(kafka_bootstrap, topics, tmp_path / "live.db", events)
    assert {s.status for s in live.snapshot()[1].values()} == {"posted"}
    scratch = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/scratch.db"))
    report = replay(kafka_bootstrap, topics, live, scratch, workers=workers, memory_states=12)
    assert report.identical, report.differing
    assert report.posts == 120 and scratch.count() == 120


def test_a_replay_that_takes_longer_than_its_stall_timeout_goes_on_while_events_keep_coming(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A topic too long to read in the stall timeout (a fold slowed down here, each batch slower than the timeout, read
    # a few records at a time): read to the end all the same, folding being no stall.
    live = _folded_live_store(kafka_bootstrap, topics, tmp_path / "live.db", many_posts(4))
    fold_batch = replay_module._MemoryFold.fold

    def slow_fold(self: object, values: list[bytes | None], partitions: list[int]) -> None:
        time.sleep(0.4)
        fold_batch(self, values, partitions)  # type: ignore[arg-type]

    monkeypatch.setattr(replay_module._MemoryFold, "fold", slow_fold)
    monkeypatch.setattr(replay_module, "BATCH", 5)
    monkeypatch.setattr(replay_module, "FETCH", 5)
    scratch = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/scratch.db"))
    started = time.monotonic()

    report = replay(kafka_bootstrap, topics, live, scratch, workers=1, stall_timeout=0.3)

    assert time.monotonic() - started > 1.0
    assert report.identical and report.posts == 4


class SilentBroker:
    """A consumer whose broker hands over nothing (it went away after the offsets were read)."""

    def __init__(self, _config: object) -> None:
        pass

    def get_watermark_offsets(self, _tp: object, timeout: float) -> tuple[int, int]:
        return 0, 10

    def assign(self, _partitions: object) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[object]:
        time.sleep(min(timeout, 0.05))
        return []

    def close(self) -> None:
        pass


def test_a_replay_that_reads_nothing_for_its_stall_timeout_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_module, "Consumer", SilentBroker)
    scratch = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/scratch.db"))
    scratch.create_schema()

    with pytest.raises(ReplayError, match=r"nothing read from post-events for 0s \(is the broker up\?\); not read to "
                                          r"the end: partitions \[0\]"):
        replay_module._read_and_fold("127.0.0.1:1", "post-events", {0: 5}, scratch, None, 0.3, 10)


def test_a_replay_workers_failure_is_the_replays_error(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    live = _folded_live_store(kafka_bootstrap, topics, tmp_path / "live.db", many_posts(40))
    # The live store claims an event the topic does not have (the topic was recreated, say).
    live.write_states([], {(topics.post_events, 0): 1_000_000})
    scratch = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/scratch.db"))
    with pytest.raises(ReplayError, match=r"\[0\] ends before the live offset 1000000"):
        replay(kafka_bootstrap, topics, live, scratch, workers=2)


def test_a_replay_into_the_live_database_is_refused_and_the_live_projection_stays(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = _folded_live_store(kafka_bootstrap, topics, tmp_path / "live.db", many_posts(20))
    before = live.snapshot()
    # The same file, named another way: replay empties its scratch store first, so this would empty the live one.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="the scratch store is the live projection's database"):
        replay(kafka_bootstrap, topics, live, ProjectionStore(make_engine("sqlite:///./live.db")))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("SMARTRETRY_TOPIC_PREFIX", topics.prefix)
    monkeypatch.setenv("SMARTRETRY_DATABASE_URL", f"sqlite:///{tmp_path}/live.db")
    result = CliRunner().invoke(cli, ["replay", "--scratch", f"sqlite:///{tmp_path}/../{tmp_path.name}/live.db"])
    assert result.exit_code == 2, result.output
    assert "the scratch store is the live projection's database" in result.output
    assert live.snapshot() == before and live.count() == 20


def test_a_replay_behind_the_log_says_how_many_events_it_left_out(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = many_posts(5)
    live = _folded_live_store(kafka_bootstrap, topics, tmp_path / "live.db", events)
    live.engine.dispose()
    # Written after the live projection's offsets, not applied (a projector stopped): left out of both sides.
    later = many_posts(2, start=5)
    produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in later])
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("SMARTRETRY_TOPIC_PREFIX", topics.prefix)
    monkeypatch.setenv("SMARTRETRY_DATABASE_URL", f"sqlite:///{tmp_path}/live.db")
    result = CliRunner().invoke(cli, ["replay"])
    assert result.exit_code == 0, result.output
    assert f"events replayed: {len(events)} " in result.output and "posts that differ: 0" in result.output
    assert (f"compared as far as the live projection had applied: {len(later)} events written after that were left "
            "out of both") in result.output


def test_a_replay_against_a_live_projection_that_applied_nothing_says_so_rather_than_identical(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("SMARTRETRY_TOPIC_PREFIX", topics.prefix)
    # Not the service's database (another deployment's, say): nothing applied in it.
    ProjectionStore(make_engine(f"sqlite:///{tmp_path}/elsewhere.db")).create_schema()
    monkeypatch.setenv("SMARTRETRY_DATABASE_URL", f"sqlite:///{tmp_path}/elsewhere.db")
    # No post events yet anywhere: nothing to compare, and nothing is wrong.
    quiet = CliRunner().invoke(cli, ["replay"])
    assert quiet.exit_code == 0, quiet.output
    assert "events replayed: 0" in quiet.output and "posts that differ: 0" in quiet.output
    produce(kafka_bootstrap, topics.post_events, [(e.post_id, encode(e)) for e in many_posts(3)])
    result = CliRunner().invoke(cli, ["replay"])
    assert result.exit_code == 2, result.output
    assert f"has applied none of the {len(many_posts(3))} events on {topics.post_events}" in result.output
    assert "SMARTRETRY_DATABASE_URL" in result.output and "identical" not in result.output


def test_a_replay_with_the_broker_away_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")  # nothing listens on the discard port
    ProjectionStore(make_engine(f"sqlite:///{tmp_path}/live.db")).create_schema()
    monkeypatch.setenv("SMARTRETRY_DATABASE_URL", f"sqlite:///{tmp_path}/live.db")
    result = CliRunner().invoke(cli, ["replay"])
    assert result.exit_code == 1, result.output
    assert "the broker at 127.0.0.1:9 did not answer" in result.output
    assert "events replayed" not in result.output


def test_a_replay_where_there_is_no_projection_says_so_and_creates_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default database is relative (`var/smartretry.db`): run from another directory, it names no file.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.delenv("SMARTRETRY_DATABASE_URL", raising=False)

    result = CliRunner().invoke(cli, ["replay"])

    assert result.exit_code == 2, result.output
    assert f"error: there is no projection at {tmp_path / 'var' / 'smartretry.db'} (SMARTRETRY_DATABASE_URL)" \
        in result.output
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("scratch", ["notaurl", "nosuchdriver://x/y"])
def test_a_replay_given_a_scratch_store_that_is_no_database_url_says_so_in_one_line(
        scratch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    ProjectionStore(make_engine(f"sqlite:///{tmp_path}/live.db")).create_schema()
    monkeypatch.setenv("SMARTRETRY_DATABASE_URL", f"sqlite:///{tmp_path}/live.db")

    result = CliRunner().invoke(cli, ["replay", "--scratch", scratch])

    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: --scratch is no database URL this service can use (")
    assert line.endswith("): sqlite:///path/to.db, or postgresql+psycopg://user:password@host/database")
