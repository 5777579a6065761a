"""The seed's retry cases end to end: real broker, projector and handler processes, sandbox Graph API."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from projections.decide import MAY_HAVE_GONE_OUT, retry_targets
from publishers.sandbox import DEMO_ACCOUNT_ID, DEMO_IG_USER_ID, DEMO_PAGE_ID, DEMO_USER_TOKEN
from schemas.commands import (
    ForceRepublishRequested,
    PostContent,
    PublishRequested,
    ResolveAttemptRequested,
    RetryRequested,
    fingerprint,
)
from schemas.common import Platform
from schemas.envelope import encode
from schemas.events import CommandDecided, LegacyInsightsImported
from schemas.ids import new_id
from smartretry.api import post_detail
from streams.kafka import partition_for
from tests.support.service import Service, ServiceProcess

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


def _results(state: object) -> dict[str, dict[str, object]]:
    document = state.document.to_document()  # type: ignore[attr-defined]
    return {r["platform"]: r for r in document["insights"]["publish_results"]}


def test_case_2_only_instagram_is_retried_after_re_authentication(service: Service) -> None:
    """The seed's example 2: Instagram failed on an expired token; re-authenticate, retry, Facebook kept."""
    service.sandbox.fail_next("instagram", "media", code=190, subcode=463, http_status=400,
                              message="Error validating access token: Session has expired")
    first = service.publish(FIXED)
    state = service.wait_command(first.post_id, first.command_id)
    assert state.status == "failed"
    assert state.needed_action.get("instagram", "").lower().startswith("re-authenticate")
    assert state.document.error_message is not None and state.document.error_message.startswith("instagram: ")
    facebook_post = _results(state)["facebook"]["postId"]

    # Re-authenticate: a new token for the account; the old one stops working.
    new_token = "sandbox-renewed-user-token-91d3"
    service.sandbox.register_account(DEMO_PAGE_ID, DEMO_IG_USER_ID, new_token)
    service.stores.credentials.set_token("demo", new_token, DEMO_PAGE_ID, DEMO_IG_USER_ID)
    retry = service.retry(first.post_id)
    state = service.wait_command(first.post_id, retry.command_id)
    assert state.status == "posted"
    assert _results(state)["facebook"]["postId"] == facebook_post
    assert _counts(service) == (1, 1)
    assert "Smart retry: Publishing only to Instagram (Facebook already succeeded)" in service.handler.output()


def test_a_handler_stopped_mid_call_records_the_calls_result_before_it_exits(service: Service) -> None:
    """A stop (SIGTERM: a deploy, Ctrl-C) lets the call under way finish: the post shows its result, not an attempt
    that may still be under way, and is not looked up or published again by the next handler."""
    service.sandbox.add_latency("facebook", 3.0, "photos")
    try:
        first = service.publish(FIXED, target="facebook")
        service.wait_for(first.post_id, lambda s: any(a.success is None for a in s.attempts.values()))
        # A retry queued behind it (it only waits, and is left to the next handler): the call is waited for still.
        service.retry(first.post_id)
        time.sleep(1.0)
        service.handler.stop()  # SIGTERM while Facebook takes 3 s to answer
    finally:
        service.sandbox.add_latency("facebook", 0.0, "photos")
    state = service.wait_for(first.post_id, lambda s: s.status != "publishing", timeout=30)
    assert state.status == "posted"
    [attempt] = state.attempts.values()
    assert attempt.success is True and not attempt.recovered
    assert _counts(service) == (1, 0)
    assert "Stopping: 1 command in progress gets up to 10s to record the results of its calls" in \
        service.handler.output()

    # Started again: the command is done, nothing is published twice.
    service.handler.start()
    again = service.retry(first.post_id)
    service.wait_command(first.post_id, again.command_id)
    assert _counts(service) == (1, 0)


def test_a_handler_stopped_while_a_post_waits_out_a_rate_limit_stops_at_once(
        service: Service) -> None:
    service.sandbox.fail_next("facebook", "photos", code=32, regain_access_minutes=60)
    first = service.publish(FIXED, target="facebook")
    service.wait_for(first.post_id, lambda s: any(a.success is False for a in s.attempts.values()))
    service.handler.stop()
    # Nothing under way: the wait is cancelled without a grace.
    assert "Stopping:" not in service.handler.output()
    state = service.stores.projection.get(first.post_id)
    assert state is not None and state.status == "failed" and len(state.attempts) == 1
    assert _counts(service) == (0, 0)
    # The stop did not finish the command: its automatic retry is still to come, and the next handler takes it up.
    assert "Post status updated to" not in _lines_of(service, first.post_id)

    service.handler.start()
    deadline = time.monotonic() + 60
    while _lines_of(service, first.post_id).count("Facebook will be retried automatically in") < 2 \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _lines_of(service, first.post_id).count("Facebook will be retried automatically in") >= 2


def _lines_of(service: Service, post_id: str) -> str:
    """The handler's log lines about one post."""
    return "\n".join(line for line in service.handler.output().splitlines() if f"post_id={post_id}" in line)


def test_case_3_both_failed_retries_both(service: Service) -> None:
    service.sandbox.reject_spaces("instagram")
    first = service.publish(BROKEN)
    state = service.wait_command(first.post_id, first.command_id)
    assert state.status == "failed"
    assert {p: r["success"] for p, r in _results(state).items()} == {"facebook": False, "instagram": False}
    assert state.document.error_message is not None
    assert state.document.error_message.startswith("facebook: ") and "; instagram: " in state.document.error_message

    retry = service.retry(first.post_id, content=FIXED)
    state = service.wait_command(first.post_id, retry.command_id)
    assert state.status == "posted"
    assert state.commands[retry.command_id].platforms == ["facebook", "instagram"]
    assert _counts(service) == (1, 1)


def test_case_4_retry_of_a_posted_post_is_a_no_op_and_only_force_republishes(service: Service) -> None:
    first = service.publish(FIXED)
    state = service.wait_command(first.post_id, first.command_id)
    assert state.status == "posted"
    before = _results(state)

    retry = service.retry(first.post_id)
    state = service.wait_command(first.post_id, retry.command_id)
    assert state.commands[retry.command_id].platforms == []
    assert _results(state) == before
    assert _counts(service) == (1, 1)
    assert "Nothing to retry: Facebook and Instagram already succeeded" in service.handler.output()

    forced = service.force(first.post_id, reason="testing")
    state = service.wait_command(first.post_id, forced.command_id)
    assert state.status == "posted"
    assert state.commands[forced.command_id].forced is True
    assert _counts(service) == (2, 2)
    after = _results(state)
    assert after["facebook"]["postId"] != before["facebook"]["postId"]
    assert all(a.forced for a in state.attempts.values() if a.command_id == forced.command_id)

    # Only Instagram, named: Facebook is left as it is.
    only = service.force(first.post_id, reason="new caption on Instagram", platforms=["instagram"])
    state = service.wait_command(first.post_id, only.command_id)
    assert state.commands[only.command_id].platforms == ["instagram"]
    assert state.commands[only.command_id].skipped == {"facebook": "not asked to be republished"}
    assert _counts(service) == (2, 3)
    assert _results(state)["facebook"] == after["facebook"]


def test_a_command_delivered_twenty_times_publishes_once(service: Service) -> None:
    command = service.publish(FIXED)
    for _ in range(19):
        service.send(command, command.post_id)
    service.wait_command(command.post_id, command.command_id)
    # Let every redelivery be handled before counting.
    later = service.publish(FIXED)
    service.wait_command(later.post_id, later.command_id)
    state = service.stores.projection.get(command.post_id)
    assert state is not None and len(state.attempts) == 2
    assert _counts(service) == (2, 2)


def test_commands_keyed_otherwise_or_put_on_another_partition_are_sent_on_to_their_posts_and_publish_once(
        service: Service) -> None:
    # What an upstream service that keyed commands otherwise, or used another partitioner than the Java
    # client's (Python's default hashes with CRC32), puts on the topic: the command on partitions other than
    # its post's, where the post's other commands and its events are.
    command = PublishRequested(command_id=new_id(), post_id=new_id(), publish_target="both", content=FIXED,
                               account=DEMO_ACCOUNT_ID, requested_at=datetime.now(UTC))
    partitions = service.topics.partitions
    own = partition_for(command.post_id, partitions)
    upstream = Producer({"bootstrap.servers": service.bootstrap})
    upstream.produce(service.topics.commands, key=command.post_id.encode(), value=encode(command),
                     partition=(own + 1) % partitions)
    upstream.produce(service.topics.commands, key=b"upstream-7", value=encode(command),
                     partition=(own + 2) % partitions)
    assert upstream.flush(30) == 0
    service.wait_command(command.post_id, command.command_id)
    later = service.publish(FIXED)
    service.wait_command(later.post_id, later.command_id)
    assert _counts(service) == (2, 2)  # the post once on each platform, and the later one
    assert service.handler.output().count("not on its post's partition: sent on there") == 2


def test_a_posts_commands_sent_on_from_another_partition_keep_their_order(service: Service) -> None:
    # An upstream service on another partitioner sends a publish and, right after it, the retry with the fixed image:
    # both come on another post's partition, and each is sent on to its own. Sent on out of order, the retry would be
    # refused for a post not published yet, and the post would stay failed.
    partitions = service.topics.partitions
    upstream = Producer({"bootstrap.servers": service.bootstrap})
    sent = []
    for _ in range(6):
        publish = PublishRequested(command_id=new_id(), post_id=new_id(), publish_target="both", content=BROKEN,
                                   account=DEMO_ACCOUNT_ID, requested_at=datetime.now(UTC))
        retry = RetryRequested(command_id=new_id(), post_id=publish.post_id, content=FIXED,
                               requested_at=datetime.now(UTC))
        elsewhere = (partition_for(publish.post_id, partitions) + 1) % partitions
        for command in (publish, retry):
            upstream.produce(service.topics.commands, key=b"upstream", value=encode(command), partition=elsewhere)
        sent.append(retry)
    assert upstream.flush(30) == 0
    for retry in sent:
        state = service.wait_command(retry.post_id, retry.command_id)
        assert state.status == "posted"
        assert state.commands[retry.command_id].platforms == ["facebook"]
    assert "Dead letter" not in service.handler.output()


def test_a_retry_that_would_publish_a_stored_token_in_the_posts_own_content_is_refused(service: Service) -> None:
    # An old document imported with a caption that carries a token the service stores only since (another shop's):
    # the projector could not tell it when it folded the import.
    token = "another-shops-stored-token-" + new_id()[-12:]
    post_id = new_id()

    def imported(post_id: str) -> LegacyInsightsImported:
        return LegacyInsightsImported(
            event_id=f"{post_id}:import", post_id=post_id, occurred_at=datetime.now(UTC), publish_target="facebook",
            account=DEMO_ACCOUNT_ID, content=PostContent(caption=f"our token {token}", image_url=FIXED.image_url),
            document={"insights": {"publish_results": [
                {"platform": "facebook", "success": False, "error": "Facebook photo upload failed: 500"}]},
                "status": "failed"})

    service._producer.produce(service.topics.post_events, key=post_id.encode(), value=encode(imported(post_id)))
    assert service._producer.flush(30) == 0
    service.wait_for(post_id, lambda s: s.legacy)
    service.stores.credentials.set_token("another-shop", token, "111222333", None)
    # Imported once the token is stored, the same content is imported with the token taken out.
    scrubbed = new_id()
    service._producer.produce(service.topics.post_events, key=scrubbed.encode(), value=encode(imported(scrubbed)))
    assert service._producer.flush(30) == 0

    retry = service.retry(post_id)  # no correction: it would publish the post's own content
    deadline = time.monotonic() + 60
    while "contains an access token" not in service.handler.output():
        assert time.monotonic() < deadline, "the retry was not refused"
        time.sleep(0.2)

    state = service.wait_for(post_id, lambda s: s.legacy)
    assert retry.command_id not in state.commands and state.status == "failed"
    assert _counts(service) == (0, 0)  # nothing published
    imported_scrubbed = service.wait_for(scrubbed, lambda s: s.legacy)
    assert imported_scrubbed.content is not None and imported_scrubbed.content.caption == "our token [redacted]"
    # Its retry would publish "[redacted]": refused until the caption is corrected.
    service.retry(scrubbed)
    deadline = time.monotonic() + 60
    while "content.caption had an access token taken out" not in service.handler.output():
        assert time.monotonic() < deadline, "the retry of the scrubbed import was not refused"
        time.sleep(0.2)
    corrected = service.retry(scrubbed, PostContent(caption="our autumn sale", image_url=FIXED.image_url))
    assert service.wait_command(scrubbed, corrected.command_id).status == "posted"
    assert _counts(service) == (1, 0)  # the corrected caption, on Facebook only


def test_commands_sent_straight_to_kafka_with_a_stored_token_in_an_id_or_note_are_refused(service: Service) -> None:
    """An upstream service bypassing the API: the token would be kept in the post's events and projection."""
    token = "upstream-shops-stored-token-" + new_id()[-12:]
    service.stores.credentials.set_token("upstream-shop", token, "111222333", None)
    in_id = PublishRequested(command_id=f"c-{token}", post_id=new_id(), publish_target="both", content=FIXED,
                             account=DEMO_ACCOUNT_ID, requested_at=datetime.now(UTC))
    service.send(in_id, in_id.post_id)
    published = service.publish(BROKEN)
    state = service.wait_command(published.post_id, published.command_id)
    in_note = ResolveAttemptRequested(
        command_id=new_id(), post_id=published.post_id, platform="facebook", attempt_id=None, published=False,
        note=f"checked with {token}", requested_at=datetime.now(UTC))
    service.send(in_note, published.post_id)
    retry = service.retry(published.post_id, FIXED)  # after the note, on the same partition
    deadline = time.monotonic() + 60
    while service.handler.output().count("contains an access token") < 2:
        assert time.monotonic() < deadline, "the commands were not refused"
        time.sleep(0.2)

    state = service.wait_command(published.post_id, retry.command_id)
    assert service.stores.projection.get(in_id.post_id) is None
    assert state.status == "posted"
    assert in_note.command_id not in state.commands
    assert token not in state.model_dump_json()
    assert "command_id contains an access token" in service.handler.output()
    assert "note contains an access token" in service.handler.output()
    assert _counts(service) == (1, 1)  # the publish (Facebook failed) and its retry; nothing of the refused one
    # A retry of the posted post carrying it: nothing to publish, but recorded with the correction it carried, the
    # post's events would keep the token. Refused as the others are.
    carried = RetryRequested(command_id=new_id(), post_id=published.post_id, requested_at=datetime.now(UTC),
                             content=FIXED.model_copy(update={"caption": f"Autumn sale {token}"}))
    service.send(carried, published.post_id)
    while "content.caption contains an access token" not in service.handler.output():
        assert time.monotonic() < deadline + 60, "the retry carrying a token was not refused"
        time.sleep(0.2)
    state = service.stores.projection.get(published.post_id)
    assert state is not None and carried.command_id not in state.commands and token not in state.model_dump_json()


def test_a_command_decided_before_with_a_token_in_its_note_goes_on_as_decided_when_delivered_again(
        service: Service) -> None:
    """Decided by a version that did not check notes for tokens: delivered again, it is a redelivery (nothing to do),
    not a new command to dead-letter, which would leave the platforms it still owes unpublished."""
    token = "older-shops-stored-token-" + new_id()[-12:]
    service.stores.credentials.set_token("older-shop", token, "111222333", None)
    published = service.publish(FIXED)
    service.wait_command(published.post_id, published.command_id)
    forced = ForceRepublishRequested(command_id=new_id(), post_id=published.post_id, reason=f"checked with {token}",
                                     requested_at=datetime.now(UTC))
    decided = CommandDecided(event_id=f"{forced.command_id}:decided", post_id=published.post_id,
                             occurred_at=datetime.now(UTC), command_id=forced.command_id,
                             command_type="ForceRepublishRequested", platforms=(), is_retry=True, forced=True,
                             fingerprint=fingerprint(forced))
    service._producer.produce(service.topics.post_events, key=published.post_id.encode(), value=encode(decided))
    assert service._producer.flush(30) == 0
    service.wait_for(published.post_id, lambda s: forced.command_id in s.commands)

    service.send(forced, published.post_id)
    deadline = time.monotonic() + 60
    while f"Command {forced.command_id} was handled before" not in service.handler.output():
        assert time.monotonic() < deadline, "the redelivered command was not taken for one decided before"
        time.sleep(0.2)
    assert "reason contains an access token" not in service.handler.output()
    assert _counts(service) == (1, 1)


def test_an_imported_post_without_an_account_is_published_by_a_retry_that_names_one(service: Service) -> None:
    post_id = new_id()
    imported = LegacyInsightsImported(
        event_id=f"{post_id}:import", post_id=post_id, occurred_at=datetime.now(UTC), publish_target="facebook",
        content=FIXED, document={"insights": {"publish_results": [
            {"platform": "facebook", "success": False, "error": "Facebook photo upload failed: 500"}]},
            "status": "failed"})
    service._producer.produce(service.topics.post_events, key=post_id.encode(), value=encode(imported))
    assert service._producer.flush(30) == 0
    service.wait_for(post_id, lambda s: s.legacy)

    plain = service.retry(post_id)
    state = service.wait_command(post_id, plain.command_id)
    # The post lacks an account, not a token: fixed by retrying it with one, not by re-authenticating.
    assert state.status == "failed" and state.needed_action == {"facebook": "fix the post"}
    assert "the post has no account: retry it naming the account to publish with" in (state.document.error_message
                                                                                       or "")

    named = RetryRequested(command_id=new_id(), post_id=post_id, account=DEMO_ACCOUNT_ID,
                           requested_at=datetime.now(UTC))
    service.send(named, post_id)
    state = service.wait_command(post_id, named.command_id)
    assert state.status == "posted" and state.account == DEMO_ACCOUNT_ID
    assert _counts(service) == (1, 0)
    # This service's own attempts are numbered from 1, each a retry of the imported post (the README's rule: attempt
    # ids derive from the numbers, and every version derives the same).
    attempts = state.attempts_of("facebook")
    assert attempts[0].attempt_number == 1 and all(a.is_retry for a in attempts)


def _import_said_to_have_gone_out(service: Service) -> str:
    """An imported post whose old system says when it went out and that Instagram failed, and kept no result."""
    post_id = new_id()
    imported = LegacyInsightsImported(
        event_id=f"{post_id}:import", post_id=post_id, occurred_at=datetime.now(UTC), publish_target="both",
        content=FIXED, account=DEMO_ACCOUNT_ID, document={
            "status": "failed", "insights": {"published_at": "2025-11-17T10:10:13.151Z"},
            "error_message": "instagram: Instagram media upload failed: 400 - Error validating access token"})
    service._producer.produce(service.topics.post_events, key=post_id.encode(), value=encode(imported))
    assert service._producer.flush(30) == 0
    service.wait_for(post_id, lambda s: s.legacy)
    return post_id


def test_a_retry_of_an_imported_post_never_posts_again_where_the_old_system_may_have_published_it(
        service: Service) -> None:
    """The retry publishes Instagram alone; Facebook waits for someone who looked to record its post, or republish it
    where it is not there."""
    found, missing = _import_said_to_have_gone_out(service), _import_said_to_have_gone_out(service)
    for post_id in (found, missing):
        retry = service.retry(post_id)
        state = service.wait_command(post_id, retry.command_id)
        assert state.commands[retry.command_id].platforms == ["instagram"]
        assert state.commands[retry.command_id].skipped == {"facebook": MAY_HAVE_GONE_OUT}
        assert state.status == "failed" and (state.document.error_message or "").startswith(
            "facebook: not known to be published")
    assert _counts(service) == (0, 2)

    # Looked at, and there: recorded as Facebook's post, nothing published.
    resolution = ResolveAttemptRequested(command_id=new_id(), post_id=found, platform="facebook", published=True,
                                         platform_post_id=f"{DEMO_PAGE_ID}_9001", requested_at=datetime.now(UTC))
    service.send(resolution, found)
    state = service.wait_for(found, lambda s: resolution.command_id in s.commands)
    assert state.status == "posted" and state.document.insights.facebook_post_id == f"{DEMO_PAGE_ID}_9001"
    assert retry_targets(state) == ()

    # Looked at, and not there: republished by someone who says so.
    forced = service.force(missing, reason="not on the Page", platforms=["facebook"])
    state = service.wait_command(missing, forced.command_id)
    assert state.status == "posted" and state.document.error_message is None
    assert _counts(service) == (1, 2)


def test_fifty_concurrent_retries_publish_facebook_exactly_once(service: Service) -> None:
    first = service.publish(BROKEN)
    service.wait_command(first.post_id, first.command_id)
    assert _counts(service) == (0, 1)
    retries = [service.retry(first.post_id, content=FIXED) for _ in range(50)]
    state = service.wait_for(first.post_id, lambda s: all(r.command_id in s.commands for r in retries))
    assert state.status == "posted"
    assert _counts(service) == (1, 1)
    publishing = [r for r in retries if state.commands[r.command_id].platforms]
    assert len(publishing) == 1 and state.commands[publishing[0].command_id].platforms == ["facebook"]


@pytest.mark.parametrize(
    ("platform", "publish_endpoint", "lookup_endpoint", "counts"),
    [("facebook", "photos", "published_posts", (1, 0)), ("instagram", "media_publish", "media_list", (0, 1))],
)
def test_handler_killed_after_the_platform_accepted_the_post_recovers_without_duplicate(
    service: Service, platform: Platform, publish_endpoint: str, lookup_endpoint: str, counts: tuple[int, int]
) -> None:
    """The platform creates the post, the connection drops, and the handler dies before recording the result."""
    service.sandbox.drop_after(platform, publish_endpoint)
    # The handler's look-up after the drop (Facebook: the Page's recent posts; Instagram: the container's
    # status, then the account's recent media) hangs, so it is killed while the outcome is unknown.
    service.sandbox.add_latency(platform, 60, lookup_endpoint)
    command = service.publish(FIXED, target=platform)
    service.wait_for(command.post_id, lambda s: len(s.attempts) == 1 and _counts(service) == counts)
    service.handler.kill()
    state = service.stores.projection.get(command.post_id)
    assert state is not None and state.status == "publishing"
    assert all(a.success is None for a in state.attempts.values())

    service.sandbox.add_latency(platform, 0, lookup_endpoint)
    service.handler.start()
    state = service.wait_for(command.post_id, lambda s: s.status == "posted")
    assert _counts(service) == counts
    (attempt,) = state.attempts.values()
    assert attempt.recovered and attempt.success
    assert "found on the platform; recorded, not republished" in service.handler.output()
    # Settled by the look-up, the post's status is said in the product note's words (logged just after the
    # projection shows it).
    deadline = time.monotonic() + 30
    while "✅ Post status updated to: posted" not in service.handler.output():
        assert time.monotonic() < deadline, "the post's status was not logged"
        time.sleep(0.2)
    (created,) = [p for p in service.sandbox.posts() if p.get("platform") == platform]
    insights = state.document.insights
    assert (insights.facebook_post_id if platform == "facebook" else insights.instagram_media_id) == created["id"]


def _killed_after_facebook_took_the_post_then_token_revoked(service: Service) -> PublishRequested:
    """Facebook creates the post and drops the connection; the handler is killed and the token revoked."""
    service.sandbox.drop_after("facebook", "photos")
    # Its look-up of the dropped call must not find the post before the handler is killed.
    service.sandbox.add_latency("facebook", 60, "published_posts")
    command = service.publish(FIXED, target="facebook")
    service.wait_for(command.post_id, lambda s: len(s.attempts) == 1 and _counts(service) == (1, 0))
    service.handler.kill()
    service.sandbox.revoke(DEMO_USER_TOKEN)
    service.sandbox.add_latency("facebook", 0, "published_posts")
    return command


def test_an_interrupted_attempt_that_cannot_be_checked_for_a_revoked_token_asks_to_re_authenticate(
    service: Service,
) -> None:
    """The handler dies after Facebook took the post; meanwhile the token is revoked, so its successor cannot
    ask Facebook whether the post went out. The post says so, and goes through once re-authenticated."""
    command = _killed_after_facebook_took_the_post_then_token_revoked(service)

    service.handler.start()
    state = service.wait_for(command.post_id, lambda s: bool(s.needed_action))
    assert state.status == "publishing", "the outcome is unknown, not failed"
    assert state.needed_action == {"facebook": "re-authenticate Facebook"}
    detail = post_detail(state)
    # Why the call left no answer to trust, then why the look-up could not tell.
    assert detail["outcome_unknown"]["facebook"].startswith(
        "Facebook photo upload failed: the platform closed the connection without answering; Facebook post lookup "
        "failed: 400")
    assert DEMO_USER_TOKEN not in str(detail)
    time.sleep(2.5)  # the look-up is tried again every second meanwhile, and publishes nothing
    assert _counts(service) == (1, 0)
    still = service.stores.projection.get(command.post_id)
    assert still is not None and still.status == "publishing"

    new_token = "sandbox-renewed-user-token-5c07"
    service.sandbox.register_account(DEMO_PAGE_ID, DEMO_IG_USER_ID, new_token)
    service.stores.credentials.set_token(DEMO_ACCOUNT_ID, new_token, DEMO_PAGE_ID, DEMO_IG_USER_ID)
    state = service.wait_for(command.post_id, lambda s: s.status == "posted")
    (attempt,) = state.attempts.values()
    assert attempt.recovered and attempt.success
    assert state.needed_action == {} and post_detail(state)["outcome_unknown"] == {}
    assert _counts(service) == (1, 0)
    (created,) = service.sandbox.posts()
    assert state.document.insights.facebook_post_id == created["id"]


def test_an_operator_resolves_an_attempt_whose_account_will_not_be_re_authenticated(service: Service) -> None:
    """As above, but nobody can renew the token: someone checks the Page, finds the post and says so. The post
    is recorded as published with that post, and nothing is published again."""
    command = _killed_after_facebook_took_the_post_then_token_revoked(service)
    # A short lease, so the operator's word applies within the test (an attempt's call is long over by then).
    service.env["SMARTRETRY_ATTEMPT_LEASE_SECONDS"] = "2"
    service.env["SMARTRETRY_ATTEMPT_TIMEOUT_SECONDS"] = "1"  # within the lease, as the settings require
    service.handler.start()
    state = service.wait_for(command.post_id, lambda s: bool(s.needed_action))
    (attempt,) = state.attempts.values()
    (created,) = service.sandbox.posts()

    resolution = ResolveAttemptRequested(
        command_id=new_id(), post_id=command.post_id, platform="facebook", attempt_id=attempt.attempt_id,
        published=True, platform_post_id=created["id"], note="found on the Page", requested_at=datetime.now(UTC))
    service.send(resolution, command.post_id)

    state = service.wait_for(command.post_id, lambda s: resolution.command_id in s.commands)
    assert state.status == "posted" and state.needed_action == {}
    (attempt,) = state.attempts.values()
    assert attempt.success and attempt.resolved_by == resolution.command_id and not attempt.recovered
    assert state.document.insights.facebook_post_id == created["id"]
    assert state.document.post_url == f"https://www.facebook.com/{created['id']}"
    assert _counts(service) == (1, 0)
    assert f"resolved by an operator: published as {created['id']} (found on the Page)" in service.handler.output()


def test_a_handler_joining_while_another_is_mid_publish_creates_no_duplicate(service: Service, tmp_path: Path) -> None:
    """A rebalance moves posts whose platform call is still under way on the old owner."""
    service.sandbox.add_latency("facebook", 3, "photos")
    commands = [service.publish(PostContent(caption=f"Rebalanced post {n}", image_url=FIXED.image_url),
                                target="facebook") for n in range(12)]
    service.wait_for(commands[-1].post_id, lambda s: any(a.success is None for a in s.attempts.values()))
    second = ServiceProcess("handler-2", [sys.executable, "-m", "smartretry.cli", "handler"], service.env, tmp_path)
    second.start()
    try:
        for command in commands:
            service.wait_for(command.post_id, lambda s: s.status == "posted", timeout=90)
        created = [p for p in service.sandbox.posts() if p.get("platform") == "facebook"]
        captions = [p.get("message") or p.get("caption") for p in created]
        assert sorted(captions) == sorted(f"Rebalanced post {n}" for n in range(12))
    finally:
        second.stop()


def test_a_post_whose_call_failed_never_takes_another_posts_facebook_post_with_its_caption(service: Service) -> None:
    # Two posts with one caption. Facebook answers the first one's photo call with a 500 and makes nothing;
    # the second goes out. The first's look-up must not take the second's post for its own.
    before = _counts(service)
    service.sandbox.fail_next("facebook", "photos", code=2, http_status=500, is_transient=True)
    first = service.publish(FIXED, target="facebook")
    time.sleep(0.5)
    second = service.publish(FIXED, target="facebook")

    second_state = service.wait_command(second.post_id, second.command_id)
    # Past its attempt's lease (30 s here) with no post of its own, the first is published after all.
    first_state = service.wait_command(first.post_id, first.command_id, timeout=120)

    assert first_state.status == "posted" and second_state.status == "posted"
    first_post = first_state.document.insights.facebook_post_id
    assert first_post is not None and first_post != second_state.document.insights.facebook_post_id
    assert _counts(service)[0] == before[0] + 2


def test_an_instagram_publish_refused_after_it_went_out_is_not_published_again_by_the_next_attempt(
        service: Service) -> None:
    # media_publish puts the post up, then answers with a rate limit: a refusal Meta made after the fact; the look
    # at the container that follows is refused for the limit too. The automatic retry asks the first attempt's
    # container before it makes a new one, and finds it published.
    before = _counts(service)
    service.sandbox.fail_after("instagram", "media_publish", code=4, http_status=400)
    service.sandbox.fail_next("instagram", "container_status", code=4, http_status=400)
    first = service.publish(FIXED, target="instagram")

    state = service.wait_command(first.post_id, first.command_id)

    assert state.status == "posted"
    assert _counts(service) == (before[0], before[1] + 1)
    attempts = state.attempts_of("instagram")
    assert [a.success for a in attempts] == [False, True]
    [media] = [p for p in service.sandbox.posts() if p.get("container_id") == attempts[0].container_id]
    assert state.document.insights.instagram_media_id == media["id"]
    assert "was published after all: not published again" in service.handler.output()
