"""The wire contracts: round trips, clear errors for bad input, and the exported JSON Schema."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from schemas.commands import PostContent, PublishRequested, url_problem
from schemas.envelope import DecodeError, decode_command, decode_event, encode
from schemas.events import LegacyInsightsImported, PostSubmitted
from schemas.export import OUT, exported, render
from tests.support.samples import AT, CONTENT, POST_ID, all_commands, all_events


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: type(c).__name__)
def test_every_command_round_trips(command: object) -> None:
    assert decode_command(encode(command)) == command  # type: ignore[arg-type]


@pytest.mark.parametrize("event", all_events(), ids=lambda e: type(e).__name__)
def test_every_event_round_trips(event: object) -> None:
    assert decode_event(encode(event)) == event  # type: ignore[arg-type]


def test_timestamps_are_written_as_the_seed_writes_them() -> None:
    body = json.loads(encode(all_events()[0]))
    assert body["occurred_at"] == "2025-11-17T10:10:13.151Z"
    assert body["type"] == "PostSubmitted" and body["schema_version"] == 1


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not json", "not JSON: not UTF-8 text (byte 0xff at 0"),
        (b'{"caf\xe9": 1}', "not UTF-8 text (byte 0xe9 at 5"),
        # UTF-16, which json.loads would guess from the bytes: read as the UTF-8 it is not.
        ('{"type": "PostDeleted"}'.encode("utf-16-be"), "not JSON: Expecting value: line 1 column 1"),
        ('{"type": "PostDeleted"}'.encode("utf-16"), "not JSON: not UTF-8 text (byte 0xff at 0"),
        (b"{not json}", "not JSON: Expecting property name"),
        (b'{"type": "PublishAttempted", "schema_version": NaN}', "not JSON: NaN is not a JSON value"),
        (b"", "empty event: the message's value has no bytes"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"type": "PostDeleted"}', "unknown event type 'PostDeleted'"),
        (b'{"type": "PublishAttempted", "schema_version": 99}', "unsupported schema_version 99"),
        (b'{"type": "PlatformResult", "schema_version": 1, "event_id": "e", "post_id": "p",'
         b' "occurred_at": "2025-11-17T10:10:13.151Z", "platform": "facebook", "success": true}',
         "attempt_id: Field required"),
        (b'{"type": "PublishAttempted", "event_id": "e", "post_id": "p", "occurred_at": "2025-11-17T10:10:13Z",'
         b' "platform": "tiktok", "attempt_id": "a", "attempt_number": 1, "command_id": "c"}', "platform"),
        (None, "no value"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        # Times and numbers no platform or clock gives: the fold and the handler would compute past the calendar.
        (b'{"type": "PublishAttempted", "event_id": "e", "post_id": "p", "occurred_at": "0001-01-01T00:00:00Z",'
         b' "platform": "facebook", "attempt_id": "a", "attempt_number": 2, "command_id": "c"}',
         "occurred_at: Value error, timestamps must be from 2000-01-01 up to 9000-01-01 (UTC)"),
        (b'{"type": "PublishAttempted", "event_id": "e", "post_id": "p", "occurred_at": "9999-12-31T23:59:59Z",'
         b' "platform": "facebook", "attempt_id": "a", "attempt_number": 2, "command_id": "c"}',
         "occurred_at: Value error, timestamps must be from 2000-01-01 up to 9000-01-01 (UTC)"),
        (b'{"type": "PublishAttempted", "event_id": "e", "post_id": "p", "occurred_at": "2025-11-17T10:10:13Z",'
         b' "platform": "facebook", "attempt_id": "a", "attempt_number": 1000000000000000000000000000000,'
         b' "command_id": "c"}', "attempt_number: Input should be less than or equal to 1000000"),
        (b'{"type": "PlatformResult", "event_id": "e", "post_id": "p", "occurred_at": "2025-11-17T10:10:13Z",'
         b' "platform": "facebook", "attempt_id": "a", "success": false, "error": {"kind": "transient",'
         b' "message": "m", "http_status": -5}}', "error.http_status: Input should be greater than or equal to 100"),
        (b'{"type": "PlatformResult", "event_id": "e", "post_id": "p", "occurred_at": "2025-11-17T10:10:13Z",'
         b' "platform": "facebook", "attempt_id": "a", "success": false, "error": {"kind": "rate_limited",'
         b' "message": "m", "retry_after_s": -1}}', "error.retry_after_s: Input should be greater than or equal to 0"),
        (b'{"type": "PlatformResult", "event_id": "e", "post_id": "p", "occurred_at": "2025-11-17T10:10:13Z",'
         b' "platform": "facebook", "attempt_id": "a", "success": false, "error": {"kind": "rate_limited",'
         b' "message": "m", "retry_after_s": 1e400}}', "error.retry_after_s: Input should be a finite number"),
    ],
)
def test_bad_events_decode_to_a_clear_error(raw: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(raw)
    assert reason in caught.value.reason


def test_half_a_character_is_refused_with_where_it_is_and_a_whole_one_written_as_two_escapes_is_kept() -> None:
    # An old system's document (free-form, so only the careful path looks at it) with an emoji cut in two.
    event = LegacyInsightsImported(event_id="e1", post_id=POST_ID, occurred_at=AT, publish_target="facebook",
                                   document={"status": "failed", "error_message": "facebook: Upload failed"})
    raw = encode(event).decode()
    escaped = raw.replace("Upload failed", "Upload failed \\ud83d")
    # Escaped, or written as the bytes Python's "surrogatepass" writes; the message as bytes or as text.
    for cut in (escaped.encode(), escaped, raw.replace("Upload failed", "Upload failed \ud83d").encode(
            "utf-8", "surrogatepass")):
        with pytest.raises(DecodeError) as caught:
            decode_event(cut)
        assert "text that is not Unicode at document.error_message" in caught.value.reason, cut
    whole = decode_event(raw.replace("Upload failed", "Upload failed \\ud83d\\ude00").encode())
    assert isinstance(whole, LegacyInsightsImported)
    assert whole.document["error_message"] == "facebook: Upload failed \U0001F600"


@pytest.mark.parametrize("version", ['"1"', "1.0", "true", "0", "2"])
def test_a_version_that_is_not_a_supported_integer_is_refused_whatever_else_is_valid(version: str) -> None:
    valid = encode(all_events()[0]).decode()
    assert '"schema_version":1,' in valid
    with pytest.raises(DecodeError) as caught:
        decode_event(valid.replace('"schema_version":1,', f'"schema_version":{version},').encode())
    assert "unsupported schema_version" in caught.value.reason
    if version == "1.0":
        # Not "this service reads 1 to 1", which 1.0 seems to be: how to write it.
        assert "write it as a whole number, 1, without a decimal point" in caught.value.reason


def test_bad_commands_name_the_field() -> None:
    body = json.loads(encode(all_commands()[0]))
    body["publish_target"] = "myspace"
    with pytest.raises(DecodeError, match="publish_target"):
        decode_command(json.dumps(body))
    del body["publish_target"]
    with pytest.raises(DecodeError, match="publish_target: Field required"):
        decode_command(json.dumps(body))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"post_id": "../../etc/passwd"}, "post_id"),
        ({"content": {"caption": "x", "image_url": "ftp://cdn/x.jpg"}}, r"http\(s\) URL"),
        ({"content": {"caption": "   "}}, "content is empty"),
        ({"content": {"caption": "x" * 2201, "image_url": "https://cdn/x.jpg"}}, "2200 characters"),
        ({"publish_target": "instagram", "content": {"caption": "text only"}}, "Instagram needs content.image_url"),
        ({"requested_at": "2025-11-17T10:10:13"}, "time zone"),
    ],
)
def test_invalid_publish_requests_are_refused(changes: dict[str, object], message: str) -> None:
    body = {"command_id": "c", "post_id": POST_ID, "publish_target": "both", "account": "acme",
            "content": CONTENT.model_dump(), "requested_at": AT, **changes}
    with pytest.raises(ValidationError, match=message):
        PublishRequested.model_validate(body)


def test_a_facebook_text_post_needs_no_image() -> None:
    command = PublishRequested(command_id="c", post_id="p", publish_target="facebook", account="acme",
                               content=PostContent(caption="Hello", link="https://example.com"), requested_at=AT)
    assert command.content.image_url is None


def test_contracts_are_frozen() -> None:
    with pytest.raises(ValidationError):
        all_commands()[0].post_id = "other"  # type: ignore[misc]


def test_exported_json_schema_is_current() -> None:
    """Upstream services and analytics read schemas/json; `make schemas` refreshes it."""
    for name, schema in exported().items():
        path = OUT / name
        assert path.exists(), f"{path} is missing: run `make schemas`"
        assert path.read_text() == render(schema), f"{path} is stale: run `make schemas`"


def test_blanks_around_a_pasted_address_are_dropped_and_those_inside_it_kept() -> None:
    pasted = PostContent(caption="Autumn sale", image_url="  https://cdn.example.com/autumn-sale.jpg\n",
                         link="\thttps://shop.example.com/autumn ")
    assert pasted.image_url == "https://cdn.example.com/autumn-sale.jpg"
    assert pasted.link == "https://shop.example.com/autumn"
    # The product note's broken address keeps its space: Facebook refuses it, and the post says to fix it.
    assert PostContent(caption="x", image_url="https://cdn.example.com/autumn sale.jpg").image_url == \
        "https://cdn.example.com/autumn sale.jpg"


def test_an_event_with_an_address_the_api_now_refuses_is_still_read_as_it_was_written() -> None:
    """The API refuses such addresses (`url_problem`); an event recorded before it did must still be read, or the
    projector would dead-letter it and replay would drop the post."""
    odd = "https://cdn.example.com:99999/x.jpg"
    assert url_problem(odd) == ("has an invalid port: what follows 'cdn.example.com' and a colon is no port (a number "
                                "from 1 to 65535)")
    written = PostSubmitted(event_id="e1", post_id=POST_ID, occurred_at=AT, command_id="cmd-1",
                            publish_target="both", content=PostContent(caption="x", image_url=odd), account="acme")
    read = decode_event(encode(written))
    assert isinstance(read, PostSubmitted) and read.content.image_url == odd
    assert url_problem("https://cdn.example.com/autumn sale.jpg") is None


def test_an_address_with_a_unicode_line_break_or_an_invisible_mark_is_refused_and_blank_looking_text_says_nothing(
        ) -> None:
    from schemas.commands import says_nothing

    assert url_problem("https://cdn.example.com/a.jpg\u2028x") == (
        "must be one line: it holds a control character (a line break, a tab)")
    assert (url_problem("https://cdn.example.com/\u202ea.jpg") or "").startswith("holds an invisible formatting")
    assert url_problem("https://cdn.example.com/caf\u00e9.jpg") is None  # any other letter is the platform's to fetch
    # A forced republish must say why: text of characters that print as nothing says nothing.
    for blank in (" \u200b", "\u2800", "\u115f\u3164", "\u034f\u180e", "\uffa0\u1160"):
        assert says_nothing(blank), repr(blank)
    assert not says_nothing("e\u0301") and not says_nothing("testing the new layout")


def _schema_errors(kind: str, body: dict[str, object]) -> list[str]:
    from jsonschema import Draft202012Validator

    schema = json.loads((OUT / kind / f"{body['type']}.schema.json").read_text())
    return [error.message for error in Draft202012Validator(schema).iter_errors(body)]


@pytest.mark.parametrize("message", [*all_commands(), *all_events()], ids=lambda m: type(m).__name__)
def test_what_the_service_writes_is_valid_by_its_exported_schema(message: object) -> None:
    body = json.loads(encode(message))  # type: ignore[arg-type]
    kind = "commands" if "requested_at" in body else "events"
    assert _schema_errors(kind, body) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"content": {"caption": "x", "image_url": "ftp://cdn/x.jpg"}},
        {"content": {"caption": "x", "image_url": "https:///x.jpg"}},
        {"content": {"caption": "   "}, "publish_target": "facebook"},
        {"content": {"caption": "\x1c\x85"}, "publish_target": "facebook"},  # blanks to str.strip, not to ECMAScript
        {"content": {"caption": "x" * 2201, "image_url": "https://cdn/x.jpg"}},
        {"content": {"caption": "x" * 2201, "image_url": "https://cdn/x.jpg"}, "publish_target": "instagram"},
        {"publish_target": "instagram", "content": {"caption": "text only"}},
        {"publish_target": "both", "content": {"caption": "text only", "image_url": None}},
        {"requested_at": "2025-11-17T10:10:13"},  # no time zone
    ],
)
def test_a_publish_request_the_service_refuses_is_refused_by_its_exported_schema(changes: dict[str, object]) -> None:
    """Upstream services validate against schemas/json: what passes there must not be dead-lettered."""
    body = {"type": "PublishRequested", "command_id": "c", "post_id": POST_ID, "publish_target": "both",
            "account": "acme", "content": CONTENT.model_dump(), "requested_at": "2025-11-17T10:10:13.151Z", **changes}
    with pytest.raises(ValidationError):
        PublishRequested.model_validate(body)
    assert _schema_errors("commands", body)


def test_a_long_caption_is_fine_by_the_schema_for_facebook_alone() -> None:
    body = {"type": "PublishRequested", "command_id": "c", "post_id": POST_ID, "publish_target": "facebook",
            "account": "acme", "content": {"caption": "x" * 5000}, "requested_at": "2025-11-17T10:10:13.151Z"}
    assert PublishRequested.model_validate(body).content.caption == "x" * 5000
    assert _schema_errors("commands", body) == []
