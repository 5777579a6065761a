"""The retry decision: the seed's four cases, first publish, in-flight platforms, redelivered and unknown commands."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from projections.decide import OVERTAKEN, decide, retry_preview
from projections.fold import apply_all, next_attempt_number
from projections.resume import command_settled
from projections.state import PostState
from schemas.commands import (
    ForceRepublishRequested,
    PostContent,
    PublishRequested,
    ResolveAttemptRequested,
    RetryRequested,
    fingerprint,
)
from schemas.common import ErrorKind, Platform
from schemas.events import PlatformError, PlatformResult, PostSubmitted
from tests.unit.test_fold import CONTENT, FIXED, History

AT = datetime(2025, 11, 17, 10, 15, tzinfo=UTC)
POST = "01KA8MNE2DT1E31F8Z3TJHF96E"


def retry(command_id: str = "cmd-retry") -> RetryRequested:
    return RetryRequested(command_id=command_id, post_id=POST, requested_at=AT)


def force(command_id: str = "cmd-force") -> ForceRepublishRequested:
    return ForceRepublishRequested(command_id=command_id, post_id=POST, requested_at=AT, reason="testing")


def publish(command_id: str = "cmd-publish") -> PublishRequested:
    return PublishRequested(command_id=command_id, post_id=POST, requested_at=AT, publish_target="both",
                            content=CONTENT, account="acct-1")


def after_first_attempt(facebook: bool, instagram: bool) -> PostState:
    history = History(post_id=POST)
    attempts = history.publish()
    outcome: dict[Platform, bool] = {"facebook": facebook, "instagram": instagram}
    for platform, ok in outcome.items():
        if ok:
            history.success(platform, attempts[platform], f"{platform}-1")
        else:
            history.failure(platform, attempts[platform], "refused", ErrorKind.INVALID_MEDIA)
    return history.state()


def test_first_publish_goes_to_every_targeted_platform() -> None:
    decision = decide(None, publish())
    assert decision.platforms == ("facebook", "instagram")
    assert not decision.is_retry and not decision.no_op and decision.accepted
    assert decision.log_line == "Publishing to both Facebook and Instagram..."


def test_case_1_facebook_failed_instagram_succeeded_retries_only_facebook() -> None:
    decision = decide(after_first_attempt(facebook=False, instagram=True), retry())
    assert decision.platforms == ("facebook",)
    assert decision.skipped == {"instagram": "already succeeded"}
    assert decision.is_retry and not decision.forced
    assert decision.log_line == "🔄 Smart retry: Publishing only to Facebook (Instagram already succeeded)"


def test_case_2_instagram_failed_facebook_succeeded_retries_only_instagram() -> None:
    state = after_first_attempt(facebook=True, instagram=False)
    decision = decide(state, retry())
    assert decision.platforms == ("instagram",)
    assert decision.log_line == "🔄 Smart retry: Publishing only to Instagram (Facebook already succeeded)"
    assert retry_preview(state) == "Note: Will only retry Instagram"


def test_case_3_both_failed_retries_both() -> None:
    state = after_first_attempt(facebook=False, instagram=False)
    decision = decide(state, retry())
    assert decision.platforms == ("facebook", "instagram") and decision.skipped == {}
    assert decision.log_line == "🔄 Smart retry: Publishing to both Facebook and Instagram (both failed)"
    assert retry_preview(state) == "Note: Will retry Facebook and Instagram"


def test_a_retry_after_a_forced_republish_failed_says_the_earlier_post_is_still_there() -> None:
    history = History()
    first = history.publish()
    history.success("facebook", first["facebook"], "747917475065823_1")
    history.success("instagram", first["instagram"], "18107758234627017")
    forced = history.retry("cmd-force", ("instagram",), forced=True)
    history.failure("instagram", forced["instagram"], "Instagram container failed: 400 - Media download has failed.")
    state = history.state()

    assert decide(state, retry()).platforms == ("instagram",)  # the republish asked for, carried on
    said = "Note: Will only retry Instagram (Instagram went out before: that post is still there, and this posts " \
           "beside it)"
    assert retry_preview(state) == said
    # Said again after a retry of it failed too: the earlier post is still there.
    history.failure("instagram", history.retry("cmd-retry", ("instagram",))["instagram"], "Instagram container "
                    "failed: 400 - Media download has failed.")
    assert retry_preview(history.state()) == said
    # A retry of a first publish that failed says nothing of the kind.
    assert retry_preview(after_first_attempt(facebook=True, instagram=False)) == "Note: Will only retry Instagram"


def test_case_4_both_succeeded_a_retry_publishes_nothing_and_says_so() -> None:
    decision = decide(after_first_attempt(facebook=True, instagram=True), retry())
    assert decision.platforms == () and decision.no_op and decision.accepted
    assert decision.log_line == "Nothing to retry: Facebook and Instagram already succeeded"


def test_a_retry_with_nothing_left_to_publish_says_whether_its_correction_was_left_unused() -> None:
    posted = after_first_attempt(facebook=True, instagram=True)
    fixed = RetryRequested(command_id="cmd-fixed", post_id=POST, requested_at=AT, content=FIXED)
    assert decide(posted, fixed).log_line == ("Nothing to retry: Facebook and Instagram already succeeded; the "
                                              "corrected content it carried was not applied")
    # The post's own content sent again is no correction.
    same = RetryRequested(command_id="cmd-same", post_id=POST, requested_at=AT, content=posted.content)
    assert decide(posted, same).log_line == "Nothing to retry: Facebook and Instagram already succeeded"


def test_case_4_only_a_forced_republish_publishes_successful_platforms_again() -> None:
    decision = decide(after_first_attempt(facebook=True, instagram=True), force())
    assert decision.platforms == ("facebook", "instagram")
    assert decision.forced and decision.is_retry
    assert decision.log_line == "Forced republish: Publishing to both Facebook and Instagram again (testing)"


def test_a_forced_republish_of_one_platform_publishes_that_one_only() -> None:
    posted = after_first_attempt(facebook=True, instagram=True)
    only = ForceRepublishRequested(command_id="cmd-force", post_id=POST, requested_at=AT, reason="new caption",
                                   platforms=["instagram"])

    decision = decide(posted, only)

    assert decision.platforms == ("instagram",) and decision.forced
    assert decision.skipped == {"facebook": "not asked to be republished"}
    assert decision.log_line == "Forced republish: Publishing to Instagram again (new caption)"


def test_a_forced_republish_naming_a_platform_the_post_does_not_target_is_refused() -> None:
    history = History(post_id=POST)
    attempts = history.publish(target="facebook")
    history.success("facebook", attempts["facebook"], "747917475065823_1")
    only = ForceRepublishRequested(command_id="cmd-force", post_id=POST, requested_at=AT, reason="testing",
                                   platforms=["instagram"])

    decision = decide(history.state(), only)

    assert decision.reject_reason == f"post {POST} is not published to Instagram: it targets Facebook only"
    assert not decision.platforms


def test_a_forced_republish_of_every_platform_keeps_the_fingerprint_it_had_before_platforms_could_be_named() -> None:
    # Its JSON as versions without `platforms` wrote it: a redelivered one is the same command, not a reused id.
    command = force()
    assert "platforms" not in command.model_dump_json()
    assert fingerprint(command) == fingerprint(ForceRepublishRequested.model_validate_json(command.model_dump_json()))
    with pytest.raises(ValidationError, match="names each platform once"):
        ForceRepublishRequested(command_id="c", post_id=POST, requested_at=AT, platforms=["facebook", "facebook"])


def test_a_platform_in_flight_is_not_attempted_again_but_is_reported_unresolved() -> None:
    history = History(post_id=POST)
    attempts = history.publish()
    history.failure("instagram", attempts["instagram"], "refused", ErrorKind.INVALID_MEDIA)
    state = history.state()
    for command in (retry(), force()):
        decision = decide(state, command)
        assert decision.platforms == ("instagram",)
        assert decision.unresolved == ("facebook",)
        assert "facebook" in decision.skipped and "still publishing" in decision.skipped["facebook"]
    assert next_attempt_number(state, "facebook") == 2


def test_only_in_flight_platforms_left_is_a_no_op() -> None:
    history = History(post_id=POST)
    history.publish(target="facebook")
    decision = decide(history.state(), retry())
    assert decision.no_op and decision.unresolved == ("facebook",)
    assert decision.log_line.startswith("Nothing to retry: Facebook still publishing")


def test_a_command_seen_before_has_no_effect() -> None:
    state = after_first_attempt(facebook=False, instagram=True)
    for command in (publish(), retry("cmd-publish"), force("cmd-publish")):
        decision = decide(state, command)
        assert decision.duplicate_command and decision.platforms == () and not decision.accepted
        assert decision.unstarted == ()


def test_a_redelivered_command_resumes_platforms_it_decided_but_never_attempted() -> None:
    history = History(post_id=POST)
    history.submit().decide("cmd-publish", ("facebook", "instagram"))
    history.attempt("facebook", "cmd-publish")
    decision = decide(history.state(), publish())
    assert decision.duplicate_command and decision.platforms == ()
    assert decision.unstarted == ("instagram",)
    assert decision.unresolved == ("facebook",)


def test_a_publish_whose_submission_was_recorded_but_not_decided_goes_ahead() -> None:
    history = History(post_id=POST).submit(command_id="cmd-publish")
    assert decide(history.state(), publish()).platforms == ("facebook", "instagram")
    rejected = decide(history.state(), publish("cmd-other"))
    assert rejected.reject_reason is not None and "already exists" in rejected.reject_reason
    assert rejected.platforms == ()


@pytest.mark.parametrize("command", [retry(), force()], ids=["retry", "force"])
def test_a_retry_of_an_unknown_post_is_rejected(command: RetryRequested | ForceRepublishRequested) -> None:
    decision = decide(None, command)
    assert decision.reject_reason is not None and "unknown" in decision.reject_reason
    assert decision.platforms == () and not decision.accepted
    assert retry_preview(None) == ""


@pytest.mark.parametrize("forced", [False, True])
def test_a_retry_naming_another_account_than_the_posts_is_refused(forced: bool) -> None:
    state = after_first_attempt(facebook=False, instagram=True)  # published with account acct-1
    other = RetryRequested(command_id="cmd-move", post_id=POST, requested_at=AT, account="acct-2") if not forced else \
        ForceRepublishRequested(command_id="cmd-move", post_id=POST, requested_at=AT, account="acct-2")
    decision = decide(state, other)
    assert not decision.platforms and not decision.accepted
    assert decision.reject_reason == (f"post {POST} publishes with account 'acct-1': a retry cannot move it to "
                                      "'acct-2' (publish a new post with that account instead)")
    same = RetryRequested(command_id="cmd-same", post_id=POST, requested_at=AT, account="acct-1")
    assert decide(state, same).platforms == ("facebook",)


def test_the_decision_becomes_the_event_that_records_it() -> None:
    state = after_first_attempt(facebook=False, instagram=True)
    command = RetryRequested(command_id="cmd-retry", post_id=POST, requested_at=AT, content=FIXED)
    decision = decide(state, command)
    event = decision.to_event(command, "ev-1", AT)
    assert (event.command_id, event.command_type, event.platforms) == ("cmd-retry", "RetryRequested", ("facebook",))
    assert event.is_retry and event.content == FIXED and event.skipped == {"instagram": "already succeeded"}
    assert event.note == decision.log_line


def test_a_legacy_post_retries_only_what_the_old_system_did_not_publish() -> None:
    history = History(post_id=POST).legacy({"insights": {"facebook_post_id": "7479_1"}, "status": "failed"})
    decision = decide(history.state(), RetryRequested(command_id="cmd-retry", post_id=POST, requested_at=AT,
                                                      content=FIXED))
    assert decision.platforms == ("instagram",)
    rejected = decide(history.state(), publish())
    assert rejected.reject_reason is not None


def test_a_retry_of_a_post_imported_without_content_that_brings_none_is_refused_before_any_platform() -> None:
    # Every platform would fail on it, each failure counted as an attempt and a retry of the post.
    history = History(post_id=POST).legacy({"insights": {"facebook_post_id": "7479_1"}, "status": "failed"})
    decision = decide(history.state(), retry())
    assert decision.platforms == () and decision.refused_content
    assert decision.reject_reason == ("the post has no content to publish (imported without it): retry it with its "
                                      "content (content.caption, content.image_url)")


def resolve(published: bool, attempt_id: str | None = None, command_id: str = "cmd-resolve") -> ResolveAttemptRequested:
    return ResolveAttemptRequested(command_id=command_id, post_id=POST, requested_at=AT, platform="facebook",
                                   attempt_id=attempt_id, published=published,
                                   platform_post_id="747917475065823_122104567890123" if published else None)


def test_a_resolution_the_handler_applied_is_recorded_and_publishes_nothing() -> None:
    history = History(post_id=POST)
    attempts = history.publish(target="facebook")
    history.events.append(PlatformResult(
        event_id="resolved", post_id=POST, occurred_at=AT, platform="facebook", attempt_id=attempts["facebook"],
        success=True, platform_post_id="747917475065823_122104567890123", resolved_by="cmd-resolve"))

    decision = decide(history.state(), resolve(published=True))

    assert decision.accepted and decision.no_op and decision.platforms == ()
    assert decision.log_line == (f"Facebook attempt {attempts['facebook']} resolved by an operator: published as "
                                 "747917475065823_122104567890123")


def test_a_resolution_is_settled_once_the_command_waiting_on_its_attempt_recorded_it() -> None:
    # Its own turn may come an hour later, behind that command's automatic retries: its sender is answered now.
    history = History(post_id=POST)
    attempts = history.publish(target="facebook")
    assert not command_settled(history.state(), "cmd-resolve", 5)
    history.events.append(PlatformResult(
        event_id="resolved", post_id=POST, occurred_at=AT, platform="facebook", attempt_id=attempts["facebook"],
        success=False, resolved_by="cmd-resolve", error=PlatformError(kind=ErrorKind.TRANSIENT, message=(
            "Facebook publish was interrupted before its result was recorded; an operator found it was not "
            "published"))))
    assert command_settled(history.state(), "cmd-resolve", 5)


def test_a_resolution_with_no_attempt_waiting_for_a_result_is_refused() -> None:
    decision = decide(after_first_attempt(facebook=False, instagram=True), resolve(published=False))
    assert decision.reject_reason == "nothing to resolve: Facebook's latest attempt has its result"
    assert decide(None, resolve(published=False)).reject_reason is not None
    # A platform the post never tried is said to be one, not one with a result.
    history = History(post_id=POST)
    history.publish(target="instagram")
    assert decide(history.state(), resolve(published=False)).reject_reason == \
        "nothing to resolve: the post has no Facebook attempt"


def test_a_resolution_of_an_attempt_the_platforms_look_up_settled_first_is_recorded_not_refused() -> None:
    # Accepted while the attempt waited; the handler's look-up found the post before the resolution's turn. The
    # operator's request is answered (recorded), not dead-lettered; the platform's answer stands.
    history = History(post_id=POST)
    attempts = history.publish(target="facebook")
    history.success("facebook", attempts["facebook"], "747917475065823_899860", recovered=True)

    for published in (True, False):
        decision = decide(history.state(), resolve(published=published, attempt_id=attempts["facebook"]))
        assert decision.accepted and decision.no_op and decision.platforms == ()
        assert decision.log_line.startswith(f"Facebook attempt {attempts['facebook']} was settled before this "
                                            "resolution's turn: published as 747917475065823_899860")


def test_an_earlier_attempt_whose_container_meta_cannot_say_anything_of_takes_a_resolution_by_its_id() -> None:
    from projections.decide import container_resolution, resolution_refusal
    from tests.unit.test_fold import held_by_an_earlier_container, operators_word

    history, first, second = held_by_an_earlier_container()
    state = history.state()
    # Named by its id only: one naming none speaks of an attempt waiting for a result, and there is none.
    assert resolution_refusal(state, "instagram", first) is None
    assert container_resolution(state, "instagram", first) is state.attempts[first]
    assert resolution_refusal(state, "instagram", None) == \
        "nothing to resolve: Instagram's latest attempt has its result"
    # The later attempt made no container: nothing of it is unknown.
    assert resolution_refusal(state, "instagram", second) is not None
    # A container no failure says Meta cannot tell of (it failed a moment ago: Meta may still answer) takes none.
    fresh = History(post_id=POST)
    attempt = fresh.publish(target="instagram")["instagram"]
    fresh.container("instagram", attempt, "c9")
    fresh.failure("instagram", attempt, "not ready after 30s", ErrorKind.TRANSIENT)
    assert container_resolution(fresh.state(), "instagram", attempt) is None
    assert resolution_refusal(fresh.state(), "instagram", attempt) is not None
    # Settled once: its container is no longer asked about, and it takes no second resolution.
    settled = operators_word(history, first, published=False).state()
    assert container_resolution(settled, "instagram", first) is None
    assert resolution_refusal(settled, "instagram", first) is not None
    decision = decide(settled, ResolveAttemptRequested(command_id="resolve-1", post_id=settled.post_id,
                                                       requested_at=AT, platform="instagram", attempt_id=first,
                                                       published=False))
    assert decision.accepted and decision.no_op and decision.platforms == ()
    assert decision.log_line == f"Instagram attempt {first} resolved by an operator: not published"


def test_a_resolution_naming_another_attempt_is_refused() -> None:
    history = History(post_id=POST)
    attempts = history.publish(target="facebook")
    decision = decide(history.state(), resolve(published=False, attempt_id="another"))
    assert decision.reject_reason == f"Facebook's attempt waiting for a result is {attempts['facebook']}, not another"


def test_a_published_resolution_must_name_the_post() -> None:
    with pytest.raises(ValidationError, match="needs platform_post_id"):
        ResolveAttemptRequested(command_id="c", post_id=POST, requested_at=AT, platform="facebook", published=True)
    with pytest.raises(ValidationError, match="has no platform_post_id"):
        ResolveAttemptRequested(command_id="c", post_id=POST, requested_at=AT, platform="facebook", published=False,
                                platform_post_id="747917475065823_1")


def test_a_forced_republish_the_post_was_published_again_after_is_refused_not_published_a_third_time() -> None:
    # Two republishes sent at the same moment, both asked for when the post had its two first attempts: the handler
    # takes the first, and must not publish the second on top of it.
    state = after_first_attempt(facebook=True, instagram=True)
    seen = len(state.attempts)
    first = force("cmd-force-1").model_copy(update={"seen_attempts": seen})
    second = force("cmd-force-2").model_copy(update={"seen_attempts": seen})
    assert decide(state, first).platforms == ("facebook", "instagram")
    history = History(post_id=POST)
    attempts = history.publish()
    for platform, attempt in attempts.items():
        history.success(platform, attempt, f"{platform}-1")
    for platform, attempt in history.retry("cmd-force-1", ("facebook", "instagram"), forced=True).items():
        history.success(platform, attempt, f"{platform}-2")
    after = history.state()

    decision = decide(after, second)
    # Recorded, publishing nothing: the same request sent again is then this command, not a new republish.
    assert decision.platforms == () and decision.no_op and decision.accepted
    assert decision.skipped == {"facebook": OVERTAKEN, "instagram": OVERTAKEN}
    assert "was published again after this republish was asked for (2 attempts since" in decision.log_line
    recorded = apply_all(after, [decision.to_event(second, "e-refused", AT)])
    assert recorded is not None and decide(recorded, second).duplicate_command
    # The first one's own redelivery is still a redelivery; a republish asked for now goes out; one that does not
    # say what it saw (an upstream's) is done as before.
    assert decide(after, first).duplicate_command
    assert decide(after, force("cmd-force-3").model_copy(update={"seen_attempts": len(after.attempts)})).platforms \
        == ("facebook", "instagram")
    assert decide(after, force("cmd-force-4")).platforms == ("facebook", "instagram")


def test_two_platforms_still_publishing_are_said_to_be_so_together() -> None:
    history = History(post_id=POST)
    history.publish()
    decision = decide(history.state(), force())
    assert decision.no_op
    assert decision.log_line == ("Nothing to republish: Facebook and Instagram still publishing (their last attempts "
                                 "have no result yet)")


def corrected_retry(content: dict[str, object],
                    command: type[RetryRequested | ForceRepublishRequested] = RetryRequested,
                    ) -> RetryRequested | ForceRepublishRequested:
    """A command as an upstream service writes it on Kafka: its content holds only the fields it gives."""
    fields = {"reason": "testing"} if command is ForceRepublishRequested else {}
    return command.model_validate({"command_id": "cmd-fix", "post_id": POST, "requested_at": AT.isoformat(),
                                   "content": content, **fields})


def test_a_retrys_content_from_kafka_corrects_the_fields_it_gives_and_keeps_the_others() -> None:
    # The API sends a retry's correction merged over the post's content; an upstream writing the command itself
    # gives only what it corrects. A caption alone must not take the post's image away (Instagram needs it).
    state = after_first_attempt(facebook=False, instagram=False)
    decision = decide(state, corrected_retry({"caption": "Autumn sale, now on"}))
    assert decision.platforms == ("facebook", "instagram") and decision.reject_reason is None
    assert decision.content == PostContent(caption="Autumn sale, now on", image_url=CONTENT.image_url)
    event = decision.to_event(corrected_retry({"caption": "Autumn sale, now on"}), "cmd-fix:decided", AT)
    assert event.content == decision.content
    # A field given as null is removed.
    linked = after_first_attempt(facebook=False, instagram=True).model_copy(update={"content": PostContent(
        caption="Sale", image_url=FIXED.image_url, link="https://shop.example.com/sale")})
    decision = decide(linked, corrected_retry({"caption": "Sale", "link": None}))
    assert decision.content == PostContent(caption="Sale", image_url=FIXED.image_url)


def test_content_the_platforms_cannot_take_is_refused_from_kafka_as_the_api_refuses_it() -> None:
    state = after_first_attempt(facebook=False, instagram=False)
    too_long = "x" * 2300
    for command in (corrected_retry({"caption": too_long}),
                    corrected_retry({"caption": too_long}, ForceRepublishRequested)):
        decision = decide(state, command)
        assert decision.reject_reason == "Instagram captions are limited to 2200 characters; this one has 2300"
        assert decision.refused_content and not decision.accepted and decision.platforms == ()
    decision = decide(state, corrected_retry({"caption": "Sale", "image_url": None}))
    assert decision.reject_reason == "Instagram needs content.image_url"
    # Instagram's limits do not bind a retry of Facebook alone.
    facebook_only = decide(after_first_attempt(facebook=False, instagram=True), corrected_retry({"caption": too_long}))
    assert facebook_only.platforms == ("facebook",) and facebook_only.reject_reason is None
    # A first publish the API would refuse is refused too: Instagram takes 30 hashtags and no link.
    tags = " ".join(f"#tag{n}" for n in range(31))
    many = publish().model_copy(update={"content": PostContent(caption=tags, image_url=FIXED.image_url)})
    assert decide(None, many).reject_reason == "Instagram captions take at most 30 hashtags; this one has 31"
    linked = publish().model_copy(update={"publish_target": "instagram", "content": PostContent(
        caption="Sale", image_url=FIXED.image_url, link="https://shop.example.com/sale")})
    assert (decide(None, linked).reject_reason or "").startswith("Instagram posts carry no link")


def test_a_link_a_retry_of_instagram_alone_would_add_is_refused_and_a_resumed_submission_goes_on() -> None:
    # Instagram takes no link: one a correction adds where only Instagram is published would go nowhere.
    decision = decide(after_first_attempt(facebook=True, instagram=False),
                      corrected_retry({"caption": "Sale", "link": "https://shop.example.com/sale"}))
    assert decision.refused_content and "this retry publishes Instagram only" in (decision.reject_reason or "")
    # A publish taken up again after a crash between its submission and its decision was accepted as it is: it goes
    # on whatever this version checks of new posts.
    tags = " ".join(f"#tag{n}" for n in range(31))
    history = History(post_id=POST)
    history.events.append(PostSubmitted(**history._base(None), command_id="cmd-publish", publish_target="both",
                                        content=PostContent(caption=tags, image_url=FIXED.image_url),
                                        account="acct-1"))
    resumed = publish().model_copy(update={"content": PostContent(caption=tags, image_url=FIXED.image_url)})
    assert decide(history.state(), resumed).platforms == ("facebook", "instagram")


def test_a_republish_without_content_is_held_to_the_limits_of_the_platforms_it_publishes_now() -> None:
    # A retry of Facebook alone may make the caption longer than Instagram takes; a later republish of both, carrying
    # no content of its own, would send that caption to Instagram, which refuses it (and Facebook goes out again).
    long_caption = "x" * 2300
    state = after_first_attempt(facebook=False, instagram=True).model_copy(update={"content": PostContent(
        caption=long_caption, image_url=FIXED.image_url)})
    assert decide(state, retry()).platforms == ("facebook",)
    refused = decide(state, force())
    # Said to be the post's own content, which the republish can correct.
    assert refused.refused_content and refused.reject_reason == (
        "Instagram captions are limited to 2200 characters; this one has 2300 (the post's content as it is now: send "
        "the republish with corrected content)")
    fits = decide(state, corrected_retry({"caption": "Autumn sale: 30% off"}, ForceRepublishRequested))
    assert fits.platforms == ("facebook", "instagram") and fits.reject_reason is None
    assert decide(state, force()).content is None and decide(state, retry()).content is None


def test_a_command_redelivered_after_a_later_one_took_its_platform_up_resumes_nothing() -> None:
    # The first publish's Instagram failed for a moment with attempts left (its automatic retries cut short, say); a
    # retry published it since. Redelivered after a restart (its offset not committed), the first owes nothing: resumed,
    # it would post Instagram a second time.
    from projections.resume import platforms_to_resume

    history = History(post_id=POST)
    first = history.publish(target="instagram")["instagram"]
    history.failure("instagram", first, "Instagram publish failed: 500 - hiccup", ErrorKind.TRANSIENT)
    assert platforms_to_resume(history.state(), "cmd-publish", 5) == ("instagram",)
    retried = history.retry("cmd-retry", ("instagram",))["instagram"]
    history.success("instagram", retried, "18107758234627017")

    assert platforms_to_resume(history.state(), "cmd-publish", 5) == ()
    assert decide(history.state(), PublishRequested(
        command_id="cmd-publish", post_id=POST, publish_target="instagram", content=CONTENT, account="acme",
        requested_at=AT)).duplicate_command


def test_text_a_command_brings_is_held_to_the_apis_field_checks_and_a_posts_own_is_published_as_it_was() -> None:
    # A correction with a control character or an address no platform can fetch: refused, from Kafka as by the API.
    state = after_first_attempt(facebook=False, instagram=True)
    escaped = decide(state, corrected_retry({"caption": "Sale \x1b[31mnow"}))
    assert escaped.refused_content and escaped.reject_reason == (
        "content.caption holds the control character U+001B, which no platform shows: take it out")
    port = decide(state, corrected_retry({"caption": "Sale", "image_url": "https://cdn.example.com:99999/a.jpg"}))
    assert port.refused_content and (port.reject_reason or "").startswith("content.image_url has an invalid port")
    fresh = publish().model_copy(update={"content": PostContent(caption="Sale\x07", image_url=FIXED.image_url)})
    assert decide(None, fresh).reject_reason == (
        "content.caption holds the control character U+0007, which no platform shows: take it out")
    # The post's own caption, taken in before (an old system's, with Word's soft line break): its retry goes out, as
    # it did, rather than being refused with nothing on the post's page to correct it with.
    kept = state.model_copy(update={"content": PostContent(caption="Autumn sale\x0bStarts today",
                                                           image_url=FIXED.image_url)})
    assert decide(kept, retry()).platforms == ("facebook",)
    # Also where a correction of its image repeats it (the API sends the whole content, merged over the post's).
    fixed = decide(kept, corrected_retry({"caption": "Autumn sale\x0bStarts today", "image_url": FIXED.image_url}))
    assert fixed.platforms == ("facebook",) and fixed.reject_reason is None
