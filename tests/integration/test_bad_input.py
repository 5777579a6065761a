"""The bad input catalogue against the running service: each kind gets a dead letter or a 4xx with its reason.

One service (projector and handler processes, sandbox Graph API, the HTTP API) takes the whole catalogue
at once: bad commands on the commands topic, bad events on the post-events topic, bad requests to the API,
then valid posts. Each test below checks one kind's answer; the last ones check that nothing else was
affected: the valid posts went out exactly once each, and both consumers kept going.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
from confluent_kafka import KafkaException
from pydantic import SecretStr

from projections.state import PostState
from publishers.sandbox import DEMO_ACCOUNT_ID, DEMO_IG_USER_ID, DEMO_PAGE_ID, SandboxControl, SandboxServer
from schemas.commands import PostContent, PublishRequested, RetryRequested
from schemas.deadletters import DeadLetter
from schemas.envelope import MAX_MESSAGE_BYTES, decode_command
from schemas.ids import new_id
from smartretry.api import ApiServer, create_app, serve_in_thread
from streams.broker import free_port
from streams.kafka import partition_for, producer
from streams.topics import DEFAULT_PARTITIONS
from tests.integration.test_api import messages_on
from tests.support.service import Service

pytestmark = pytest.mark.integration

API_KEY = "bad-input-api-key-3c9a"
AT = "2025-11-17T10:10:13.151Z"
IMAGE = "https://cdn.example.com/autumn-sale.jpg"
TEN_MB = 10 * 1024 * 1024


def _command(**fields: object) -> dict[str, object]:
    """A valid PublishRequested as a dict, to be broken one field at a time."""
    body: dict[str, object] = {
        "type": "PublishRequested", "schema_version": 1, "command_id": new_id(), "post_id": new_id(),
        "requested_at": AT, "publish_target": "both", "account": DEMO_ACCOUNT_ID,
        "content": {"caption": "Autumn sale starts today", "image_url": IMAGE, "link": None},
    }
    body.update(fields)
    return body


def _without(body: dict[str, object], name: str) -> dict[str, object]:
    return {k: v for k, v in body.items() if k != name}


def _result_event(post_id: str, **fields: object) -> dict[str, object]:
    """A valid PlatformResult as a dict, to be broken one field at a time."""
    body: dict[str, object] = {
        "type": "PlatformResult", "schema_version": 1, "event_id": new_id(), "post_id": post_id,
        "occurred_at": AT, "platform": "facebook", "attempt_id": new_id(), "success": True,
        "platform_post_id": f"{DEMO_PAGE_ID}_1", "permalink": None, "error": None, "recovered": False,
    }
    body.update(fields)
    return body


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


# Commands the handler must dead-letter: kind -> (value, words the reason must contain). The message key
# is `c-<kind>`, which the dead letter keeps: that is how each test finds its own.
BAD_COMMANDS: dict[str, tuple[bytes | None, str]] = {
    "not-json": (b"\x00\xff{definitely not json", "not JSON"),
    "not-an-object": (_json(["PublishRequested", 1]), "must be a JSON object, got list"),
    "nested-too-deeply": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "number-too-long": (b'{"type": "PublishRequested", "schema_version": 1' + b"9" * 5000 + b"}",
                        "a number too long to be one of ours"),
    "json-string": (_json("PublishRequested"), "must be a JSON object, got str"),
    "empty-value": (None, "has no value"),
    "unknown-type": (_json(_command(type="DeletePost")), "unknown command type 'DeletePost'"),
    "no-type": (_json(_without(_command(), "type")), "unknown command type None"),
    "schema-version-99": (_json(_command(schema_version=99)), "unsupported schema_version 99"),
    "schema-version-text": (_json(_command(schema_version="1")), "unsupported schema_version '1'"),
    "missing-command-id": (_json(_without(_command(), "command_id")), "command_id: Field required"),
    "missing-content": (_json(_without(_command(), "content")), "content: Field required"),
    "mistyped-content": (_json(_command(content="Autumn sale")), "content: Input should be"),
    "mistyped-requested-at": (_json(_command(requested_at="yesterday")), "requested_at"),
    "unknown-field": (_json(_command(access_level="admin")), "access_level: Extra inputs are not permitted"),
    "unknown-platform": (_json(_command(publish_target="myspace")), "publish_target: Input should be"),
    "empty-content": (_json(_command(publish_target="facebook", content={"caption": "  "})), "content is empty"),
    "image-url-not-http": (_json(_command(content={"caption": "x", "image_url": "file:///etc/passwd"})),
                           "must be an http(s) URL"),
    "caption-over-2200": (_json(_command(content={"caption": "x" * 2201, "image_url": IMAGE})),
                          "limited to 2200 characters"),
    "post-id-with-path": (_json(_command(post_id="../../etc/passwd")), "post_id: String should match pattern"),
    # Half an emoji (a lone UTF-16 surrogate, escaped): JSON reads it, but no JSON writer can write it again.
    "half-a-character": (_json(_command(content={"caption": "Autumn sale \ud83d", "image_url": IMAGE})),
                         "text that is not Unicode at content.caption"),
    "account-with-path": (_json(_command(account="demo/../root")), "account: String should match pattern"),
}

# Events the projector must dead-letter, keyed `e-<kind>` the same way.
BAD_EVENTS: dict[str, tuple[bytes | None, str]] = {
    "not-json": (b"\x89PNG\r\n\x1a\n\x00\x00", "not JSON"),
    "not-an-object": (_json(42), "must be a JSON object, got int"),
    "nested-too-deeply": (b'{"type": "PlatformResult", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                          "nested too deeply"),
    "empty-value": (None, "has no value"),
    "unknown-type": (_json(_result_event("e-post", type="PostDeleted")), "unknown event type 'PostDeleted'"),
    "schema-version-2": (_json(_result_event("e-post", schema_version=2)), "unsupported schema_version 2"),
    "missing-attempt-id": (_json(_without(_result_event("e-post"), "attempt_id")), "attempt_id: Field required"),
    "mistyped-attempt-number": (_json({**_result_event("e-post"), "type": "PublishAttempted", "attempt_number":
                                       "first", "command_id": "c1", "success": None}), "attempt_number"),
    "unknown-platform": (_json(_result_event("e-post", platform="myspace")), "platform: Input should be"),
    "post-id-with-path": (_json(_result_event("../../etc/passwd")), "post_id: String should match pattern"),
    # Under the event limit, but the post's insights message would be over the broker's.
    "platform-post-id-of-400-kb": (_json(_result_event("e-post", platform_post_id="1" * 400_000)),
                                   "platform_post_id: String should have at most 2000 characters"),
}

def _misplaced_import() -> bytes:
    """A valid import whose post is placed on another partition than its key `e-import-on-another-partition`."""
    key = partition_for("e-import-on-another-partition", DEFAULT_PARTITIONS)
    post = next(p for p in (f"misplaced-{n}" for n in range(100)) if partition_for(p, DEFAULT_PARTITIONS) != key)
    return _json({"type": "LegacyInsightsImported", "schema_version": 1, "event_id": new_id(), "post_id": post,
                  "occurred_at": AT, "publish_target": "facebook", "document": {"status": "posted"}})


BAD_EVENTS["import-on-another-partition"] = (_misplaced_import(), "not on its post's")


def _deep_import() -> bytes:
    """A small import whose document nests 490 levels deep: JSON reads it, but every walk of it would recurse."""
    document: object = "x"
    for _ in range(490):
        document = {"a": document}
    return _json({"type": "LegacyInsightsImported", "schema_version": 1, "event_id": new_id(), "post_id": "e-deep",
                  "occurred_at": AT, "publish_target": "facebook", "document": {"status": "posted", "debug": document}})


BAD_EVENTS["import-nested-too-deeply"] = (_deep_import(), "the document nests deeper than 32 levels")
# An old system that cut an emoji in two (JavaScript's slice does): folded, it would stop its partition for good.
BAD_EVENTS["import-with-half-a-character"] = (
    _json({"type": "LegacyInsightsImported", "schema_version": 1, "event_id": new_id(), "post_id": "e-half",
           "occurred_at": AT, "publish_target": "facebook",
           "document": {"status": "failed", "error_message": "facebook: Upload failed \ud83d"}}),
    "text that is not Unicode at document.error_message")

GHOST_POST = "ghost-post-never-submitted"


@dataclass
class Run:
    service: Service
    api: httpx.Client
    answers: dict[str, httpx.Response] = field(default_factory=dict)
    letters: dict[str, DeadLetter] = field(default_factory=dict)
    valid_posts: list[PostState] = field(default_factory=list)
    commands_sent: int = 0
    big_refused_by_default: str = ""


def _publish_valid(service: Service, caption: str) -> PostState:
    command = service.publish(PostContent(caption=caption, image_url=IMAGE))
    return service.wait_command(command.post_id, command.command_id, timeout=120)


def _dead_letters(service: Service) -> dict[str, DeadLetter]:
    letters = [DeadLetter.model_validate_json(v) for _k, v in messages_on(service.bootstrap,
                                                                             service.topics.dead_letters)]
    return {f"{letter.consumer}:{letter.key}": letter for letter in letters}


def _api_answers(client: httpx.Client, taken: PublishRequested) -> dict[str, httpx.Response]:
    """The API's equivalents of the catalogue, each sent to the running API."""

    def publish(**fields: object) -> httpx.Response:
        body: dict[str, object] = {"content": {"caption": "Autumn sale", "image_url": IMAGE},
                                   "publish_target": "both", "account": DEMO_ACCOUNT_ID}
        body.update(fields)
        return client.post("/posts", json=body)

    as_json = {"Content-Type": "application/json"}
    return {
        "not-json": client.post("/posts", content=b"{not json", headers=as_json),
        "not-utf8": client.post("/posts", content=b"\x00\xff{not json", headers=as_json),
        "not-an-object": client.post("/posts", content=_json(["PublishRequested"]), headers=as_json),
        "nested-too-deeply": client.post("/posts", content=b"[" * 100_000 + b"]" * 100_000, headers=as_json),
        "number-too-long": client.post("/posts", content=b'{"caption": ' + b"9" * 5000 + b"}", headers=as_json),
        "empty-body": client.post("/posts", content=b"", headers=as_json),
        "unknown-field": publish(access_level="admin"),
        "missing-content": client.post("/posts", json={"publish_target": "both", "account": DEMO_ACCOUNT_ID}),
        "mistyped-content": publish(content="Autumn sale"),
        "unknown-platform": publish(publish_target="myspace"),
        "empty-content": publish(publish_target="facebook", content={"caption": ""}),
        "image-url-not-http": publish(content={"caption": "x", "image_url": "javascript:alert(1)"}),
        "caption-over-2200": publish(content={"caption": "x" * 2201, "image_url": IMAGE}),
        "caption-over-63206": publish(publish_target="facebook", content={"caption": "x" * 63207}),
        "caption-with-a-control-character": publish(content={"caption": "Sale \x1b[31m today\x00",
                                                             "image_url": IMAGE}),
        "ten-mb": publish(content={"caption": "x" * TEN_MB, "image_url": IMAGE}),
        "post-id-with-path": publish(post_id="../../etc/passwd"),
        "half-a-character": client.post("/posts", content=_json({
            "content": {"caption": "Autumn sale \ud83d", "image_url": IMAGE}, "publish_target": "both",
            "account": DEMO_ACCOUNT_ID}), headers=as_json),
        "path-in-url": client.post("/posts/..%5C..%5Cetc%5Cpasswd/retry", json={}),
        # An encoded slash is a slash to the router: no route has that many segments.
        "slashes-in-url": client.post("/posts/..%2F..%2Fetc%2Fpasswd/retry", json={}),
        "unknown-account": publish(account="nobody-here"),
        "retry-of-a-post-that-does-not-exist": client.post(f"/posts/{GHOST_POST}-api/retry", json={}),
        "same-command-id-different-body": publish(post_id=taken.post_id, command_id=taken.command_id,
                                                  content={"caption": "Another caption", "image_url": IMAGE}),
    }


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, shared_sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    control = SandboxControl(shared_sandbox.base_url)
    control.reset()
    service = Service(kafka_bootstrap, control, tmp_path_factory.mktemp("bad-input")).start()
    settings = service.settings.model_copy(update={"api_key": SecretStr(API_KEY), "api_wait_seconds": 0.2})
    server: ApiServer = serve_in_thread(create_app(settings, service.stores, producer(kafka_bootstrap)),
                                        "127.0.0.1", free_port())
    client = httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=60)
    try:
        result = Run(service, client)
        # A post that went out, whose command id the "same id, different body" inputs reuse.
        first = _publish_valid(service, "The first post")
        assert first.status == "posted"
        result.valid_posts.append(first)
        taken = PublishRequested(command_id=first.submitted_by or "", post_id=first.post_id, publish_target="both",
                                 content=PostContent(caption="A different caption", image_url=IMAGE),
                                 account=DEMO_ACCOUNT_ID, requested_at=datetime.now(UTC))
        result.commands_sent = 1

        for kind, (value, _words) in BAD_COMMANDS.items():
            service.send_raw(value, key=f"c-{kind}".encode())  # type: ignore[arg-type]
        service.send(taken, taken.post_id)
        ghost_retry = RetryRequested(command_id=new_id(), post_id=GHOST_POST, requested_at=datetime.now(UTC))
        service.send(ghost_retry, GHOST_POST)  # keyed by its post, as upstream services key commands
        result.commands_sent += len(BAD_COMMANDS) + 2

        # 10 MB: the service's own producer refuses it; one allowed to send it gets it past the broker
        # only because lz4 shrinks a repetitive payload under the broker's limit.
        big = _json(_command(content={"caption": "x" * TEN_MB, "image_url": IMAGE}))
        try:
            producer(kafka_bootstrap).produce(service.topics.commands, key=b"c-ten-mb", value=big)
        except KafkaException as exc:
            result.big_refused_by_default = str(exc)
        large = producer(kafka_bootstrap, **{"message.max.bytes": 3 * TEN_MB})
        large.produce(service.topics.commands, key=b"c-ten-mb", value=big)
        large.produce(service.topics.post_events, key=b"e-ten-mb", value=big)
        assert large.flush(60) == 0
        result.commands_sent += 1

        events = producer(kafka_bootstrap)
        for kind, (value, _words) in BAD_EVENTS.items():
            events.produce(service.topics.post_events, key=f"e-{kind}".encode(), value=value)
        events.produce(service.topics.post_events, key=GHOST_POST.encode(), value=_json(_result_event(GHOST_POST)))
        assert events.flush(30) == 0

        result.answers = _api_answers(client, taken)

        # After all of it, a valid post goes out as if nothing had happened.
        result.valid_posts.append(_publish_valid(service, "The post after the bad input"))
        result.commands_sent += 1

        expected = {f"command-handler:c-{k}" for k in [*BAD_COMMANDS, "ten-mb"]} | \
                   {f"projector:e-{k}" for k in [*BAD_EVENTS, "ten-mb"]}
        deadline = time.monotonic() + 60
        while True:
            result.letters = _dead_letters(service)
            if expected <= set(result.letters) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        yield result
    finally:
        client.close()
        server.stop()
        service.stop()
        control.close()


def _letter(run: Run, key: str) -> DeadLetter:
    found = run.letters.get(key)
    assert found is not None, (f"no dead letter {key}; dead letters: {sorted(run.letters)}\n--- handler log ---\n"
                               f"{run.service.handler.output()[-3000:]}\n--- projector log ---\n"
                               f"{run.service.projector.output()[-3000:]}")
    return found


# ----------------------------------------------------------------------------- commands topic -> handler


@pytest.mark.parametrize("kind", sorted(BAD_COMMANDS))
def test_a_bad_command_is_dead_lettered_with_its_reason(run: Run, kind: str) -> None:
    value, words = BAD_COMMANDS[kind]
    letter = _letter(run, f"command-handler:c-{kind}")
    assert words in letter.reason
    assert letter.source_topic == run.service.topics.commands
    assert letter.partition is not None and letter.offset is not None
    # The original bytes are kept, so the message can be fixed and requeued.
    assert letter.original_value() == value


def test_a_10_mb_command_is_refused_by_the_producer_and_dead_lettered_as_too_large_when_it_gets_through(
        run: Run) -> None:
    assert "MSG_SIZE_TOO_LARGE" in run.big_refused_by_default
    letter = _letter(run, "command-handler:c-ten-mb")
    assert "command too large" in letter.reason
    assert f"at most {MAX_MESSAGE_BYTES}" in letter.reason
    assert letter.source_topic == run.service.topics.commands
    # A dead letter has to fit on its own topic: the size is kept, not the bytes.
    assert "are not kept (too large for a dead letter)" in letter.reason
    assert letter.value_b64 is None


def test_a_10_mb_message_is_refused_by_the_broker_when_it_does_not_compress(kafka_bootstrap: str) -> None:
    """Random bytes do not shrink: past the producer's own check, the broker refuses them."""
    import os
    import uuid

    from streams.topics import Topics, ensure_topics

    topics = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_bootstrap, topics.specs())
    errors: list[object] = []
    large = producer(kafka_bootstrap, **{"message.max.bytes": 3 * TEN_MB})
    large.produce(topics.commands, key=b"k", value=os.urandom(TEN_MB),
                  on_delivery=lambda err, _msg: errors.append(err))
    large.flush(60)
    assert len(errors) == 1 and "MSG_SIZE_TOO_LARGE" in str(errors[0])
    assert messages_on(kafka_bootstrap, topics.commands) == []


def test_a_retry_of_a_post_that_does_not_exist_is_dead_lettered(run: Run) -> None:
    letter = _letter(run, f"command-handler:{GHOST_POST}")
    assert f"post {GHOST_POST} is unknown" in letter.reason


def test_the_same_command_id_with_a_different_body_is_dead_lettered_not_ignored(run: Run) -> None:
    first = run.valid_posts[0]
    letter = _letter(run, f"command-handler:{first.post_id}")
    assert first.submitted_by is not None and first.submitted_by in letter.reason
    assert "different" in letter.reason
    # The post keeps what its first command published.
    state = run.service.stores.projection.get(first.post_id)
    assert state is not None and state.content is not None
    assert state.content.caption == "The first post"


# ----------------------------------------------------------------------------- post-events topic -> projector


@pytest.mark.parametrize("kind", sorted(BAD_EVENTS))
def test_a_bad_event_is_dead_lettered_with_its_reason(run: Run, kind: str) -> None:
    value, words = BAD_EVENTS[kind]
    letter = _letter(run, f"projector:e-{kind}")
    assert words in letter.reason
    assert letter.source_topic == run.service.topics.post_events
    assert letter.original_value() == value


def test_a_10_mb_event_is_dead_lettered_as_too_large(run: Run) -> None:
    letter = _letter(run, "projector:e-ten-mb")
    assert "event too large" in letter.reason
    assert letter.value_b64 is None


def test_an_event_for_a_post_that_does_not_exist_is_dead_lettered_not_folded_into_a_new_post(run: Run) -> None:
    letter = _letter(run, f"projector:{GHOST_POST}")
    assert GHOST_POST in letter.reason
    assert run.service.stores.projection.get(GHOST_POST) is None


# ----------------------------------------------------------------------------- HTTP API -> 4xx

API_CASES: dict[str, tuple[int, str]] = {
    "not-json": (422, "JSON decode error"),
    "not-utf8": (400, "not JSON: not UTF-8 text (byte 0xff at 1; messages are JSON in UTF-8)"),
    "nested-too-deeply": (400, "request body nested too deeply"),
    "number-too-long": (400, "request body has a number too long to be one of ours (over 4,300 digits)"),
    "not-an-object": (422, "valid dictionary"),
    "empty-body": (422, "the body is missing: send a JSON object"),
    "unknown-field": (422, "Extra inputs are not permitted"),
    "missing-content": (422, "Field required"),
    "mistyped-content": (422, "valid dictionary"),
    "unknown-platform": (422, "Input should be 'facebook', 'instagram' or 'both'"),
    "empty-content": (422, "content is empty"),
    "image-url-not-http": (422, "must be an http(s) URL"),
    "caption-over-2200": (422, "Instagram captions are limited to 2200 characters; this one has 2201"),
    "caption-over-63206": (422, "String should have at most 63206 characters"),
    "caption-with-a-control-character": (422, "holds the control character U+001B, which no platform shows"),
    # Refused for its size before it is read (the API takes at most 1 MiB).
    "ten-mb": (413, "request body too large: at most 1048576 bytes are taken"),
    "post-id-with-path": (422, "String should match pattern"),
    "half-a-character": (422, "unable to parse raw data as a unicode string"),
    "path-in-url": (422, "String should match pattern"),
    "slashes-in-url": (404, "Not Found"),
    "unknown-account": (422, "unknown account 'nobody-here'"),
    "retry-of-a-post-that-does-not-exist": (404, f"post {GHOST_POST}-api not found"),
}


@pytest.mark.parametrize("kind", sorted(API_CASES))
def test_a_bad_request_is_a_4xx_with_its_reason(run: Run, kind: str) -> None:
    status, words = API_CASES[kind]
    answer = run.answers[kind]
    assert answer.status_code == status, answer.text[:2000]
    assert words in answer.text[:5000]


def test_the_same_command_id_with_a_different_body_is_a_conflict_at_the_api(run: Run) -> None:
    answer = run.answers["same-command-id-different-body"]
    assert answer.status_code == 409, answer.text
    assert "different" in answer.json()["detail"]


# ----------------------------------------------------------------------------- nothing else is affected


def test_no_bad_request_reached_kafka(run: Run) -> None:
    # Every command on the topic is one this test module sent itself: the API put none there. The reused
    # command id is left to its own test above.
    reused = run.valid_posts[0].submitted_by
    on_topic = messages_on(run.service.bootstrap, run.service.topics.commands)
    others = [value for key, value in on_topic if key.startswith("c-") or decode_command(value).command_id != reused]
    # Of the commands with the reused id, the test sent two: the first publish and the changed one.
    assert len(others) == run.commands_sent - 2


def test_the_valid_posts_were_published_exactly_once_each(run: Run) -> None:
    assert {p.status for p in run.valid_posts} == {"posted"}
    counters = run.service.sandbox.counters()
    assert counters["facebook"][DEMO_PAGE_ID] == len(run.valid_posts)
    assert counters["instagram"][DEMO_IG_USER_ID] == len(run.valid_posts)


def test_both_consumers_keep_going_after_the_whole_catalogue(run: Run) -> None:
    for process in (run.service.handler, run.service.projector):
        assert process.process is not None and process.process.poll() is None, process.output()[-3000:]
    after = _publish_valid(run.service, "One more, after the dead letters")
    assert after.status == "posted"
    run.valid_posts.append(after)
    # A command whose handling raised is logged as "Command at <topic>[p]@offset failed" and never committed.
    log = run.service.handler.output()
    assert "Traceback" not in log and f"Command at {run.service.topics.commands}" not in log, log[-3000:]


def test_content_the_platforms_cannot_take_is_dead_lettered_from_kafka_not_published(run: Run) -> None:
    # What the API answers 422 for, written straight on the commands topic by an upstream service: refused with the
    # API's reason, before any platform is called (a call Instagram refuses still counts against its limits).
    tags = " ".join(f"#tag{n}" for n in range(31))
    refused = {
        "Instagram posts carry no link": PublishRequested(
            command_id=new_id(), post_id=new_id(), publish_target="instagram", account=DEMO_ACCOUNT_ID,
            content=PostContent(caption="Sale", image_url=IMAGE, link="https://shop.example.com/sale"),
            requested_at=datetime.now(UTC)),
        "Instagram captions take at most 30 hashtags; this one has 31": PublishRequested(
            command_id=new_id(), post_id=new_id(), publish_target="both", account=DEMO_ACCOUNT_ID,
            content=PostContent(caption=tags, image_url=IMAGE), requested_at=datetime.now(UTC)),
        "content.caption holds the control character U+001B, which no platform shows": PublishRequested(
            command_id=new_id(), post_id=new_id(), publish_target="both", account=DEMO_ACCOUNT_ID,
            content=PostContent(caption="Sale \x1b[31mnow", image_url=IMAGE), requested_at=datetime.now(UTC)),
        "content.image_url has an invalid port": PublishRequested(
            command_id=new_id(), post_id=new_id(), publish_target="both", account=DEMO_ACCOUNT_ID,
            content=PostContent(caption="Sale", image_url="https://cdn.example.com:99999/a.jpg"),
            requested_at=datetime.now(UTC)),
    }
    posted = run.valid_posts[0]
    # A forced republish of a posted post, whose corrected caption Instagram cannot take: written as an upstream
    # writes a correction, with only the field it corrects (the post's image is kept).
    force = {"type": "ForceRepublishRequested", "command_id": new_id(), "post_id": posted.post_id,
             "requested_at": AT, "reason": "a longer caption", "content": {"caption": "x" * 2300}}
    before = run.service.sandbox.counters()
    for command in refused.values():
        run.service.send(command, command.post_id)
    run.service.send_raw(_json(force), key=posted.post_id.encode())
    # And one whose reason says nothing: the API answers it 422, and a republish posts the post again on purpose.
    unsaid = {**force, "command_id": new_id(), "reason": " \u200b ", "content": None}
    run.service.send_raw(_json(unsaid), key=posted.post_id.encode())
    too_long = "refused ForceRepublishRequested: Instagram captions are limited to 2200 characters; this one has 2300"
    blank = ("refused ForceRepublishRequested: reason must say why the post is republished: blanks and invisible "
             "characters alone say nothing")
    deadline = time.monotonic() + 60
    while True:
        letters = _dead_letters_in_full(run.service)
        reasons = {letter.key: letter.reason for letter in letters}
        forced = [letter for letter in letters if letter.key == posted.post_id and letter.reason == too_long]
        said = [letter for letter in letters if letter.key == posted.post_id and letter.reason == blank]
        if (all(c.post_id in reasons for c in refused.values()) and forced and said) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    commands = {letter.key: letter.command_id for letter in letters}
    for words, command in refused.items():
        assert words in reasons.get(command.post_id, ""), reasons
        # The upstream service that wrote it finds it by its command id.
        assert commands[command.post_id] == command.command_id
        assert run.service.stores.projection.get(command.post_id) is None
    assert forced and said, [letter.reason for letter in letters if letter.key == posted.post_id]
    assert run.service.sandbox.counters() == before
    state = run.service.stores.projection.get(posted.post_id)
    assert state is not None and state.content is not None and state.content.caption == "The first post"


def _dead_letters_in_full(service: Service) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(v) for _k, v in messages_on(service.bootstrap, service.topics.dead_letters)]
