"""A dead letter keeps what the consumer could not use, with every token scrubbed out, however it is spelled."""

from __future__ import annotations

import base64
import json

from publishers import redact
from streams.dlq import make_dead_letter


def _letter(value: bytes) -> tuple[str, bool]:
    letter = make_dead_letter(reason="refused", consumer="command-handler", source_topic="smartretry.commands",
                              partition=0, offset=7, key=b"post-1", value=value)
    assert letter.value_b64 is not None
    return base64.b64decode(letter.value_b64).decode(), letter.value_scrubbed


def test_a_token_spelled_with_json_escapes_is_scrubbed_too() -> None:
    token = "known-secret-token-" + "7f3a9c21"
    redact.register_secret(token)
    escaped = "".join(f"\\u{ord(c):04x}" for c in token[:3]) + token[3:]
    value = json.dumps({"type": "PublishRequested", "content": {"caption": "esc "}}).replace(
        '"esc "', f'"esc {escaped}"').encode()
    assert token not in value.decode() and json.loads(value)["content"]["caption"] == f"esc {token}"

    kept, scrubbed = _letter(value)

    assert scrubbed is True
    assert json.loads(kept) == {"type": "PublishRequested", "content": {"caption": "esc [redacted]"}}


def test_a_message_with_no_token_is_kept_byte_for_byte() -> None:
    value = b'{"type": "PublishRequested",   "content": {"caption": "Autumn sale"}}'
    assert _letter(value) == (value.decode(), False)
