"""Garbage-collector settings for the processes that fold events (projector, handler, replay workers).

Folding allocates many small objects: each batch's decoded events, and the post states kept between
batches. Python's cyclic collector runs after every few hundred allocations and walks the young ones,
and now and then all of them, though the fold makes no reference cycles (a test checks this): reference
counting alone frees everything it drops. With the collector's own schedule, even at a fiftieth of its
default frequency, collections took a seventh of a replay worker's CPU and a tenth to a fifth of the
projector's; at Python's own, a tenth of the handler's in a burst of publishes.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator

# For a fold inside a longer-lived process (`folding_gc`). Python's are (700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 10)
# Seconds between collections of a process that collects on its own schedule (`CollectEvery`).
COLLECT_INTERVAL = 10.0


def disable_gc() -> None:
    """For a process that folds and exits: everything alive now is frozen out of collections, and the
    collector does not run on its own any more. Reference counting still frees all the fold drops; what
    the rest of the process leaves in cycles waits for `CollectEvery` or for the process to end."""
    gc.collect()
    gc.freeze()
    gc.disable()


class CollectEvery:
    """Runs a full collection when called at least `interval` seconds after the last one.

    A long-lived process with the collector disabled (the projector, the handler) calls it from its main
    loop, so the few cycles its libraries make (asyncio's, faust's, a failed call's traceback) are freed
    within `interval`: a collection walks only what was made since start-up, in milliseconds.
    """

    def __init__(self, interval: float = COLLECT_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next = clock() + interval

    def __call__(self) -> None:
        now = self._clock()
        if now >= self._next:
            gc.collect()
            self._next = now + self.interval


@contextlib.contextmanager
def folding_gc() -> Iterator[None]:
    """`GC_THRESHOLDS` while the block runs (a replay inside a longer-lived process), then the old ones."""
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
