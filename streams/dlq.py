"""Building dead letters: the reason, where the message came from, and its bytes with any token scrubbed."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime

from publishers.redact import map_strings, scrub
from schemas.deadletters import DeadLetter
from schemas.envelope import HALF_CHARACTER

# A dead letter must fit on its topic: producers refuse a message over 1 MB before compression, and
# base64 adds a third. Bytes larger than this cannot be requeued anyway (the decoders refuse them).
MAX_KEPT_VALUE_BYTES = 700_000


def make_dead_letter(*, reason: str, consumer: str, source_topic: str, partition: int | None, offset: int | None,
                     key: bytes | None, value: bytes | None, at: datetime | None = None) -> DeadLetter:
    kept = value
    scrubbed = False
    if value is not None:
        text = value.decode("utf-8", "replace")
        # The scrubbed JSON is scrubbed as text as well: a secret known by the key beside it ("access_token": ...)
        # is only seen there.
        cleaned = scrub(_scrubbed_json(text) or text)
        # Escapes spell a token the text does not show, and reading it as JSON sees them only where it reads: not in
        # a message that is no JSON (the commonest dead letter) or in a key it read twice. Kept spelled out, scrubbed.
        if scrub(unescaped := _json_unescaped(cleaned)) != unescaped:
            cleaned = scrub(unescaped)
        elif scrub(deep := _deeply_unescaped(cleaned)) != deep:
            # Escaped twice or more (JSON written inside a JSON string): kept spelled out all the way, scrubbed.
            cleaned = scrub(deep)
        # Bad input can carry a token (pasted into a caption, say): then keep the scrubbed text, not the bytes.
        if cleaned != text:
            kept, scrubbed = cleaned.encode("utf-8", "replace"), True
    reason = scrub(reason)
    if kept is not None and len(kept) > MAX_KEPT_VALUE_BYTES:
        # Said first: a long reason is cut, and the note must stay.
        reason = f"the original {len(kept)} bytes are not kept (too large for a dead letter): {reason}"
        kept = None
    return DeadLetter(
        **_ids_of(value),
        reason=reason[:4000], consumer=consumer, source_topic=source_topic, partition=partition,
        offset=offset, key=scrub(key.decode("utf-8", "replace"))[:500] if key is not None else None,
        value_b64=base64.b64encode(kept).decode() if kept is not None else None,
        value_scrubbed=scrubbed and kept is not None,
        occurred_at=at or datetime.now(UTC),
    )


# The ids a dead letter names, read from its message.
_IDS = ("post_id", "command_id", "event_id")


def _ids_of(value: bytes | None) -> dict[str, str]:
    """The ids a message gives at its top level (`_IDS`), each a text, scrubbed; none of a message that is no JSON
    object."""
    if value is None:
        return {}
    try:
        message = json.loads(value.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return {}
    if not isinstance(message, dict):
        return {}
    # An id holding half a character (a lone surrogate, written as an escape) could not be written into the letter:
    # left out, so the message is still set aside.
    return {name: scrub(given)[:500] for name in _IDS
            if isinstance(given := message.get(name), str) and given and not HALF_CHARACTER.search(given)}


def _scrubbed_json(text: str) -> str | None:
    """`text` with the tokens in its JSON strings scrubbed, written again, when it is JSON that carries one; else
    None. A JSON string may spell a token with escapes ("\\u0045AA..."), which the raw text does not show. Input
    too deeply nested to read is left to the scrubbing of the text alone."""
    try:
        document = json.loads(text)
        changed: list[bool] = []

        def scrubbed(value: str) -> str:
            out = scrub(value)
            if out != value:
                changed.append(True)  # told by the strings, not by comparing documents: NaN is no NaN
            return out

        cleaned = map_strings(document, scrubbed, keys=True)
        return json.dumps(cleaned) if changed else None
    except (ValueError, RecursionError):
        return None


# A JSON escape of one character (`\u0045`, `\/`), unless its backslash is itself escaped (`\\u0045` is text).
_JSON_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\(?:u([0-9A-Fa-f]{4})|/)")


def _json_unescaped(text: str) -> str:
    """`text` with the JSON escapes of printable characters spelled out (quotes, backslashes and control characters
    stay escaped): what a token spelled with escapes looks like to the scrubber."""

    def spelled(match: re.Match[str]) -> str:
        if match.group(2) is None:
            return f"{match.group(1)}/"
        char = chr(int(match.group(2), 16))
        return match.group(0) if not char.isprintable() or char in '"\\' else f"{match.group(1)}{char}"

    return _JSON_ESCAPE.sub(spelled, text)


def _deeply_unescaped(text: str) -> str:
    """`text` with escaped backslashes taken as one and JSON escapes spelled out, over and over (a few levels): JSON
    inside a JSON string, as the scrubber would read it. Its structure is not kept: only for a letter with a token."""
    for _ in range(4):
        deeper = _json_unescaped(text.replace("\\\\", "\\"))
        if deeper == text:
            break
        text = deeper
    return text
