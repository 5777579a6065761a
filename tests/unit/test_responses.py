"""The API response and retry history: attempts counted per platform call, not per stored result."""

from __future__ import annotations

from projections.responses import (
    attempts_by_platform,
    previous_attempts,
    publish_response,
    retried_summary,
    retries_by_platform,
    retry_history,
)
from schemas.common import ErrorKind
from tests.unit.test_fold import SEED_FAILED_DOCUMENT, History


def test_previous_attempts_counts_every_attempt_where_the_seed_counted_results() -> None:
    history = History()
    first = history.publish(target="facebook")
    history.failure("facebook", first["facebook"], "Service unavailable", ErrorKind.TRANSIENT)
    second = history.retry("cmd-retry-1", ("facebook",))
    history.failure("facebook", second["facebook"], "Invalid OAuth access token", ErrorKind.AUTH)
    third = history.retry("cmd-retry-2", ("facebook",))
    history.success("facebook", third["facebook"], "7479_1")
    state = history.state()
    assert len(state.document.insights.publish_results) == 1, "the seed's count would say 1"
    info = publish_response(state, "cmd-retry-2").retry_info
    assert info is not None
    assert info.previous_attempts == 2
    assert info.attempts_by_platform == {"facebook": 3}
    assert info.retries_by_platform == {"facebook": 2}
    assert previous_attempts(state, "cmd-retry-1") == 1
    assert retried_summary(state) == "🔄 Retried: Facebook (2 retries)"
    assert [r.command_id for r in retry_history(state)] == ["cmd-retry-1", "cmd-retry-2"]


def test_a_first_publish_has_no_retry_info_and_is_pending_until_its_results_arrive() -> None:
    history = History()
    attempts = history.publish()
    response = publish_response(history.state())
    assert response.retry_info is None and response.pending and not response.success
    assert response.command_id == "cmd-publish" and response.results == {}
    history.success("facebook", attempts["facebook"], "7479_1").success("instagram", attempts["instagram"], "1810")
    response = publish_response(history.state(), "cmd-publish")
    assert response.success and not response.pending and response.post.status == "posted"
    assert list(response.results) == ["facebook", "instagram"]


def test_a_forced_republish_reports_both_platforms_as_retried() -> None:
    history = History()
    attempts = history.publish()
    history.success("facebook", attempts["facebook"], "7479_1").success("instagram", attempts["instagram"], "1810")
    forced = history.retry("cmd-force", ("facebook", "instagram"), forced=True)
    history.success("facebook", forced["facebook"], "7479_2").success("instagram", forced["instagram"], "1811")
    info = publish_response(history.state()).retry_info
    assert info is not None
    assert (info.retried_platform, info.previous_attempts) == ("both", 2)
    assert retries_by_platform(history.state()) == {"facebook": 1, "instagram": 1}


def test_an_imported_result_counts_as_an_attempt_of_the_old_system() -> None:
    history = History().legacy(SEED_FAILED_DOCUMENT)
    assert attempts_by_platform(history.state()) == {"facebook": 1, "instagram": 1}
    retry = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", retry["facebook"], "7479_1")
    info = publish_response(history.state(), "cmd-retry").retry_info
    assert info is not None and info.previous_attempts == 2 and info.retried_platform == "facebook"


def test_an_unknown_command_id_reports_the_post_without_retry_info() -> None:
    history = History()
    history.publish()
    response = publish_response(history.state(), "cmd-not-decided")
    assert response.command_id == "cmd-not-decided" and response.retry_info is None
