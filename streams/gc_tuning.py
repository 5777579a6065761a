"""Garbage-collector settings for processes that fold many events (the projector, replay workers)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# Python's are (700, 10, 10): see `tune_gc`.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Fewer cyclic collections for a process that folds: about a third of its time went to them.

    Folding allocates many small objects that live for a batch, and the hot states live longer; with
    Python's default threshold (700 allocations) the collector ran every few events and walked them
    all. Nothing the fold makes is cyclic, so collecting less often only delays freeing the few
    cycles asyncio and faust make. Objects alive after start-up (modules, faust's app) are frozen out
    of every collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@contextlib.contextmanager
def folding_gc() -> Iterator[None]:
    """`GC_THRESHOLDS` while the block runs (a replay inside a longer-lived process), then the old ones."""
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
