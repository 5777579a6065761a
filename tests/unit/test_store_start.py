"""Processes starting together on one SQLite projection: recording the topic layout waits its turn."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from projections.store import ProjectionStore, make_engine


def test_recording_the_layout_while_another_process_writes_waits_for_it_and_does_not_fail(tmp_path: Path) -> None:
    path = tmp_path / "projection.db"
    store = ProjectionStore(make_engine(f"sqlite:///{path}"))
    store.create_schema()
    # Another process (the projector, starting beside the handler) in the middle of a write.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("DELETE FROM topic_layout WHERE topic = 'elsewhere'")
    answers: list[object] = []

    def record() -> None:
        try:
            answers.append(store.partitions_of("smartretry.post-events", 6))
        except Exception as exc:  # what a process starting meanwhile would have died of
            answers.append(exc)

    recording = threading.Thread(target=record)
    recording.start()
    time.sleep(0.3)  # the recording now waits for the other's lock (a read first would have taken a snapshot)
    other.execute("COMMIT")
    recording.join(30)

    assert answers == [6]
    assert store.partitions_of("smartretry.post-events", 12) == 6  # recorded once, kept
    other.close()
    store.engine.dispose()
