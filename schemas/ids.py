"""Sortable unique ids (ULID text form, as the seed's post ids are) and deterministic derived ids."""

from __future__ import annotations

import hashlib
import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now_ms: int | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds then 80 random bits, sortable by time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def post_id_for(command_id: str) -> str:
    """The id of the post a publish command names none for: fixed by the command, so the command resent
    (a client that timed out and tried again) names the same post, and publishes it once.

    In ULID text form, like the ids the service gives, from a 128-bit digest of the command id.
    """
    value = int.from_bytes(hashlib.blake2b(command_id.encode(), digest_size=16).digest(), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def derived_id(*parts: str) -> str:
    """An id fixed by what it names (e.g. an attempt's result), so a re-emitted event dedupes."""
    return ":".join(parts)


# Derived ids get suffixes of their own (an attempt's events: `<attempt id>:attempted`): ids stay under 128.
_ATTEMPT_ID_MAX = 100


def attempt_id_for(command_id: str, platform: str, number: int) -> str:
    """The id of a command's attempt `number` of `platform`, fixed by them.

    Two handlers that both take up the command (one lost its partition in a rebalance before its attempt was
    on the log, the other decided without it) name the same attempt: the log then holds one attempt, not an
    extra one that never gets a result and would later be taken for an interrupted publish.
    """
    plain = derived_id(command_id, platform, str(number))
    return plain if len(plain) <= _ATTEMPT_ID_MAX else hashlib.blake2b(plain.encode(), digest_size=16).hexdigest()
