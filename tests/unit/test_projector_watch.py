"""The projector's watch over its app: it looks once a second, not in a loop that keeps a core busy."""

from __future__ import annotations

import asyncio
from typing import Any

from streams import projector
from streams.projector import _until_done_or_stalled


class WatchedApp:
    """An app started long ago whose fetch loop goes round: counts how often the watch looks at it."""

    def __init__(self) -> None:
        self.looks = 0

    @property
    def consumer(self) -> Any:
        self.looks += 1
        return self

    stall_seconds = 3600.0

    @property
    def alive_at(self) -> float:
        return asyncio.get_running_loop().time()


async def test_a_started_app_is_looked_at_once_a_watch_interval_not_without_pause(monkeypatch: Any) -> None:
    monkeypatch.setattr(projector, "WATCH_INTERVAL", 0.1)
    app = WatchedApp()
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started.set_result(None)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    waits = [asyncio.ensure_future(stop.wait())]

    await _until_done_or_stalled(app, waits, started)  # type: ignore[arg-type]

    # Five looks in 0.5 s; a watch that spins (the start, done, ending every wait at once) looks thousands of times.
    assert 1 <= app.looks <= 10
