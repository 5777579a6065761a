"""The seed's retry cases end to end: real broker, projector and handler processes, sandbox Graph API."""

from __future__ import annotations

import pytest

from publishers.sandbox import DEMO_IG_USER_ID, DEMO_PAGE_ID
from schemas.commands import PostContent
from tests.support.service import Service

pytestmark = pytest.mark.integration

BROKEN = PostContent(caption="Autumn sale starts today", image_url="https://cdn.example.com/autumn sale.jpg")
FIXED = PostContent(caption="Autumn sale starts today", image_url="https://cdn.example.com/autumn-sale.jpg")


def _counts(service: Service) -> tuple[int, int]:
    counters = service.sandbox.counters()
    return counters["facebook"].get(DEMO_PAGE_ID, 0), counters["instagram"].get(DEMO_IG_USER_ID, 0)


def test_case_1_only_facebook_is_retried_after_fixing_the_image_url(service: Service) -> None:
    first = service.publish(BROKEN)
    state = service.wait_command(first.post_id, first.command_id)
    document = state.document.to_document()
    assert document["status"] == "failed"
    assert document["error_message"] == "facebook: Facebook photo upload failed: 400 - Missing or invalid image file"
    results = {r["platform"]: r for r in document["insights"]["publish_results"]}
    assert results["facebook"]["success"] is False
    assert results["instagram"]["success"] is True
    instagram_post = results["instagram"]["postId"]
    assert _counts(service) == (0, 1)

    retry = service.retry(first.post_id, content=FIXED)
    state = service.wait_command(first.post_id, retry.command_id)
    document = state.document.to_document()
    assert document["status"] == "posted"
    assert document["error_message"] is None
    results = {r["platform"]: r for r in document["insights"]["publish_results"]}
    assert results["facebook"]["success"] is True
    assert results["instagram"]["postId"] == instagram_post  # preserved, not republished
    assert document["post_url"] == f"https://www.facebook.com/{results['facebook']['postId']}"
    assert "last_retry_at" in document["insights"]
    assert _counts(service) == (1, 1)
    assert "Smart retry: Publishing only to Facebook (Instagram already succeeded)" in service.handler.output()
    assert "Facebook published successfully" in service.handler.output()
