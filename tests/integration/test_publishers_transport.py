"""The handler's Graph API transport (httpx over aiohttp) against the sandbox: what the publishers see is httpx's."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from publishers.base import AccountCredentials, Publisher, build_publishers
from publishers.sandbox import DEMO_PAGE_ID, DEMO_USER_TOKEN, SandboxControl
from publishers.transport import AiohttpTransport
from schemas.commands import PostContent
from schemas.common import ErrorKind, Platform
from tests.support.sandbox import FAST_POLLING, GRAPH_VERSION

PHOTO = PostContent(caption="Autumn sale starts today", image_url="https://cdn.example.com/autumn-sale.jpg")


def _client(timeout: float = 2.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), transport=AiohttpTransport(max_connections=4))


@pytest.fixture
async def over_aiohttp(sandbox: SandboxControl) -> AsyncIterator[dict[Platform, Publisher]]:
    async with _client() as client:
        yield build_publishers(client, sandbox.base_url, GRAPH_VERSION, polling=FAST_POLLING)


async def test_both_platforms_publish_through_it(
    over_aiohttp: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl,
    tokens_kept_out_of_logs: set[str],
) -> None:
    facebook = await over_aiohttp["facebook"].publish(PHOTO, demo_account, attempt_id="a1")
    instagram = await over_aiohttp["instagram"].publish(PHOTO, demo_account, attempt_id="a2")

    assert facebook.success and instagram.success
    posts = {post["id"]: post for post in sandbox.posts()}
    assert facebook.platform_post_id in posts and instagram.platform_post_id in posts
    assert facebook.permalink is None
    assert instagram.permalink == posts[instagram.platform_post_id]["permalink"]


async def test_requests_and_answers_pass_unchanged(sandbox: SandboxControl) -> None:
    """Query, bearer header and form body reach the platform; status, headers and JSON body come back."""
    async with _client() as client:
        page = await client.get(f"{sandbox.base_url}/{GRAPH_VERSION}/{DEMO_PAGE_ID}",
                                params={"fields": "access_token"},
                                headers={"Authorization": f"Bearer {DEMO_USER_TOKEN}"})
        refused = await client.post(f"{sandbox.base_url}/{GRAPH_VERSION}/{DEMO_PAGE_ID}/feed",
                                    data={"message": "hello"}, headers={"Authorization": "Bearer not-a-token"})

    assert page.status_code == 200 and page.json()["access_token"]
    assert page.headers["content-type"].startswith("application/json")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == 190


async def test_an_error_envelope_is_classified_as_over_httpx(
    over_aiohttp: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.fail_next("facebook", "photos", code=190)

    outcome = await over_aiohttp["facebook"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH
    assert not outcome.outcome_unknown


async def test_a_dropped_answer_to_a_publish_leaves_the_outcome_unknown(
    over_aiohttp: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    started = datetime.now(UTC)
    sandbox.drop_after("facebook", "photos")

    outcome = await over_aiohttp["facebook"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    assert "closed the connection" in outcome.error.message
    # The post went out and the answer was lost: it is looked up, never published again blindly.
    assert outcome.outcome_unknown
    found = await over_aiohttp["facebook"].find_existing(PHOTO, demo_account, attempt_id="a1", container_id=None,
                                                         attempted_at=started)
    assert found is not None and found.success
    assert len(sandbox.posts()) == 1


async def test_a_timeout_after_sending_leaves_the_outcome_unknown(
    demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.hang_next("facebook", "photos", seconds=5)
    async with _client(timeout=0.3) as impatient:
        facebook = build_publishers(impatient, sandbox.base_url, GRAPH_VERSION, polling=FAST_POLLING)["facebook"]
        outcome = await facebook.publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    assert "timed out" in outcome.error.message
    assert outcome.outcome_unknown


async def test_no_connection_means_the_request_never_left(demo_account: AccountCredentials) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with _client() as client:
        facebook = build_publishers(client, f"http://127.0.0.1:{port}", GRAPH_VERSION)["facebook"]
        outcome = await facebook.publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    assert "could not connect" in outcome.error.message
    # Safe to publish again: nothing reached the platform.
    assert not outcome.outcome_unknown
