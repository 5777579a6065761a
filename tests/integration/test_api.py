"""The HTTP API against a real broker and a real store: every endpoint, auth, and bad input kept off Kafka.

These tests run the API alone (no command handler): a command's results never arrive, so publish and
retry answer 202, and the post's state is written to the store from events, as the projector would.
The answers with results (200) are in test_api_end_to_end.py, against the whole service.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import socket
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from sqlalchemy.exc import OperationalError

from projections.decide import decide
from projections.fold import TAKEN_OUT
from projections.store import SQLITE_BUSY_TIMEOUT
from publishers import redact
from schemas.commands import (
    FACEBOOK_TEXT_LIMIT,
    ForceRepublishRequested,
    PostContent,
    PublishRequested,
    ResolveAttemptRequested,
    RetryRequested,
    fingerprint,
)
from schemas.common import ErrorKind, not_connected
from schemas.envelope import decode_command
from schemas.events import (
    AttemptOutcomeUnknown,
    CommandDecided,
    Event,
    LegacyInsightsImported,
    PlatformError,
    PlatformResult,
    PostSubmitted,
    PublishAttempted,
)
from schemas.ids import new_id
from smartretry import api as api_module
from smartretry import metrics as metrics_module
from smartretry.api import ApiServer, create_app, serve, serve_in_thread
from smartretry.body_limit import MAX_BODY_BYTES
from smartretry.bootstrap import Stores, open_stores
from smartretry.credentials import CredentialStore
from smartretry.metrics import ServiceMetrics
from smartretry.settings import Settings
from streams.broker import free_port
from streams.kafka import producer
from streams.projector import DELIVERY_WAIT
from streams.topics import Topics
from tests.unit.test_fold import History

pytestmark = pytest.mark.integration

API_KEY = "test-api-key-5d1e"
AT = datetime(2025, 11, 17, 10, 10, 13, 151000, tzinfo=UTC)
SPACE_URL = "https://cdn.example.com/autumn sale.jpg"
FIXED_URL = "https://cdn.example.com/autumn-sale.jpg"
FB_ERROR = "Facebook photo upload failed: 400 - Missing or invalid image file"


@dataclass
class RunningApi:
    client: httpx.Client
    anonymous: httpx.Client
    settings: Settings
    stores: Stores
    bootstrap: str
    topics: Topics
    server: ApiServer
    producer: Producer

    @property
    def url(self) -> str:
        return self.server.url


def api_settings(bootstrap: str, topics: Topics, database_url: str, **overrides: object) -> Settings:
    return Settings(KAFKA_BOOTSTRAP_SERVERS=bootstrap, topic_prefix=topics.prefix, database_url=database_url,
                    api_key=API_KEY, api_wait_seconds=0.3, **overrides)  # type: ignore[arg-type]


@pytest.fixture(name="api")
def api_fixture(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[RunningApi]:
    """The API on a free port, over a fresh SQLite store and this test's own topics."""
    settings = api_settings(kafka_bootstrap, topics, f"sqlite:///{tmp_path}/projection.db")
    stores = open_stores(settings)
    sync_producer = producer(kafka_bootstrap)
    server = serve_in_thread(create_app(settings, stores, sync_producer), "127.0.0.1", free_port())
    client = httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=10)
    anonymous = httpx.Client(base_url=server.url, timeout=10)
    try:
        yield RunningApi(client, anonymous, settings, stores, kafka_bootstrap, topics, server, sync_producer)
    finally:
        client.close()
        anonymous.close()
        server.stop()
        sync_producer.flush(5)
        stores.engine.dispose()


LEADERLESS = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT, KafkaError._TRANSPORT}


def end_offset(reader: Consumer, topic: str, partition: int) -> int:
    """The partition's high watermark; a topic created a moment ago may still be electing its leaders."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return int(reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
        except KafkaException as exc:
            if time.monotonic() > deadline or exc.args[0].code() not in LEADERLESS:
                raise
            time.sleep(0.1)


def messages_on(bootstrap: str, topic: str) -> list[tuple[str, bytes]]:
    """Every (key, value) on `topic`, read from the beginning up to its end right now."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                       "enable.auto.commit": False})
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: end_offset(reader, topic, p) for p in partitions}
        wanted = {p for p, end in ends.items() if end > 0}
        if not wanted:
            return []
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in wanted])
        found: list[tuple[str, bytes]] = []
        done: set[int] = set()
        while done != wanted:
            message = reader.poll(5)
            assert message is not None, f"timed out reading {topic}"
            if message.error():
                continue
            found.append(((message.key() or b"").decode(), message.value() or b""))
            if message.offset() >= ends[message.partition()] - 1:
                done.add(message.partition())
        return found
    finally:
        reader.close()


def test_a_retry_the_handler_found_nothing_to_publish_for_is_told_409_not_a_success(api: RunningApi) -> None:
    # Two retries sent at the same moment: both found Facebook failed; the other one published it, so the handler
    # decided this one publishes nothing. Answered as a retry sent a moment later is, never as if it published.
    add_account(api)
    store_post(api, "post-1")
    published = overtaken_retry("post-1", "mine-1", "Nothing to retry: Facebook and Instagram already succeeded")
    front = api.server.server.config.app.state.front
    front.on_accepted = lambda command: store_events(api, published)

    answer = api.client.post("/posts/post-1/retry", json={"command_id": "mine-1"})
    again = api.client.post("/posts/post-1/retry", json={"command_id": "mine-1"})

    for sent in (answer, again):
        assert sent.status_code == 409, sent.text
        assert sent.json()["detail"].startswith("Nothing to retry: Facebook and Instagram already succeeded")
    # Read back by its command id (what the CLI does after a 202): refused too, with the same reason.
    command = api.client.get("/posts/post-1", params={"command_id": "mine-1"}).json()["command"]
    assert command["settled"] is True
    assert command["refused"] == again.json()["detail"]
    # With no answer of its own: the post's results are the other retry's, never this one's success.
    assert command["response"] is None
    assert api.client.get("/posts/post-1", params={"command_id": "other-1"}).json()["command"]["refused"] is None


def overtaken_retry(post_id: str, command_id: str, note: str) -> list[Event]:
    """Another retry of `post_id` published its failed Facebook first; then the handler decided `command_id`, a retry
    sent at the same moment, to publish nothing (`note`)."""
    return [
        CommandDecided(event_id="other-d", post_id=post_id, occurred_at=AT, command_id="other-1",
                       command_type="RetryRequested", platforms=("facebook",), is_retry=True),
        PublishAttempted(event_id="other-a", post_id=post_id, occurred_at=AT, platform="facebook",
                         attempt_id="other-fb", attempt_number=2, command_id="other-1", is_retry=True),
        PlatformResult(event_id="other-r", post_id=post_id, occurred_at=AT, platform="facebook",
                       attempt_id="other-fb", success=True, platform_post_id="747917475065823_9"),
        CommandDecided(event_id=f"{command_id}-d", post_id=post_id, occurred_at=AT, command_id=command_id,
                       command_type="RetryRequested", platforms=(), is_retry=True,
                       skipped={"facebook": "already succeeded", "instagram": "already succeeded"}, note=note),
    ]


def seed_events(post_id: str, facebook_ok: bool, instagram_ok: bool = True) -> list[Event]:
    """The seed's first attempt: both platforms, Instagram published; Facebook as given."""
    content = PostContent(caption="Autumn sale starts today", image_url=SPACE_URL)
    results: list[Event] = [
        PlatformResult(event_id=f"{post_id}-r-ig", post_id=post_id, occurred_at=AT, platform="instagram",
                       attempt_id=f"{post_id}-ig", success=True, platform_post_id="18107758234627017",
                       permalink="https://www.instagram.com/p/DRJ1nlKDgY9/") if instagram_ok else
        PlatformResult(event_id=f"{post_id}-r-ig", post_id=post_id, occurred_at=AT, platform="instagram",
                       attempt_id=f"{post_id}-ig", success=False,
                       error=PlatformError(kind=ErrorKind.AUTH, message="Instagram token expired")),
        PlatformResult(event_id=f"{post_id}-r-fb", post_id=post_id, occurred_at=AT, platform="facebook",
                       attempt_id=f"{post_id}-fb", success=True,
                       platform_post_id="747917475065823_122104567890123") if facebook_ok else
        PlatformResult(event_id=f"{post_id}-r-fb", post_id=post_id, occurred_at=AT, platform="facebook",
                       attempt_id=f"{post_id}-fb", success=False,
                       error=PlatformError(kind=ErrorKind.INVALID_MEDIA, code=324, http_status=400, message=FB_ERROR)),
    ]
    return [
        PostSubmitted(event_id=f"{post_id}-s", post_id=post_id, occurred_at=AT, command_id=f"{post_id}-c1",
                      publish_target="both", content=content, account="acme"),
        CommandDecided(event_id=f"{post_id}-d", post_id=post_id, occurred_at=AT, command_id=f"{post_id}-c1",
                       command_type="PublishRequested", platforms=("facebook", "instagram"),
                       note="Publishing to both Facebook and Instagram..."),
        PublishAttempted(event_id=f"{post_id}-a-fb", post_id=post_id, occurred_at=AT, platform="facebook",
                         attempt_id=f"{post_id}-fb", attempt_number=1, command_id=f"{post_id}-c1",
                         reason="first publish"),
        PublishAttempted(event_id=f"{post_id}-a-ig", post_id=post_id, occurred_at=AT, platform="instagram",
                         attempt_id=f"{post_id}-ig", attempt_number=1, command_id=f"{post_id}-c1",
                         reason="first publish"),
        *results,
    ]


_offsets: dict[str, int] = {}


def store_post(api: RunningApi, post_id: str, facebook_ok: bool = False, instagram_ok: bool = True) -> None:
    """Writes a post into the projection as the projector would have folded its events."""
    store_events(api, seed_events(post_id, facebook_ok, instagram_ok))


def store_events(api: RunningApi, events: list[Event]) -> None:
    """Applies `events` to the projection at partition 0's next offsets, as the projector would."""
    start = _offsets.get(api.topics.prefix, 0)
    _offsets[api.topics.prefix] = start + len(events)
    api.stores.projection.apply_batch(api.topics.post_events, 0, list(enumerate(events, start)))


def assert_nothing_on_commands(api: RunningApi) -> None:
    assert messages_on(api.bootstrap, api.topics.commands) == []


def publish_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {"content": {"caption": "Autumn sale starts today", "image_url": SPACE_URL},
                               "publish_target": "both", "account": "acme"}
    body.update(overrides)
    return body


def add_account(api: RunningApi) -> None:
    api.stores.credentials.set_token("acme", "acme-user-token-0001", "747917475065823", "17841400000000000")


# ------------------------------------------------------------------------------------------- health and auth


def test_health_needs_no_key_and_readiness_reports_broker_and_database(api: RunningApi) -> None:
    assert api.anonymous.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "database": "ok", "broker": "ok"}


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/posts"), ("POST", "/posts/p1/retry"), ("POST", "/posts/p1/republish"), ("POST", "/posts/p1/resolve"),
    ("GET", "/posts/p1"),
    ("GET", "/posts"), ("PUT", "/accounts/acme/token"), ("GET", "/accounts"), ("GET", "/readyz"),
    ("GET", "/metrics"),
])
def test_every_endpoint_but_health_needs_the_api_key(api: RunningApi, method: str, path: str) -> None:
    body = {"token": "secret-token-123"} if method == "PUT" else publish_body()
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        answer = api.anonymous.request(method, path, headers=headers, json=body)
        assert answer.status_code == 401, (headers, answer.text)
        assert "API key" in answer.json()["detail"]
    assert_nothing_on_commands(api)


def raw_request(api: RunningApi, head: str, chunks: list[bytes] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Sends `head` (request line and headers) over a socket of its own, then `chunks` as a chunked body (as much
    of it as the server takes before it answers); the answer's status, headers and body. Within 5 s: a server
    that waits for a body never sent times out."""
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        with contextlib.suppress(OSError):  # the server answered and closed before the body was all sent
            for chunk in chunks or ():
                conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            if chunks is not None:
                conn.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            received = conn.recv(65536)
            assert received, answer
            answer += received
        top, _, body = answer.partition(b"\r\n\r\n")
        status_line, *lines = top.decode().split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        while len(body) < int(headers.get("content-length", "0")):
            received = conn.recv(65536)
            assert received, body
            body += received
    return int(status_line.split()[1]), headers, body


def test_a_body_is_refused_unread_without_the_key_and_past_the_size_limit_with_it(api: RunningApi) -> None:
    huge = 300 * 1024 * 1024
    # Only headers are sent: a server that waited for the body would never answer.
    status, headers, body = raw_request(api, f"POST /posts HTTP/1.1\nHost: x\nContent-Type: application/json\n"
                                             f"Content-Length: {huge}\n")
    assert status == 401 and "API key" in json.loads(body)["detail"] and headers["www-authenticate"] == "Bearer"
    status, headers, body = raw_request(api, "PUT /accounts/acme/token HTTP/1.1\nHost: x\n"
                                             "Transfer-Encoding: chunked\n", [b"x" * 65536] * 4)
    assert status == 401
    # With the key: a length above the limit is refused at once, and a body sent without one once it passes it.
    for path in ("/posts", "/posts/post-1/retry", "/ui/login"):
        status, headers, body = raw_request(api, f"POST {path} HTTP/1.1\nHost: x\nX-API-Key: {API_KEY}\n"
                                                 f"Content-Length: {huge}\n")
        assert status == 413, (path, body)
        assert json.loads(body)["detail"] == f"request body too large: at most {MAX_BODY_BYTES} bytes are taken"
        assert headers["connection"] == "close"
        status, headers, body = raw_request(api, f"POST {path} HTTP/1.1\nHost: x\nX-API-Key: {API_KEY}\n"
                                                 "Content-Type: application/json\nTransfer-Encoding: chunked\n",
                                            [b" " * 65536] * (MAX_BODY_BYTES // 65536 + 2))
        assert status == 413, (path, body)
        assert json.loads(body)["detail"] == f"request body too large: at most {MAX_BODY_BYTES} bytes are taken"
    assert_nothing_on_commands(api)


def test_the_largest_valid_publish_is_well_within_the_body_limit(api: RunningApi) -> None:
    add_account(api)
    # Facebook's longest caption, every character sent as a JSON escape pair: the most a valid publish can weigh.
    caption = "\N{GRINNING FACE}" * FACEBOOK_TEXT_LIMIT
    body = json.dumps(publish_body(content={"caption": caption, "image_url": FIXED_URL}, publish_target="facebook"),
                      ensure_ascii=True).encode()
    assert MAX_BODY_BYTES * 0.7 < len(body) < MAX_BODY_BYTES
    answer = api.client.post("/posts", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 202, answer.text[:500]


def test_a_bearer_token_is_accepted_as_the_api_key(api: RunningApi) -> None:
    answer = api.anonymous.get("/posts", headers={"Authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 200


def test_openapi_document_describes_the_endpoints(api: RunningApi) -> None:
    paths = api.anonymous.get("/openapi.json").json()["paths"]
    for path in ("/posts", "/posts/{post_id}", "/posts/{post_id}/retry", "/posts/{post_id}/republish",
                 "/accounts/{account}/token", "/healthz", "/readyz", "/metrics"):
        assert path in paths


def test_openapi_document_says_how_to_send_the_api_key(api: RunningApi) -> None:
    # What /docs' "Authorize" offers: without it, every "Try it out" is refused 401.
    document = api.anonymous.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": "The service's API key (SMARTRETRY_API_KEY)"}
    assert schemes["Bearer"]["scheme"] == "bearer"
    assert {"ApiKey": []} in document["paths"]["/posts/{post_id}/retry"]["post"]["security"]
    assert "security" not in document["paths"]["/healthz"]["get"]
    # Sent either way, the key is taken; a wrong one is not.
    assert api.anonymous.get("/posts", headers={"X-API-Key": API_KEY}).status_code == 200
    assert api.anonymous.get("/posts", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert api.anonymous.get("/posts", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.anonymous.get("/posts", headers={"Authorization": f"Basic {API_KEY}"}).status_code == 401


# ------------------------------------------------------------------------------------------- publish


def test_a_caption_with_a_control_character_is_refused_and_tabs_and_line_breaks_are_not(api: RunningApi) -> None:
    add_account(api)
    store_post(api, "post-1")
    refused = api.client.post("/posts/post-1/retry", json={"content": {"caption": "Sale \x07today"}})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == [{"loc": ["body", "content", "caption"], "type": "value_error",
                                         "msg": "holds the control character U+0007, which no platform shows: "
                                                "take it out"}]
    store_post(api, "post-2", facebook_ok=True)
    reason = api.client.post("/posts/post-2/republish", json={"reason": "printed \x1b[31m red"})
    assert reason.status_code == 422 and reason.json()["detail"][0]["loc"] == ["body", "reason"]
    assert_nothing_on_commands(api)
    lines = publish_body(content={"caption": "Autumn sale\r\n\tstarts today", "image_url": FIXED_URL})
    assert api.client.post("/posts", json=lines).status_code == 202


def test_publish_puts_one_command_on_kafka_and_answers_202_with_where_to_look(api: RunningApi) -> None:
    add_account(api)
    answer = api.client.post("/posts", json=publish_body(command_id="cmd-abc"))
    assert answer.status_code == 202
    document = answer.json()
    post_id = document["post"]["id"]
    assert document["pending"] is True
    assert document["success"] is False
    assert document["post"]["status"] == "publishing"
    assert document["location"] == f"/posts/{post_id}" == answer.headers["Location"]
    assert document["command_id"] == "cmd-abc"

    [(key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert key == post_id
    assert isinstance(command, PublishRequested)
    assert (command.post_id, command.command_id, command.publish_target, command.account) == (
        post_id, "cmd-abc", "both", "acme")
    assert command.content.image_url == SPACE_URL
    assert len(post_id) == 26  # a ULID, as the seed's post ids


def test_a_command_kafka_does_not_take_is_503_saying_how_to_send_it_again_safely(
        topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_module, "SEND_TIMEOUT_S", 1.0)
    settings = api_settings("127.0.0.1:1", topics, f"sqlite:///{tmp_path}/projection.db")
    stores = open_stores(settings)
    stores.credentials.set_token("acme", "acme-user-token-0001", "747917475065823", "17841400000000000")
    nowhere = producer("127.0.0.1:1")  # no broker answers there
    server = serve_in_thread(create_app(settings, stores, nowhere), "127.0.0.1", free_port())
    try:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=30) as client:
            answer = client.post("/posts", json=publish_body(command_id="cmd-unsent", post_id="post-unsent"))
    finally:
        server.stop()
        stores.engine.dispose()
    assert answer.status_code == 503
    detail = answer.json()["detail"]
    assert "Kafka did not take command cmd-unsent for post post-unsent" in detail
    assert "it may still arrive and be carried out" in detail
    assert 'Send the same request again with "command_id": "cmd-unsent" and "post_id": "post-unsent"' in detail


def test_a_publish_resent_with_its_command_id_names_the_same_post_so_it_is_published_once(api: RunningApi) -> None:
    add_account(api)
    # A client that timed out waiting and sent the request again, naming no post either time.
    first = api.client.post("/posts", json=publish_body(command_id="cmd-resent"))
    again = api.client.post("/posts", json=publish_body(command_id="cmd-resent"))
    assert first.status_code == again.status_code == 202
    assert first.json()["post"]["id"] == again.json()["post"]["id"]
    sent = [decode_command(value) for _key, value in messages_on(api.bootstrap, api.topics.commands)]
    # One post and one command (the handler does a command id once per post), not two posts.
    assert {(c.post_id, c.command_id) for c in sent} == {(first.json()["post"]["id"], "cmd-resent")}
    other = api.client.post("/posts", json=publish_body(command_id="cmd-other"))
    assert other.json()["post"]["id"] != first.json()["post"]["id"]


def test_of_two_requests_naming_one_new_post_at_once_the_one_the_handler_refused_is_told_409(
        api: RunningApi) -> None:
    # Both found no post and went to Kafka; the handler created the post from the other request first and
    # refuses this one: its content was never published, and the answer must say so, not "publishing".
    add_account(api)
    front = api.server.server.config.app.state.front
    front.on_accepted = lambda command: store_events(api, seed_events("race-1", facebook_ok=True))
    answer = api.client.post("/posts", json=publish_body(post_id="race-1", command_id="race-1-mine"))
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"].startswith("post race-1 already exists: another request created it first, so "
                                              "this one (command race-1-mine) was not published")


def test_a_request_whose_command_id_another_body_took_meanwhile_is_told_409_not_the_others_results(
        api: RunningApi) -> None:
    # A retry sent with a fixed image URL under the command id of one sent a moment before with another URL, which
    # the post did not show yet. The handler decided and published the first; it refuses this one.
    add_account(api)
    store_post(api, "post-1")
    earlier = RetryRequested(command_id="fix-1", post_id="post-1", requested_at=AT,
                             content=PostContent(caption="Autumn sale starts today",
                                                 image_url="https://cdn.example.com/autumn-sale-v2.jpg"))
    published = [
        CommandDecided(event_id="fix-1-d", post_id="post-1", occurred_at=AT, command_id="fix-1",
                       command_type="RetryRequested", platforms=("facebook",), is_retry=True,
                       content=earlier.content, fingerprint=fingerprint(earlier)),
        PublishAttempted(event_id="fix-1-a", post_id="post-1", occurred_at=AT, platform="facebook",
                         attempt_id="fix-1-fb", attempt_number=2, command_id="fix-1", is_retry=True),
        PlatformResult(event_id="fix-1-r", post_id="post-1", occurred_at=AT, platform="facebook",
                       attempt_id="fix-1-fb", success=True, platform_post_id="747917475065823_9"),
    ]
    front = api.server.server.config.app.state.front
    front.on_accepted = lambda command: store_events(api, published)
    answer = api.client.post("/posts/post-1/retry", json={"command_id": "fix-1",
                                                          "content": {"image_url": FIXED_URL}})
    assert answer.status_code == 409, answer.text
    assert "command fix-1 was already used for another command" in answer.json()["detail"]


def test_publish_keeps_a_post_id_given_by_the_caller(api: RunningApi) -> None:
    add_account(api)
    answer = api.client.post("/posts", json=publish_body(post_id="upstream-42", publish_target="facebook",
                                                         content={"caption": "Hello", "link": "https://example.com"}))
    assert answer.status_code == 202
    assert answer.json()["post"]["id"] == "upstream-42"
    [(key, _value)] = messages_on(api.bootstrap, api.topics.commands)
    assert key == "upstream-42"


@pytest.mark.parametrize(("body", "where", "words"), [
    (publish_body(content={"caption": "no image"}), ["body", "content"], "Instagram needs content.image_url"),
    (publish_body(publish_target="myspace"), ["body", "publish_target"], "facebook"),
    (publish_body(content={"caption": "x", "image_url": "ftp://cdn/x.jpg"}), ["body", "content", "image_url"],
     "http(s) URL"),
    (publish_body(content={"caption": "x", "image_url": "https:// /x.jpg"}), ["body", "content", "image_url"],
     "must name a host"),
    (publish_body(content={"caption": "x", "image_url": "https://cdn.example.com/x.jpg\nmore"}),
     ["body", "content", "image_url"], "must be one line"),
    (publish_body(content={"caption": "x", "image_url": "https://cdn.example.com:99999/x.jpg"}),
     ["body", "content", "image_url"], "invalid port"),
    (publish_body(content={"caption": "x", "image_url": "https://cdn.example.com:0/x.jpg"}),
     ["body", "content", "image_url"], "invalid port"),
    (publish_body(content={"caption": "x", "image_url": "https://[::1/x.jpg"}), ["body", "content", "image_url"],
     "http(s) URL"),
    (publish_body(content={"caption": "x", "image_url": SPACE_URL, "link": "https://example.com/a\tb"}),
     ["body", "content", "link"], "must be one line"),
    (publish_body(content={"caption": " ".join(f"#tag{n}" for n in range(31)), "image_url": SPACE_URL}),
     ["body", "content"], "Instagram captions take at most 30 hashtags; this one has 31"),
    (publish_body(content={"caption": "x", "image_url": SPACE_URL, "link": "https://example.com"},
                  publish_target="instagram"), ["body", "content"], "Instagram posts carry no link"),
    (publish_body(content={"caption": "", "link": None}, publish_target="facebook"), ["body", "content"],
     "content is empty"),
    (publish_body(post_id="../etc/passwd"), ["body", "post_id"], "pattern"),
    (publish_body(account="acme/../x"), ["body", "account"], "pattern"),
    (publish_body(surprise=True), ["body", "surprise"], "Extra inputs"),
    ({"publish_target": "both"}, ["body", "content"], "required"),
    (publish_body(account="nobody"), ["body", "account"], "unknown account 'nobody'"),
])
def test_a_bad_publish_is_422_saying_what_is_wrong_and_nothing_reaches_kafka(
        api: RunningApi, body: dict[str, object], where: list[str], words: str) -> None:
    add_account(api)
    answer = api.client.post("/posts", json=body)
    assert answer.status_code == 422, answer.text
    problems = answer.json()["detail"]
    assert any(p["loc"][:len(where)] == where and words in p["msg"] for p in problems), problems
    assert_nothing_on_commands(api)


def test_a_publish_for_an_account_whose_token_was_stored_under_another_secret_key_is_422(api: RunningApi) -> None:
    other = CredentialStore(api.stores.engine, "another-secret-key-2c1f")
    other.set_token("moved", "moved-user-token-0002", "747917475065823", "17841400000000000")
    answer = api.client.post("/posts", json=publish_body(account="moved"))
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["loc"] == ["body", "account"]
    assert "stored under another secret key: store it again with PUT /accounts/moved/token" in problem["msg"]
    assert_nothing_on_commands(api)


def test_an_instagram_post_made_with_a_link_before_links_were_refused_can_still_be_retried(api: RunningApi) -> None:
    add_account(api)
    content = PostContent(caption="Autumn sale starts today", image_url=SPACE_URL, link="https://shop.example.com")
    store_events(api, [
        PostSubmitted(event_id="ig-link-s", post_id="ig-link", occurred_at=AT, command_id="ig-link-c1",
                      publish_target="instagram", content=content, account="acme"),
        CommandDecided(event_id="ig-link-d", post_id="ig-link", occurred_at=AT, command_id="ig-link-c1",
                       command_type="PublishRequested", platforms=("instagram",)),
        PublishAttempted(event_id="ig-link-a", post_id="ig-link", occurred_at=AT, platform="instagram",
                         attempt_id="ig-link-ig", attempt_number=1, command_id="ig-link-c1"),
        PlatformResult(event_id="ig-link-r", post_id="ig-link", occurred_at=AT, platform="instagram",
                       attempt_id="ig-link-ig", success=False,
                       error=PlatformError(kind=ErrorKind.INVALID_MEDIA, message="Instagram media upload failed")),
    ])
    answer = api.client.post("/posts/ig-link/retry", json={"content": {"image_url": FIXED_URL}})
    assert answer.status_code == 202, answer.text
    # A link a correction would add is refused, as on a new Instagram post; so on a post for both platforms whose
    # Facebook went out, the retry publishing Instagram alone.
    added = api.client.post("/posts/ig-link/retry", json={"content": {"link": "https://shop.example.com/new"}})
    assert added.status_code == 422 and "Instagram posts carry no link" in added.text
    store_post(api, "fb-done", facebook_ok=True, instagram_ok=False)
    added = api.client.post("/posts/fb-done/retry", json={"content": {"link": "https://shop.example.com/new"}})
    assert added.status_code == 422 and "this retry publishes Instagram only" in added.text


def test_a_retry_publishing_facebook_alone_is_held_to_facebooks_limits_not_instagrams(api: RunningApi) -> None:
    add_account(api)
    store_post(api, "post-1")  # Instagram went out; Facebook failed on its image
    long_caption = "Autumn sale " + "#autumn " * 40  # over Instagram's 30 hashtags, fine on Facebook
    answer = api.client.post("/posts/post-1/retry", json={"content": {"image_url": FIXED_URL, "caption": long_caption}})
    assert answer.status_code == 202, answer.text
    store_post(api, "post-2", facebook_ok=False, instagram_ok=False)  # both failed: Instagram is published too
    answer = api.client.post("/posts/post-2/retry", json={"content": {"image_url": FIXED_URL, "caption": long_caption}})
    assert answer.status_code == 422 and "at most 30 hashtags" in answer.text


def test_a_publish_to_a_platform_the_account_has_not_connected_is_422_saying_what_to_set(api: RunningApi) -> None:
    api.stores.credentials.set_token("page-only", "page-only-user-token-0003", "747917475065823", None)
    answer = api.client.post("/posts", json=publish_body(account="page-only"))
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["loc"] == ["body", "account"]
    assert problem["msg"] == ("account 'page-only' has no Instagram business account connected: set its ig_user_id "
                              "with PUT /accounts/page-only/token")
    assert_nothing_on_commands(api)
    # What it has connected, it publishes to; a retry naming it for a post that targets both is refused alike.
    assert api.client.post("/posts", json=publish_body(account="page-only",
                                                       publish_target="facebook")).status_code == 202
    # An imported post without an account, retried with one that lacks what it targets.
    store_events(api, History(post_id="imported-1").legacy(
        {"insights": {}, "status": "failed", "error_message": "token expired"}).events)
    answer = api.client.post("/posts/imported-1/retry", json={"account": "page-only"})
    assert answer.status_code == 422 and "no Instagram business account" in answer.text


def test_a_token_stored_by_another_process_is_refused_in_a_caption(
        api: RunningApi, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another account's token, stored by another process (the CLI, another replica) and never used here,
    # pasted into a post of this one: the store says it is a token, whatever this process has seen.
    add_account(api)
    api.stores.credentials.stored_tokens()
    monkeypatch.setattr(redact, "_known", OrderedDict())
    monkeypatch.setattr(redact, "_longest_first", ())
    token = "stored-elsewhere-token-" + "7f3e" * 4
    CredentialStore(api.stores.engine, api.settings.secret_key.get_secret_value()).set_token(
        "other-shop", token, "111222333", None)
    monkeypatch.setattr(redact, "_known", OrderedDict())
    monkeypatch.setattr(redact, "_longest_first", ())

    answer = api.client.post("/posts", json=publish_body(
        content={"caption": f"Autumn sale, token {token}", "image_url": FIXED_URL}))
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "content", "caption"]
    assert token not in answer.text
    assert_nothing_on_commands(api)


def test_ids_and_notes_carrying_a_token_are_refused_like_content(api: RunningApi) -> None:
    # Kept in the post's events and shown in every log line about the post: a token there is refused too.
    add_account(api)
    stored = "acme-user-token-0001"
    meta_shaped = "EAA" + "Gm0dEl" * 8
    store_post(api, "p-known")
    refused = [
        ("/posts", publish_body(post_id=f"post-{stored}"), ["body", "post_id"]),
        ("/posts", publish_body(command_id=meta_shaped), ["body", "command_id"]),
        ("/posts/p-known/retry", {"command_id": f"retry-{stored}"}, ["body", "command_id"]),
        ("/posts/p-known/republish", {"reason": f"the token is {stored}"}, ["body", "reason"]),
        ("/posts/p-known/resolve", {"platform": "facebook", "published": False, "note": f"used {meta_shaped}"},
         ["body", "note"]),
    ]
    for path, body, loc in refused:
        answer = api.client.post(path, json=body)
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["detail"][0]["loc"] == loc
        assert "contains an access token" in answer.text
        assert stored not in answer.text and meta_shaped not in answer.text
    assert_nothing_on_commands(api)


def test_a_token_in_an_addresss_password_or_port_is_never_repeated_by_the_answer_refusing_it(api: RunningApi) -> None:
    add_account(api)
    stored = "acme-user-token-0001"
    meta_shaped = "EAA" + "Gm0dEl" * 8
    store_post(api, "p-known")
    for token, bad_port in ((stored, f"https://x:{stored}@cdn.example.com:99999/a.jpg"),
                            (meta_shaped, f"https://x:{meta_shaped}@cdn.example.com:99999/a.jpg"),
                            (stored, f"https://cdn.example.com:{stored}/a.jpg")):
        for path, body in (("/posts", publish_body(content={"caption": "Autumn sale", "image_url": bad_port})),
                           ("/posts/p-known/retry", {"content": {"image_url": bad_port}}),
                           ("/posts/p-known/republish", {"reason": "again", "content": {"image_url": bad_port}})):
            answer = api.client.post(path, json=body)
            assert answer.status_code == 422, (path, answer.text)
            assert token not in answer.text, path
            assert "has an invalid port: what follows 'cdn.example.com' and a colon is no port" in answer.text, path
    assert_nothing_on_commands(api)


def test_a_posts_own_address_taken_in_before_the_checks_does_not_stop_a_retry_that_corrects_another_field(
        api: RunningApi) -> None:
    # A link with a zero-width space in it, taken in by an earlier version: the retry that fixes the image goes out
    # with it as it is (the page could not correct the link), while a correction bringing such a link is refused.
    add_account(api)
    events = seed_events("p-old-link", facebook_ok=False)
    odd_link = "https://shop.example.com/sale\u200b"
    submitted = events[0]
    assert isinstance(submitted, PostSubmitted) and submitted.content is not None
    events[0] = submitted.model_copy(update={"content": submitted.content.model_copy(update={"link": odd_link})})
    store_events(api, events)

    fixed = api.client.post("/posts/p-old-link/retry", json={"content": {"image_url": FIXED_URL}})
    assert fixed.status_code in (200, 202), fixed.text
    brought = api.client.post("/posts/p-old-link/retry", json={"content": {"link": odd_link + "x"}})
    assert brought.status_code == 422 and "invisible formatting character" in brought.text


def test_a_forced_republish_needs_a_reason_that_says_something(api: RunningApi) -> None:
    store_post(api, "p-known")
    for reason in ("", "   ", "\n\t", "\u200b\u00a0\t"):
        answer = api.client.post("/posts/p-known/republish", json={"reason": reason})
        assert answer.status_code == 422, reason
        assert answer.json()["detail"][0]["loc"] == ["body", "reason"]
        assert answer.json()["detail"][0]["msg"] == "must say why: blanks and invisible characters alone say nothing"
    assert_nothing_on_commands(api)


def test_an_account_named_by_an_access_token_is_refused_without_repeating_it(api: RunningApi) -> None:
    # A token pasted where the account's name goes: kept in the clear as its id, and carried by every command.
    add_account(api)
    stored = "acme-user-token-0001"
    meta_shaped = "EAA" + "Gm0dEl" * 8
    plain = "fresh-user-token-" + "8b2c" * 4
    refused = [
        ("PUT", f"/accounts/{stored}/token", {"token": "another-token-" + "1d" * 8}, ["path", "account"]),
        ("PUT", f"/accounts/{meta_shaped}/token", {"token": "another-token-" + "1d" * 8}, ["path", "account"]),
        ("PUT", f"/accounts/{plain}/token", {"token": plain}, ["path", "account"]),  # the token it stores
        ("POST", "/posts", publish_body(account=stored), ["body", "account"]),
        ("POST", "/posts", publish_body(account=meta_shaped), ["body", "account"]),
    ]
    store_post(api, "p-known")
    refused += [("POST", "/posts/p-known/retry", {"account": token}, ["body", "account"])
                for token in (stored, meta_shaped)]
    for method, path, body, loc in refused:
        answer = api.client.request(method, path, json=body)
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["detail"][0]["loc"] == loc
        assert "account contains an access token" in answer.text
        assert stored not in answer.text and meta_shaped not in answer.text and plain not in answer.text
    assert [a["account"] for a in api.client.get("/accounts").json()["accounts"]] == ["acme"]
    assert_nothing_on_commands(api)


def test_an_unknown_account_shaped_like_a_token_is_not_repeated_in_the_refusal(api: RunningApi) -> None:
    # Too short to be refused as a token, shaped enough to be scrubbed from logs: not echoed either.
    shaped = "EAA" + "Gm0dEl" * 4
    answer = api.client.post("/posts", json=publish_body(account=shaped))
    assert answer.status_code == 422
    [problem] = answer.json()["detail"]
    assert problem["loc"] == ["body", "account"] and problem["type"] == "unknown_account"
    assert shaped not in answer.text
    assert_nothing_on_commands(api)


def test_a_facebook_photo_whose_caption_and_link_together_are_too_long_is_422(api: RunningApi) -> None:
    add_account(api)
    long = {"caption": "x" * 63_190, "image_url": FIXED_URL, "link": "https://shop.example.com/autumn"}
    answer = api.client.post("/posts", json=publish_body(content=long, publish_target="facebook"))
    assert answer.status_code == 422 and "a photo's link after its caption included" in answer.text
    assert_nothing_on_commands(api)


def test_the_stored_tokens_follow_every_change_made_by_any_process(api: RunningApi) -> None:
    key = api.settings.secret_key.get_secret_value()
    here, elsewhere = CredentialStore(api.stores.engine, key), CredentialStore(api.stores.engine, key)
    first, second = "first-token-of-the-shop-" + "1a2b" * 3, "second-token-of-the-shop-" + "3c4d" * 3
    elsewhere.set_token("shop", first, "111222333", None)
    assert first in here.stored_tokens()
    # Replaced by another process (whatever its clock says): the next read here has it, and still the old
    # one, which may still work until it expires.
    elsewhere.set_token("shop", second, None, None)
    assert here.stored_tokens() == {first, second}
    assert here.get("shop").user_token.get_secret_value() == second
    # A token stored under another secret key cannot be read, and is left out rather than failing.
    CredentialStore(api.stores.engine, "another-secret-key-2c1f").set_token("moved", "moved-token-" + "9" * 12)
    assert here.stored_tokens() == {first, second}
    with api.stores.engine.connect() as conn:
        assert first not in repr(conn.exec_driver_sql("SELECT * FROM retired_tokens").all())
    # Kept no longer than a Meta user token lives: one retired over 60 days ago goes at the next change.
    with api.stores.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE retired_tokens SET retired_at = '2020-01-01 00:00:00.000000'")
    elsewhere.set_token("shop", second + "-renewed", None, None)
    assert here.stored_tokens() == {second, second + "-renewed"}


def test_a_page_token_the_service_obtained_is_refused_in_content_by_every_process(api: RunningApi) -> None:
    add_account(api)
    key = api.settings.secret_key.get_secret_value()
    # Not shaped like Meta's (those are caught by their shape): known only because the handler kept it.
    page_token = "plainPageTok-" + "8899aabbccddeeff"
    handler_side = CredentialStore(api.stores.engine, key)
    handler_side.remember_obtained("acme", page_token)
    handler_side.remember_obtained("acme", page_token)
    # Another process (the API, a restarted handler, the projector) knows it from the store.
    assert page_token in CredentialStore(api.stores.engine, key).stored_tokens()
    with api.stores.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT * FROM obtained_tokens").all()
    assert len(rows) == 1 and page_token not in repr(rows)  # once, and encrypted
    answer = api.client.post("/posts", json=publish_body(content={"caption": f"page tok {page_token} ok",
                                                                  "image_url": FIXED_URL}))
    assert answer.status_code == 422 and "access token" in answer.text and page_token not in answer.text
    assert_nothing_on_commands(api)


def test_a_body_that_is_not_json_is_422(api: RunningApi) -> None:
    answer = api.client.post("/posts", content=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    # JSON sent as plain text: the answer says what is wrong with it.
    plain = api.client.post("/posts", content=b'{"publish_target": "both"}', headers={"Content-Type": "text/plain"})
    assert plain.status_code == 422
    assert plain.json()["detail"] == [{"loc": ["body"], "type": "json_required",
                                       "msg": "the body must be JSON, sent with Content-Type: application/json"}]
    # JSON that is no object, sent as JSON: the answer says what is wrong with it.
    listed = httpx.post(f"{api.url}/posts", content=b"[]", headers={"X-API-Key": API_KEY,
                                                                    "Content-Type": "application/json"})
    assert listed.status_code == 422 and "JSON, sent with" not in listed.text
    # Sent without a Content-Type, or with one JSON's own type is not: not read as JSON, and said so.
    for headers in ({}, {"Content-Type": "text/json"}):
        unsaid = httpx.post(f"{api.url}/posts", content=b'{"publish_target": "both"}',
                            headers={"X-API-Key": API_KEY, **headers})
        assert unsaid.status_code == 422 and unsaid.json()["detail"][0]["type"] == "json_required", headers
    # JSON's own types, with parameters: read as JSON.
    typed = httpx.post(f"{api.url}/posts", content=b"[]", headers={"X-API-Key": API_KEY,
                                                                   "Content-Type": "application/json; charset=utf-8"})
    assert typed.status_code == 422 and "JSON, sent with" not in typed.text
    # No body at all: said so, not "Field required" as if a field of it were missing.
    for path in ("/posts", "/posts/post-1/republish"):
        empty = api.client.post(path)
        assert empty.status_code == 422
        assert empty.json()["detail"][0]["msg"].startswith("the body is missing: send a JSON object"), path
    assert_nothing_on_commands(api)


def test_publishing_an_existing_post_again_is_a_conflict(api: RunningApi) -> None:
    add_account(api)
    store_post(api, "post-1")
    answer = api.client.post("/posts", json=publish_body(post_id="post-1"))
    assert answer.status_code == 409
    assert "POST /posts/post-1/retry" in answer.json()["detail"]
    assert_nothing_on_commands(api)


# ------------------------------------------------------------------------------------------- read


def test_a_failed_post_reads_as_the_seed_documents_it_with_the_action_and_retry_preview(api: RunningApi) -> None:
    store_post(api, "post-1")
    document = api.client.get("/posts/post-1").json()
    assert document["status"] == "failed"
    assert document["error_message"] == f"facebook: {FB_ERROR}"
    assert document["insights"]["publish_results"] == [
        {"platform": "facebook", "success": False, "error": FB_ERROR},
        {"platform": "instagram", "success": True, "postId": "18107758234627017",
         "permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/"},
    ]
    assert document["insights"]["instagram_permalink"] == "https://www.instagram.com/p/DRJ1nlKDgY9/"
    assert document["needed_action"] == {"facebook": "fix the image URL"}
    assert document["retry_preview"] == "Note: Will only retry Facebook"
    assert document["links"] == {"instagram": "https://www.instagram.com/p/DRJ1nlKDgY9/"}
    assert [c["note"] for c in document["history"]] == ["Publishing to both Facebook and Instagram..."]
    assert document["retried"] is None
    # Times as the events and the insights document write them: UTC, milliseconds, "Z".
    times = [document["created_at"], document["updated_at"], *(c["decided_at"] for c in document["history"])]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", t) for t in times), times


def test_an_unknown_post_is_404_and_an_id_with_path_characters_is_422(api: RunningApi) -> None:
    assert api.client.get("/posts/nope").status_code == 404
    assert api.client.post("/posts/nope/retry").status_code == 404
    assert api.client.post("/posts/nope/republish", json={"reason": "testing"}).status_code == 404
    assert api.client.get("/posts/a%2Fb").status_code in (404, 422)
    assert api.client.get("/posts/..%5Cetc").status_code == 422


def test_an_answer_never_repeats_a_token_the_request_carried_in_an_id_or_a_field_name(api: RunningApi) -> None:
    token = "EAA" + "Bc1dE" * 12  # Meta's shape, built here so that no token is written down
    missing = api.client.get(f"/posts/{token}")
    assert missing.status_code == 404 and "not found" in missing.text and token not in missing.text
    unknown_field = api.client.post("/posts", json={"content": {"caption": "Sale"}, "publish_target": "facebook",
                                                    "account": "acct-1", token: 1})
    assert unknown_field.status_code == 422 and "extra" in unknown_field.text and token not in unknown_field.text
    assert api.client.get("/posts/-rf").status_code == 422
    assert_nothing_on_commands(api)


def test_posts_are_listed_and_filtered_by_status(api: RunningApi) -> None:
    store_post(api, "failed-1")
    store_post(api, "posted-1", facebook_ok=True)
    everything = api.client.get("/posts").json()["posts"]
    assert {p["id"] for p in everything} == {"failed-1", "posted-1"}
    failed = api.client.get("/posts", params={"status": "failed"}).json()["posts"]
    assert [(p["id"], p["status"], p["error_message"]) for p in failed] == [
        ("failed-1", "failed", f"facebook: {FB_ERROR}")]
    posted = api.client.get("/posts", params={"status": "posted"}).json()["posts"]
    assert [(p["id"], p["post_url"]) for p in posted] == [
        ("posted-1", "https://www.facebook.com/747917475065823_122104567890123")]
    assert api.client.get("/posts", params={"status": "lost"}).status_code == 422
    assert api.client.get("/posts", params={"limit": 0}).status_code == 422
    assert api.client.get("/posts", params={"offset": 10**19}).status_code == 422


def test_posts_are_listed_page_by_page_with_the_cursor_each_page_gives(api: RunningApi) -> None:
    for i in range(5):
        store_post(api, f"paged-{i}")
    pages: list[list[str]] = []
    answer = api.client.get("/posts", params={"limit": 2}).json()
    while True:
        pages.append([p["id"] for p in answer["posts"]])
        if answer["next_cursor"] is None:
            break
        answer = api.client.get("/posts", params={"limit": 2, "cursor": answer["next_cursor"]}).json()
    # Updated at the same moment, so in the order of their ids; the last page says there is no other.
    assert pages == [["paged-0", "paged-1"], ["paged-2", "paged-3"], ["paged-4"]]
    assert api.client.get("/posts", params={"limit": 5}).json()["next_cursor"] is None

    # A post id with a line break after it is no id, in a cursor either.
    broken = base64.urlsafe_b64encode(b'["2025-11-17T10:10:13+00:00","paged-1\\n"]').decode()
    for bad in ("nonsense", "e30", "W10", '["2025-11-17T10:10:13", "paged-1"]', "x" * 401, broken):
        refused = api.client.get("/posts", params={"cursor": bad})
        assert refused.status_code == 422, bad
        assert refused.json()["detail"][0]["loc"] == ["query", "cursor"]


# ------------------------------------------------------------------------------------------- retry, republish


def test_retry_with_a_fixed_image_url_puts_a_retry_command_on_kafka(api: RunningApi) -> None:
    store_post(api, "post-1")
    answer = api.client.post("/posts/post-1/retry", json={"content": {"image_url": FIXED_URL}})
    assert answer.status_code == 202
    assert answer.json()["location"] == "/posts/post-1"
    # Being published again, as the post page shows it; the failure stays until the new result.
    assert answer.json()["pending"] is True
    assert answer.json()["post"]["status"] == "publishing"
    assert answer.json()["post"]["error_message"] == f"facebook: {FB_ERROR}"
    assert answer.json()["results"]["facebook"]["success"] is False
    [(key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert key == "post-1"
    assert isinstance(command, RetryRequested)
    # The correction changes the image only; the caption is the post's own.
    assert command.content == PostContent(caption="Autumn sale starts today", image_url=FIXED_URL)


def store_limited_for_an_hour(api: RunningApi, post_id: str, wait: float | None = 3600.0,
                              at: datetime | None = None) -> None:
    """A post whose Facebook was refused just now for a rate limit that lifts in an hour (`wait`; None: the platform
    gave no wait, the service's own backoff): the service publishes it again then, and the post's next command runs
    after that. `at`: when (now)."""
    at = at or datetime.now(UTC)
    history = History(post_id=post_id, at=at)
    attempts = history.publish(target="facebook")
    history.events.append(PlatformResult(
        event_id="limited", post_id=post_id, occurred_at=at, platform="facebook",
        attempt_id=attempts["facebook"], success=False, error=PlatformError(
            kind=ErrorKind.RATE_LIMITED, code=32, http_status=400, retry_after_s=wait,
            message="Facebook photo upload failed: 400 - Page request limit reached")))
    store_events(api, history.events)


def test_a_forced_republish_while_the_service_will_retry_a_platform_itself_is_refused(api: RunningApi) -> None:
    # Queued behind that retry, it would post Facebook a second time once the retry went out.
    store_limited_for_an_hour(api, "post-limited")
    answer = api.client.post("/posts/post-limited/republish", json={"reason": "push it out now"})
    assert answer.status_code == 409
    assert answer.json()["detail"].startswith("Facebook is retried by the service itself at ")
    assert answer.json()["detail"].endswith("; wait for its result (GET /posts/post-limited), then republish if you "
                                            "still want it posted again")
    assert_nothing_on_commands(api)
    # A wait into another day (Instagram's publishing limit, a day at most) says which day.
    store_limited_for_an_hour(api, "post-limited-a-day", wait=23 * 3600.0)
    tomorrow = api.client.post("/posts/post-limited-a-day/republish", json={"reason": "push it out now"})
    due = datetime.now(UTC) + timedelta(hours=23)
    said = due.strftime("%Y-%m-%d %H:%M") if due.date() != datetime.now(UTC).date() else due.strftime("at %H:%M")
    assert tomorrow.status_code == 409 and said in tomorrow.json()["detail"], tomorrow.text


def test_a_retry_queued_behind_an_automatic_retry_that_waits_out_a_rate_limit_says_so(api: RunningApi) -> None:
    store_limited_for_an_hour(api, "post-limited")

    answer = api.client.post("/posts/post-limited/retry", json={"content": {"image_url": FIXED_URL}})

    # The post's commands run in order: this one waits for that retry, and the answer says so.
    assert answer.status_code == 202
    document = answer.json()
    assert document["pending"] is True and document["post"]["status"] == "failed"
    assert document["note"].startswith("queued behind the automatic retry of Facebook at ")
    assert "(the platform's own wait): handled after it" in document["note"]


def test_a_retry_queued_behind_a_platforms_wait_longer_than_the_apis_is_answered_without_waiting(
        api: RunningApi) -> None:
    # Facebook's automatic retry waits an hour: this retry cannot be decided within the API's wait (10 s here), so
    # the answer does not hold the caller for it.
    store_limited_for_an_hour(api, "post-limited")
    front = api.server.server.config.app.state.front
    front.settings = front.settings.model_copy(update={"api_wait_seconds": 10.0})

    sent = time.monotonic()
    answer = api.client.post("/posts/post-limited/retry", json={})

    assert answer.status_code == 202
    assert answer.json()["note"].startswith("queued behind the automatic retry of Facebook at ")
    assert time.monotonic() - sent < 5.0


def instagram_waits_an_hour(api: RunningApi, command: object, facebook_published: bool) -> None:
    """The handler's work on a publish, as the API would see it: Instagram refused for a rate limit that lifts in an
    hour; Facebook published, or its call still under way."""
    assert isinstance(command, PublishRequested)
    history = History(post_id=command.post_id, at=datetime.now(UTC))
    attempts = history.publish(command_id=command.command_id)
    if facebook_published:
        history.success("facebook", attempts["facebook"], "747917475065823_9")
    history.events.append(PlatformResult(
        event_id="limited", post_id=command.post_id, occurred_at=datetime.now(UTC), platform="instagram",
        attempt_id=attempts["instagram"], success=False, error=PlatformError(
            kind=ErrorKind.RATE_LIMITED, code=4, http_status=400, retry_after_s=3600.0,
            message="Instagram publish failed: 400 - Application request limit reached")))
    store_events(api, history.events)


def test_a_publish_left_only_to_a_platforms_long_wait_is_answered_without_waiting_and_says_when(
        api: RunningApi) -> None:
    # Facebook went out; Instagram was refused for a rate limit that lifts in an hour. Nothing more comes of the
    # command within the API's wait (10 s here): the answer has the results so far, and when Instagram is tried.
    add_account(api)
    front = api.server.server.config.app.state.front
    front.settings = front.settings.model_copy(update={"api_wait_seconds": 10.0})
    front.on_accepted = lambda command: instagram_waits_an_hour(api, command, facebook_published=True)

    sent = time.monotonic()
    answer = api.client.post("/posts", json=publish_body(post_id="post-waits", command_id="publish-waits"))

    assert answer.status_code == 202, answer.text
    document = answer.json()
    assert document["results"]["facebook"]["success"] is True and document["results"]["instagram"]["success"] is False
    assert document["note"].startswith("Instagram is retried automatically at ")
    assert document["note"].endswith(" UTC (the platform's own wait)")
    assert time.monotonic() - sent < 5.0


def test_a_publish_whose_other_platform_is_still_publishing_gives_no_note_to_stop_waiting_on(api: RunningApi) -> None:
    # Instagram waits an hour; Facebook's call is still under way: its result is to come, so the answer (after the
    # API's wait) does not say the command is left to the platform's wait, and the CLI goes on waiting for Facebook.
    add_account(api)
    front = api.server.server.config.app.state.front
    front.on_accepted = lambda command: instagram_waits_an_hour(api, command, facebook_published=False)

    answer = api.client.post("/posts", json=publish_body(post_id="post-busy", command_id="publish-busy"))

    assert answer.status_code == 202, answer.text
    assert "note" not in answer.json()
    assert api.client.get("/posts/post-busy", params={"command_id": "publish-busy"}).json()["command"]["held"] is False


def test_a_command_left_to_a_platforms_wait_reads_as_held_with_when(api: RunningApi) -> None:
    # What the CLI waits on after a 202: not settled for the hour, but nothing more comes of it before then.
    add_account(api)
    front = api.server.server.config.app.state.front
    front.on_accepted = lambda command: instagram_waits_an_hour(api, command, facebook_published=True)
    api.client.post("/posts", json=publish_body(post_id="post-held", command_id="publish-held"))

    command = api.client.get("/posts/post-held", params={"command_id": "publish-held"}).json()["command"]

    assert command["settled"] is False and command["held"] is True
    assert command["response"]["pending"] is True
    assert command["response"]["note"].startswith("Instagram is retried automatically at ")
    # Held for a caller that waits less than the hour; one that waits past it gets the retry's result.
    for within, held in ((3000, True), (3700, False)):
        read = api.client.get("/posts/post-held", params={"command_id": "publish-held", "within": within})
        assert read.json()["command"]["held"] is held
        # Not final either way: Instagram's retry is to come.
        assert read.json()["command"]["response"]["pending"] is True
    assert api.client.get("/posts/post-held", params={"command_id": "publish-held", "within": -1}).status_code == 422


def test_a_retry_queued_behind_automatic_retries_of_the_services_own_backoff_says_so(api: RunningApi) -> None:
    # Meta's rate limits mostly give no wait: the service waits by its own backoff, and a retry waits behind it too.
    store_limited_for_an_hour(api, "post-limited", wait=None)
    answer = api.client.post("/posts/post-limited/retry", json={"content": {"image_url": FIXED_URL}})
    assert answer.status_code == 202
    document = answer.json()
    assert document["pending"] is True and document["post"]["status"] == "failed"
    left = api.settings.max_automatic_attempts - 1
    assert document["note"] == (f"queued behind the automatic retries of Facebook (the service tries again by "
                                f"itself, up to {left} more times): handled after them")


def test_a_command_queued_behind_automatic_retries_long_overdue_says_the_service_may_be_behind() -> None:
    # The handler away or frozen: still behind them, and said to be late rather than "publishing".
    from smartretry.api import queued_behind

    history = History(post_id="post-limited", at=datetime.now(UTC))
    attempts = history.publish(target="facebook")
    history.failure("facebook", attempts["facebook"], "Page request limit reached", ErrorKind.RATE_LIMITED,
                    when=datetime.now(UTC))
    state = history.state()
    assert "overdue" not in (queued_behind(state, 5, datetime.now(UTC)) or "overdue")
    late = queued_behind(state, 5, datetime.now(UTC) + timedelta(minutes=10))
    assert late is not None and late.startswith("queued behind the automatic retries of Facebook, overdue since ")
    assert late.endswith("UTC (the service may be away or behind): handled after them")
    # An automatic attempt under way is queued behind too, while it may still be running.
    history.attempt("facebook", "cmd-publish", retry=True)
    running = history.state()
    began = running.attempts_of("facebook")[-1].started_at
    assert "overdue" not in (queued_behind(running, 5, began + timedelta(seconds=30)) or "overdue")
    assert "overdue since" in (queued_behind(running, 5, began + timedelta(minutes=10)) or "")
    # One whose outcome could not be checked on the platform is not late: the post says what to check.
    retrying = history.state().attempts_of("facebook")[-1].attempt_id
    history.unknown("facebook", retrying)
    assert queued_behind(history.state(), 5, began + timedelta(minutes=10)) == (
        "queued behind Facebook's automatic retry, whose outcome is not known yet (the post says what to check): "
        "handled after it")


def test_a_retry_sent_while_the_first_publish_is_still_under_way_says_it_is_queued_behind_it(api: RunningApi) -> None:
    # Facebook failed on its image; Instagram's container is still processing. A retry with the fixed image runs after
    # that publish: its answer says so, rather than hand back Facebook's old failure as this retry's result.
    history = History(post_id="post-busy", at=datetime.now(UTC))
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"])
    store_events(api, history.events)

    answer = api.client.post("/posts/post-busy/retry", json={"content": {"image_url": FIXED_URL}})

    assert answer.status_code == 202
    document = answer.json()
    assert document["pending"] is True and document["post"]["status"] == "publishing"
    assert document["note"] == ("queued behind the publish of Instagram under way (its result is not in yet), which "
                                "goes out with the content it has, its automatic retries too: handled after it, and "
                                "the results shown until then are the earlier ones")


def test_a_command_queued_behind_a_first_publish_says_when_it_is_late_or_its_outcome_unknown() -> None:
    from smartretry.api import queued_behind

    history = History(post_id="post-busy", at=datetime.now(UTC))
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"])
    began = history.state().attempts_of("instagram")[-1].started_at
    assert (queued_behind(history.state(), 5, began + timedelta(seconds=30)) or "").startswith(
        "queued behind the publish of Instagram under way")
    # Long past the attempt's lease: the service may be away, and the answer does not say "under way".
    late = queued_behind(history.state(), 5, began + timedelta(hours=2))
    assert late is not None and late.startswith("queued behind the publish of Instagram, overdue since ")
    assert late.endswith("UTC (the service may be away or behind): handled after it")
    # Its outcome could not be checked: the post says what to check.
    history.unknown("instagram", attempts["instagram"])
    assert queued_behind(history.state(), 5, began + timedelta(seconds=30)) == (
        "queued behind the publish of Instagram, whose outcome is not known yet (the post says what to check): "
        "handled after it")


def test_a_retry_may_name_the_posts_account_and_an_unknown_or_another_one_is_refused(api: RunningApi) -> None:
    store_post(api, "post-1")
    store_events(api, History(post_id="imported-1").legacy(
        {"insights": {}, "status": "failed", "error_message": "token expired"}).events)
    unknown = api.client.post("/posts/imported-1/retry", json={"account": "nobody"})
    assert unknown.status_code == 422 and "unknown account 'nobody'" in unknown.text
    # Naming none, it would only fail again for want of one.
    nameless = api.client.post("/posts/imported-1/retry")
    assert nameless.status_code == 422
    assert "post imported-1 has no account (it was imported without one): name the account to publish it with" \
        in nameless.text
    wanted = "retry naming the account to publish with and the post's content (caption, image URL)"
    assert api.client.get("/posts/imported-1").json()["needed_action"] == {"facebook": wanted, "instagram": wanted}
    assert_nothing_on_commands(api)
    add_account(api)
    # Another account than the post's own: it would put the post on another business's Page.
    api.stores.credentials.set_token("other-shop", "other-shop-user-token-04", "111222333", "17841400000000001")
    moved = api.client.post("/posts/post-1/retry", json={"account": "other-shop"})
    assert moved.status_code == 409
    assert "publishes with account 'acme': a retry cannot move it to 'other-shop'" in moved.json()["detail"]
    # Refused for that, whatever the other account is: connecting it would change nothing.
    assert api.client.post("/posts/post-1/retry", json={"account": "never-connected"}).status_code == 409
    assert_nothing_on_commands(api)
    assert api.client.post("/posts/post-1/retry", json={"account": "acme"}).status_code == 202
    [(_key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert isinstance(command, RetryRequested) and command.account == "acme"


def test_retry_without_a_body_keeps_the_content(api: RunningApi) -> None:
    store_post(api, "post-1")
    assert api.client.post("/posts/post-1/retry").status_code == 202
    [(_key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert isinstance(command, RetryRequested)
    assert command.content is None


@pytest.mark.parametrize("body", [
    {"content": {"image_url": "not a url"}},
    {"content": {"image_url": None}},
    {"content": {"video": "https://x"}},
    {"command_id": "a/b"},
    {"reason": "retries take no reason"},
])
def test_a_bad_retry_is_422_and_nothing_reaches_kafka(api: RunningApi, body: dict[str, object]) -> None:
    store_post(api, "post-1")
    answer = api.client.post("/posts/post-1/retry", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["msg"]
    assert_nothing_on_commands(api)


def test_a_command_id_already_used_for_another_command_is_a_conflict_not_the_old_answer(api: RunningApi) -> None:
    store_post(api, "post-1")  # published by command post-1-c1
    answer = api.client.post("/posts/post-1/retry", json={"command_id": "post-1-c1",
                                                          "content": {"image_url": FIXED_URL}})
    assert answer.status_code == 409
    assert "command post-1-c1 was already used for another command on post post-1" in answer.json()["detail"]
    assert_nothing_on_commands(api)


def test_retry_of_a_post_that_fully_succeeded_is_refused_by_the_same_decision(
        api: RunningApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    store_post(api, "post-1", facebook_ok=True)
    answer = api.client.post("/posts/post-1/retry")
    assert answer.status_code == 409
    assert answer.json()["detail"].startswith("Nothing to retry: Facebook and Instagram already succeeded")
    assert "/posts/post-1/republish" in answer.json()["detail"]
    # The product note's line, in the service's log too.
    assert "Nothing to retry: Facebook and Instagram already succeeded" in [r.getMessage() for r in caplog.records]
    assert_nothing_on_commands(api)


def test_retry_while_a_platform_is_still_publishing_says_to_wait_not_to_republish(api: RunningApi) -> None:
    # Facebook's attempt has no result yet. A republish would run after it and post Facebook a second time.
    store_events(api, seed_events("inflight-1", facebook_ok=True)[:-1])
    answer = api.client.post("/posts/inflight-1/retry")
    assert answer.status_code == 409
    detail = answer.json()["detail"]
    assert detail.startswith("Nothing to retry: Facebook still publishing (its last attempt has no result yet); "
                             "Instagram already succeeded")
    assert detail.endswith("wait for its result (GET /posts/inflight-1), then retry if it failed")
    assert "republish" not in detail
    assert_nothing_on_commands(api)


def test_a_forced_republish_goes_to_kafka_with_its_reason(api: RunningApi) -> None:
    store_post(api, "post-1", facebook_ok=True)
    assert api.client.post("/posts/post-1/republish", json={}).status_code == 422
    answer = api.client.post("/posts/post-1/republish", json={"reason": "testing the new page"})
    assert answer.status_code == 202
    [(_key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert isinstance(command, ForceRepublishRequested)
    assert command.reason == "testing the new page" and command.platforms is None


def test_a_forced_republish_of_one_platform_goes_to_kafka_naming_it(api: RunningApi) -> None:
    store_post(api, "post-1", facebook_ok=True)
    twice = api.client.post("/posts/post-1/republish", json={"reason": "new caption", "platforms": ["instagram"] * 2})
    assert twice.status_code == 422 and "names each platform once" in twice.text
    unknown = api.client.post("/posts/post-1/republish", json={"reason": "new caption", "platforms": ["tiktok"]})
    assert unknown.status_code == 422

    answer = api.client.post("/posts/post-1/republish", json={"reason": "new caption", "platforms": ["instagram"]})

    assert answer.status_code == 202, answer.text
    [(_key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert isinstance(command, ForceRepublishRequested) and command.platforms == ["instagram"]


def store_interrupted(api: RunningApi, post_id: str, at: datetime = AT) -> str:
    """A post whose Facebook attempt has no result (its handler died); Instagram published. Returns the attempt."""
    store_events(api, [e.model_copy(update={"occurred_at": at}) for e in seed_events(post_id, facebook_ok=True)
                       if e.event_id != f"{post_id}-r-fb"])
    return f"{post_id}-fb"


def test_an_operators_resolution_of_an_interrupted_attempt_goes_to_kafka(api: RunningApi) -> None:
    attempt = store_interrupted(api, "post-1")
    answer = api.client.post("/posts/post-1/resolve", json={
        "platform": "facebook", "published": True, "platform_post_id": "747917475065823_122104567890123",
        "attempt_id": attempt, "note": "found on the Page"})
    assert answer.status_code == 202, answer.text
    [(key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert key == "post-1" and isinstance(command, ResolveAttemptRequested)
    assert (command.platform, command.attempt_id, command.published, command.platform_post_id, command.note) == (
        "facebook", attempt, True, "747917475065823_122104567890123", "found on the Page")


def test_an_earlier_instagram_attempt_whose_container_meta_cannot_say_anything_of_can_be_resolved(
        api: RunningApi) -> None:
    # Every new attempt asks about its container first, and Meta says it does not exist: held back for a day, unless
    # someone who checked the account says what became of it. The post says so, and how.
    from tests.unit.test_fold import held_by_an_earlier_container

    history, first, second = held_by_an_earlier_container()
    store_events(api, history.events)
    post_id = history.post_id
    needed = api.client.get(f"/posts/{post_id}").json()["needed_action"]["instagram"]
    assert needed.endswith(f"`smartretry resolve {post_id} instagram --attempt-id {first} --not-published` or "
                           "`--published-as MEDIA_ID`")
    # Only by its id, and only that attempt: the later one made no container.
    unnamed = api.client.post(f"/posts/{post_id}/resolve", json={"platform": "instagram", "published": False})
    assert unnamed.status_code == 409
    later = api.client.post(f"/posts/{post_id}/resolve", json={"platform": "instagram", "published": False,
                                                               "attempt_id": second})
    assert later.status_code == 409
    unknown = api.client.post(f"/posts/{post_id}/resolve", json={"platform": "instagram", "published": False,
                                                                 "attempt_id": "no-such-attempt"})
    assert unknown.json()["detail"] == "nothing to resolve: the post has no Instagram attempt no-such-attempt"
    assert_nothing_on_commands(api)

    answer = api.client.post(f"/posts/{post_id}/resolve", json={
        "platform": "instagram", "published": False, "attempt_id": first, "note": "not on the account"})

    # No lease to wait out: that attempt ended long ago. Recorded in its turn, after the retries the post's command
    # still makes by itself (each meets the same container): said so at once.
    assert answer.status_code == 202, answer.text
    assert answer.json()["note"].startswith("queued behind the automatic retries of Instagram")
    [(key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert key == post_id and isinstance(command, ResolveAttemptRequested)
    assert (command.platform, command.attempt_id, command.published) == ("instagram", first, False)


def test_a_resolution_naming_no_attempt_goes_to_kafka_bound_to_the_one_waiting_and_can_be_sent_again(
        api: RunningApi) -> None:
    # What the operator checked was the call waiting now: never one the command makes after it is settled.
    attempt = store_interrupted(api, "post-1")
    body = {"platform": "facebook", "published": False, "command_id": "resolve-1", "note": "not on the Page"}
    answer = api.client.post("/posts/post-1/resolve", json=body)
    assert answer.status_code == 202, answer.text
    [(_key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert isinstance(command, ResolveAttemptRequested) and command.attempt_id == attempt
    # The handler took it up; the same request, sent again (its answer was lost), is the same command, not another.
    store_events(api, [
        PlatformResult(event_id="post-1-resolved", post_id="post-1", occurred_at=AT, platform="facebook",
                       attempt_id=attempt, success=False, resolved_by="resolve-1", error=PlatformError(
                           kind=ErrorKind.TRANSIENT, message="Facebook publish was interrupted before its result "
                                                             "was recorded; an operator found it was not published")),
        CommandDecided(event_id="post-1-resolve-decided", post_id="post-1", occurred_at=AT, command_id="resolve-1",
                       command_type="ResolveAttemptRequested", platforms=(), fingerprint=fingerprint(command))])
    again = api.client.post("/posts/post-1/resolve", json=body)
    assert again.status_code in (200, 202), again.text
    assert len(messages_on(api.bootstrap, api.topics.commands)) == 1


@pytest.mark.parametrize(("body", "reason"), [
    ({"platform": "instagram", "published": False}, "nothing to resolve: Instagram's latest attempt has its result"),
    ({"platform": "facebook", "published": False, "attempt_id": "another"},
     "Facebook's attempt waiting for a result is post-1-fb, not another"),
])
def test_a_resolution_that_names_no_waiting_attempt_is_refused(api: RunningApi, body: dict[str, object],
                                                               reason: str) -> None:
    store_interrupted(api, "post-1")
    answer = api.client.post("/posts/post-1/resolve", json=body)
    assert answer.status_code == 409
    assert answer.json()["detail"] == reason
    assert_nothing_on_commands(api)


def test_an_attempt_that_may_still_be_under_way_cannot_be_resolved_yet(api: RunningApi) -> None:
    store_interrupted(api, "post-1", at=datetime.now(UTC))
    answer = api.client.post("/posts/post-1/resolve", json={"platform": "facebook", "published": False})
    assert answer.status_code == 409
    detail = answer.json()["detail"]
    assert "may still be under way: the service settles it itself, or it can be resolved as not published once it " \
        "is 150s old (at " in detail
    assert detail.endswith("UTC); a post found on Facebook can be given now (published, with its id)")
    assert_nothing_on_commands(api)
    # A post found on the platform settles it at once: it went out, whatever the platform may still hold.
    found = api.client.post("/posts/post-1/resolve", json={"platform": "facebook", "published": True,
                                                          "platform_post_id": "747917475065823_42"})
    assert found.status_code in (200, 202), found.text
    [resolution] = [decode_command(value) for _key, value in messages_on(api.bootstrap, api.topics.commands)]
    assert isinstance(resolution, ResolveAttemptRequested) and resolution.published


@pytest.mark.parametrize(("found", "loc", "said"), [
    ({"platform_post_id": "17841400000000000_1"}, "platform_post_id",
     "17841400000000000_1 is a post of Page 17841400000000000, not of the account's Page 747917475065823: check "
     "the id"),
    ({"platform_post_id": "747917475065823_1", "permalink": "https://bob:pw@www.facebook.com/x"}, "permalink",
     "a Facebook permalink has no user name or password: give the post's address as Facebook shows it"),
    ({"platform_post_id": "747917475065823_1", "permalink": "https://example.com/747917475065823_1"}, "permalink",
     "'example.com' is not Facebook's: give the post's address on facebook.com"),
])
def test_a_post_found_that_cannot_be_the_accounts_is_refused(api: RunningApi, found: dict[str, str], loc: str,
                                                             said: str) -> None:
    add_account(api)
    store_interrupted(api, "post-1")
    answer = api.client.post("/posts/post-1/resolve", json={"platform": "facebook", "published": True, **found})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == [{"loc": ["body", loc], "type": "value_error", "msg": said}]
    assert "pw@" not in answer.text
    assert_nothing_on_commands(api)
    # Its address on the platform, in any of its hosts: taken.
    taken = api.client.post("/posts/post-1/resolve", json={
        "platform": "facebook", "published": True, "platform_post_id": "747917475065823_1",
        "permalink": "https://m.facebook.com/747917475065823_1"})
    assert taken.status_code in (200, 202), taken.text


def store_for_an_operator(api: RunningApi, post_id: str) -> None:
    """A post whose Facebook attempt, just begun, only an operator can settle (its look-up cannot tell)."""
    attempt = store_interrupted(api, post_id, at=datetime.now(UTC))
    # Its look-up cannot tell (a post without a caption), so the post asks for a resolution.
    store_events(api, [AttemptOutcomeUnknown(
        event_id=f"{post_id}-lookup", post_id=post_id, occurred_at=datetime.now(UTC), platform="facebook",
        attempt_id=attempt, error=PlatformError(kind=ErrorKind.INVALID_REQUEST, message=(
            "Facebook post lookup could not tell: a post without a caption cannot be told apart from the Page's "
            "other posts, so asking again will not tell either: check the Page and say whether it went out "
            "(smartretry resolve)")))])


def test_an_attempt_only_an_operator_can_settle_is_not_said_to_be_settled_by_the_service(api: RunningApi) -> None:
    store_for_an_operator(api, "post-1")

    answer = api.client.post("/posts/post-1/resolve", json={"platform": "facebook", "published": False})

    assert answer.status_code == 409
    detail = answer.json()["detail"]
    assert "may still be under way: it can be resolved as not published once it is 150s old" in detail
    assert "settles it itself" not in detail
    assert_nothing_on_commands(api)
    # The post's detail says from when.
    until = api.client.get("/posts/post-1").json()["not_published_from"]["facebook"]
    assert until[11:19] in detail


@pytest.mark.parametrize("body", [
    {"platform": "facebook", "published": True},
    {"platform": "facebook", "published": False, "platform_post_id": "747917475065823_1"},
    {"platform": "tiktok", "published": False},
    {"platform": "facebook"},
])
def test_a_bad_resolution_is_422_and_nothing_reaches_kafka(api: RunningApi, body: dict[str, object]) -> None:
    store_interrupted(api, "post-1")
    answer = api.client.post("/posts/post-1/resolve", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["msg"]
    assert_nothing_on_commands(api)


# ------------------------------------------------------------------------------------------- accounts


def test_setting_a_token_stores_it_encrypted_and_never_echoes_it(api: RunningApi) -> None:
    token = "EAA" + "Gm0PX4ZCpsBAnewlongtoken123456789"  # built, so no token-shaped literal is committed
    answer = api.client.put("/accounts/acme/token",
                            json={"token": token, "page_id": "747917475065823", "ig_user_id": "17841400000000000"})
    assert answer.status_code == 200
    assert token not in answer.text
    assert answer.json()["account"] == "acme"
    assert answer.json()["page_id"] == "747917475065823"
    assert answer.json()["token_set"] is True
    assert api.stores.credentials.get("acme").user_token.get_secret_value() == token
    listed = api.client.get("/accounts")
    assert [a["account"] for a in listed.json()["accounts"]] == ["acme"]
    # When, with its zone: a time a reader could take for local would be hours off.
    updated = datetime.fromisoformat(listed.json()["accounts"][0]["updated_at"])
    assert abs((updated - datetime.now(UTC)).total_seconds()) < 60
    assert token not in listed.text
    with api.stores.engine.connect() as conn:
        assert token not in repr(conn.exec_driver_sql("SELECT * FROM accounts").all())


@pytest.mark.parametrize("body", [
    {"token": "zq9x7"},
    {"token": "a-good-long-token-value", "page_id": "not-digits"},
    {"token": "a-good-long-token-value", "extra": "x"},
    {},
    {"token": "a pasted token with spaces"},
])
def test_a_bad_token_body_is_422_and_the_answer_never_echoes_the_token(api: RunningApi, body: dict[str, str]) -> None:
    answer = api.client.put("/accounts/acme/token", json=body)
    assert answer.status_code == 422
    if body.get("token") == "zq9x7":
        assert "an access token is at least 6 characters" in answer.text
    if "token" in body:
        assert body["token"] not in answer.text
    assert api.client.get("/accounts").json()["accounts"] == []


def test_the_services_own_keys_are_never_stored_as_an_accounts_token(api: RunningApi) -> None:
    # As the page's form refuses them: a password manager's fill, or a paste from the wrong place. Stored, the key
    # would be sent to Meta with every publish.
    secret_key = api.settings.secret_key.get_secret_value()
    for key, named in ((API_KEY, "API key"), (secret_key, "secret key")):
        answer = api.client.put("/accounts/acme/token", json={"token": key, "page_id": "747917475065823"})

        assert answer.status_code == 422
        assert f"that is this service's {named}, not the account's access token from Meta" in answer.text
        assert key not in answer.text
    assert api.client.get("/accounts").json()["accounts"] == []


def test_a_token_that_is_no_text_at_all_is_422_not_a_server_error(api: RunningApi) -> None:
    # Valid JSON, but a lone surrogate cannot be stored (or sent to Meta) as text.
    answer = api.client.put("/accounts/acme/token", content=b'{"token": "a-pasted-token\\ud800-surrogate"}',
                            headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    assert "printable ASCII" in answer.text
    assert api.client.get("/accounts").json()["accounts"] == []


def test_an_account_reference_with_path_characters_is_refused(api: RunningApi) -> None:
    assert api.client.put("/accounts/..%5Cx/token", json={"token": "a-good-long-token"}).status_code == 422


# ------------------------------------------------------------------------------------------- metrics


def test_metrics_count_posts_attempts_results_and_projection_lag(api: RunningApi) -> None:
    add_account(api)
    store_post(api, "post-1")
    store_post(api, "post-2", facebook_ok=True, instagram_ok=False)
    # Sent straight to Kafka naming an account never connected: it asks to connect it, not to re-authenticate.
    ghost = PlatformError(kind=ErrorKind.AUTH,
                          message="no credentials for account 'ghost': set them with `smartretry accounts set-token`")
    never = [e.model_copy(update={"error": ghost}) if e.event_id == "post-3-r-ig" else
             e.model_copy(update={"account": "ghost"}) if isinstance(e, PostSubmitted) else e
             for e in seed_events("post-3", facebook_ok=True, instagram_ok=False)]
    store_events(api, never)
    # Its account stored without a Page: the Page's id is what it asks for, not a new token.
    no_page = PlatformError(kind=ErrorKind.AUTH, message=f"Facebook photo upload failed: {not_connected('facebook')}")
    store_events(api, [e.model_copy(update={"error": no_page}) if e.event_id == "post-4-r-fb" else
                       e.model_copy(update={"account": "no-page"}) if isinstance(e, PostSubmitted) else e
                       for e in seed_events("post-4", facebook_ok=False)])
    api.client.post("/posts", json=publish_body())
    text = api.client.get("/metrics").text
    assert 'smartretry_posts_needing_action{action="connect the account",platform="instagram"} 1.0' in text
    assert 'smartretry_posts_needing_action{action="connect Facebook to the account",platform="facebook"} 1.0' in text
    assert 'smartretry_posts{status="failed"} 4.0' in text
    assert 'smartretry_attempts_total{kind="first",platform="facebook"} 4.0' in text
    assert 'smartretry_results_total{error_kind="invalid_media",outcome="failure",platform="facebook"} 1.0' in text
    assert 'smartretry_results_total{error_kind="auth",outcome="failure",platform="facebook"} 1.0' in text
    assert 'smartretry_results_total{error_kind="auth",outcome="failure",platform="instagram"} 2.0' in text
    assert 'smartretry_results_total{error_kind="",outcome="success",platform="instagram"} 2.0' in text
    assert 'smartretry_commands_decided_total{type="PublishRequested"} 4.0' in text
    assert 'smartretry_api_commands_total{type="PublishRequested"} 1.0' in text
    assert 'smartretry_projection_lag_events{partition="0"} 0.0' in text
    assert "smartretry_kafka_up 1.0" in text
    assert f'smartretry_topic_messages{{topic="{api.topics.commands}"}} 1.0' in text
    assert 'smartretry_posts_needing_action{action="fix the image URL",platform="facebook"} 1.0' in text
    # Its token was stored (above) after its Instagram attempt failed: what it needs now is the retry.
    assert 'smartretry_posts_needing_action{action="retry Instagram",platform="instagram"} 1.0' in text
    # Every attempt has its result.
    assert not [line for line in text.splitlines() if line.startswith("smartretry_oldest_attempt_awaiting_result")]


def test_a_post_whose_automatic_retries_are_used_up_asks_for_a_retry_and_is_counted_for_alerts(
        api: RunningApi) -> None:
    history = History(post_id="post-limited")
    attempts = history.publish(target="instagram")
    history.failure("instagram", attempts["instagram"], "Application request limit reached", ErrorKind.RATE_LIMITED)
    for _ in range(api.settings.max_automatic_attempts - 1):
        again = history.attempt("instagram", "cmd-publish", retry=True)
        history.failure("instagram", again, "Application request limit reached", ErrorKind.RATE_LIMITED)
    store_events(api, history.events)

    detail = api.client.get("/posts/post-limited").json()
    assert detail["needed_action"] == {"instagram": "retry Instagram later (it limits how often it takes posts)"}
    assert detail["retried"] == "🔄 Retried: Instagram (4 automatic retries)"
    # Another whose Facebook is used up too, while its Instagram is still publishing: counted all the same.
    both = History(post_id="post-both")
    attempts = both.publish()
    both.failure("facebook", attempts["facebook"], "Service unavailable", ErrorKind.TRANSIENT)
    for _ in range(api.settings.max_automatic_attempts - 1):
        both.failure("facebook", both.attempt("facebook", "cmd-publish", retry=True), "Service unavailable",
                     ErrorKind.TRANSIENT)
    store_events(api, both.events)
    assert api.client.get("/posts/post-both").json()["needed_action"] == {"facebook": "retry Facebook"}

    text = api.client.get("/metrics").text
    assert ('smartretry_posts_needing_action{action="retry Instagram later (it limits how often it takes posts)",'
            'platform="instagram"} 1.0') in text
    assert 'smartretry_posts_needing_action{action="retry Facebook",platform="facebook"} 1.0' in text
    assert 'smartretry_posts{status="publishing"} 1.0' in text


def test_metrics_ask_for_a_retry_once_a_token_is_stored_after_the_failure(
        api: RunningApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "SCAN_CACHE_SECONDS", 0.0)
    store_post(api, "post-1", facebook_ok=True, instagram_ok=False)
    text = api.client.get("/metrics").text
    assert 'smartretry_posts_needing_action{action="re-authenticate Instagram",platform="instagram"} 1.0' in text

    add_account(api)  # the account re-authenticated: stored now, after the attempt that failed
    text = api.client.get("/metrics").text
    assert 'smartretry_posts_needing_action{action="retry Instagram",platform="instagram"} 1.0' in text
    assert "re-authenticate" not in text
    assert api.client.get("/posts/post-1").json()["needed_action"]["instagram"].startswith(
        "retry Instagram (a token was stored for the account at ")


def test_metrics_count_automatic_retries_that_are_overdue(api: RunningApi) -> None:
    """A handler away or frozen leaves a post's automatic retry past due: the alert an operator sets on it."""
    history = History(post_id="post-late")  # its failure came in at the seed's time, long past
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"], "Service unavailable", ErrorKind.TRANSIENT)
    history.success("instagram", attempts["instagram"], "18107758234627017")
    store_events(api, history.events)
    waiting = History(post_id="post-waiting")  # a rate limit whose wait runs to tomorrow: not late
    attempts = waiting.publish(target="instagram")
    waiting.failure("instagram", attempts["instagram"], "Application request limit reached", ErrorKind.RATE_LIMITED)
    limited = waiting.events[-1]
    assert isinstance(limited, PlatformResult) and limited.error is not None
    # The platform's wait is capped at a day: its failure is put an hour ago, with a day to wait.
    waiting.events[-1] = limited.model_copy(update={
        "occurred_at": datetime.now(UTC) - timedelta(hours=1),
        "error": limited.error.model_copy(update={"retry_after_s": 86_400.0})})
    store_events(api, waiting.events)

    text = api.client.get("/metrics").text

    assert 'smartretry_automatic_retries_overdue{platform="facebook"} 1.0' in text
    assert 'smartretry_automatic_retries_overdue{platform="instagram"} 0.0' in text


def test_metrics_show_whether_the_handler_and_projector_are_up_and_the_commands_not_finished(
        api: RunningApi) -> None:
    add_account(api)
    assert api.client.post("/posts", json=publish_body()).status_code == 202
    text = api.client.get("/metrics").text
    # Nothing consumes this test's topics: an operator's alert on these fires.
    assert 'smartretry_consumer_group_members{consumer="command-handler"} 0.0' in text
    assert 'smartretry_consumer_group_members{consumer="projector"} 0.0' in text
    assert "smartretry_consumer_groups_read 1.0" in text
    assert sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("smartretry_commands_unfinished{")) == 1.0

    # A member of the handler's group that takes the command and commits it.
    handler = Consumer({"bootstrap.servers": api.bootstrap, "group.id": api.settings.handler_group,
                        "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        handler.subscribe([api.topics.commands])
        deadline = time.monotonic() + 30
        message = None
        while message is None or message.error() is not None:
            assert time.monotonic() < deadline, "the command never came"
            message = handler.poll(0.5)
        text = api.client.get("/metrics").text
        assert 'smartretry_consumer_group_members{consumer="command-handler"} 1.0' in text
        handler.commit(message=message, asynchronous=False)
        text = api.client.get("/metrics").text
        assert [line for line in text.splitlines() if line.startswith("smartretry_commands_unfinished{")
                and not line.endswith(" 0.0")] == []
    finally:
        handler.close()


def test_commands_named_finished_past_the_committed_offset_are_not_counted_unfinished(api: RunningApi) -> None:
    writer = producer(api.bootstrap)
    for _ in range(3):
        writer.produce(api.topics.commands, key=b"post-1", value=b"{}", partition=0)
    assert writer.flush(10) == 0
    # The handler's commit: the first command still waits (a platform's limit); the two after it are finished.
    handler = Consumer({"bootstrap.servers": api.bootstrap, "group.id": api.settings.handler_group,
                        "enable.auto.commit": False})
    try:
        handler.commit(offsets=[TopicPartition(api.topics.commands, 0, 0, metadata="done:1-2")], asynchronous=False)
    finally:
        handler.close()

    text = api.client.get("/metrics").text

    assert 'smartretry_commands_unfinished{partition="0"} 1.0' in text


def test_metrics_say_when_kafka_does_not_answer_and_still_count_the_posts(tmp_path: Path) -> None:
    """A scrape while the broker is frozen: it accepts connections and answers nothing."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.listen()
        settings = api_settings(f"127.0.0.1:{silent.getsockname()[1]}", Topics(prefix="frozen."),
                                f"sqlite:///{tmp_path}/projection.db")
        stores = open_stores(settings)
        stores.projection.apply_batch("frozen.post-events", 0, list(enumerate(seed_events("post-1", False))))
        metrics = ServiceMetrics(settings, stores)
        try:
            text = metrics.render()[0].decode()
        finally:
            metrics.close()
            stores.engine.dispose()
    assert "smartretry_kafka_up 0.0" in text
    assert 'smartretry_posts{status="failed"} 1.0' in text
    assert "smartretry_projection_lag_events" not in text
    # The clients that failed are not kept: the next scrape asks with new ones (a user test saw clients that met the
    # broker while it restarted fail on after it was back, until the API was restarted).
    assert metrics._offsets is None and metrics._admin is None


def test_metrics_show_how_long_the_oldest_attempt_has_waited_for_its_result(api: RunningApi) -> None:
    # Both attempts started at the seed's time; Facebook's never got its result (the handler died in between).
    store_interrupted(api, "post-1")

    text = api.client.get("/metrics").text

    assert 'smartretry_attempts_awaiting_result{platform="facebook"} 1.0' in text
    [line] = [line for line in text.splitlines()
              if line.startswith("smartretry_oldest_attempt_awaiting_result_seconds{")]
    assert line.startswith('smartretry_oldest_attempt_awaiting_result_seconds{platform="facebook"} ')
    assert float(line.split()[-1]) >= (datetime.now(UTC) - AT).total_seconds() - 60


def store_retrying(api: RunningApi, post_id: str, lookup: ErrorKind | None = None) -> None:
    """The seed's failed post (Facebook's image), its Facebook retry under way; with `lookup`, the retry's attempt
    left no result and the handler's look-up of it failed with that kind of error."""
    attempt = f"{post_id}-fb-2"
    events: list[Event] = [
        *seed_events(post_id, facebook_ok=False),
        CommandDecided(event_id=f"{post_id}-d2", post_id=post_id, occurred_at=AT, command_id=f"{post_id}-c2",
                       command_type="RetryRequested", platforms=("facebook",), is_retry=True),
        PublishAttempted(event_id=f"{post_id}-a2", post_id=post_id, occurred_at=AT, platform="facebook",
                         attempt_id=attempt, attempt_number=2, command_id=f"{post_id}-c2", is_retry=True)]
    if lookup is not None:
        events.append(AttemptOutcomeUnknown(
            event_id=f"{post_id}-u2", post_id=post_id, occurred_at=AT, platform="facebook", attempt_id=attempt,
            error=PlatformError(kind=lookup, message="Facebook post lookup failed")))
    store_events(api, events)


def test_a_platform_being_retried_is_not_said_to_need_the_users_action_unless_its_look_up_does(
        api: RunningApi) -> None:
    store_retrying(api, "post-retrying")
    store_retrying(api, "post-unchecked", lookup=ErrorKind.AUTH)
    store_retrying(api, "post-unsettled", lookup=ErrorKind.INVALID_REQUEST)

    retrying = api.client.get("/posts/post-retrying").json()
    assert retrying["status"] == "publishing" and retrying["needed_action"] == {}
    assert api.client.get("/posts/post-unchecked").json()["needed_action"] == {"facebook": "re-authenticate Facebook"}
    assert api.client.get("/posts/post-unsettled").json()["needed_action"] == {
        "facebook": "check Facebook for the post, then resolve the attempt"}
    text = api.client.get("/metrics").text
    assert "fix the image URL" not in text
    assert 'smartretry_posts_needing_action{action="re-authenticate Facebook",platform="facebook"} 1.0' in text
    assert ('smartretry_posts_needing_action{action="check Facebook for the post, then resolve the attempt",'
            'platform="facebook"} 1.0') in text


def test_a_token_never_appears_in_what_the_api_logs(api: RunningApi, caplog: pytest.LogCaptureFixture) -> None:
    token = "plain-looking-secret-9f8e7d"
    with caplog.at_level("DEBUG"):
        api.client.put("/accounts/acme/token", json={"token": token})
        api.client.put("/accounts/acme/token", json={"token": token, "page_id": "x"})
    assert token not in caplog.text


async def test_serve_runs_the_api_on_the_callers_loop_until_stopped(
        kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    """What `smartretry run` uses: the API on its own event loop, stopped by its stop event."""
    port = free_port()
    settings = api_settings(kafka_bootstrap, topics, f"sqlite:///{tmp_path}/p.db", api_port=port)
    stores = open_stores(settings)
    stop = asyncio.Event()
    serving = asyncio.get_running_loop().create_task(serve(settings, stores, stop))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": API_KEY}) as client:
            for _ in range(200):
                try:
                    ready = await client.get("/readyz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.02)
            assert ready.json()["ready"] is True
            # The app made its own producer from the settings: a publish reaches the broker.
            stores.credentials.set_token("acme", "acme-user-token-0001", "747917475065823", "17841400000000000")
            assert (await client.post("/posts", json=publish_body())).status_code == 202
    finally:
        stop.set()
        await asyncio.wait_for(serving, 15)
        stores.engine.dispose()
    assert len(messages_on(kafka_bootstrap, topics.commands)) == 1


def test_a_publish_resent_after_a_retry_corrected_the_post_is_answered_not_refused(api: RunningApi) -> None:
    # The client's first request timed out; before it sent it again, a retry with a fixed image URL was
    # published. The resent request is the same command (same id, same body): it is answered, never 409.
    add_account(api)
    original = PublishRequested(command_id="post-fix-c1", post_id="post-fix", requested_at=AT, publish_target="both",
                                content=PostContent(caption="Autumn sale starts today", image_url=SPACE_URL),
                                account="acme")
    events = seed_events("post-fix", facebook_ok=False)
    events[1] = events[1].model_copy(update={"fingerprint": fingerprint(original)})
    fixed = PostContent(caption="Autumn sale starts today", image_url=FIXED_URL)
    events += [
        CommandDecided(event_id="fix-d", post_id="post-fix", occurred_at=AT, command_id="fix-1",
                       command_type="RetryRequested", platforms=("facebook",), is_retry=True, content=fixed),
        PublishAttempted(event_id="fix-a", post_id="post-fix", occurred_at=AT, platform="facebook",
                         attempt_id="fix-fb", attempt_number=2, command_id="fix-1", is_retry=True),
        PlatformResult(event_id="fix-r", post_id="post-fix", occurred_at=AT, platform="facebook",
                       attempt_id="fix-fb", success=True, platform_post_id="747917475065823_9"),
    ]
    store_events(api, events)
    again = api.client.post("/posts", json=publish_body(post_id="post-fix", command_id="post-fix-c1"))
    assert again.status_code == 200, again.text
    assert again.json()["post"]["status"] == "posted"
    # Another body under that command id is still refused.
    other = api.client.post("/posts", json=publish_body(post_id="post-fix", command_id="post-fix-c1",
                                                        content={"caption": "Another caption", "image_url": FIXED_URL}))
    assert other.status_code == 409, other.text
    assert "already used for post post-fix with a different body" in other.json()["detail"]


def test_of_two_republishes_sent_at_the_same_moment_the_one_the_handler_refused_is_told_409(api: RunningApi) -> None:
    # Both found the post as it was and went to Kafka; the handler republished the other first, and refuses this
    # one (it saw fewer attempts than the post has by then): it must not be answered as if it went out.
    add_account(api)
    store_post(api, "twice-1", facebook_ok=True)
    other = [
        CommandDecided(event_id="other-d", post_id="twice-1", occurred_at=AT, command_id="other-force",
                       command_type="ForceRepublishRequested", platforms=("facebook", "instagram"), is_retry=True,
                       forced=True),
        *[e for platform in ("facebook", "instagram") for e in (
            PublishAttempted(event_id=f"other-a-{platform}", post_id="twice-1", occurred_at=AT, platform=platform,
                             attempt_id=f"other-{platform}", attempt_number=2, command_id="other-force",
                             is_retry=True, forced=True),
            PlatformResult(event_id=f"other-r-{platform}", post_id="twice-1", occurred_at=AT, platform=platform,
                           attempt_id=f"other-{platform}", success=True, platform_post_id=f"{platform}-2"))],
    ]
    front = api.server.server.config.app.state.front
    front.on_accepted = lambda command: store_events(api, other)
    answer = api.client.post("/posts/twice-1/republish", json={"reason": "client photo update",
                                                                "command_id": "mine-force"})
    assert answer.status_code == 409, answer.text
    detail = answer.json()["detail"]
    assert "was published again after this republish was asked for (2 attempts since" in detail
    assert detail.endswith("This request (command mine-force) was not published")
    (sent,) = [decode_command(value) for _key, value in messages_on(api.bootstrap, api.topics.commands)]
    assert isinstance(sent, ForceRepublishRequested) and sent.seen_attempts == 2

    # The handler records it as publishing nothing. The same request sent again (a client that timed out) sees the
    # post as it is now, yet is that command: refused the same way, never a new republish.
    front.on_accepted = None
    state = api.stores.projection.get("twice-1")
    assert state is not None
    refused = decide(state, sent)
    store_events(api, [refused.to_event(sent, "mine-refused", AT)])
    again = api.client.post("/posts/twice-1/republish", json={"reason": "client photo update",
                                                               "command_id": "mine-force"})
    assert again.status_code == 409, again.text
    assert again.json()["detail"] == detail


def test_a_refused_field_is_told_in_the_services_own_words(api: RunningApi) -> None:
    add_account(api)
    answer = api.client.post("/posts", json=publish_body(content={"caption": "Autumn sale",
                                                                  "image_url": "ftp://cdn.example.com/a.jpg"}))
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", "content", "image_url"]
    assert "http(s) URL" in error["msg"] and not error["msg"].startswith("Value error")


def test_a_retry_that_would_publish_a_token_stored_since_the_post_was_submitted_is_refused_at_once(
        api: RunningApi) -> None:
    token = "LaterToken" + new_id()[-14:]
    api.stores.credentials.set_token("acme", "acme-user-token-0001", "1", "2")
    events = seed_events("post-later-token", facebook_ok=False)
    [submitted] = [e for e in events if isinstance(e, PostSubmitted)]
    assert submitted.content is not None
    events[events.index(submitted)] = submitted.model_copy(update={"content": submitted.content.model_copy(
        update={"caption": f"caption mentioning {token} here"})})
    store_events(api, events)
    # Stored as another account's token after the post was submitted.
    api.stores.credentials.set_token("other", token, "3", None)

    refused = api.client.post("/posts/post-later-token/retry", json={})

    # Not a 202 for a retry the handler would refuse and set aside, leaving its sender waiting.
    assert refused.status_code == 422, refused.text
    [problem] = refused.json()["detail"]
    assert problem["loc"] == ["body", "content", "caption"]
    assert problem["msg"] == ("the post's caption contains an access token: retry with it corrected (content.caption), "
                              "so that it is not published")
    assert token not in refused.text
    assert_nothing_on_commands(api)
    corrected = api.client.post("/posts/post-later-token/retry", json={"content": {"caption": "Autumn sale"}})
    assert corrected.status_code == 202, corrected.text


@pytest.mark.parametrize("stored_since", [False, True], ids=["taken out at import", "stored since the import"])
def test_a_retry_that_would_publish_an_imported_posts_token_is_refused_until_corrected(
        api: RunningApi, stored_since: bool) -> None:
    token = "another-shops-token-" + new_id()[-12:]
    api.stores.credentials.set_token("acme", "acme-user-token-0001", "1", "2")
    # As the projector folds the import: the token taken out of the caption, or still there when the projector
    # did not know it yet.
    caption = f"Autumn sale {token}" if stored_since else "Autumn sale [redacted]"
    store_events(api, [LegacyInsightsImported(
        event_id="imported-1", post_id="legacy-1", occurred_at=AT, publish_target="facebook", account="acme",
        content=PostContent(caption=caption, image_url="https://cdn.example.com/a.jpg"),
        document={"status": "failed", "insights": {"publish_results": [
            {"platform": "facebook", "success": False, "error": "Facebook photo upload failed: 500"}]},
            **({} if stored_since else {TAKEN_OUT: ["caption"]})})])
    if stored_since:
        api.stores.credentials.set_token("another-shop", token, "3", None)

    refused = api.client.post("/posts/legacy-1/retry", json={})

    # At once, with what to correct: not a 202 for a retry the handler would refuse.
    assert refused.status_code == 422, refused.text
    [problem] = refused.json()["detail"]
    assert problem["loc"] == ["body", "content", "caption"]
    assert ("contains an access token" if stored_since else "had an access token taken out") in problem["msg"]
    assert_nothing_on_commands(api)
    corrected = api.client.post("/posts/legacy-1/retry", json={"content": {"caption": "Autumn sale"}})
    assert corrected.status_code == 202, corrected.text


def test_a_retry_of_an_imported_post_with_nothing_left_to_publish_says_so_whatever_its_content_lost(
        api: RunningApi) -> None:
    store_events(api, [LegacyInsightsImported(
        event_id="imported-1", post_id="legacy-1", occurred_at=AT, publish_target="facebook", account="acme",
        content=PostContent(caption="Autumn sale [redacted]", image_url="https://cdn.example.com/a.jpg"),
        document={"status": "posted", "post_url": "https://www.facebook.com/747917475065823_1",
                  TAKEN_OUT: ["caption"]})])

    answer = api.client.post("/posts/legacy-1/retry", json={})

    # Not "correct the caption": there is nothing to publish (the CLI shows the post, as for any other).
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"].startswith("Nothing to retry: Facebook already succeeded")


def test_a_retry_of_an_imported_post_that_may_have_gone_out_everywhere_says_to_look_then_republish(
        api: RunningApi) -> None:
    # The old system was publishing it and kept nothing: it may be on both platforms already.
    store_events(api, [LegacyInsightsImported(
        event_id="imported-2", post_id="legacy-2", occurred_at=AT, publish_target="both", account="acme",
        content=PostContent(caption="Autumn sale", image_url="https://cdn.example.com/a.jpg"),
        document={"status": "publishing"})])

    answer = api.client.post("/posts/legacy-2/retry", json={})

    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"] == (
        "Nothing to retry: Facebook and Instagram may have gone out under the old system, which kept no result for "
        "them; check Facebook for the post: if it is there, record it (POST /posts/legacy-2/resolve naming facebook, "
        "published, with its id); if not, republish Facebook (POST /posts/legacy-2/republish naming facebook in "
        "platforms). A retry leaves it alone, as it may have gone out; check Instagram for the post: if it is there, "
        "record it (POST /posts/legacy-2/resolve naming instagram, published, with its id); if not, republish "
        "Instagram (POST /posts/legacy-2/republish naming instagram in platforms). A retry leaves it alone, as it may "
        "have gone out")
    # Not found there is no resolution: a republish is.
    not_there = api.client.post("/posts/legacy-2/resolve", json={"platform": "facebook", "published": False})
    assert not_there.status_code == 409 and "if it is not on Facebook, republish it" in not_there.text
    assert_nothing_on_commands(api)
    # Found there, with its id: it goes to Kafka, for the handler to record.
    found = api.client.post("/posts/legacy-2/resolve", json={"platform": "instagram", "published": True,
                                                             "platform_post_id": "18107758234627017"})
    assert found.status_code == 202, found.text
    # Republished where someone looked and did not find it: it goes to Kafka.
    forced = api.client.post("/posts/legacy-2/republish", json={"reason": "not on the Page",
                                                                "platforms": ["facebook"]})
    assert forced.status_code == 202, forced.text
    assert [decode_command(value).type for _key, value in messages_on(api.bootstrap, api.topics.commands)] == [
        "ResolveAttemptRequested", "ForceRepublishRequested"]


def test_metrics_count_an_imported_post_waiting_for_someone_to_look(api: RunningApi) -> None:
    # The old system says when it went out and that Instagram failed: Facebook may be there.
    store_events(api, [LegacyInsightsImported(
        event_id="imported-3", post_id="legacy-3", occurred_at=AT, publish_target="both", account="acme",
        content=PostContent(caption="Autumn sale", image_url="https://cdn.example.com/a.jpg"),
        document={"status": "failed", "insights": {"published_at": "2025-11-17T10:10:13Z"},
                  "error_message": "instagram: Instagram media upload failed: 400 - Invalid parameter"})])
    # A draft imported without its account: it asks for one, as the API says.
    store_events(api, [LegacyInsightsImported(
        event_id="imported-4", post_id="legacy-4", occurred_at=AT, publish_target="instagram",
        content=PostContent(caption="Autumn sale", image_url="https://cdn.example.com/a.jpg"),
        document={"status": "draft"})])
    text = api.client.get("/metrics").text
    assert ('smartretry_posts_needing_action{action="check Facebook for the post, then record or republish it",'
            'platform="facebook"} 1.0') in text
    assert api.client.get("/posts/legacy-4").json()["needed_action"] == {
        "instagram": "retry naming the account to publish with"}
    assert ('smartretry_posts_needing_action{action="retry naming the account to publish with",platform="instagram"} '
            '1.0') in text


def test_a_republish_saying_what_it_was_decided_on_is_refused_once_the_post_was_published_again_since(
        api: RunningApi) -> None:
    # A client that read the post with one attempt; another republish (sent at the same moment) has made a second.
    store_post(api, "post-seen", facebook_ok=True)
    attempts = len(api.client.get("/posts/post-seen").json()["attempts"])

    answer = api.client.post("/posts/post-seen/republish", json={"reason": "new photo", "platforms": ["facebook"],
                                                                 "seen_attempts": attempts - 1})

    assert answer.status_code == 409, answer.text
    assert "was published again after this republish was asked for (1 attempt since" in answer.json()["detail"]
    assert_nothing_on_commands(api)
    bad = api.client.post("/posts/post-seen/republish", json={"reason": "new photo", "seen_attempts": -1})
    assert bad.status_code == 422 and "seen_attempts" in bad.text
    # What it saw is what the post has: it goes to Kafka carrying that count.
    sent = api.client.post("/posts/post-seen/republish", json={"reason": "new photo", "platforms": ["facebook"],
                                                               "seen_attempts": attempts})
    assert sent.status_code == 202, sent.text
    (command,) = [decode_command(value) for _key, value in messages_on(api.bootstrap, api.topics.commands)]
    assert isinstance(command, ForceRepublishRequested) and command.seen_attempts == attempts


def test_a_database_lost_after_the_command_was_taken_answers_202_naming_the_command_and_the_rest_503(
        kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    """The command is on Kafka, so it will be published: the caller must not be led to send a second one."""
    home = tmp_path / "db"
    home.mkdir()
    settings = api_settings(kafka_bootstrap, topics, f"sqlite:///{home}/projection.db")
    stores = open_stores(settings)
    stores.credentials.set_token("acme", "acme-user-token-0001", "747917475065823", "17841400000000000")
    sync_producer = producer(kafka_bootstrap)
    app = create_app(settings, stores, sync_producer)
    front = app.state.front
    sent = front.send

    async def send_then_lose_the_database(topic: str, key: str, value: bytes) -> None:
        await sent(topic, key, value)
        home.rename(tmp_path / "gone")  # the database away: every new connection fails
        stores.engine.dispose()

    front.send = send_then_lose_the_database
    server = serve_in_thread(app, "127.0.0.1", free_port())
    try:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=30) as client:
            answer = client.post("/posts", json=publish_body(command_id="cmd-dbgone"))
            front.send = sent
            detail = client.get(f"/posts/{answer.json()['post']['id']}")
            metrics = client.get("/metrics")
            (tmp_path / "gone").rename(home)  # back
            back = client.get("/metrics")
    finally:
        server.stop()
        sync_producer.flush(5)
        stores.engine.dispose()

    assert answer.status_code == 202, answer.text
    document = answer.json()
    post_id = document["post"]["id"]
    assert document["command_id"] == "cmd-dbgone" and document["pending"] is True
    assert document["location"] == f"/posts/{post_id}"
    assert document["note"].startswith("accepted: the service carries it out, but its results cannot be shown yet "
                                       "(the database is unavailable (OperationalError))")
    # A request that named no post gets a new one: sent again with the command id alone, it would be another post.
    assert f'send it with "command_id": "cmd-dbgone" and "post_id": "{post_id}"' in document["note"]
    [(_key, value)] = messages_on(kafka_bootstrap, topics.commands)
    assert decode_command(value).command_id == "cmd-dbgone"

    assert detail.status_code == 503 and detail.headers["Retry-After"] == "5"
    # The error's class, not the driver's words (they name hosts and users): those are in the log.
    assert detail.json()["detail"].startswith("the database is unavailable (OperationalError): try again shortly")
    assert metrics.status_code == 200
    assert "smartretry_database_up 0.0" in metrics.text and "smartretry_kafka_up 1.0" in metrics.text
    assert f'smartretry_topic_messages{{topic="{topics.commands}"}} 1.0' in metrics.text
    assert "smartretry_posts{" not in metrics.text  # the store's figures are left out, not shown as zeros
    assert "smartretry_database_up 1.0" in back.text and 'smartretry_posts{status="failed"} 0.0' in back.text


def test_a_command_taken_whose_results_fail_to_be_read_for_any_reason_is_answered_202(
        api: RunningApi, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    add_account(api)
    sent: list[str] = []

    def exhausted(_post_id: str) -> None:
        if sent:  # read after the command went: the pool has no connection to give
            raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")
        return None

    original = api_module.FrontDoor._submit

    async def submit(self: object, command: object, wait: bool = True) -> object:
        sent.append("yes")
        return await original(self, command, wait)  # type: ignore[arg-type]

    monkeypatch.setattr(api_module.FrontDoor, "_submit", submit)
    monkeypatch.setattr(api.stores.projection, "get", exhausted)
    answer = api.client.post("/posts", json=publish_body(command_id="cmd-pool"))
    assert answer.status_code == 202, answer.text
    assert answer.json()["command_id"] == "cmd-pool"
    assert "its results cannot be shown yet (they could not be read (TimeoutError))" in answer.json()["note"]
    [(_key, value)] = messages_on(api.bootstrap, api.topics.commands)
    assert decode_command(value).command_id == "cmd-pool"


def test_a_sqlite_database_whose_write_lock_is_held_is_said_to_be_busy_not_away() -> None:
    # The projector holds SQLite's write lock while a batch waits for Kafka; a token stored meanwhile waits for it.
    locked = OperationalError("UPDATE accounts", {}, sqlite3.OperationalError("database is locked"))
    assert api_module.database_unreachable(locked) == "the database is busy (OperationalError: database is locked)"
    gone = OperationalError("SELECT 1", {}, sqlite3.OperationalError("unable to open database file"))
    assert api_module.database_unreachable(gone) == "the database is unavailable (OperationalError)"
    # And it is held for less than the others wait for it, so they get in between the projector's tries.
    assert DELIVERY_WAIT < SQLITE_BUSY_TIMEOUT
