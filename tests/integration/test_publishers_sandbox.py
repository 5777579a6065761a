"""The sandbox Graph API itself, over raw HTTP: Meta-shaped answers, token checks and its control API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from publishers.sandbox import (
    DEMO_IG_USER_ID,
    DEMO_PAGE_ID,
    DEMO_PAGE_TOKEN,
    DEMO_USER_TOKEN,
    SandboxControl,
)

pytestmark = pytest.mark.usefixtures("tokens_kept_out_of_logs")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def graph(sandbox: SandboxControl) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.base_url, timeout=2.0) as client:
        yield client


@pytest.mark.parametrize("prefix", ["/v21.0", "/v24.0", "/v27.0", ""])
def test_any_graph_version_prefix_is_accepted(graph: httpx.Client, prefix: str) -> None:
    response = graph.get(f"{prefix}/{DEMO_PAGE_ID}", params={"fields": "access_token"},
                         headers=bearer(DEMO_USER_TOKEN))

    assert response.status_code == 200
    assert response.json() == {"id": DEMO_PAGE_ID, "name": "Sandbox Page", "access_token": DEMO_PAGE_TOKEN}


def test_answers_carry_meta_usage_headers(graph: httpx.Client) -> None:
    response = graph.post(f"/v24.0/{DEMO_PAGE_ID}/feed", data={"message": "hi"}, headers=bearer(DEMO_PAGE_TOKEN))

    assert set(json.loads(response.headers["x-app-usage"])) == {"call_count", "total_cputime", "total_time"}
    [usage] = json.loads(response.headers["x-business-use-case-usage"])[DEMO_PAGE_ID]
    assert usage["type"] == "pages" and "estimated_time_to_regain_access" in usage


def test_an_unknown_object_gets_meta_s_error_envelope(graph: httpx.Client) -> None:
    response = graph.get("/v24.0/999999", headers=bearer(DEMO_USER_TOKEN))

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["error_subcode"], error["type"]) == (100, 33, "GraphMethodException")
    assert error["fbtrace_id"] and error["is_transient"] is False


def test_token_checks(graph: httpx.Client, sandbox: SandboxControl) -> None:
    missing = graph.post(f"/v24.0/{DEMO_PAGE_ID}/feed", data={"message": "hi"})
    user_token_on_a_page_edge = graph.post(f"/v24.0/{DEMO_PAGE_ID}/feed", data={"message": "hi"},
                                           headers=bearer(DEMO_USER_TOKEN))
    in_the_body = graph.post(f"/v24.0/{DEMO_PAGE_ID}/feed", data={"message": "hi", "access_token": DEMO_PAGE_TOKEN})
    sandbox.revoke(DEMO_USER_TOKEN)
    derived_page_token = graph.post(f"/v24.0/{DEMO_PAGE_ID}/feed", data={"message": "again"},
                                    headers=bearer(DEMO_PAGE_TOKEN))

    assert missing.json()["error"]["code"] == 104
    assert user_token_on_a_page_edge.json()["error"]["code"] == 200
    assert in_the_body.status_code == 200
    assert (derived_page_token.json()["error"]["code"], derived_page_token.json()["error"]["error_subcode"]) == (
        190, 460)
    assert sandbox.counters()["facebook"][DEMO_PAGE_ID] == 1


def test_faults_apply_to_the_next_n_calls_only(graph: httpx.Client, sandbox: SandboxControl) -> None:
    sandbox.fail_next("facebook", "feed", code=2, http_status=503, is_transient=True, times=2)

    statuses = [graph.post(f"/v24.0/{DEMO_PAGE_ID}/feed", data={"message": f"post {i}"},
                           headers=bearer(DEMO_PAGE_TOKEN)).status_code for i in range(3)]

    assert statuses == [503, 503, 200]
    assert sandbox.counters()["facebook"][DEMO_PAGE_ID] == 1


def test_latency_delays_the_answer(graph: httpx.Client, sandbox: SandboxControl) -> None:
    sandbox.add_latency("instagram", 0.2, endpoint="content_publishing_limit")
    started = time.monotonic()

    response = graph.get(f"/v24.0/{DEMO_IG_USER_ID}/content_publishing_limit", headers=bearer(DEMO_USER_TOKEN))

    assert time.monotonic() - started >= 0.2
    assert response.json() == {"data": [{"quota_usage": 0, "config": {"quota_total": 50, "quota_duration": 86400}}]}


def test_publish_then_drop_creates_the_post_but_never_answers(graph: httpx.Client, sandbox: SandboxControl) -> None:
    sandbox.drop_after("facebook", "feed")

    with pytest.raises(httpx.RemoteProtocolError):
        graph.post(f"/v24.0/{DEMO_PAGE_ID}/feed", data={"message": "lost answer"}, headers=bearer(DEMO_PAGE_TOKEN))

    [post] = sandbox.posts()
    assert post["message"] == "lost answer"


def test_reset_forgets_posts_faults_and_accounts_but_keeps_the_demo_account(sandbox: SandboxControl) -> None:
    sandbox.register_account("222", "333", "sandbox-other-user-token")
    sandbox.fail_next("facebook", "*", code=1, times=10)
    sandbox.drop_after("instagram", "media")

    sandbox.reset()

    assert sandbox.counters() == {"facebook": {DEMO_PAGE_ID: 0}, "instagram": {DEMO_IG_USER_ID: 0}}
    assert sandbox.posts() == []


def test_ids_are_never_handed_out_twice_also_after_a_reset(graph: httpx.Client, sandbox: SandboxControl) -> None:
    # As Meta's: a post on record must never share its id with a later one (a look-up excludes the ids on record).
    def post() -> str:
        answer = graph.post(f"/v24.0/{DEMO_PAGE_ID}/feed", data={"message": "hello"}, headers=bearer(DEMO_PAGE_TOKEN))
        return str(answer.json()["id"])

    before = post()
    sandbox.reset()
    after = post()

    assert before != after


def test_a_fault_on_an_unknown_endpoint_is_refused(sandbox: SandboxControl) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        sandbox.fail_next("facebook", "stories", code=1)


def test_the_control_api_takes_json_as_curl_sends_it_and_says_what_a_fault_needs(
        graph: httpx.Client, sandbox: SandboxControl) -> None:
    # `curl -d '{...}'` says application/x-www-form-urlencoded: the body is JSON all the same.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    fault = json.dumps({"platform": "facebook", "endpoint": "photos", "code": 2, "http_status": 500})
    assert graph.post("/_sandbox/faults", content=fault, headers=form).json() == {"ok": True}
    refused = graph.post(f"/{DEMO_PAGE_ID}/photos", data={"url": "https://cdn.example.com/a.jpg"},
                         headers=bearer(DEMO_PAGE_TOKEN))
    assert refused.status_code == 500 and refused.json()["error"]["code"] == 2

    missing = graph.post("/_sandbox/faults", json={"code": 2})
    assert missing.status_code == 400 and "a fault needs platform and endpoint" in missing.json()["error"]
    unknown = graph.post("/_sandbox/faults", json={"platform": "facebook", "endpoint": "photos", "colour": "red"})
    assert unknown.status_code == 400 and "(not colour)" in unknown.json()["error"]
    assert graph.post("/_sandbox/faults", content=b"not json").status_code == 400
    for times in (0, -1, "2"):
        none = graph.post("/_sandbox/faults", json={"platform": "facebook", "endpoint": "photos", "times": times})
        assert none.status_code == 400 and "at least 1" in none.json()["error"], times


@pytest.mark.parametrize(("action", "body", "said"), [
    ("faults", {"platform": "facebook", "endpoint": "photos", "mode": "eror"},
     "a fault's mode is one of error, drop, hang, error_after, not 'eror'"),
    ("faults", {"platform": "facebok", "endpoint": "photos"}, "platform must be one of facebook, instagram"),
    ("latency", {"platform": "facebook", "endpoint": "photo", "seconds": 2}, "facebook's endpoints are page_token"),
    ("latency", {"platform": "facebook", "endpoint": "photos", "seconds": -1}, "latency seconds must be from 0 to"),
    ("latency", {"platform": "facebook", "endpoint": "photos", "seconds": 1e308}, "latency seconds must be from 0 to"),
    ("faults", {"platform": "facebook", "endpoint": "photos", "http_status": 99}, "an HTTP status (100 to 599)"),
    ("containers", {"next_status": "ERROR", "times": -1}, "a container's times is how many containers end so"),
    ("reject-spaces", {"platform": "facebook", "enabled": "no"}, "enabled is true or false, not 'no'"),
    ("containers", {"next_status": "BOGUS"}, "a container's next_status is one of FINISHED, ERROR, EXPIRED"),
    ("containers", {"delay_s": -3}, "a container's delay_s must be from 0 to"),
    ("faults", {"platform": "facebook", "endpoint": "photos", "mode": "hang", "hang_s": -1},
     "a fault's hang_s must be from 0 to"),
    ("faults", {"platform": "facebook", "endpoint": "photos", "skip": -2}, "a fault's skip is how many calls"),
    ("reject-spaces", {"platform": "facebok"}, "platform must be one of facebook, instagram"),
    ("publish-limit", {"limit": -1}, "the publish limit must be 0 or more"),
])
def test_a_control_request_with_a_value_it_does_not_know_is_refused_and_changes_nothing(
        graph: httpx.Client, sandbox: SandboxControl, action: str, body: dict[str, object], said: str) -> None:
    # A typo must never set another fault than the one meant (an unknown mode published, then dropped the answer).
    refused = graph.post(f"/_sandbox/{action}", json=body)

    assert refused.status_code == 400 and said in refused.json()["error"]
    published = graph.post(f"/{DEMO_PAGE_ID}/photos", data={"url": "https://cdn.example.com/a.jpg"},
                           headers=bearer(DEMO_PAGE_TOKEN))
    assert published.status_code == 200 and "post_id" in published.json()


def test_the_command_line_prints_its_url_and_serves() -> None:
    process = subprocess.Popen([sys.executable, "-m", "publishers.sandbox", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        url = first_line.rsplit(" ", 1)[-1].strip()
        assert first_line.startswith("Sandbox Graph API listening at http://127.0.0.1:")
        assert httpx.get(f"{url}/_sandbox/health", timeout=2).json() == {"ok": True}
        assert DEMO_USER_TOKEN not in process.stdout.readline()
    finally:
        process.terminate()
        process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()
