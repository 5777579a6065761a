"""Benchmarks on the real broker: `python -m bench` runs every registered one and prints its figures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Figure:
    """One measured number, with the target it is held to (None: reported only)."""

    key: str
    value: float
    unit: str
    target: str | None = None
    met: bool | None = None
    note: str = ""


@dataclass
class BenchContext:
    bootstrap: str
    events: int
    posts: int
    workdir: str
    # Figures measured so far, for benches that compare with another's (projector vs raw consume).
    figures: dict[str, Figure] = field(default_factory=dict)


Bench = Callable[[BenchContext], list[Figure]]
BENCHES: dict[str, Bench] = {}


def register(name: str) -> Callable[[Bench], Bench]:
    """Adds a bench; they run in registration order, each adding its figures to the context."""

    def add(bench: Bench) -> Bench:
        BENCHES[name] = bench
        return bench

    return add
