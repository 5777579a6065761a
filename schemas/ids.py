"""Sortable unique ids (ULID text form, as the seed's post ids are) and deterministic derived ids."""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now_ms: int | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds then 80 random bits, sortable by time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def derived_id(*parts: str) -> str:
    """An id fixed by what it names (e.g. an attempt's result), so a re-emitted event dedupes."""
    return ":".join(parts)
