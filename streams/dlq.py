"""Building dead letters: the reason, where the message came from, and its bytes with any token scrubbed."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from publishers.redact import scrub
from schemas.deadletters import DeadLetter


def make_dead_letter(*, reason: str, consumer: str, source_topic: str, partition: int | None, offset: int | None,
                     key: bytes | None, value: bytes | None, at: datetime | None = None) -> DeadLetter:
    kept = value
    if value is not None:
        text = value.decode("utf-8", "replace")
        cleaned = scrub(text)
        # Bad input can carry a token (pasted into a caption, say): then keep the scrubbed text, not the bytes.
        if cleaned != text:
            kept = cleaned.encode()
    return DeadLetter(
        reason=scrub(reason)[:4000], consumer=consumer, source_topic=source_topic, partition=partition,
        offset=offset, key=scrub(key.decode("utf-8", "replace"))[:500] if key is not None else None,
        value_b64=base64.b64encode(kept).decode() if kept is not None else None,
        occurred_at=at or datetime.now(UTC),
    )
