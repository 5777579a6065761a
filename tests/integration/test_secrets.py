"""Secrets and access: no token used in a run appears anywhere the service writes, and the API needs its key.

The run uses real tokens the way people will: set through the API, published with, revoked (Meta answers
190), unknown to Meta (which echoes them back in its error), replaced by re-authentication, with
automatic retries, and pasted into bad input. Then every log, every message of every topic (dead letters
included, their original bytes decoded) and every cell of the database is searched for them.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from schemas.commands import PostContent, PublishRequested
from schemas.envelope import encode
from smartretry.api import create_app, serve_in_thread
from smartretry.credentials import CredentialStore
from streams.broker import free_port
from streams.kafka import producer
from tests.integration.test_api import RunningApi, api_fixture, messages_on  # noqa: F401 - the `api` fixture
from tests.support.secrets import Finding, database_cells, find_tokens, meta_shaped_token, topic_texts
from tests.support.service import Service

pytestmark = pytest.mark.integration

API_KEY = "secrets-api-key-91b0"
ACCOUNT = "acme-secrets"
PAGE_ID = "555000111222333"
IG_USER_ID = "17841400555000111"
IMAGE = "https://cdn.example.com/autumn-sale.jpg"
BAD_COMMAND_KEY = "bad-command-with-tokens"
BAD_EVENT_KEY = "bad-event-with-tokens"
PASTED_COMMAND_KEY = "pasted-by-the-test"


@pytest.fixture(name="client")
def client_fixture(service: Service) -> Iterator[httpx.Client]:
    settings = service.settings.model_copy(update={"api_key": SecretStr(API_KEY), "api_wait_seconds": 60.0})
    server = serve_in_thread(create_app(settings, service.stores, producer(service.bootstrap)), "127.0.0.1",
                             free_port())
    client = httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=120)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def _set_token(client: httpx.Client, token: str) -> httpx.Response:
    answer = client.put(f"/accounts/{ACCOUNT}/token", json={"token": token, "page_id": PAGE_ID,
                                                           "ig_user_id": IG_USER_ID})
    assert answer.status_code == 200, answer.text
    return answer


def _publish(client: httpx.Client, caption: str) -> dict[str, object]:
    answer = client.post("/posts", json={"content": {"caption": caption, "image_url": IMAGE},
                                         "publish_target": "both", "account": ACCOUNT})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _retry(client: httpx.Client, post_id: str) -> dict[str, object]:
    answer = client.post(f"/posts/{post_id}/retry", json={})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _wait_for_dead_letters(service: Service, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(messages_on(service.bootstrap, service.topics.dead_letters)) < count:
        assert time.monotonic() < deadline, "the dead letters of the bad input did not arrive"
        time.sleep(0.5)


def test_no_token_used_in_a_run_appears_in_logs_topics_database_or_dead_letters(
        service: Service, client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    sandbox = service.sandbox
    first = meta_shaped_token()
    first_page = sandbox.register_account(PAGE_ID, IG_USER_ID, first, page_token=meta_shaped_token())
    unknown_to_meta = meta_shaped_token()  # Meta echoes a token it cannot parse in its 190 error
    plain = f"plain-user-token-{secrets.token_hex(12)}"  # not Meta-shaped: only known secrets scrub it
    renewed = meta_shaped_token()
    # Not shaped like Meta's either: known to the service only as the Page token the handler fetched.
    renewed_page = sandbox.register_account(PAGE_ID, IG_USER_ID, renewed,
                                            page_token=f"plain-page-token-{secrets.token_hex(12)}")
    never_used = meta_shaped_token()
    other_shop = f"another-shops-token-{secrets.token_hex(12)}"  # stored late, never used to publish
    tokens = [first, first_page, unknown_to_meta, plain, renewed, renewed_page, never_used, other_shop]
    answers: list[httpx.Response] = []

    # Published with the first token, through an automatic retry of a transient error.
    answers.append(_set_token(client, first))
    sandbox.fail_next("facebook", "photos", code=2, http_status=500, is_transient=True)
    published = _publish(client, "Published through one transient error")
    assert published["success"] is True

    # Revoked: both platforms answer 190.
    sandbox.revoke(first)
    revoked = _publish(client, "Published with a revoked token")
    assert revoked["success"] is False
    assert "re-authenticate" in client.get(f"/posts/{dict(revoked['post'])['id']}").text  # type: ignore[call-overload]

    # Tokens Meta does not know: its error repeats them.
    answers.append(_set_token(client, unknown_to_meta))
    echoed = _retry(client, str(dict(revoked["post"])["id"]))  # type: ignore[call-overload]
    assert echoed["success"] is False
    answers.append(_set_token(client, plain))
    echoed_plain = _publish(client, "Published with a token Meta never issued")
    assert echoed_plain["success"] is False
    # Meta's echo reached the service, and what it recorded shows only that a token was there.
    assert "Malformed access token [redacted]" in json.dumps(echoed) + json.dumps(echoed_plain)

    # Re-authentication, then both failed posts go out.
    answers.append(_set_token(client, renewed))
    for failed in (revoked, echoed_plain):
        assert _retry(client, str(dict(failed["post"])["id"]))["success"] is True  # type: ignore[call-overload]

    # The Page token the handler fetched to publish is kept (encrypted) where every process reads the tokens: the
    # API and the projector know it, as does the handler after a restart.
    key = service.settings.secret_key.get_secret_value()
    assert renewed_page in CredentialStore(service.stores.engine, key).stored_tokens()

    # Bad input with tokens pasted in: to the handler, the projector and the API.
    service.send_raw(json.dumps({"type": "PublishRequested", "access_token": renewed, "caption": f"{first} {plain}",
                                 "token": never_used}).encode(), key=BAD_COMMAND_KEY.encode())
    bad_event = producer(service.bootstrap)
    bad_event.produce(service.topics.post_events, key=BAD_EVENT_KEY.encode(), value=json.dumps({
        "type": "PlatformResult", "post_id": "p1", "platform": "myspace",
        "error": {"message": f"Malformed access token {renewed} / {never_used}"}}).encode())
    assert bad_event.flush(30) == 0
    answers.append(client.post("/posts", json={"content": {"caption": "x", "image_url": IMAGE},
                                               "publish_target": "both", "account": ACCOUNT,
                                               "access_token": renewed}))
    answers.append(client.put(f"/accounts/{ACCOUNT}/token", json={"token": never_used, "page_id": "not-digits"}))
    answers.append(client.post("/posts", json={"content": {"caption": never_used * 40, "image_url": IMAGE},
                                               "publish_target": "both", "account": ACCOUNT}))
    # Pasted into a caption (a token not shaped like Meta's: known to the service as the account's once),
    # and into a corrected image URL: refused, never published.
    answers.append(client.post("/posts", json={"content": {"caption": f"our token is {plain} oops", "image_url": IMAGE},
                                               "publish_target": "both", "account": ACCOUNT}))
    answers.append(client.post(f"/posts/{dict(published['post'])['id']}/republish",  # type: ignore[call-overload]
                               json={"reason": "new image", "content": {"image_url": f"{IMAGE}?t={renewed}"}}))
    # The Page token the handler (another process) fetched to publish: the API knows it from the store.
    answers.append(client.post("/posts", json={"content": {"caption": f"page token {renewed_page}",
                                                           "image_url": IMAGE},
                                               "publish_target": "both", "account": ACCOUNT}))
    assert [a.status_code for a in answers[-6:]] == [422, 422, 422, 422, 422, 422]
    assert answers[-3].json()["detail"][0]["loc"] == ["body", "content", "caption"]
    assert answers[-2].json()["detail"][0]["loc"] == ["body", "content", "image_url"]
    assert answers[-1].json()["detail"][0]["loc"] == ["body", "content", "caption"]
    # The same, as valid commands straight on Kafka: the handler refuses them before anything is written,
    # Meta-shaped or not, even a token stored a moment ago that no process has used yet, or one replaced by
    # re-authentication (it may still work).
    answers.append(client.put("/accounts/another-shop/token", json={"token": other_shop, "page_id": "111222333"}))
    for number, token in enumerate((renewed, other_shop, plain, renewed_page)):
        pasted = PublishRequested(command_id=f"pasted-{number}", post_id=f"pasted-post-{number}",
                                  publish_target="both", account=ACCOUNT, requested_at=datetime.now(UTC),
                                  content=PostContent(caption=f"our token is {token}", image_url=IMAGE))
        service.send_raw(encode(pasted), key=PASTED_COMMAND_KEY.encode())
    _wait_for_dead_letters(service, 6)
    for number in range(4):
        assert service.stores.projection.get(f"pasted-post-{number}") is None
    assert not [p for p in sandbox.posts() if "our token is" in str(p.get("message") or p.get("caption"))]

    # The scan was worth doing: the service did see tokens, and scrubbed them.
    assert "[redacted]" in service.handler.output()
    assert service.stores.credentials.get(ACCOUNT).user_token.get_secret_value() == renewed

    places: list[tuple[str, str]] = [
        ("handler log", service.handler.output()),
        ("projector log", service.projector.output()),
        ("test process log", caplog.text),
        *((f"API answer {a.request.method} {a.request.url.path}", a.text) for a in answers),
    ]
    for topic in (service.topics.commands, service.topics.post_events, service.topics.insights,
                  service.topics.dead_letters):
        places += list(topic_texts(service.bootstrap, topic))
    cells = list(database_cells(service.stores.engine))
    assert {where.split(".")[0] for where, _ in cells} >= {"accounts", "posts", "tracking"}
    places += cells

    # The two bad messages this test wrote itself hold tokens, as sent: the promise is about what the
    # service writes, so they are the only messages left out (their dead letters are scanned).
    written_by_the_test = (f"[{BAD_COMMAND_KEY}] value", f"[{BAD_EVENT_KEY}] value", f"[{PASTED_COMMAND_KEY}] value")
    findings: list[Finding] = []
    for where, text in places:
        if not where.endswith(written_by_the_test):
            findings += find_tokens(where, text, tokens)
    assert not findings, "tokens found:\n" + "\n".join(str(f) for f in findings[:20])


# ----------------------------------------------------------------------------------------------- access

# What may answer without the key: health, the API's own documentation, the login form, and /ui, which
# only redirects to the post list (which then asks for the key).
OPEN = {("GET", "/healthz"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"), ("GET", "/ui"), ("GET", "/ui/login"), ("POST", "/ui/login")}


def _operations(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app serves, read from its routes, included routers too; HEAD aside."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        # FastAPI keeps an included router as one route holding the routes it brings.
        contexts = getattr(route, "effective_route_contexts", None)
        entries = contexts() if callable(contexts) else contexts if contexts is not None else [route]
        for entry in entries:
            methods = getattr(entry, "methods", None)
            if methods:
                found |= {(method, str(getattr(entry, "path", ""))) for method in methods if method != "HEAD"}
    return found


def _concrete(path: str) -> str:
    return path.replace("{post_id}", "post-1").replace("{account}", "acme")


WRONG_KEYS: list[dict[str, str]] = [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"},
                                    {"Authorization": API_KEY}, {"X-API-Key": ""}]


def test_every_endpoint_of_the_app_but_health_refuses_a_request_without_a_valid_key(api: RunningApi) -> None:
    """Every route of the app, read from the app itself, so a new endpoint is covered the day it is added."""
    operations = _operations(create_app(api.settings, api.stores, api.producer))
    documented = {(method.upper(), path) for path, item in api.anonymous.get("/openapi.json").json()["paths"].items()
                  for method in item}
    # The OpenAPI document lists no endpoint the walk above missed.
    assert documented <= operations
    assert {("GET", "/healthz"), ("POST", "/posts"), ("GET", "/ui/posts")} <= operations
    assert api.anonymous.get("/healthz").status_code == 200
    for method, path in sorted(operations - OPEN):
        for headers in WRONG_KEYS:
            answer = api.anonymous.request(method, _concrete(path), headers=headers, json={},
                                           follow_redirects=False)
            if path.startswith("/ui/"):
                # A page sends a browser to the login form instead.
                assert answer.status_code == 303, (method, path, headers, answer.status_code)
                assert answer.headers["location"].startswith("/ui/login"), (method, path)
            else:
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert "API key" in answer.json()["detail"]
    assert messages_on(api.bootstrap, api.topics.commands) == []


def test_what_answers_without_the_key_gives_nothing_away(api: RunningApi) -> None:
    assert api.anonymous.get("/ui", follow_redirects=False).headers["location"] == "/ui/posts"
    login = api.anonymous.get("/ui/login")
    assert login.status_code == 200
    assert API_KEY not in login.text
