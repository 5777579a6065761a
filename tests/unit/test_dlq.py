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


def test_a_secret_known_by_its_key_is_scrubbed_beside_a_token_in_a_string() -> None:
    shaped = "EAA" + "Bx7kQ2mZ9wLp4Rt8Yv3Nc6Hd1Fg5Js0Ku7Xe2Wq4Ao9"
    kept, scrubbed = _letter(json.dumps({"caption": shaped, "access_token": "shortsecret123"}).encode())
    assert scrubbed is True
    assert shaped not in kept and "shortsecret123" not in kept


def test_odd_json_never_stops_a_dead_letter_being_made() -> None:
    token = "known-secret-token-" + "c0ffee42"
    redact.register_secret(token)
    deep = ("[" * 100_000).encode()  # too deeply nested to read: kept as it is, a dead letter all the same
    assert _letter(deep) == (deep.decode(), False)
    nested = ("[" * 900 + f'"{token}"' + "]" * 900).encode()
    kept, scrubbed = _letter(nested)
    assert scrubbed and token not in kept
    lone = ('["\\ud800", "' + token + '"]').encode()  # a lone surrogate, written back as JSON can
    kept, scrubbed = _letter(lone)
    assert scrubbed and token not in kept
    assert _letter(b" NaN ") == (" NaN ", False)  # nothing removed, nothing rewritten


def test_dlq_show_writes_what_a_terminal_would_act_on_as_escapes() -> None:
    from smartretry.cli_ops import shown_bytes

    raw = b'{"caption": "caf\xc3\xa9 \xf0\x9f\x8d\x82\tok\n", "x": "\x1b[2J\x07", "bad": "\xff\xfe"}'
    shown = shown_bytes(raw)
    assert "\x1b" not in shown and "\x07" not in shown and "\ufffd" not in shown
    assert "\\x1b[2J\\x07" in shown and "\\xff\\xfe" in shown
    assert "café 🍂\tok\n" in shown  # text stays text


def _escaped(text: str, count: int = 3) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text[:count]) + text[count:]


def test_a_token_spelled_with_escapes_in_a_message_that_is_no_json_is_scrubbed() -> None:
    registered = "known/secret+token-" + "4b8e1d07"
    redact.register_secret(registered)
    shaped = "EAA" + "Qm3Zx8Lp2Rt7Yv4Nc9Hd6Fg1Js5Ku0Xe3Wq8Ao2B"
    # Cut off (no closing brace), as a message a writer broke on its way: not JSON.
    value = ('{"type": "PublishRequested", "content": {"caption": "'
             + registered.replace("/", "\\/") + " and " + _escaped(shaped)).encode()

    kept, scrubbed = _letter(value)

    assert scrubbed is True
    assert registered not in kept.replace("\\/", "/") and "Qm3Zx8Lp2Rt7Yv4Nc9Hd6Fg1Js5Ku0Xe3Wq8Ao2B" not in kept
    assert kept == '{"type": "PublishRequested", "content": {"caption": "[redacted] and [redacted]'


def test_a_token_spelled_with_escapes_in_a_key_json_reads_twice_is_scrubbed() -> None:
    shaped = "EAA" + "Ty6Wq1Ao5Bx9kQ3mZ7wLp0Rt4Yv8Nc2Hd5Fg3Js"
    value = ('{"type": "PublishRequested", "note": "' + _escaped(shaped) + '", "note": "plain"}').encode()
    assert json.loads(value) == {"type": "PublishRequested", "note": "plain"}  # the first one is not read

    kept, scrubbed = _letter(value)

    assert scrubbed is True and "Ty6Wq1Ao5Bx9kQ3mZ7wLp0Rt4Yv8Nc2Hd5Fg3Js" not in kept


def test_escapes_of_quotes_and_escaped_backslashes_are_left_as_they_are() -> None:
    shaped = "EAA" + "Hd5Fg3JsTy6Wq1Ao5Bx9kQ3mZ7wLp0Rt4Yv8Nc2"
    value = ('{"caption": "say \\u0022hi\\u0022, path C:\\\\u0045x ' + _escaped(shaped) + '"').encode()

    kept, scrubbed = _letter(value)

    assert scrubbed is True and kept == '{"caption": "say \\u0022hi\\u0022, path C:\\\\u0045x [redacted]"'


def test_a_message_too_large_to_keep_says_so_however_long_its_reason() -> None:
    letter = make_dead_letter(reason="invalid CommandDecided: " + "skipped.x: bad; " * 60_000,
                              consumer="projector", source_topic="smartretry.post-events", partition=0, offset=7,
                              key=b"post-1", value=b"x" * 800_000)

    assert letter.value_b64 is None
    assert letter.reason.startswith("the original 800000 bytes are not kept (too large for a dead letter): invalid ")


def test_a_token_escaped_twice_in_json_written_inside_a_string_is_scrubbed() -> None:
    shaped = "EAA" + "Hd7Fg2JsTy1Wq6Ao9Bx4kQ8mZ3wLp5Rt0Yv2Nc7"
    inner = json.dumps({"t": "EAA" + "".join(f"\\u{ord(c):04x}" for c in shaped[3:6]) + shaped[6:]})
    inner = inner.replace("\\\\u", "\\u")  # the inner document's own escapes, one level down
    value = json.dumps({"type": "PublishRequested", "content": {"caption": inner}}).encode()
    assert "Hd7Fg2" not in value.decode() and "Fg2JsTy1Wq6Ao9Bx4kQ8mZ3wLp5Rt0Yv2Nc7" in value.decode()

    kept, scrubbed = _letter(value)

    assert scrubbed is True and "Fg2JsTy1Wq6Ao9Bx4kQ8mZ3wLp5Rt0Yv2Nc7" not in kept


def test_a_dead_letter_names_the_ids_its_message_gives_scrubbed_even_where_its_bytes_are_not_kept() -> None:
    from streams.dlq import MAX_KEPT_VALUE_BYTES

    token = "known-secret-token-" + "5eed1d05"
    redact.register_secret(token)

    def letter(value: bytes) -> dict[str, object]:
        made = make_dead_letter(reason="refused", consumer="command-handler", source_topic="smartretry.commands",
                                partition=0, offset=7, key=b"post-1", value=value)
        return {"post_id": made.post_id, "command_id": made.command_id, "event_id": made.event_id,
                "kept": made.value_b64 is not None}

    refused = {"type": "PublishRequested", "command_id": "cmd-42", "post_id": "post-1", "content": {"caption": "x"}}
    assert letter(json.dumps(refused).encode()) == {"post_id": "post-1", "command_id": "cmd-42", "event_id": None,
                                                    "kept": True}
    # Too large to keep: the ids still say whose it was.
    large = {**refused, "content": {"caption": "x" * (MAX_KEPT_VALUE_BYTES + 10)}}
    assert letter(json.dumps(large).encode()) == {"post_id": "post-1", "command_id": "cmd-42", "event_id": None,
                                                  "kept": False}
    assert letter(json.dumps({"event_id": f"e-{token}", "post_id": 7}).encode()) == {
        "post_id": None, "command_id": None, "event_id": "e-[redacted]", "kept": True}
    assert letter(b"\x00not json") == {"post_id": None, "command_id": None, "event_id": None, "kept": True}
    # Half a character in an id (an escape JSON reads as a lone surrogate): the letter is still made, without it.
    assert letter(b'{"command_id": "c-\\ud83d", "post_id": "post-1"}') == {
        "post_id": "post-1", "command_id": None, "event_id": None, "kept": True}
