"""The API response and retry history: attempts counted per platform call, not per stored result."""

from __future__ import annotations

import pytest

from projections.decide import retry_preview, retry_targets
from projections.fold import apply_all
from projections.responses import (
    attempts_by_platform,
    earlier_posts,
    needed_actions,
    previous_attempts,
    publish_response,
    retried_summary,
    retries_by_platform,
    retry_history,
)
from projections.state import PostState
from schemas.commands import PostContent
from schemas.common import ErrorKind
from schemas.events import AttemptOutcomeUnknown, LegacyInsightsImported, PlatformError, PlatformResult
from smartretry.pages import _page_problem, _reason
from tests.unit.test_fold import CONTENT, SEED_FAILED_DOCUMENT, History


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
    history.legacy(SEED_FAILED_DOCUMENT)  # the same document imported again (a migration run twice)
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


def _rate_limited_until_the_attempts_ran_out(automatic: int) -> History:
    """Instagram limited, and the service tried again by itself `automatic` times, each limited again."""
    history = History()
    attempts = history.publish(target="instagram")
    history.failure("instagram", attempts["instagram"], "Application request limit reached", ErrorKind.RATE_LIMITED)
    for _ in range(automatic):
        again = history.attempt("instagram", "cmd-publish", retry=True)
        history.failure("instagram", again, "Application request limit reached", ErrorKind.RATE_LIMITED)
    return history


def test_retries_the_service_made_by_itself_are_told_apart_from_those_asked_for() -> None:
    history = _rate_limited_until_the_attempts_ran_out(automatic=4)
    assert retried_summary(history.state()) == "🔄 Retried: Instagram (4 automatic retries)"
    asked = history.retry("cmd-retry", ("instagram",))
    history.failure("instagram", asked["instagram"], "Application request limit reached", ErrorKind.RATE_LIMITED)
    assert retried_summary(history.state()) == "🔄 Retried: Instagram (5 retries, 4 of them automatic)"


def test_a_failure_the_service_retries_asks_nothing_until_its_attempts_are_used_up() -> None:
    waiting = _rate_limited_until_the_attempts_ran_out(automatic=2).state()
    assert needed_actions(waiting, max_attempts=5) == {}  # two more to come, by the service itself
    used_up = _rate_limited_until_the_attempts_ran_out(automatic=4).state()
    assert used_up.status == "failed"
    assert needed_actions(used_up, max_attempts=5) == {
        "instagram": "retry Instagram later (it limits how often it takes posts)"}
    history = History()
    attempts = history.publish(target="facebook")
    history.failure("facebook", attempts["facebook"], "Service unavailable", ErrorKind.TRANSIENT)
    assert needed_actions(history.state(), max_attempts=1) == {"facebook": "retry Facebook"}
    assert needed_actions(history.state(), max_attempts=2) == {}


def test_an_attempt_an_older_version_took_up_without_marking_it_a_retry_counts_in_neither() -> None:
    history = History()
    first = history.publish(target="facebook")
    history.failure("facebook", first["facebook"], "Service unavailable", ErrorKind.TRANSIENT)
    resumed = history.attempt("facebook", "cmd-publish")  # recorded with is_retry=False
    history.failure("facebook", resumed, "Service unavailable", ErrorKind.TRANSIENT)
    asked = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", asked["facebook"], "7479_1")
    assert retried_summary(history.state()) == "🔄 Retried: Facebook (1 retry)"


def test_a_post_imported_without_an_account_asks_for_one_besides_what_else_it_needs() -> None:
    history = History(post_id="imported-1").legacy({"insights": {"publish_results": [
        {"platform": "facebook", "success": False, "error": "Facebook post failed: token expired"},
        {"platform": "instagram", "success": False, "error": "Instagram media upload failed: 500"}]},
        "status": "failed"})
    state = history.state()
    assert state.account is None
    # Imported without content too: the retry brings it as well.
    assert needed_actions(state, max_attempts=5) == {
        "facebook": "re-authenticate Facebook, then retry naming the account to publish with and the post's content "
                    "(caption, image URL)",
        "instagram": "retry naming the account to publish with and the post's content (caption, image URL)"}


def test_a_retry_decided_to_publish_nothing_keeps_the_content_that_went_out_and_its_answer_says_so() -> None:
    # Queued behind the post's automatic retry, which published everything first: its correction went nowhere.
    history = History()
    attempts = history.publish()
    history.success("facebook", attempts["facebook"], "7479_1").success("instagram", attempts["instagram"], "1810")
    history.decide("cmd-late", (), "RetryRequested",
                   content=PostContent(caption="Edited too late", image_url=CONTENT.image_url))
    history.events[-1] = history.events[-1].model_copy(
        update={"note": "Nothing to retry: Facebook and Instagram already succeeded"})
    state = history.state()
    assert state.content == CONTENT  # what was published, not the correction
    response = publish_response(state, "cmd-late")
    assert response.success and response.note == "Nothing to retry: Facebook and Instagram already succeeded"
    assert publish_response(state, "cmd-publish").note is None


def test_a_post_whose_account_was_never_connected_asks_for_it_to_be_connected_not_re_authenticated() -> None:
    # Sent straight to Kafka naming an account the service has no credentials for (the API refuses such a post).
    history = History()
    attempts = history.publish(target="facebook")
    history.failure("facebook", attempts["facebook"],
                    "no credentials for account 'acct-1': set them with `smartretry accounts set-token`",
                    ErrorKind.AUTH)
    assert needed_actions(history.state(), max_attempts=5) == {
        "facebook": "connect account acct-1 with PUT /accounts/acct-1/token, then retry"}
    # A token that stopped working is still re-authenticated.
    expired = History()
    attempts = expired.publish(target="facebook")
    expired.failure("facebook", attempts["facebook"], "Error validating access token: Session has expired",
                    ErrorKind.AUTH)
    assert needed_actions(expired.state(), max_attempts=5) == {"facebook": "re-authenticate Facebook, then retry"}


def test_an_account_stored_without_the_platforms_page_asks_for_its_id_not_a_new_token() -> None:
    from publishers.facebook import _no_page
    from publishers.instagram import _not_connected
    from smartretry.cli_ops import _as_commands

    history = History()
    attempts = history.publish(target="both")
    for platform, error in (("facebook", _no_page("photo upload")), ("instagram", _not_connected("media creation"))):
        history.failure(platform, attempts[platform], error.message, error.kind)
    actions = needed_actions(history.state(), max_attempts=5)
    assert actions == {
        "facebook": "connect Facebook to account acct-1: set its page_id with PUT /accounts/acct-1/token, then retry",
        "instagram": "connect Instagram to account acct-1: set its ig_user_id with PUT /accounts/acct-1/token, "
                     "then retry"}
    # `smartretry show` says it as the command that sets it.
    assert _as_commands(actions["facebook"]) == ("connect Facebook to account acct-1: set it with smartretry accounts "
                                                 "set-token acct-1 --page-id ..., then retry")


def test_the_history_keeps_a_failures_words_after_a_retry_replaced_it_in_the_document() -> None:
    from projections.responses import attempt_history
    from tests.support.seed import IMAGE_ERROR

    history = History()
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "1810_1")
    retried = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", retried["facebook"], "7479_1")
    state = history.state()
    assert state.status == "posted" and state.document.error_message is None
    assert [(e["platform"], e["kind"], e["outcome"], e["error"]) for e in attempt_history(state)] == [
        ("facebook", "first publish", "failed", IMAGE_ERROR),
        ("instagram", "first publish", "published", None),
        ("facebook", "retry", "published", None),
    ]


def test_the_history_keeps_why_an_attempts_outcome_was_not_known_once_it_is_settled() -> None:
    from datetime import timedelta

    from projections.responses import attempt_history
    from schemas.common import CHECKING

    history = History()
    attempts = history.publish(target="facebook")
    # As the handler says it while it looks the post up.
    history.unknown("facebook", attempts["facebook"], ErrorKind.TRANSIENT,
                    f"Facebook photo upload failed: 500 - An unexpected error has occurred{CHECKING}")
    [looking] = attempt_history(history.state())
    assert looking["unknown_because"].endswith("checking whether the post went out before publishing again")
    history.events.append(PlatformResult(
        event_id="recovered", post_id=history.post_id, occurred_at=history.at + timedelta(minutes=3),
        platform="facebook", attempt_id=attempts["facebook"], success=False, recovered=True,
        error=PlatformError(kind=ErrorKind.TRANSIENT, message="Facebook publish failed: its call got no answer to "
                                                              "trust, and Facebook has no such post")))
    [entry] = attempt_history(history.state())
    assert entry["outcome"] == "failed" and entry["recovered"]
    # Settled: why it was not known at first, without the look-up it no longer waits for.
    assert entry["unknown_because"] == "Facebook photo upload failed: 500 - An unexpected error has occurred"


def test_a_token_stored_after_the_failing_attempt_began_leaves_only_the_retry_to_do() -> None:
    from datetime import timedelta

    for error in ("Error validating access token: Session has expired",
                  "no credentials for account 'acct-1': set them with `smartretry accounts set-token`"):
        history = History()
        attempts = history.publish(target="facebook")
        history.failure("facebook", attempts["facebook"], error, ErrorKind.AUTH)
        state = history.state()
        began = state.attempts_of("facebook")[-1].started_at
        before = needed_actions(state, max_attempts=5, token_renewed_at=began - timedelta(seconds=1))
        assert before["facebook"].endswith(", then retry") and not before["facebook"].startswith("retry")
        # Stored while the attempt ran, before its failure came: the attempt had read the old one.
        failed_at = state.attempts_of("facebook")[-1].finished_at
        assert failed_at is not None and began + timedelta(milliseconds=50) < failed_at
        during = needed_actions(state, max_attempts=5, token_renewed_at=began + timedelta(milliseconds=50))
        stored = began.strftime("%Y-%m-%d %H:%M:%S")
        assert during == {"facebook": f"retry Facebook (a token was stored for the account at {stored} UTC, after the "
                                      "failed attempt began)"}


def test_what_is_needed_is_listed_facebook_first_whichever_failed_first() -> None:
    history = History()
    attempts = history.publish()
    history.failure("instagram", attempts["instagram"], "Session has expired", ErrorKind.AUTH)
    history.failure("facebook", attempts["facebook"], "Missing or invalid image file", ErrorKind.INVALID_MEDIA)
    assert list(needed_actions(history.state(), max_attempts=5)) == ["facebook", "instagram"]


def test_a_page_meta_does_not_know_asks_to_connect_the_account_with_its_right_page_id() -> None:
    history = History()
    attempts = history.publish(target="facebook")
    history.events.append(PlatformResult(
        event_id="wrong-page", post_id=history.post_id, occurred_at=history.at, platform="facebook",
        attempt_id=attempts["facebook"], success=False, error=PlatformError(
            kind=ErrorKind.AUTH, code=100, subcode=33, http_status=400,
            message="Facebook photo upload failed: 400 - the Page 222222222222222 cannot be used with the account's "
                    "token (Meta does not know it, or the token has no access to it): connect the account again "
                    "with its Page's right id")))
    state = history.state()

    # Not "re-authenticate Facebook": a new token for the same wrong Page would fail the same way.
    assert state.needed_action == {"facebook": "connect the account again with its right Page id"}
    assert needed_actions(state, max_attempts=5) == {
        "facebook": "set account acct-1's right Page id with PUT /accounts/acct-1/token, then retry"}


def test_a_look_up_refused_for_a_page_meta_does_not_know_asks_for_the_right_page_id_too() -> None:
    history = History()
    attempts = history.publish(target="facebook")
    history.events.append(AttemptOutcomeUnknown(
        event_id="wrong-page-lookup", post_id=history.post_id, occurred_at=history.at, platform="facebook",
        attempt_id=attempts["facebook"], error=PlatformError(
            kind=ErrorKind.AUTH, code=100, subcode=33, http_status=400,
            message="Facebook post lookup failed: 400 - the Page 999999999 cannot be used with the account's token "
                    "(Meta does not know it, or the token has no access to it): connect the account again with its "
                    "Page's right id")))

    assert history.state().needed_action == {"facebook": "connect the account again with its right Page id"}


def test_the_post_page_says_where_to_correct_a_link_it_has_no_field_for() -> None:
    problem = ("content.link had an access token taken out when the post was imported: send it again with "
               "content.link corrected")
    assert _page_problem(problem) == problem + " (with `smartretry retry POST --link ...`)"
    # Its caption field is on the page (shown for a caption a token was taken out of), and named as the page names it.
    caption = problem.replace("content.link", "content.caption")
    assert _page_problem(caption) == problem.replace("content.link", "the Caption")
    assert _page_problem("Instagram needs content.image_url") == "Instagram needs the Image URL"


def test_a_forced_republish_is_told_apart_and_the_post_it_replaced_on_the_page_is_still_named() -> None:
    history = History()
    first = history.publish()
    history.success("facebook", first["facebook"], "7479_1").success("instagram", first["instagram"], "1788_1")
    again = history.retry("cmd-force", ("facebook", "instagram"), forced=True)
    history.success("facebook", again["facebook"], "7479_2")
    history.failure("instagram", again["instagram"], "Service unavailable", ErrorKind.TRANSIENT)
    state = history.state()
    assert retried_summary(state) == "🔄 Retried: Facebook (1 forced republish), Instagram (1 forced republish)"
    # Facebook shows its new post; the first is still on the Page. Instagram's only post is the one its failed
    # republish left: no longer its latest result, so named here.
    assert earlier_posts(state) == {"facebook": ["7479_1"], "instagram": ["1788_1"]}
    automatic = history.attempt("instagram", "cmd-force", retry=True, forced=True)
    history.success("instagram", automatic, "1788_2")
    retry = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", retry["facebook"], "7479_3")
    assert retried_summary(history.state()) == ("🔄 Retried: Facebook (1 forced republish, 1 retry), "
                                                "Instagram (1 forced republish, 1 automatic retry)")
    assert earlier_posts(history.state()) == {"facebook": ["7479_1", "7479_2"], "instagram": ["1788_1"]}


def test_a_post_published_once_has_no_earlier_posts() -> None:
    history = History()
    first = history.publish()
    history.failure("facebook", first["facebook"]).success("instagram", first["instagram"], "1788_1")
    retry = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", retry["facebook"], "7479_1")
    assert earlier_posts(history.state()) == {}


def test_an_automatic_retry_without_the_platforms_wait_is_due_by_the_ceiling_of_the_services_own_backoff() -> None:
    from datetime import timedelta

    from projections.resume import automatic_retry_deadline

    history = History()
    attempts = history.publish(target="facebook")
    history.failure("facebook", attempts["facebook"], "Service unavailable", ErrorKind.TRANSIENT)
    again = history.attempt("facebook", "cmd-publish", retry=True)
    history.failure("facebook", again, "Service unavailable", ErrorKind.TRANSIENT)
    state = history.state()
    failed_at = state.attempts_of("facebook")[-1].finished_at
    assert failed_at is not None
    # The second failure of the command: its backoff draws up to base x 2, under the cap.
    assert automatic_retry_deadline(state, 5, 1.0, 60.0) == {"facebook": failed_at + timedelta(seconds=2)}
    assert automatic_retry_deadline(state, 5, 50.0, 60.0) == {"facebook": failed_at + timedelta(seconds=60)}
    # A rate limit that gave no wait is waited out from the cap; none left to make, none due.
    limited = _rate_limited_until_the_attempts_ran_out(automatic=1).state()
    limited_at = limited.attempts_of("instagram")[-1].finished_at
    assert limited_at is not None
    assert automatic_retry_deadline(limited, 5, 1.0, 60.0) == {"instagram": limited_at + timedelta(seconds=60)}
    assert automatic_retry_deadline(limited, 2, 1.0, 60.0) == {}


def test_a_time_to_come_is_said_with_its_date_when_it_is_not_todays() -> None:
    # A platform's wait can run to the next day: "at 03:00:00 UTC" alone would read as today.
    from datetime import UTC, datetime

    from smartretry.cli_ops import _clock
    from smartretry.pages import clock_time

    now = datetime(2026, 11, 29, 22, 0, tzinfo=UTC)
    assert clock_time(datetime(2026, 11, 29, 23, 30, tzinfo=UTC), now) == "23:30:00 UTC"
    assert clock_time(datetime(2026, 11, 30, 3, 0, tzinfo=UTC), now) == "2026-11-30 03:00:00 UTC"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert _clock(f"{today}T04:14:17.000Z") == "04:14:17 UTC"
    assert _clock("2025-11-17T10:20:13.000Z") == "2025-11-17 10:20:13 UTC"


def _retried_while_instagram_asks_to_re_authenticate() -> History:
    """Facebook failed for its image, Instagram for its token; Facebook is being retried."""
    history = History()
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"])
    history.failure("instagram", attempts["instagram"], "Session has expired", ErrorKind.AUTH)
    return history


def test_a_platform_being_published_again_asks_for_nothing_until_its_result_is_in() -> None:
    history = _retried_while_instagram_asks_to_re_authenticate()
    assert needed_actions(history.state(), max_attempts=5) == {
        "facebook": "fix the image URL", "instagram": "re-authenticate Instagram, then retry"}
    # Decided, its attempt not begun yet: Facebook is being published; Instagram, not retried, still asks.
    history.decide("cmd-retry", ("facebook",), "RetryRequested")
    assert needed_actions(history.state(), max_attempts=5) == {"instagram": "re-authenticate Instagram, then retry"}
    attempt = history.attempt("facebook", "cmd-retry", retry=True)
    state = history.state()
    assert state.status == "publishing" and state.needed_action["facebook"] == "fix the image URL"
    assert needed_actions(state, max_attempts=5) == {"instagram": "re-authenticate Instagram, then retry"}
    # Its own result says what is needed next.
    history.failure("facebook", attempt)
    assert needed_actions(history.state(), max_attempts=5)["facebook"] == "fix the image URL"


def test_an_attempt_whose_look_up_waits_for_someone_still_asks_for_it() -> None:
    for kind, asked in ((ErrorKind.AUTH, "re-authenticate Facebook"),
                        (ErrorKind.INVALID_REQUEST, "check Facebook for the post, then resolve the attempt"),
                        (ErrorKind.TRANSIENT, None)):
        history = _retried_while_instagram_asks_to_re_authenticate()
        retried = history.retry("cmd-retry", ("facebook",))
        history.unknown("facebook", retried["facebook"], kind)
        actions = needed_actions(history.state(), max_attempts=5)
        assert actions.get("facebook") == asked, kind
        assert actions["instagram"] == "re-authenticate Instagram, then retry"


def test_the_page_shows_a_failure_in_the_platforms_words_and_other_messages_whole() -> None:
    assert _reason("Facebook photo upload failed: 400 - Missing or invalid image file") == \
        "Missing or invalid image file"
    assert _reason("Instagram media processing failed: Error: 2207052 Media download failed") == \
        "Error: 2207052 Media download failed"
    # Not the "what failed: why" shape at its start (an operator's note, a look-up's words): shown whole.
    for whole in ("Facebook attempt a1 resolved by an operator: not published (upload failed: bad jpeg)",
                  "Facebook publish not started: recording the attempt took longer than 120s",
                  "first line\nsecond failed: x"):
        assert _reason(whole) == whole


def imported(document: dict[str, object]) -> History:
    """A post known only from an old-system document that kept no result for Instagram, with its account."""
    history = History()
    history.events.append(LegacyInsightsImported(
        event_id="imported", post_id=history.post_id, occurred_at=history.at, publish_target="both",
        account="acct-1", content=CONTENT, document=document))
    return history


UNSURE = ("not known to be published: the old system kept no result for it, but was publishing the post or says it "
          "went out")


def unsure(platform: str, label: str, bringing: str = "", account: str = "") -> str:
    return (f"check {label} for the post: if it is there, record it (POST /posts/{History.post_id}/resolve naming "
            f"{platform}, published, with its id); if not, republish {label}{bringing} (POST /posts/{History.post_id}"
            f"/republish naming {platform} in platforms{account}). A retry leaves it alone, as it may have gone out")


@pytest.mark.parametrize(("old_status", "message"), [
    (None, "not published: the old system kept no result for it"),
    ("draft", "not published: the old system kept no result for it"),
], ids=["no-status", "draft"])
def test_an_imported_post_no_one_publishes_is_failed_and_asks_for_the_retry_that_publishes_it(
        old_status: str | None, message: str) -> None:
    document = {"insights": {"facebook_post_id": "747917475065823_1"}}
    history = imported({**document, "status": old_status} if old_status else document)
    state = history.state()

    # Not "publishing" for ever with nothing under way: nothing publishes it until a retry does.
    assert state.status == "failed"
    assert state.document.error_message == f"instagram: {message}"
    assert needed_actions(state, 3) == {"instagram": "retry Instagram to publish it"}
    assert retry_targets(state) == ("instagram",)
    # Once a retry publishes it, it is a post like any other.
    retry = history.retry("cmd-retry", ("instagram",))
    assert history.state().status == "publishing" and needed_actions(history.state(), 3) == {}
    history.success("instagram", retry["instagram"], "18107758234627017")
    assert history.state().status == "posted" and history.state().document.error_message is None


def test_an_imported_post_caught_mid_publish_is_not_retried_where_it_may_have_gone_out() -> None:
    history = imported({"status": "publishing", "insights": {"facebook_post_id": "747917475065823_1"}})
    state = history.state()

    assert state.status == "failed"
    assert state.document.error_message == f"instagram: {UNSURE}"
    assert needed_actions(state, 3) == {"instagram": unsure("instagram", "Instagram")}
    # A retry would post it a second time where the old system did publish it: it publishes nothing, and says why.
    assert retry_targets(state) == ()
    assert retry_preview(state) == ("Note: Nothing to retry: Facebook already succeeded; Instagram may have gone out "
                                    "under the old system, which kept no result for it")
    # Someone who looked and did not find it there republishes it; then it is a post like any other.
    forced = history.retry("cmd-force", ("instagram",), forced=True)
    assert history.state().status == "publishing" and needed_actions(history.state(), 3) == {}
    history.success("instagram", forced["instagram"], "18107758234627017")
    assert history.state().status == "posted" and history.state().document.error_message is None


def test_an_imported_post_the_old_system_says_went_out_is_looked_at_before_it_is_republished() -> None:
    # Its address names its Facebook post: published there, whatever its status says; it says when it went out, so
    # Instagram, which kept no result, may be there too.
    history = imported({"status": "failed", "post_url": "https://www.facebook.com/747917475065823_1221",
                        "insights": {"published_at": "2025-11-17T10:10:20Z"}})
    state = history.state()

    facebook = state.latest_result("facebook")
    assert facebook is not None and facebook.success and facebook.post_id == "747917475065823_1221"
    assert retry_targets(state) == ()
    assert state.status == "failed"
    assert state.document.error_message == f"instagram: {UNSURE}"
    assert needed_actions(state, 3) == {"instagram": unsure("instagram", "Instagram")}


def test_a_retry_of_an_imported_post_publishes_what_the_old_system_says_failed_never_what_may_have_gone_out() -> None:
    # The old system says when the post went out and that Instagram failed, and kept no result: Facebook is where it
    # went out, as far as anyone can tell without looking. Re-authenticating Instagram, then retrying, must not post
    # Facebook a second time.
    history = imported({"status": "failed", "insights": {"published_at": "2025-11-17T10:10:13.151Z"},
                        "error_message": "instagram: Instagram media upload failed: 400 - Error validating access "
                                         "token"})
    state = history.state()
    assert needed_actions(state, 3) == {"facebook": unsure("facebook", "Facebook"),
                                        "instagram": "re-authenticate Instagram, then retry"}
    assert retry_targets(state) == ("instagram",)
    assert retry_preview(state) == "Note: Will only retry Instagram"

    retry = history.retry("cmd-retry", ("instagram",))
    history.success("instagram", retry["instagram"], "18107758234627017")
    state = history.state()
    # Instagram's old failure is gone with its success; what is left is Facebook, not known either way.
    assert state.status == "failed"
    assert state.document.error_message == f"facebook: {UNSURE}"
    assert needed_actions(state, 3) == {"facebook": unsure("facebook", "Facebook")}
    assert retry_targets(state) == ()
    assert retry_preview(state) == ("Note: Nothing to retry: Facebook may have gone out under the old system, which "
                                    "kept no result for it; Instagram already succeeded")


def test_a_failure_the_old_message_names_counts_as_an_attempt_of_the_old_system() -> None:
    # No results kept, but the message names both platforms as failed: each was attempted once before the import, so
    # the retry is each one's second attempt, not a "retry" that is its first.
    history = imported({"status": "failed", "error_message": "facebook: token expired; instagram: token expired"})
    retry = history.retry("cmd-retry", ("facebook", "instagram"))
    assert attempts_by_platform(history.state()) == {"facebook": 2, "instagram": 2}
    assert retries_by_platform(history.state()) == {"facebook": 1, "instagram": 1}
    assert previous_attempts(history.state(), "cmd-retry") == 2
    assert set(retry) == {"facebook", "instagram"}


def test_an_imported_post_whose_every_platform_the_old_message_names_failed_yet_went_out_is_looked_at_first() -> None:
    # It says when the post went out, and that both failed: one of them went out before a later try failed (the old
    # system republished both on a retry). Which, only someone who looks can tell.
    history = imported({"status": "failed", "insights": {"published_at": "2025-11-17T10:10:13Z"},
                        "error_message": "facebook: token expired; instagram: token expired"})
    state = history.state()
    assert retry_targets(state) == ()
    assert needed_actions(state, 3) == {"facebook": unsure("facebook", "Facebook"),
                                        "instagram": unsure("instagram", "Instagram")}
    assert state.document.error_message == "facebook: token expired; instagram: token expired"


def test_an_old_system_caught_mid_publish_may_have_published_a_platform_it_kept_a_failure_for() -> None:
    history = imported({"status": "publishing", "insights": {"publish_results": [
        {"platform": "facebook", "success": True, "post_id": "747917475065823_1"},
        {"platform": "instagram", "success": False, "error": "timeout"}]}})
    state = history.state()
    assert retry_targets(state) == ()
    assert needed_actions(state, 3) == {"instagram": unsure("instagram", "Instagram")}
    assert state.document.error_message == "instagram: timeout"


def _as_an_earlier_version_stored_it(state: PostState) -> PostState:
    """The state without `legacy_unsure`, as versions before it stored every post."""
    stored = state.model_dump(mode="json")
    stored.pop("legacy_unsure", None)
    return PostState.model_validate(stored)


def test_a_post_imported_by_an_earlier_version_is_looked_at_before_it_is_retried_and_after_it_is_acted_on() -> None:
    # Caught mid-publish, with Instagram's failure kept: either platform without a success may be there.
    history = imported({"status": "publishing", "insights": {"publish_results": [
        {"platform": "facebook", "success": False, "error": "timeout"},
        {"platform": "instagram", "success": False, "error": "timeout"}]}})
    earlier = _as_an_earlier_version_stored_it(history.state())
    assert earlier.legacy_unsure is None
    assert retry_targets(earlier) == ()
    assert needed_actions(earlier, 3) == {"facebook": unsure("facebook", "Facebook"),
                                          "instagram": unsure("instagram", "Instagram")}
    # Someone looked and republished Instagram alone: Facebook is still to be looked at, not retried.
    before = len(history.events)
    forced = history.retry("cmd-force", ("instagram",), forced=True)
    history.success("instagram", forced["instagram"], "18107758234627017")
    after = apply_all(earlier, history.events[before:])
    assert after is not None and after.legacy_unsure == ["facebook", "instagram"]
    assert retry_targets(after) == ()
    assert needed_actions(after, 3) == {"facebook": unsure("facebook", "Facebook")}
    # As the fold of the same events from the start gives it.
    assert after.model_dump_json() == history.state().model_dump_json()


def test_a_post_an_earlier_version_imported_and_acted_on_is_looked_at_before_what_it_did_not_publish_is_retried(
        ) -> None:
    # Said to have gone out, Facebook named failed; the earlier version republished Facebook alone, which went out.
    history = imported({"status": "failed", "insights": {"published_at": "2025-11-17T10:10:13Z"},
                        "error_message": "facebook: token expired"})
    forced = history.retry("cmd-force", ("facebook",), forced=True)
    history.success("facebook", forced["facebook"], "747917475065823_1")
    earlier = _as_an_earlier_version_stored_it(history.state())
    # What the old document said cannot be told from the post now: Instagram, not published here, may be there.
    assert retry_targets(earlier) == ()
    assert needed_actions(earlier, 3) == {"instagram": unsure("instagram", "Instagram")}


def test_an_imported_post_without_an_account_that_may_have_gone_out_asks_for_the_account_with_the_republish() -> None:
    history = History()
    history.events.append(LegacyInsightsImported(
        event_id="imported", post_id=history.post_id, occurred_at=history.at, publish_target="instagram",
        content=CONTENT, document={"status": "publishing"}))
    assert needed_actions(history.state(), 3) == {
        "instagram": unsure("instagram", "Instagram", " naming the account to publish it with", ", with the account")}
    # As the command line and the page say it: the command with the account to give.
    from smartretry import pages
    from smartretry.cli_ops import _as_commands

    action = needed_actions(history.state(), 3)["instagram"]
    command = f"smartretry force {history.post_id} --platform instagram --account NAME --reason ..."
    assert command in _as_commands(action)
    assert f"`smartretry force {history.post_id} --platform instagram --account NAME --reason ...`" in \
        pages._page_action(action)


def test_an_imported_posts_platform_left_unpublished_keeps_what_the_old_message_said_of_it() -> None:
    # Both named failed, nothing says the post went out: a retry may publish both; republished, Instagram went out.
    history = imported({"status": "failed", "error_message": "facebook: token expired; instagram: token expired"})
    forced = history.retry("cmd-force", ("instagram",), forced=True)
    history.success("instagram", forced["instagram"], "18107758234627017")
    state = history.state()
    assert state.status == "failed" and state.document.error_message == "facebook: token expired"
    assert retry_targets(state) == ("facebook",)


def test_an_old_message_naming_one_platform_says_the_other_may_have_gone_out_too() -> None:
    history = imported({"status": "failed", "insights": {"published_at": "2025-11-17T10:10:13Z"},
                        "error_message": "facebook: token expired"})
    assert history.state().document.error_message == f"facebook: token expired; instagram: {UNSURE}"


def test_an_imported_posts_platform_found_there_by_an_operator_is_its_post_and_never_published_again() -> None:
    from projections.decide import decide, legacy_found, resolution_refusal
    from projections.responses import attempt_history
    from schemas.commands import ResolveAttemptRequested
    from schemas.ids import attempt_id_for

    history = imported({"status": "publishing", "insights": {"facebook_post_id": "747917475065823_1"}})
    found = ResolveAttemptRequested(command_id="cmd-found", post_id=history.post_id, platform="instagram",
                                    published=True, platform_post_id="18107758234627017", requested_at=history.at)
    state = history.state()
    assert legacy_found(state, found) and resolution_refusal(state, "instagram", None, published=True) is None
    assert "if it is not on Instagram, republish it" in (resolution_refusal(state, "instagram", None, published=False)
                                                         or "")
    # What the handler records for it (`CommandHandler._apply_legacy_found`).
    history.events.append(PlatformResult(
        event_id="found", post_id=history.post_id, occurred_at=history.at, platform="instagram",
        attempt_id=attempt_id_for("cmd-found", "instagram", 1), success=True, platform_post_id="18107758234627017",
        resolved_by="cmd-found"))
    state = history.state()

    assert state.status == "posted" and state.document.insights.instagram_media_id == "18107758234627017"
    assert needed_actions(state, 3) == {} and retry_targets(state) == ()
    assert not legacy_found(state, found)
    decision = decide(state, found)
    assert decision.no_op and "resolved by an operator: published as 18107758234627017" in decision.log_line
    (entry,) = [e for e in attempt_history(state) if e["platform"] == "instagram"]
    assert entry["kind"] == "old system's publish" and entry["resolved_by"] == "cmd-found"


def test_a_failure_kept_by_the_old_system_is_said_beside_a_platform_that_may_have_gone_out() -> None:
    history = imported({"status": "failed", "error_message": "facebook: token expired", "insights": {
        "published_at": "2025-11-17T10:10:13Z",
        "publish_results": [{"platform": "facebook", "success": False, "error": "token expired"}]}})
    assert history.state().document.error_message == f"facebook: token expired; instagram: {UNSURE}"


def test_an_old_system_caught_mid_publish_keeps_its_own_words_of_an_earlier_failure() -> None:
    history = imported({"status": "publishing",
                        "error_message": "facebook: Facebook photo upload failed: 400 - Missing or invalid image file"})
    state = history.state()
    assert state.document.error_message == ("facebook: Facebook photo upload failed: 400 - Missing or invalid image "
                                            f"file; instagram: {UNSURE}")
    # That failure was an attempt of the old system's.
    assert attempts_by_platform(state) == {"facebook": 1, "instagram": 0}
    assert retry_targets(state) == ()


def test_an_imported_post_publishing_one_platform_by_force_is_not_publishing_for_ever() -> None:
    # The old system was publishing it and kept nothing: someone republished Instagram alone. Facebook is still not
    # known either way, so the post is not "publishing" (nothing publishes it) but asks for someone to look.
    history = imported({"status": "publishing"})
    forced = history.retry("cmd-force", ("instagram",), forced=True)
    history.success("instagram", forced["instagram"], "18107758234627017")
    state = history.state()

    assert state.status == "failed"
    assert state.document.error_message == f"facebook: {UNSURE}"
    assert needed_actions(state, 3) == {"facebook": unsure("facebook", "Facebook")}


def test_an_imported_post_without_content_asks_for_its_content_with_the_retry() -> None:
    history = History()
    history.events.append(LegacyInsightsImported(
        event_id="imported", post_id=history.post_id, occurred_at=history.at, publish_target="facebook",
        account="acct-1", document={"status": "draft"}))
    assert needed_actions(history.state(), 3) == {
        "facebook": "retry Facebook with the post's content (caption, image URL) to publish it"}
    assert retry_preview(history.state()) == ("Note: Will retry Facebook once given the post's content (caption, "
                                              "image URL)")


@pytest.mark.parametrize("address", [
    "https://www.facebook.com/747917475065823_1221",
    "https://www.facebook.com/747917475065823_1221/",
    "https://facebook.com/747917475065823_1221?ref=share",
    "https://m.facebook.com/747917475065823/posts/1221",
    "https://www.facebook.com/permalink.php?story_fbid=1221&id=747917475065823",
])
def test_an_imported_facebook_address_in_any_of_its_forms_counts_as_the_post_on_facebook(address: str) -> None:
    # Whatever the old status, and even over a failure the old document kept for Facebook (of a later try): a retry
    # must not post it again.
    history = imported({"status": "failed", "post_url": address, "insights": {"publish_results": [
        {"platform": "facebook", "success": False, "error": "timeout"}]}})
    facebook = history.state().latest_result("facebook")
    assert facebook is not None and facebook.success and facebook.post_id == "747917475065823_1221"
    assert retry_targets(history.state()) == ("instagram",)


def test_an_imported_instagram_permalink_counts_as_the_post_on_instagram() -> None:
    history = History()
    history.events.append(LegacyInsightsImported(
        event_id="imported", post_id=history.post_id, occurred_at=history.at, publish_target="instagram",
        account="acct-1", content=CONTENT, document={"status": "failed",
                                                     "post_url": "https://www.instagram.com/p/DRJ1nlKDgY9"}))
    state = history.state()

    instagram = state.latest_result("instagram")
    assert instagram is not None and instagram.success
    assert instagram.permalink == "https://www.instagram.com/p/DRJ1nlKDgY9/"
    assert state.status == "posted" and retry_targets(state) == ()


@pytest.mark.parametrize("address", ["https://www.facebook.com/acme", "https://www.facebook.com/1221",
                                     "https://evil.example/747917475065823_1221", "javascript:747917475065823_1221",
                                     "https://www.instagram.com/acme/"])
def test_an_address_that_names_no_post_publishes_nothing_in_its_name(address: str) -> None:
    state = imported({"status": "failed", "post_url": address}).state()
    assert retry_targets(state) == ("facebook", "instagram")


def test_an_imported_post_for_instagram_without_its_image_asks_for_one_with_the_retry() -> None:
    history = History()
    history.events.append(LegacyInsightsImported(
        event_id="imported", post_id=history.post_id, occurred_at=history.at, publish_target="instagram",
        account="acct-1", content=PostContent(caption="Autumn sale"), document={"status": "draft"}))
    assert needed_actions(history.state(), 3) == {"instagram": "retry Instagram with an image URL to publish it"}


@pytest.mark.parametrize("error", [None, "Something went wrong on our side"])
def test_an_imported_failure_whose_words_name_nothing_to_fix_asks_for_the_retry(error: str | None) -> None:
    # A failure is never silent: the old system's failure is one the service does not retry by itself.
    result: dict[str, object] = {"platform": "facebook", "success": "false"}
    if error is not None:
        result["error"] = error
    history = imported({"insights": {"publish_results": [
        result, {"platform": "instagram", "success": True, "postId": "18107758234627017"}]}, "status": "failed"})
    state = history.state()

    assert state.status == "failed"
    assert needed_actions(state, 5) == {"facebook": "retry Facebook"}


def test_an_imported_failure_that_names_its_fix_keeps_it() -> None:
    history = imported({"insights": {"publish_results": [
        {"platform": "facebook", "success": False, "error": "Missing or invalid image file"},
        {"platform": "instagram", "success": True, "postId": "18107758234627017"}]}, "status": "failed"})

    assert needed_actions(history.state(), 5) == {"facebook": "fix the image URL"}


def test_a_platform_held_back_by_an_earlier_container_asks_to_check_the_account_and_resolve_that_attempt() -> None:
    from projections.responses import needed_actions
    from tests.unit.test_fold import held_by_an_earlier_container, operators_word

    history, first, _second = held_by_an_earlier_container()
    state = history.state()
    # Asked at once, while the service still tries by itself: each of its tries meets the same container.
    for attempts in (1, 5):
        assert needed_actions(state, attempts) == {"instagram": (
            f"check Instagram for the post of attempt {first} (Meta cannot say whether its container c1 was "
            f"published), then resolve that attempt: `smartretry resolve {state.post_id} instagram --attempt-id "
            f"{first} --not-published` or `--published-as MEDIA_ID`")}
    # Once resolved as not published, a retry publishes it.
    cleared = operators_word(history, first, published=False).state()
    assert needed_actions(cleared, 1) == {"instagram": "retry Instagram"}


def test_the_post_lists_error_cell_gives_each_platforms_part_a_line_an_imported_posts_warning_among_them() -> None:
    from smartretry.pages import _error_lines

    # An imported post whose Facebook failed and whose Instagram the old system may have published: the warning that
    # keeps anyone from publishing Instagram twice is a line of its own, never cut off behind a long Facebook error.
    history = imported({"status": "publishing", "error_message": "facebook: " + "Upload failed; try again " * 8,
                        "insights": {"publish_results": [{"platform": "facebook", "success": False,
                                                          "error": "Upload failed; try again " * 8}]}})
    lines = _error_lines(history.state())
    assert len(lines) == 2 and lines[0].startswith("facebook: Upload failed; try again")
    assert lines[1] == f"instagram: {UNSURE}"
