"""The fold makes no reference cycles: the replay workers and the projector run without the cyclic collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.projection import event_stream
from projections.store import ProjectionStore, make_engine
from streams.gc_tuning import CollectEvery
from streams.projector import InsightsProjector
from streams.replay import _MemoryFold
from streams.topics import Topics


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def events(count: int) -> list[bytes]:
    return [value for _key, value in event_stream(count, count // 10)]


def test_replaying_decoding_folding_and_storing_leave_no_cyclic_garbage(tmp_path: Path, collector_off: None) -> None:
    store = ProjectionStore(make_engine(f"sqlite:///{tmp_path / 'scratch.db'}"))
    store.create_schema()
    # Room for few states: posts are written out and read back on the way, as in a big replay.
    folder = _MemoryFold(store, limit=300)
    values = events(20_000)
    for start in range(0, len(values), 300):
        folder.fold(values[start:start + 300])
    assert len(folder.finish({})) == 2_000
    del folder, values
    store.engine.dispose()

    assert gc.collect() == 0


def test_projecting_batches_leaves_no_cyclic_garbage(tmp_path: Path, collector_off: None) -> None:
    store = ProjectionStore(make_engine(f"sqlite:///{tmp_path / 'live.db'}"))
    store.create_schema()
    projector = InsightsProjector(store, Topics(prefix="cycles."))
    values = events(5_000)
    records = [(offset, None, value) for offset, value in enumerate(values)]
    for start in range(0, len(records), 250):
        outcome = projector.project(0, records[start:start + 250])
        assert outcome.dead_letters == 0
    assert store.count() == 500
    del projector, records, values
    store.engine.dispose()

    assert gc.collect() == 0


def test_the_projector_collects_on_its_own_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    collections: list[float] = []
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(now[0]) or 0)
    collect = CollectEvery(interval=10.0, clock=lambda: now[0])

    for at in (100.0, 105.0, 109.9, 110.0, 115.0, 119.9, 120.0, 121.0):
        now[0] = at
        collect()

    assert collections == [110.0, 120.0]
