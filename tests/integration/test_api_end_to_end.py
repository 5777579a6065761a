"""The seed's API responses through the whole service: the API waits for the handler's results and answers 200."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from pydantic import SecretStr

from publishers.sandbox import DEMO_ACCOUNT_ID, DEMO_IG_USER_ID, DEMO_PAGE_ID
from smartretry.api import ApiServer, create_app, serve_in_thread
from smartretry.settings import Settings
from streams.broker import free_port
from streams.kafka import producer
from tests.support.service import Service, service, shared_sandbox  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

API_KEY = "e2e-api-key-77c1"
SPACE_URL = "https://cdn.example.com/autumn sale.jpg"
FIXED_URL = "https://cdn.example.com/autumn-sale.jpg"
FB_ERROR = "Facebook photo upload failed: 400 - Missing or invalid image file"


@dataclass
class ServiceApi:
    service: Service
    server: ApiServer
    client: httpx.Client
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(name="service_api")
def service_api_fixture(service: Service) -> Iterator[ServiceApi]:  # noqa: F811 - the fixture imported above
    """The API in front of the running service; generous waits, since the handler may still be joining."""
    settings = service.settings.model_copy(update={"api_key": SecretStr(API_KEY), "api_wait_seconds": 30.0})
    server = serve_in_thread(create_app(settings, service.stores, producer(service.bootstrap)), "127.0.0.1",
                             free_port())
    client = httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=60)
    try:
        yield ServiceApi(service, server, client, settings)
    finally:
        client.close()
        server.stop()


def publish_with_a_space(api: ServiceApi) -> httpx.Response:
    return api.client.post("/posts", json={
        "content": {"caption": "Autumn sale starts today", "image_url": SPACE_URL},
        "publish_target": "both", "account": DEMO_ACCOUNT_ID})


def test_publish_then_retry_answer_with_the_seeds_responses(service_api: ServiceApi) -> None:
    first = publish_with_a_space(service_api)
    assert first.status_code == 200, first.text
    answer = first.json()
    post_id = answer["post"]["id"]
    assert answer["success"] is False
    assert answer["post"] == {"id": post_id, "status": "failed", "error_message": f"facebook: {FB_ERROR}"}
    assert answer["results"]["facebook"] == {"platform": "facebook", "success": False, "error": FB_ERROR}
    instagram = answer["results"]["instagram"]
    assert instagram["success"] is True
    assert instagram["permalink"].startswith("https://www.instagram.com/p/")
    assert "retry_info" not in answer
    assert "pending" not in answer or answer["pending"] is False

    retried = service_api.client.post(f"/posts/{post_id}/retry", json={"content": {"image_url": FIXED_URL}})
    assert retried.status_code == 200, retried.text
    answer = retried.json()
    assert answer["success"] is True
    assert answer["post"] == {"id": post_id, "status": "posted", "error_message": None}
    assert answer["results"]["facebook"]["success"] is True
    assert answer["results"]["facebook"]["postId"].startswith(f"{DEMO_PAGE_ID}_")
    assert answer["results"]["instagram"] == instagram  # preserved from the first attempt
    assert answer["retry_info"]["is_retry"] is True
    assert answer["retry_info"]["previous_attempts"] == 2
    assert answer["retry_info"]["retried_platform"] == "facebook"

    counters = service_api.service.sandbox.counters()
    assert counters["facebook"][DEMO_PAGE_ID] == 1
    assert counters["instagram"][DEMO_IG_USER_ID] == 1

    detail = service_api.client.get(f"/posts/{post_id}").json()
    assert detail["status"] == "posted"
    assert detail["retried"] == "🔄 Retried: Facebook (1 retry)"
    assert detail["retry_preview"] == ""
    assert detail["post_url"] == f"https://www.facebook.com/{answer['results']['facebook']['postId']}"
    assert [c["note"] for c in detail["history"]] == [
        "Publishing to both Facebook and Instagram...",
        "🔄 Smart retry: Publishing only to Facebook (Instagram already succeeded)",
    ]
    # Nothing left to retry: the same decision the handler makes refuses it before Kafka.
    assert service_api.client.post(f"/posts/{post_id}/retry").status_code == 409


def test_a_resent_publish_with_the_same_command_id_is_answered_not_published_twice(service_api: ServiceApi) -> None:
    body = {"content": {"caption": "Hello", "image_url": FIXED_URL}, "publish_target": "both",
            "account": DEMO_ACCOUNT_ID, "post_id": "resent-1", "command_id": "resent-cmd-1"}
    first = service_api.client.post("/posts", json=body)
    again = service_api.client.post("/posts", json=body)
    assert first.status_code == again.status_code == 200
    assert again.json()["post"]["status"] == "posted"
    counters = service_api.service.sandbox.counters()
    assert counters["facebook"][DEMO_PAGE_ID] == 1
    assert counters["instagram"][DEMO_IG_USER_ID] == 1
