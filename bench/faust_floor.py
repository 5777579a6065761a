"""`python -m bench.faust_floor EVENTS`: the projector's faust app, folding nothing, only decoding.

The app, its consumer and its fetches are the projector's own; each fetched batch is decoded and
dropped, with no fold, no store write and no insights message. It reads the post-events topic from the
start until EVENTS events have come, prints `events/s` (timed from the first fetch, as the projector's
figure is) and exits: what any projector built on faust's consumer and these events' decoding can
reach on this machine, the ceiling the projector's figure is held against.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from projections.store import ProjectionStore, make_engine
from schemas.envelope import decode_event
from smartretry.settings import Settings
from streams.gc_tuning import disable_gc
from streams.projector import BatchOutcome, InsightsProjector, RawRecord, create_app


class DecodeOnly(InsightsProjector):
    def __init__(self, store: ProjectionStore, settings: Settings, events: int) -> None:
        super().__init__(store, settings.topics)
        self.events = events
        self.seen = 0
        self.first: tuple[float, int] | None = None
        self.done = asyncio.Event()
        self.rate = 0.0

    def project(self, partition: int, records: Sequence[RawRecord]) -> BatchOutcome:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, len(records))
        for _offset, _key, value in records:
            decode_event(value)
        self.seen += len(records)
        if self.seen >= self.events and not self.done.is_set():
            started, uncounted = self.first
            self.rate = (self.seen - uncounted) / max(1e-9, time.monotonic() - started)
            self.done.set()
        return BatchOutcome(applied=len(records))


async def measure(settings: Settings, events: int) -> float:
    with tempfile.TemporaryDirectory(prefix="smartretry-floor-") as workdir:
        # An empty store: the consumer starts every partition at offset 0.
        store = ProjectionStore(make_engine(f"sqlite:///{workdir}/empty.db"))
        store.create_schema()
        app = create_app(settings, store, datadir=Path(workdir) / "faust")
        projector = DecodeOnly(store, settings, events)
        app.transport.Consumer.projector = projector  # type: ignore[attr-defined]
        await app.start()
        try:
            await asyncio.wait_for(projector.done.wait(), timeout=600)
        finally:
            await app.stop()
            store.engine.dispose()
        return projector.rate


def main() -> None:
    disable_gc()  # as the projector runs
    events = int(sys.argv[1])
    print(f"{asyncio.run(measure(Settings(), events)):.1f}")


if __name__ == "__main__":
    main()
