"""The seed's example, folded from events: its two insights documents and its two API responses, field for field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from projections.decide import decide, retry_preview
from projections.responses import publish_response, retried_summary
from schemas.commands import RetryRequested
from tests.support.seed import (
    FB_POST_ID,
    IG_MEDIA_ID,
    IG_PERMALINK,
    IMAGE_ERROR,
    INSIGHTS_AFTER_FAILED_ATTEMPT,
    INSIGHTS_AFTER_SUCCESSFUL_RETRY,
    POST_ID,
    RESPONSE_FIRST_ATTEMPT,
    RESPONSE_RETRY_ATTEMPT,
)
from tests.unit.test_fold import History

FIRST_RESULTS_AT = datetime(2025, 11, 17, 10, 10, 13, 151000, tzinfo=UTC)
FB_FAILED_AT = datetime(2025, 11, 17, 10, 10, 12, 903000, tzinfo=UTC)
RETRY_RESULT_AT = datetime(2025, 11, 17, 10, 15, 30, 456000, tzinfo=UTC)

def seed_first_attempt() -> History:
    """Both platforms attempted; Facebook refuses the image, Instagram publishes."""
    history = History(post_id=POST_ID)
    attempts = history.publish("cmd-publish")
    history.failure("facebook", attempts["facebook"], IMAGE_ERROR, when=FB_FAILED_AT)
    history.success("instagram", attempts["instagram"], IG_MEDIA_ID, IG_PERMALINK, when=FIRST_RESULTS_AT)
    return history


def seed_retry(history: History) -> History:
    """The user's retry: Facebook only, and it publishes."""
    retry = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", retry["facebook"], FB_POST_ID, when=RETRY_RESULT_AT)
    return history



def test_insights_after_the_failed_attempt_are_the_seeds_document() -> None:
    state = seed_first_attempt().state()
    assert state.document.to_document() == INSIGHTS_AFTER_FAILED_ATTEMPT


def test_insights_after_the_successful_retry_are_the_seeds_document() -> None:
    state = seed_retry(seed_first_attempt()).state()
    assert state.document.to_document() == INSIGHTS_AFTER_SUCCESSFUL_RETRY


def test_the_insights_topics_message_is_the_seeds_document_with_the_post_id() -> None:
    message = seed_first_attempt().state().document.to_json(post_id=POST_ID)
    assert json.loads(message) == {"post_id": POST_ID, **INSIGHTS_AFTER_FAILED_ATTEMPT}
    # Field order as the seed writes it: a reader that diffs the raw text sees the seed's layout.
    assert list(json.loads(message)) == ["post_id", *INSIGHTS_AFTER_FAILED_ATTEMPT]


def test_the_first_attempts_api_response_is_the_seeds() -> None:
    response = publish_response(seed_first_attempt().state(), "cmd-publish").to_document()
    extras = {"command_id": "cmd-publish", "pending": False}
    assert response == {**RESPONSE_FIRST_ATTEMPT, **extras}


def test_the_retrys_api_response_is_the_seeds_plus_per_platform_counts() -> None:
    response = publish_response(seed_retry(seed_first_attempt()).state(), "cmd-retry").to_document()
    # As the seed writes it: `post.error_message` is null once every platform succeeded.
    seed = RESPONSE_RETRY_ATTEMPT
    assert response["retry_info"] == {
        **seed["retry_info"],
        "attempts_by_platform": {"facebook": 2, "instagram": 1},
        "retries_by_platform": {"facebook": 1, "instagram": 0},
    }
    assert {k: v for k, v in response.items() if k != "retry_info"} == {
        **{k: v for k, v in seed.items() if k != "retry_info"}, "command_id": "cmd-retry", "pending": False,
    }


def test_the_page_notes_what_a_retry_will_do_and_what_was_retried() -> None:
    failed = seed_first_attempt().state()
    assert retry_preview(failed) == "Note: Will only retry Facebook"
    assert retried_summary(failed) is None
    posted = seed_retry(seed_first_attempt()).state()
    assert retried_summary(posted) == "🔄 Retried: Facebook (1 retry)"
    assert retry_preview(posted) == "Note: Nothing to retry: Facebook and Instagram already succeeded"


def test_the_seeds_log_lines() -> None:
    history = seed_first_attempt()
    retry = RetryRequested(command_id="cmd-retry", post_id=POST_ID, requested_at=RETRY_RESULT_AT)
    decision = decide(history.state(), retry)
    assert decision.log_line == "🔄 Smart retry: Publishing only to Facebook (Instagram already succeeded)"
