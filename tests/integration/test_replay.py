"""Replay on a real broker: the rebuilt projection equals the live one, even while the processor runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from projections.store import ProjectionStore, make_engine, posts
from schemas.envelope import encode
from smartretry.cli import app as cli
from smartretry.settings import Settings
from streams.replay import replay
from streams.topics import Topics
from tests.integration.test_projector import applied, many_posts, produce, running_projector, until

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

    live.engine.dispose()
