"""The fold makes no reference cycles: the replay workers and the projector run without the cyclic collector."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from bench.projection import event_stream
from projections.store import ProjectionStore, make_engine
from streams.gc_tuning import CollectEvery
from streams.projector import InsightsProjector
from streams.replay import _MemoryFold
from streams.topics import Topics


def events(count: int) -> list[bytes]:
    return [value for _key, value in event_stream(count, count // 10)]


def replay_scenario(workdir: Path) -> ProjectionStore:
    store = ProjectionStore(make_engine(f"sqlite:///{workdir / 'scratch.db'}"))
    store.create_schema()
    # Room for few states: posts are written out and read back on the way, as in a big replay.
    folder = _MemoryFold(store, limit=300)
    values = events(20_000)
    for start in range(0, len(values), 300):
        folder.fold(values[start:start + 300], [0] * len(values[start:start + 300]))
    assert len(folder.finish({})) == 2_000
    store.engine.dispose()
    return store


def projector_scenario(workdir: Path) -> ProjectionStore:
    store = ProjectionStore(make_engine(f"sqlite:///{workdir / 'live.db'}"))
    store.create_schema()
    projector = InsightsProjector(store, Topics(prefix="cycles."))
    records = [(offset, None, value) for offset, value in enumerate(events(5_000))]
    for start in range(0, len(records), 250):
        outcome = projector.project(0, records[start:start + 250])
        assert outcome.dead_letters == 0
    assert store.count() == 500
    store.engine.dispose()
    return store


# Run in a fresh interpreter: what other tests left behind (a transport an event loop never closed, a
# failed test's traceback) is freed whenever the collector runs and would be counted as the fold's. A first
# run warms up what is built once (SQLAlchemy's compiled statements, pydantic's serializers); the second is
# the steady state that runs for days with the collector off. The store is kept, as a process keeps its
# engine: an engine's own cycles are freed once, when the process ends.
CHILD = """
import collections, gc, sys
from pathlib import Path
from tests.unit import test_no_cycles as scenarios
scenario, workdir = getattr(scenarios, sys.argv[1]), Path(sys.argv[2])
(workdir / "warm-up").mkdir()
scenario(workdir / "warm-up")
gc.collect()
gc.disable()
store = scenario(workdir)
gc.set_debug(gc.DEBUG_SAVEALL)
found = gc.collect()
kinds = collections.Counter(type(o).__module__ + "." + type(o).__qualname__ for o in gc.garbage)
print(found, kinds.most_common(10))
"""


@pytest.mark.parametrize("scenario", ["replay_scenario", "projector_scenario"])
def test_decoding_folding_and_storing_leave_no_cyclic_garbage(tmp_path: Path, scenario: str) -> None:
    child = subprocess.run([sys.executable, "-c", CHILD, scenario, str(tmp_path)], capture_output=True, text=True,
                           cwd=Path(__file__).parents[2], timeout=120)

    assert child.returncode == 0, child.stderr[-3000:]
    found, kinds = child.stdout.split(" ", 1)
    assert int(found) == 0, f"cyclic garbage: {kinds}"


def test_the_projector_collects_on_its_own_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    collections: list[float] = []
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(now[0]) or 0)
    collect = CollectEvery(interval=10.0, clock=lambda: now[0])

    for at in (100.0, 105.0, 109.9, 110.0, 115.0, 119.9, 120.0, 121.0):
        now[0] = at
        collect()

    assert collections == [110.0, 120.0]
