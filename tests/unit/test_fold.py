"""The fold, event by event: merging, status, error message, retry history, legacy documents, purity."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from projections import fold as fold_module
from projections.decide import decide, retry_targets
from projections.fold import apply, apply_all, apply_valid, fold
from projections.imported import without_secrets
from projections.responses import kept_from_before
from projections.state import AttemptState, PostState
from schemas.commands import PostContent, RetryRequested
from schemas.common import ErrorKind, Platform, PublishTarget, platforms_of
from schemas.events import (
    AttemptOutcomeUnknown,
    CommandDecided,
    CommandType,
    ContainerCreated,
    Event,
    LegacyInsightsImported,
    PlatformError,
    PlatformResult,
    PostSubmitted,
    PublishAttempted,
)
from tests.support.seed import IMAGE_ERROR, INSIGHTS_AFTER_FAILED_ATTEMPT

T0 = datetime(2025, 11, 17, 10, 10, 12, 500000, tzinfo=UTC)
POST = "01KA8MNE2DT1E31F8Z3TJHF96E"
CONTENT = PostContent(caption="Autumn sale", image_url="https://cdn.example.com/autumn sale.jpg")
FIXED = PostContent(caption="Autumn sale", image_url="https://cdn.example.com/autumn-sale.jpg")


@dataclass
class History:
    """Writes a post's events the way the command handler does, with ids and times fixed by the test."""

    post_id: str = POST
    at: datetime = T0
    events: list[Event] = field(default_factory=list)
    _numbers: dict[Platform, int] = field(default_factory=dict)
    _count: int = 0

    def _base(self, when: datetime | None) -> dict[str, object]:
        self._count += 1
        if when is None:
            self.at += timedelta(milliseconds=100)
            when = self.at
        return {"event_id": f"{self.post_id}:e{self._count}", "post_id": self.post_id, "occurred_at": when}

    def submit(self, target: PublishTarget = "both", command_id: str = "cmd-publish") -> History:
        self.events.append(PostSubmitted(**self._base(None), command_id=command_id, publish_target=target,
                                         content=CONTENT, account="acct-1"))
        return self

    def decide(self, command_id: str, platforms: tuple[Platform, ...], command_type: CommandType = "PublishRequested",
               content: PostContent | None = None) -> History:
        retry = command_type != "PublishRequested"
        self.events.append(CommandDecided(**self._base(None), command_id=command_id, command_type=command_type,
                                          platforms=platforms, is_retry=retry,
                                          forced=command_type == "ForceRepublishRequested", content=content))
        return self

    def attempt(self, platform: Platform, command_id: str, retry: bool = False, forced: bool = False) -> str:
        number = self._numbers.get(platform, 0) + 1
        self._numbers[platform] = number
        attempt_id = f"{self.post_id}:{platform}:{number}"
        self.events.append(PublishAttempted(**self._base(None), platform=platform, attempt_id=attempt_id,
                                            attempt_number=number, command_id=command_id, is_retry=retry,
                                            forced=forced))
        return attempt_id

    def container(self, platform: Platform, attempt_id: str, container_id: str) -> History:
        self.events.append(ContainerCreated(**self._base(None), platform=platform, attempt_id=attempt_id,
                                            container_id=container_id))
        return self

    def success(self, platform: Platform, attempt_id: str, post_id: str, permalink: str | None = None,
                when: datetime | None = None, recovered: bool = False) -> History:
        self.events.append(PlatformResult(**self._base(when), platform=platform, attempt_id=attempt_id, success=True,
                                          platform_post_id=post_id, permalink=permalink, recovered=recovered))
        return self

    def failure(self, platform: Platform, attempt_id: str, message: str = IMAGE_ERROR,
                kind: ErrorKind = ErrorKind.INVALID_MEDIA, when: datetime | None = None) -> History:
        self.events.append(PlatformResult(**self._base(when), platform=platform, attempt_id=attempt_id, success=False,
                                          error=PlatformError(kind=kind, message=message, http_status=400)))
        return self

    def unknown(self, platform: Platform, attempt_id: str, kind: ErrorKind = ErrorKind.AUTH,
                message: str = "Facebook post lookup failed: Error validating access token") -> History:
        """The handler could not ask the platform whether the attempt (left without a result) went out."""
        self.events.append(AttemptOutcomeUnknown(**self._base(None), platform=platform, attempt_id=attempt_id,
                                                 error=PlatformError(kind=kind, message=message, http_status=401)))
        return self

    def legacy(self, document: dict[str, Any], target: PublishTarget = "both") -> History:
        self.events.append(LegacyInsightsImported(**self._base(None), publish_target=target, document=document))
        return self

    def publish(self, command_id: str = "cmd-publish", target: PublishTarget = "both") -> dict[Platform, str]:
        """Submit, decide and attempt every targeted platform; the attempt ids, for the results."""
        self.submit(target, command_id).decide(command_id, platforms_of(target))
        return {p: self.attempt(p, command_id) for p in platforms_of(target)}

    def retry(self, command_id: str, platforms: tuple[Platform, ...], forced: bool = False,
              content: PostContent | None = None) -> dict[Platform, str]:
        self.decide(command_id, platforms, "ForceRepublishRequested" if forced else "RetryRequested", content)
        return {p: self.attempt(p, command_id, retry=True, forced=forced) for p in platforms}

    def state(self) -> PostState:
        return fold(self.events)[self.post_id]


def test_a_submitted_post_is_publishing_until_its_results_arrive() -> None:
    history = History()
    attempts = history.publish()
    assert history.state().status == "publishing"
    history.success("instagram", attempts["instagram"], "1810")
    assert history.state().status == "publishing", "Facebook has an attempt without a result"
    history.success("facebook", attempts["facebook"], "7479_1221")
    assert history.state().status == "posted"


def test_results_keep_the_seeds_order_whichever_platform_answers_first() -> None:
    history = History()
    attempts = history.publish()
    history.success("instagram", attempts["instagram"], "1810").failure("facebook", attempts["facebook"])
    platforms = [r.platform for r in history.state().document.insights.publish_results]
    assert platforms == ["facebook", "instagram"]


def test_a_newer_result_replaces_the_older_one_and_touches_nothing_else() -> None:
    history = History()
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "1810", "https://ig/p/1")
    before = history.state().document.insights.publish_results[1]
    retry = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", retry["facebook"], "7479_1221")
    results = history.state().document.insights.publish_results
    assert len(results) == 2
    assert results[0].success and results[0].post_id == "7479_1221" and results[0].error is None
    assert results[1] == before


def test_an_attempt_in_flight_beats_a_failure_so_a_retried_post_shows_as_publishing() -> None:
    history = History()
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "1810")
    assert history.state().status == "failed"
    history.decide("cmd-retry", ("facebook",), "RetryRequested")
    state = history.state()
    assert state.status == "publishing", "decided but not attempted yet"
    assert state.document.error_message == f"facebook: {IMAGE_ERROR}", "the last failure stays visible"
    history.attempt("facebook", "cmd-retry", retry=True)
    assert history.state().status == "publishing"


def test_error_message_names_every_failed_platform_and_is_null_once_all_succeeded() -> None:
    history = History()
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"])
    history.failure("instagram", attempts["instagram"], "Invalid OAuth access token", ErrorKind.AUTH)
    state = history.state()
    assert state.status == "failed"
    assert state.document.error_message == f"facebook: {IMAGE_ERROR}; instagram: Invalid OAuth access token"
    assert state.needed_action == {"facebook": "fix the image URL", "instagram": "re-authenticate Instagram"}
    retry = history.retry("cmd-retry", ("facebook", "instagram"))
    history.success("facebook", retry["facebook"], "7479_1221").success("instagram", retry["instagram"], "1810")
    state = history.state()
    assert state.status == "posted"
    assert state.document.error_message is None
    assert state.needed_action == {}


def test_needed_action_follows_the_error_kind() -> None:
    expected = {
        ErrorKind.AUTH: "re-authenticate Facebook",
        ErrorKind.PERMISSION: "grant the missing permission to Facebook",
        ErrorKind.INVALID_MEDIA: "fix the image URL",
        ErrorKind.INVALID_REQUEST: "fix the post",
    }
    for kind in ErrorKind:
        history = History()
        attempts = history.publish(target="facebook")
        history.failure("facebook", attempts["facebook"], "refused", kind)
        assert history.state().needed_action.get("facebook") == expected.get(kind), kind


def test_a_policy_block_asks_to_wait_until_it_lifts_not_to_fix_the_post() -> None:
    history = History()
    attempts = history.publish(target="facebook")
    history.events.append(PlatformResult(
        event_id="blocked", post_id=history.post_id, occurred_at=history.at, platform="facebook",
        attempt_id=attempts["facebook"], success=False, error=PlatformError(
            kind=ErrorKind.INVALID_REQUEST, code=368, http_status=400,
            message="Facebook photo upload failed: 400 - The action attempted has been deemed abusive")))
    assert history.state().needed_action == {"facebook": "wait until Facebook lifts its temporary block, then retry"}


def test_a_platform_that_was_not_targeted_does_not_count() -> None:
    history = History()
    attempts = history.publish(target="instagram")
    history.success("instagram", attempts["instagram"], "1810", "https://www.instagram.com/p/DRJ1nlKDgY9/")
    state = history.state()
    assert state.status == "posted"
    assert state.document.post_url == "https://www.instagram.com/p/DRJ1nlKDgY9/"
    assert [r.platform for r in state.document.insights.publish_results] == ["instagram"]


def test_a_failed_forced_republish_keeps_the_ids_of_the_post_that_still_exists() -> None:
    history = History()
    attempts = history.publish(target="facebook")
    history.success("facebook", attempts["facebook"], "7479_1221")
    forced = history.retry("cmd-force", ("facebook",), forced=True)
    assert history.state().status == "publishing"
    history.failure("facebook", forced["facebook"], "Service temporarily unavailable", ErrorKind.TRANSIENT)
    state = history.state()
    assert state.status == "failed"
    assert state.document.insights.facebook_post_id == "7479_1221"
    assert state.document.post_url == "https://www.facebook.com/7479_1221"
    assert state.needed_action == {}, "the service retries transient errors itself"
    assert state.document.insights.last_retry_at is not None


def test_a_late_result_of_an_older_attempt_does_not_replace_a_newer_result() -> None:
    history = History()
    attempts = history.publish(target="facebook")
    second = history.attempt("facebook", "cmd-publish")
    history.success("facebook", second, "7479_new")
    history.failure("facebook", attempts["facebook"], "timed out", ErrorKind.TRANSIENT)
    state = history.state()
    assert state.status == "posted"
    assert state.document.insights.publish_results[0].post_id == "7479_new"
    assert state.attempts[attempts["facebook"]].success is False


def test_container_and_recovered_results_are_kept_on_the_attempt() -> None:
    history = History()
    attempts = history.publish(target="instagram")
    history.container("instagram", attempts["instagram"], "17890000")
    assert history.state().attempts[attempts["instagram"]].container_id == "17890000"
    history.success("instagram", attempts["instagram"], "1810", "https://ig/p/1", recovered=True)
    attempt = history.state().attempts[attempts["instagram"]]
    assert attempt.container_id == "17890000" and attempt.recovered and attempt.success


def test_an_attempt_whose_look_up_meets_a_restricted_instagram_account_asks_to_sign_in_to_instagram() -> None:
    history = History()
    attempts = history.publish(target="instagram")
    history.events.append(AttemptOutcomeUnknown(**history._base(None), platform="instagram",
                                                attempt_id=attempts["instagram"], error=PlatformError(
                                                    kind=ErrorKind.PERMISSION, code=25, subcode=2207050,
                                                    message="Instagram post lookup failed: restricted")))
    assert history.state().needed_action == {
        "instagram": "sign in to Instagram and complete what it asks there (it restricted the account)"}


def test_an_attempt_that_cannot_be_checked_for_want_of_a_token_says_so_and_stays_publishing() -> None:
    history = History()
    attempts = history.publish(target="facebook")
    history.unknown("facebook", attempts["facebook"], ErrorKind.AUTH)
    state = history.state()
    assert state.status == "publishing", "its outcome is unknown, not failed"
    assert state.needed_action == {"facebook": "re-authenticate Facebook"}
    lookup = state.attempts[attempts["facebook"]].lookup_error
    assert lookup is not None and lookup.kind is ErrorKind.AUTH
    assert state.document.error_message is None and state.document.insights.publish_results == []

    # Re-authenticated: the post is found on the platform and recorded.
    history.success("facebook", attempts["facebook"], "7479_1221", recovered=True)
    state = history.state()
    assert (state.status, state.needed_action) == ("posted", {})


def test_an_attempt_that_cannot_be_checked_for_another_reason_needs_nothing_of_the_user() -> None:
    history = History()
    attempts = history.publish(target="facebook")
    history.unknown("facebook", attempts["facebook"], ErrorKind.AUTH)
    history.unknown("facebook", attempts["facebook"], ErrorKind.TRANSIENT, "could not tell whether the post went out")
    state = history.state()
    assert state.status == "publishing" and state.needed_action == {}, "the service keeps asking by itself"
    lookup = state.attempts[attempts["facebook"]].lookup_error
    assert lookup is not None and lookup.message == "could not tell whether the post went out"


def test_an_attempt_whose_look_up_the_platform_refuses_asks_someone_to_check_and_resolve_it() -> None:
    history = History()
    attempts = history.publish(target="instagram")
    history.unknown("instagram", attempts["instagram"], ErrorKind.INVALID_REQUEST,
                    "Instagram media status check failed: 400 - Object with ID '1789' does not exist")
    state = history.state()
    # Asking again will not bring the container back, and "fix the post" would be wrong: it may be out.
    assert state.status == "publishing"
    assert state.needed_action == {"instagram": "check Instagram for the post, then resolve the attempt"}
    # Resolved by an operator: the need goes with it.
    history.success("instagram", attempts["instagram"], "18107758234627017")
    assert history.state().needed_action == {}


def test_a_lookup_failure_after_the_attempts_result_changes_nothing() -> None:
    history = History()
    attempts = history.publish(target="facebook")
    history.failure("facebook", attempts["facebook"])
    before = history.state()
    history.unknown("facebook", attempts["facebook"], ErrorKind.AUTH)
    after = history.state()
    assert after.needed_action == before.needed_action == {"facebook": "fix the image URL"}
    assert after.attempts == before.attempts and after.document == before.document


def test_corrected_content_replaces_the_posts_content_and_keeps_results_until_new_ones_arrive() -> None:
    history = History()
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "1810")
    history.retry("cmd-retry", ("facebook",), content=FIXED)
    state = history.state()
    assert state.content == FIXED
    assert state.latest_result("facebook") is not None and state.latest_result("facebook").error == IMAGE_ERROR  # type: ignore[union-attr]
    assert state.commands["cmd-retry"].platforms == ["facebook"]


def test_a_platform_published_before_a_correction_is_said_to_keep_what_it_went_out_with() -> None:
    history = History()
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "1810")
    untouched = history.state()
    assert "published_content" not in untouched.model_dump_json(), "stored as before while no correction touched it"
    corrected = PostContent(caption="Autumn sale: 30% off", image_url="https://cdn.example.com/autumn-sale.jpg")
    retried = history.retry("cmd-retry", ("facebook",), content=corrected)
    history.success("facebook", retried["facebook"], "747917475065823_2")

    state = history.state()
    assert state.status == "posted" and state.content == corrected
    assert state.published_with() == {"instagram": CONTENT}
    (kept,) = kept_from_before(state).values()
    assert kept == ("Instagram's post went out with the earlier caption “Autumn sale” and the image at "
                    "https://cdn.example.com/autumn sale.jpg, not the post's content now (a published post is not "
                    "edited here: if it should show what the post has now, change it on Instagram, or republish "
                    "Instagram alone for a new post beside it)")
    assert PostState.model_validate_json(state.model_dump_json()) == state
    # Event by event, as a live projector may fold them, gives the same.
    one_by_one = None
    for event in history.events:
        one_by_one = apply(one_by_one, event)
    assert one_by_one == state

    # Published again with the post's content now (a forced republish), it keeps nothing from before.
    forced = history.retry("cmd-force", ("instagram",), forced=True)
    history.success("instagram", forced["instagram"], "1811")
    assert history.state().published_with() == {} and history.state().published_content == {}


def test_a_correction_back_to_what_went_out_leaves_nothing_to_say() -> None:
    history = History()
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "1810")
    retried = history.retry("cmd-retry", ("facebook",), content=FIXED)
    history.failure("facebook", retried["facebook"])
    history.retry("cmd-retry-2", ("facebook",), content=CONTENT)

    assert history.state().published_with() == {}, "Instagram's post has the post's content again"


def test_the_same_event_twice_changes_nothing_and_apply_leaves_its_input_alone() -> None:
    history = History()
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"])
    state = history.state()
    snapshot = state.model_dump_json()
    for event in history.events:
        assert apply(state, event) is state
    history.success("instagram", attempts["instagram"], "1810")
    after = apply(state, history.events[-1])
    assert after.status == "failed" and after is not state
    assert state.model_dump_json() == snapshot, "apply returned a new state and left the old one as it was"


def test_the_state_survives_a_json_round_trip() -> None:
    history = History()
    attempts = history.publish()
    history.container("instagram", attempts["instagram"], "c1")
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "1810", "https://ig/p")
    history.retry("cmd-retry", ("facebook",), content=FIXED)
    state = history.state()
    copy = PostState.model_validate_json(state.model_dump_json())
    assert copy == state
    assert (copy.post_id, copy.status, copy.updated_at) == (state.post_id, "publishing", state.updated_at)
    assert copy.document.to_document() == state.document.to_document()


# ---------------------------------------------------------------- old-system documents

SEED_FAILED_DOCUMENT: dict[str, Any] = INSIGHTS_AFTER_FAILED_ATTEMPT


def test_an_imported_seed_document_reads_back_as_it_was_and_merges_with_later_results() -> None:
    history = History().legacy(SEED_FAILED_DOCUMENT)
    state = history.state()
    assert state.legacy and state.status == "failed"
    assert state.document.to_document() == SEED_FAILED_DOCUMENT
    retry = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", retry["facebook"], "747917475065823_122104567890123")
    state = history.state()
    assert state.status == "posted" and state.document.error_message is None
    assert [r.platform for r in state.document.insights.publish_results] == ["facebook", "instagram"]
    assert state.document.post_url == "https://www.facebook.com/747917475065823_122104567890123"


def test_an_imported_failure_says_what_the_user_must_do_where_its_message_makes_it_plain() -> None:
    # The seed's document: Facebook refused the image. The product note's answer is to fix the URL and retry.
    assert History().legacy(SEED_FAILED_DOCUMENT).state().needed_action == {"facebook": "fix the image URL"}
    old = {"insights": {"publish_results": [
        {"platform": "facebook", "success": False, "error": "Error validating access token: Session has expired"},
        {"platform": "instagram", "success": False, "error": "An unexpected error has occurred"},
    ]}, "status": "failed"}
    state = History().legacy(old).state()
    # Nothing is asked where the message does not say (a hiccup is retried, not fixed).
    assert state.needed_action == {"facebook": "re-authenticate Facebook"}
    permission = {"insights": {"publish_results": [
        {"platform": "facebook", "success": False, "error": "(#210) A page access token is required"}]}}
    assert History().legacy(permission, target="facebook").state().needed_action == {
        "facebook": "grant the missing permission to Facebook"}
    # A document that kept only its message says it per platform, as the seed writes `error_message`.
    message_only = {"insights": {"instagram_media_id": "18107758234627017"}, "status": "failed",
                    "error_message": "facebook: Facebook photo upload failed: 400 - Missing or invalid image file"}
    assert History().legacy(message_only).state().needed_action == {"facebook": "fix the image URL"}
    # Fixed and retried: the need goes with the failure.
    history = History().legacy(SEED_FAILED_DOCUMENT)
    retry = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", retry["facebook"], "747917475065823_122104567890123")
    assert history.state().needed_action == {}


def test_an_old_document_without_publish_results_counts_its_platform_ids_as_successes() -> None:
    state = History().legacy({"insights": {"facebook_post_id": "7479_1"}, "status": "failed",
                              "error_message": "instagram: token expired", "unknown_field": 3}).state()
    assert state.latest_result("facebook") is not None and state.latest_result("facebook").success  # type: ignore[union-attr]
    assert state.latest_result("instagram") is None
    assert state.status == "failed" and state.document.error_message == "instagram: token expired"


def test_an_old_document_with_nothing_usable_is_still_a_post() -> None:
    state = History().legacy({"insights": {"publish_results": [{"platform": "myspace", "success": True}, "junk",
                                                               {"platform": "facebook"}],
                                           "published_at": "not a time"},
                              "status": "archived"}, target="facebook").state()
    assert state.document.insights.publish_results == []
    assert state.document.insights.published_at is None
    # Nothing publishes it by itself: not "publishing" for ever, but failed until a retry publishes it.
    assert state.status == "failed"
    assert state.document.error_message == "facebook: not published: the old system kept no result for it"
    assert state.targeted == ("facebook",)


def test_an_old_document_with_an_empty_or_partial_result_list_still_counts_its_platform_ids() -> None:
    state = History().legacy({"insights": {"publish_results": [], "facebook_post_id": "7479_1"}, "status": "posted"},
                             target="facebook").state()
    facebook = state.latest_result("facebook")
    assert facebook is not None and facebook.success and facebook.post_id == "7479_1"
    assert state.status == "posted"
    # The post exists on Facebook: a retry publishes nothing.
    assert decide(state, RetryRequested(command_id="r1", post_id=POST, requested_at=T0)).platforms == ()


def test_old_results_written_with_strings_or_numbers_for_success_are_read_as_they_mean() -> None:
    state = History().legacy({"insights": {"publish_results": [
        {"platform": "facebook", "success": "true", "postId": "7479_1"},
        {"platform": "instagram", "success": 0, "error": "boom"}]}, "status": "failed"}).state()
    assert [(r.platform, r.success) for r in state.document.insights.publish_results] == [
        ("facebook", True), ("instagram", False)]
    assert retry_targets(state) == ("instagram",)
    # An entry that does not say clearly but names its post: that post exists.
    unclear = History().legacy({"insights": {"publish_results": [
        {"platform": "facebook", "success": "yes", "postId": 747917475065823}]}}, target="facebook").state()
    facebook = unclear.latest_result("facebook")
    assert facebook is not None and facebook.success and facebook.post_id == "747917475065823"


def test_an_old_posted_document_that_kept_no_results_counts_every_target_as_published() -> None:
    state = History().legacy({"insights": {"publish_results": []}, "status": "posted",
                              "post_url": "https://www.facebook.com/747917475065823_122104567890123"}).state()
    assert state.status == "posted"
    facebook, instagram = state.latest_result("facebook"), state.latest_result("instagram")
    assert facebook is not None and facebook.success and facebook.post_id == "747917475065823_122104567890123"
    assert instagram is not None and instagram.success and instagram.post_id is None
    assert decide(state, RetryRequested(command_id="r1", post_id=POST, requested_at=T0)).platforms == ()


def test_old_platform_names_are_read_whatever_their_case() -> None:
    state = History().legacy({"insights": {"publish_results": [
        {"platform": "Facebook", "success": True, "postId": "7479_1"},
        {"platform": "INSTAGRAM", "success": False, "error": "boom"}]}, "status": "failed"}).state()
    assert [(r.platform, r.success) for r in state.document.insights.publish_results] == [
        ("facebook", True), ("instagram", False)]
    assert retry_targets(state) == ("instagram",)


def test_an_imported_failure_on_a_platform_outside_the_target_is_one_a_retry_can_fix() -> None:
    state = History().legacy({"insights": {"publish_results": [
        {"platform": "facebook", "success": True, "postId": "7479_1"},
        {"platform": "instagram", "success": False, "error": "token expired"}]}, "status": "failed"},
        target="facebook").state()
    assert state.status == "failed" and state.targeted == ("facebook", "instagram")
    assert retry_targets(state) == ("instagram",)


def test_an_old_time_with_no_value_in_utc_is_ignored_like_any_unreadable_one() -> None:
    state = History().legacy({"insights": {"publish_results": [], "published_at": "0001-01-01T00:00:00+01:00"},
                              "status": "failed"}).state()
    assert state.document.insights.published_at is None


def test_a_failed_result_of_an_attempt_never_recorded_is_refused_and_never_undoes_a_success() -> None:
    history = History()
    attempts = history.publish()
    history.success("facebook", attempts["facebook"], "7479_1").success("instagram", attempts["instagram"], "1810_1")
    stray = PlatformResult(event_id="stray", post_id=POST, occurred_at=T0 + timedelta(minutes=1),
                           platform="facebook", attempt_id="nope", success=False,
                           error=PlatformError(kind=ErrorKind.TRANSIENT, message="boom"))
    state, refused = apply_valid(history.state(), [stray])
    assert refused == [(stray, "facebook failed result of attempt nope, which was never recorded: it cannot "
                               "replace the platform's result")]
    assert state is not None and state.status == "posted"


def test_an_attempt_no_handler_made_is_refused_and_never_holds_a_posted_post() -> None:
    # Written straight to the post events: as the platform's latest attempt, it would hold the post "publishing" and,
    # once looked up and not found, put a failure over the post that went out, which a retry would publish again.
    history = History()
    attempts = history.publish()
    history.success("facebook", attempts["facebook"], "7479_1").success("instagram", attempts["instagram"], "1810_1")
    forged = PublishAttempted(event_id="forged-event", post_id=POST, occurred_at=T0 + timedelta(minutes=1),
                              platform="facebook", attempt_id="forged", attempt_number=9, command_id="no-such-command")
    state, refused = apply_valid(history.state(), [forged])
    assert refused == [(forged, "facebook attempt forged names command no-such-command, which this post never "
                                "decided: a command is decided before its attempts")]
    assert state is not None and state.status == "posted" and state.in_flight("facebook") is None


def test_attempts_the_handler_writes_out_of_the_usual_count_are_taken() -> None:
    # An import's results counted in the numbers (as one version numbered them), and two handlers that recorded the
    # same number for one command during a takeover: each attempt names a decided command, and is taken.
    imported = History().legacy({"status": "failed", "insights": {"publish_results": [
        {"platform": "facebook", "success": False, "error": "token expired"}]}}, target="facebook")
    imported.decide("cmd-retry", ("facebook",), "RetryRequested")
    imported.events.append(PublishAttempted(
        event_id="numbered-after-the-import", post_id=POST, occurred_at=T0 + timedelta(minutes=1), platform="facebook",
        attempt_id="cmd-retry:facebook:2", attempt_number=2, command_id="cmd-retry", is_retry=True))
    imported.success("facebook", "cmd-retry:facebook:2", "7479_1")
    state, refused = apply_valid(None, imported.events)
    assert refused == [] and state is not None and state.status == "posted"
    history = History()
    attempts = history.publish(target="facebook")
    history.events.append(PublishAttempted(
        event_id="the-other-owners", post_id=POST, occurred_at=T0 + timedelta(seconds=1), platform="facebook",
        attempt_id="other-owner:facebook:1", attempt_number=1, command_id="cmd-publish"))
    history.failure("facebook", attempts["facebook"], "Facebook post failed: 500 - hiccup", ErrorKind.TRANSIENT)
    history.attempt("facebook", "cmd-publish")
    state, refused = apply_valid(None, history.events)
    assert refused == [] and state is not None and len(state.attempts_of("facebook")) == 3


def test_an_event_the_fold_fails_on_unforeseen_is_refused_and_the_others_still_apply(
        monkeypatch: pytest.MonkeyPatch) -> None:
    history = History().submit("both")
    history.decide("cmd-publish", ("facebook", "instagram"))
    decided = history.events[-1]

    def broken(_state: PostState, _event: Event) -> None:
        raise KeyError("container")

    monkeypatch.setitem(fold_module._HANDLERS, ContainerCreated, broken)
    container = ContainerCreated(event_id="c:container", post_id=POST, occurred_at=T0, platform="instagram",
                                 attempt_id="ig-1", container_id="17889455560051444")
    state, refused = apply_valid(None, [*history.events, container])
    assert refused == [(container, "KeyError: 'container'")]
    assert state is not None and decided.event_id in state.applied_event_ids


def test_results_and_an_import_in_one_batch_fold_as_they_do_one_by_one() -> None:
    history = History().legacy(SEED_FAILED_DOCUMENT)
    retry = history.retry("cmd-retry", ("facebook",))
    history.failure("facebook", retry["facebook"], "Facebook photo upload failed: 400 - still broken")
    # An import after that result that has Facebook published: it comes later, so it is what stays.
    history.legacy({"insights": {"publish_results": [{"platform": "facebook", "success": True, "postId": "7479_9"}]}})
    one_by_one = None
    for event in history.events:
        one_by_one = apply(one_by_one, event)
    at_once = apply_all(None, history.events)
    assert at_once == one_by_one
    assert at_once is not None
    facebook = at_once.latest_result("facebook")
    assert facebook is not None and facebook.success and facebook.post_id == "7479_9"


def test_an_import_run_again_never_turns_a_published_platform_into_a_failure() -> None:
    # The seed's document imported, Facebook then published by a retry, and the same document imported again
    # (the migration run twice): Facebook stays published, so nothing is left for a retry to post twice.
    history = History().legacy(SEED_FAILED_DOCUMENT)
    retry = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", retry["facebook"], "7479_9")
    history.legacy(SEED_FAILED_DOCUMENT)
    state = history.state()
    assert state.status == "posted"
    facebook = state.latest_result("facebook")
    assert facebook is not None and facebook.success and facebook.post_id == "7479_9"
    assert "facebook" not in state.needed_action


def test_an_import_of_a_post_the_service_has_worked_on_fills_only_what_the_post_lacks() -> None:
    # The old system's document is older than what the service did since: imported again (a migration run twice),
    # it must not put the old Facebook post back over the one the service published, nor the old content (a
    # broken image URL the user fixed) over the corrected one, which a later republish would send.
    old_post = {"insights": {"publish_results": [
        {"platform": "facebook", "success": True, "post_id": "7479_555"},
        {"platform": "instagram", "success": False, "error": "Instagram media upload failed: bad image"}]}}
    broken = PostContent(caption="Autumn sale", image_url="https://cdn.example.com/my image.jpg")
    history = History()
    history.events.append(LegacyInsightsImported(**history._base(None), publish_target="both", document=old_post,
                                                 content=broken, account="acct-old"))
    forced = history.retry("cmd-force", ("facebook", "instagram"), forced=True, content=FIXED)
    history.success("facebook", forced["facebook"], "7479_9")
    history.failure("instagram", forced["instagram"], "rate limited", ErrorKind.RATE_LIMITED)
    history.events.append(LegacyInsightsImported(**history._base(None), publish_target="both", document=old_post,
                                                 content=broken, account="acct-other"))
    state = history.state()
    facebook, instagram = state.latest_result("facebook"), state.latest_result("instagram")
    assert facebook is not None and facebook.success and facebook.post_id == "7479_9"
    assert state.document.post_url == "https://www.facebook.com/7479_9"
    # The service's newer failure stands, not the old system's.
    assert instagram is not None and instagram.error == "rate limited"
    assert state.content == FIXED and state.account == "acct-old"
    # A post the service published itself, imported afterwards: the same.
    published = History()
    attempts = published.publish()
    published.success("facebook", attempts["facebook"], "7479_1")
    published.failure("instagram", attempts["instagram"], "refused", ErrorKind.INVALID_MEDIA)
    published.events.append(LegacyInsightsImported(**published._base(None), publish_target="both",
                                                   document=old_post, content=broken))
    state = published.state()
    facebook = state.latest_result("facebook")
    assert facebook is not None and facebook.post_id == "7479_1" and state.content == CONTENT
    # Each platform the import brings a result for counts as one attempt of the old system's.
    assert state.legacy_attempts == {"facebook": 1, "instagram": 1}


def test_an_import_saying_a_platform_went_out_where_the_services_attempt_failed_is_taken_as_published() -> None:
    # The post is there on the platform: a retry must not post it a second time.
    history = History()
    attempts = history.publish()
    history.success("facebook", attempts["facebook"], "7479_1")
    history.failure("instagram", attempts["instagram"], "timed out", ErrorKind.TRANSIENT)
    history.legacy({"insights": {"publish_results": [{"platform": "instagram", "success": True,
                                                       "post_id": "1789_1"}]}})
    state = history.state()
    assert state.status == "posted"
    instagram = state.latest_result("instagram")
    assert instagram is not None and instagram.success and instagram.post_id == "1789_1"
    # So when the old document only says "posted", keeping no result: every platform it targeted went out.
    said = History()
    attempts = said.publish()
    said.failure("facebook", attempts["facebook"], "refused", ErrorKind.INVALID_MEDIA)
    said.success("instagram", attempts["instagram"], "1789_1")
    said.legacy({"status": "posted", "post_url": "https://www.facebook.com/7479_42"})
    state = said.state()
    facebook = state.latest_result("facebook")
    assert state.status == "posted" and facebook is not None and facebook.post_id == "7479_42"
    # Each platform it took as published counts as one attempt of the old system's, as one it listed would.
    assert History().legacy({"status": "posted"}).state().legacy_attempts == {"facebook": 1, "instagram": 1}


def test_an_import_saying_posted_but_listing_a_platform_as_failed_is_not_taken_as_published_there() -> None:
    # Its own result for Facebook says it failed: "posted" speaks only for platforms it kept no result for, whether
    # or not the service published the post first.
    document = {"status": "posted", "insights": {"publish_results": [
        {"platform": "facebook", "success": False, "error": "Facebook photo upload failed"},
        {"platform": "instagram", "success": True, "postId": "1789_1"}]}}
    serviced = History()
    attempts = serviced.publish()
    serviced.failure("facebook", attempts["facebook"], "refused", ErrorKind.INVALID_MEDIA)
    serviced.success("instagram", attempts["instagram"], "1789_1")
    serviced.legacy(document)
    imported_only = History().legacy(document)
    for history in (serviced, imported_only):
        state = history.state()
        facebook = state.latest_result("facebook")
        assert facebook is not None and not facebook.success, history.events[-1]
        assert state.status == "failed"


def test_a_token_the_old_system_wrote_into_an_imported_document_is_scrubbed_out_of_the_post() -> None:
    meta_shaped = "EAA" + "Bw0rKeD1" * 6
    document = {
        "status": "failed",
        "error_message": f"facebook: Invalid OAuth access token {meta_shaped}",
        "post_url": None,
        "insights": {"publish_results": [
            {"platform": "facebook", "success": False,
             "error": "GET /me/accounts?access_token=oldsystemsecret123&fields=id failed"},
            {"platform": "instagram", "success": True, "postId": "18107758234627017",
             "permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/"},
        ]},
    }
    state = History().legacy(document).state()
    text = state.model_dump_json()
    assert meta_shaped not in text and "oldsystemsecret123" not in text
    assert state.document.error_message is not None and "[redacted]" in state.document.error_message
    facebook = state.latest_result("facebook")
    assert facebook is not None and facebook.error == "GET /me/accounts?access_token=[redacted]&fields=id failed"


def test_a_token_scrubbed_from_an_old_error_message_leaves_the_other_platforms_part_its_own() -> None:
    def needed(facebook_message: str) -> dict[str, str]:
        document = {"status": "failed", "insights": {},
                    "error_message": f"facebook: {facebook_message}; instagram: Error validating access token: "
                                     "Session has expired"}
        return dict(History().legacy(document).state().needed_action)

    clean = needed("(#100) GET /v17.0/me/accounts failed")
    assert clean.get("instagram") == "re-authenticate Instagram"
    assert needed("(#100) GET /v17.0/me/accounts?access_token=oldsystemsecret123") == clean


@pytest.mark.parametrize("written", [
    "GET /me?access_token%3DSOMETHINGenc999&fields=id",  # URL-encoded
    '{"accessToken":"SOMETHINGcamel42"}',  # a JavaScript-era system's camel case
    "GET /oauth/access_token?fb_exchange_token=SOMETHINGexch43&grant_type=fb_exchange_token",
])
def test_a_token_an_imported_error_writes_another_way_is_scrubbed_out_too(written: str) -> None:
    document = {"status": "failed", "insights": {"publish_results": [
        {"platform": "facebook", "success": False, "error": written}]}}
    state = History().legacy(document, target="facebook").state()
    assert "SOMETHING" not in state.model_dump_json()
    facebook = state.latest_result("facebook")
    assert facebook is not None and facebook.error is not None and "[redacted]" in facebook.error


def test_platform_ids_an_old_document_kept_beside_its_results_lose_the_tokens_they_carry() -> None:
    """The results name no post, so the document's own ids are the post's: on the API, the pages and `post_url`."""
    meta_shaped = "EAA" + "Bw0rKeD1" * 6
    stored = "a-stored-token-" + "0f9e" * 4  # not shaped like Meta's: the projector takes it out before the fold
    document = {"status": "posted", "insights": {
        "publish_results": [{"platform": "facebook", "success": True}, {"platform": "instagram", "success": True}],
        "facebook_post_id": f"7479_{meta_shaped}",
        "instagram_media_id": f"1810 Bearer {stored}",
        "instagram_permalink": f"https://www.instagram.com/p/DRJ1nlKDgY9/?access_token={stored}",
    }}
    event = LegacyInsightsImported(event_id="imported-1", post_id=POST, occurred_at=T0, publish_target="both",
                                   document=document)

    state = apply_all(None, [without_secrets(event, {stored})])

    assert state is not None
    text = state.model_dump_json()
    assert meta_shaped not in text and stored not in text
    insights = state.document.insights
    assert insights.facebook_post_id == "7479_[redacted]"
    assert state.document.post_url == "https://www.facebook.com/7479_[redacted]"
    assert insights.instagram_media_id == "1810 Bearer [redacted]"
    assert insights.instagram_permalink == "https://www.instagram.com/p/DRJ1nlKDgY9/?access_token=[redacted]"
    # By the shapes alone (the fold's part, the same in every replay): Meta's, `Bearer ...` and `access_token=...`.
    shapes_only = History().legacy({"status": "posted", "insights": {
        "publish_results": [{"platform": "facebook", "success": True}, {"platform": "instagram", "success": True}],
        "facebook_post_id": f"7479_{meta_shaped}", "instagram_media_id": "1810 Bearer abcdefghij0123456789",
        "instagram_permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/?access_token=x"}}).state()
    assert (shapes_only.document.post_url, shapes_only.document.insights.instagram_media_id,
            shapes_only.document.insights.instagram_permalink) == (
        "https://www.facebook.com/7479_[redacted]", "1810 Bearer [redacted]",
        "https://www.instagram.com/p/DRJ1nlKDgY9/?access_token=[redacted]")


def test_an_imports_long_texts_are_cut_so_the_insights_message_stays_within_the_brokers_limit() -> None:
    # An old error of half a megabyte, twice (a result's and the document's message): whole, the insights message
    # passed the broker's 1 MB, and the projector could never publish it, nor go on.
    from projections.fold import LEGACY_TEXT_LIMIT
    from streams.projector import insights_message

    huge = "Facebook photo upload failed: " + "F" * 530_000
    state = History().legacy({"status": "failed", "error_message": f"facebook: {huge}", "post_url": "x" * 600_000,
                              "insights": {"publish_results": [{"platform": "facebook", "success": False,
                                                                "error": huge}],
                                           "instagram_media_id": "1" * 600_000}}).state()
    assert len(insights_message(state)) < 20_000
    facebook = state.latest_result("facebook")
    assert facebook is not None and facebook.error is not None
    assert len(facebook.error) == LEGACY_TEXT_LIMIT and facebook.error.endswith("…")
    assert facebook.error.startswith("Facebook photo upload failed: FFF")


def test_a_state_is_the_same_json_whatever_the_processs_hash_seed() -> None:
    # Replay compares the stored states byte for byte: nothing in a state may follow a set's order, which changes
    # with the hash seed from one process to the next.
    import subprocess
    import sys
    from pathlib import Path

    program = (
        "from tests.unit.test_fold import History\n"
        "from projections.imported import without_secrets\n"
        "h = History()\n"
        "h.legacy({'status': 'failed', 'insights': {'publish_results': ["
        "{'platform': 'instagram', 'success': False, 'error': 'x'}, {'platform': 'facebook', 'success': True}]}})\n"
        "h.events[-1] = without_secrets(h.events[-1], ['stored-token/with+forms=1', 'stored-token/with+forms=2'])\n"
        "print(h.state().model_dump_json())\n")
    root = Path(__file__).parents[2]
    outputs = {subprocess.run([sys.executable, "-c", program], cwd=root, capture_output=True, text=True, check=True,
                              env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout for seed in range(1, 9)}
    assert len(outputs) == 1, outputs


def test_the_containers_asked_before_a_new_one_are_those_of_the_attempts_failed_since_the_latest_success() -> None:
    def attempt(number: int, success: bool | None, container: str | None) -> AttemptState:
        return AttemptState(attempt_id=f"a{number}", platform="instagram", attempt_number=number, command_id="c",
                            started_at=datetime(2025, 11, 17, 10, number, tzinfo=UTC), container_id=container,
                            success=success)

    state = PostState(post_id="p", attempts={a.attempt_id: a for a in (
        attempt(1, False, "c1"), attempt(2, True, "c2"), attempt(3, False, "c3"), attempt(4, False, None),
        attempt(5, False, "c5"), attempt(6, None, "c6"))})

    # Newest first; none from before the success (a republish is meant to add to it), none without a result yet
    # (its look-up settles it), none that made no container.
    assert [c for c, _ in state.containers_to_ask("instagram")] == ["c5", "c3"]
    assert state.containers_to_ask("facebook") == []
    del state.attempts["a2"]
    assert [c for c, _ in state.containers_to_ask("instagram")] == ["c5", "c3", "c1"]


def held_by_an_earlier_container() -> tuple[History, str, str]:
    """An Instagram post whose first attempt failed after making container c1, and whose second was held back because
    Meta says c1 does not exist and the account's media cannot tell whether it went out: (history, first, second)."""
    from schemas.common import EARLIER_CONTAINER_UNKNOWN

    history = History()
    first = history.publish(target="instagram")["instagram"]
    history.container("instagram", first, "c1")
    history.failure("instagram", first, "Instagram container not ready after 30s", ErrorKind.TRANSIENT)
    second = history.retry("cmd-retry", ("instagram",))["instagram"]
    history.failure("instagram", second, f"{EARLIER_CONTAINER_UNKNOWN}c1 of an earlier attempt does not exist, so "
                    "whether that attempt went out cannot be told", ErrorKind.TRANSIENT)
    return history, first, second


def operators_word(history: History, attempt_id: str, published: bool) -> History:
    """An operator's resolution of `attempt_id`, as the handler records it (a result of its own)."""
    history.events.append(PlatformResult(
        **history._base(None), platform="instagram", attempt_id=attempt_id, success=published, resolved_by="resolve-1",
        platform_post_id="18107758234627017" if published else None,
        permalink="https://www.instagram.com/p/DRJ1nlKDgY9/" if published else None,
        error=None if published else PlatformError(kind=ErrorKind.TRANSIENT, message="an operator found it was not "
                                                                                     "published")))
    return history


def test_an_earlier_container_an_operator_found_not_published_is_not_asked_about_again() -> None:
    history, first, _second = held_by_an_earlier_container()
    assert [c for c, _ in history.state().containers_to_ask("instagram")] == ["c1"]

    state = operators_word(history, first, published=False).state()

    assert state.containers_to_ask("instagram") == []
    assert state.attempts[first].container_cleared_by == "resolve-1" and state.settled_by("resolve-1") is not None
    # Still failed as the latest attempt left it: a retry publishes it now.
    latest = state.latest_result("instagram")
    assert state.status == "failed" and latest is not None and latest.error is not None
    assert latest.error.startswith("Instagram publish not attempted")


def test_an_earlier_container_an_operator_found_published_makes_its_post_the_platforms() -> None:
    history, first, _second = held_by_an_earlier_container()

    state = operators_word(history, first, published=True).state()

    # The later attempt failed, so published nothing: the post found is Instagram's latest, and nothing is asked again.
    assert state.status == "posted" and state.document.error_message is None
    assert state.document.insights.instagram_media_id == "18107758234627017"
    assert state.document.insights.instagram_permalink == "https://www.instagram.com/p/DRJ1nlKDgY9/"
    assert state.containers_to_ask("instagram") == []


def test_a_link_added_by_a_correction_is_nothing_instagrams_post_lacks() -> None:
    # Instagram publishes no link: a retry of Facebook that adds one leaves Instagram's post as the post is.
    history = History()
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "1810")
    with_link = CONTENT.model_copy(update={"link": "https://shop.example.com/autumn"})
    retried = history.retry("cmd-retry", ("facebook",), content=with_link)
    history.success("facebook", retried["facebook"], "747917475065823_2")

    assert history.state().published_with() == {} and kept_from_before(history.state()) == {}
