"""The Instagram publisher over real HTTP against the sandbox: containers, polling, publishing, recovery."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from publishers.base import AccountCredentials, Publisher, build_publishers
from publishers.instagram import PUBLISH_MARGIN_S, ContainerPolling
from publishers.sandbox import DEMO_IG_USER_ID, DEMO_USER_TOKEN, SandboxControl
from schemas.commands import PostContent
from schemas.common import ErrorKind, Platform
from tests.support.sandbox import FAST_POLLING, GRAPH_VERSION

# The sandbox fixtures; tests/conftest.py may register them for every module instead.
pytestmark = pytest.mark.usefixtures("tokens_kept_out_of_logs")

PHOTO = PostContent(caption="Autumn menu is here #food", image_url="https://cdn.example.com/autumn-menu.jpg")
SPACED_PHOTO = PostContent(caption="Autumn menu is here #food", image_url="https://cdn.example.com/autumn menu.jpg")


def instagram_posts(sandbox: SandboxControl) -> int:
    return sandbox.counters()["instagram"][DEMO_IG_USER_ID]


def instagram_calls(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The Instagram endpoints the sandbox served, in order (from its debug log)."""
    return [m.group(1) for r in caplog.records if (m := re.search(r"\(instagram/(\w+)\)", r.getMessage()))]


class ContainerLog:
    """Stands in for the handler's `on_container`: remembers the ids in the order they came."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def __call__(self, container_id: str) -> None:
        self.ids.append(container_id)


async def test_publish_waits_for_the_container_then_returns_the_media_id_and_permalink(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    # The container is IN_PROGRESS for a few polls before it is FINISHED.
    sandbox.set_container_delay(0.05)
    containers = ContainerLog()

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1", on_container=containers)

    assert outcome.success and outcome.error is None
    [media] = sandbox.posts()
    assert containers.ids == [outcome.container_id] == [media["container_id"]]
    assert (outcome.platform_post_id, outcome.permalink) == (media["id"], media["permalink"])
    assert outcome.permalink is not None and outcome.permalink.startswith("https://www.instagram.com/p/")
    assert (media["caption"], media["image_url"]) == (PHOTO.caption, PHOTO.image_url)
    assert instagram_posts(sandbox) == 1


async def test_a_ready_container_is_published_at_once_without_asking_its_status(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="publishers.sandbox")

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.success and instagram_posts(sandbox) == 1
    assert instagram_calls(caplog) == ["media", "media_publish", "permalink"]


async def test_a_rate_limited_publish_asks_its_container_once_and_fails_with_the_limit(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="publishers.sandbox")
    sandbox.fail_next("instagram", "media_publish", code=4)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.RATE_LIMITED
    # One look, not the polling a "not ready" gets: the limit's wait comes next.
    assert instagram_calls(caplog) == ["media", "media_publish", "container_status"]
    assert instagram_posts(sandbox) == 0


async def test_a_rate_limit_answered_after_the_post_went_up_is_the_attempts_success_at_once(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    # Not "failed" for the limit's wait (an hour, a day) while the post is live on Instagram.
    sandbox.fail_after("instagram", "media_publish", code=4, http_status=400)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    [media] = sandbox.posts()
    assert outcome.success and outcome.platform_post_id == media["id"]
    assert instagram_posts(sandbox) == 1


async def test_a_republish_refused_after_it_went_up_is_told_from_the_posts_earlier_media_of_the_caption(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    first = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")
    assert first.platform_post_id is not None
    sandbox.fail_after("instagram", "media_publish", code=4, http_status=400)

    again = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a2",
                                                  recorded=(first.platform_post_id,))

    # Two media of the caption: the one on the post's record is not this attempt's, so the other is.
    newest = max(sandbox.posts(), key=lambda media: media["serial"])
    assert again.success and again.platform_post_id == newest["id"] != first.platform_post_id


async def test_the_seeds_spaced_image_url_goes_out_on_instagram_unless_the_sandbox_refuses_it(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    assert (await publishers["instagram"].publish(SPACED_PHOTO, demo_account, attempt_id="a1")).success

    sandbox.reject_spaces("instagram")
    refused = await publishers["instagram"].publish(SPACED_PHOTO, demo_account, attempt_id="a2")

    assert refused.error is not None
    assert (refused.error.kind, refused.error.code, refused.error.subcode) == (ErrorKind.INVALID_MEDIA, 9004, 2207052)
    assert refused.error.message.startswith("Instagram media upload failed: 400 - Media download has failed")
    assert instagram_posts(sandbox) == 1


@pytest.mark.parametrize(
    ("status", "kind"), [("ERROR", ErrorKind.INVALID_MEDIA), ("EXPIRED", ErrorKind.TRANSIENT)]
)
async def test_a_container_that_ends_in_error_or_expired_fails_the_attempt(
    publishers: dict[Platform, Publisher],
    demo_account: AccountCredentials,
    sandbox: SandboxControl,
    status: str,
    kind: ErrorKind,
) -> None:
    sandbox.set_container_delay(0.02)
    sandbox.next_containers_end(status)  # type: ignore[arg-type]
    containers = ContainerLog()

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1", on_container=containers)

    assert outcome.error is not None and outcome.error.kind is kind
    assert outcome.container_id == containers.ids[0]
    assert not outcome.outcome_unknown
    assert instagram_posts(sandbox) == 0


async def test_a_container_not_ready_before_the_deadline_is_a_transient_failure(
    sandbox: SandboxControl, demo_account: AccountCredentials, graph_client: httpx.AsyncClient
) -> None:
    sandbox.set_container_delay(30)
    polling = ContainerPolling(interval_s=0.01, max_interval_s=0.02, timeout_s=0.1)
    instagram = build_publishers(graph_client, sandbox.base_url, GRAPH_VERSION, polling=polling)["instagram"]

    outcome = await instagram.publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    assert "not ready" in outcome.error.message
    assert instagram_posts(sandbox) == 0


@pytest.mark.parametrize("attempt_timeout", [120.0, 45.0, 900.0])
def test_the_service_waits_for_a_container_only_while_its_attempt_can_still_say_why(attempt_timeout: float) -> None:
    # The handler cuts a platform call at the attempt timeout and looks the attempt up instead: a container
    # wait past it would leave a slow image unexplained (and a new container made for it each attempt).
    polling = ContainerPolling.within(attempt_timeout)
    assert polling.timeout_s <= attempt_timeout - PUBLISH_MARGIN_S
    assert polling.timeout_s == min(ContainerPolling.timeout_s, attempt_timeout - PUBLISH_MARGIN_S)


async def test_not_ready_at_publish_time_is_retried_on_the_same_container(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.fail_next("instagram", "media_publish", code=9007, subcode=2207027, times=2)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.success
    [media] = sandbox.posts()
    assert media["container_id"] == outcome.container_id
    assert instagram_posts(sandbox) == 1


async def test_a_server_error_at_publish_is_retried_on_the_same_container(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.fail_next("instagram", "media_publish", code=2, subcode=2207001, http_status=500)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.success
    assert instagram_posts(sandbox) == 1


async def test_a_server_hiccup_that_outlasts_the_publish_retries_is_transient(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.fail_next("instagram", "media_publish", code=2, subcode=2207001, http_status=500, times=5)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    # A 5xx may have published it: the handler asks through the container before publishing again.
    assert outcome.outcome_unknown and outcome.container_id is not None
    assert instagram_posts(sandbox) == 0


async def test_a_publish_that_may_have_gone_out_stays_unknown_when_its_status_cannot_be_asked(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    # The 5xx may have published it; the token is revoked before the status call could say.
    sandbox.fail_next("instagram", "media_publish", code=2, http_status=500)
    sandbox.fail_next("instagram", "container_status", code=190, subcode=460, http_status=400)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    # Not a plain "re-authenticate" failure, which a retry would answer with a second container and post:
    # the handler looks the attempt up through its container once the account is re-authenticated.
    assert not outcome.success and outcome.outcome_unknown and outcome.container_id is not None
    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH


@pytest.mark.parametrize(("code", "subcode"), [(190, 460), (2, None)], ids=["token revoked", "server error"])
async def test_a_retried_publish_that_went_out_behind_a_server_error_is_never_a_known_failure(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl,
    code: int, subcode: int | None,
) -> None:
    # The first publish fails outright; the second goes out but answers 500; then the container's status
    # cannot be asked (the token revoked, or a server error) before it can say so.
    sandbox.fail_next("instagram", "media_publish", code=2, subcode=2207001, http_status=500)
    sandbox.fail_after("instagram", "media_publish", code=2, subcode=2207001, http_status=500)
    sandbox.fail_next("instagram", "container_status", code=code, subcode=subcode,
                      http_status=400 if code == 190 else 500, skip=1)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    assert instagram_posts(sandbox) == 1
    # A known failure ("re-authenticate", or transient) would have a retry publish a second container:
    # unknown, it is looked up through its container first.
    assert not outcome.success and outcome.outcome_unknown and outcome.container_id is not None


async def test_a_refusal_after_a_first_server_error_stays_unknown_though_the_status_said_not_yet(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    # The first publish answers 500 (Meta may have published it, and its status can lag); the next is refused
    # for a rate limit. Reported as known, the handler would publish a new container once the limit ends.
    sandbox.fail_next("instagram", "media_publish", code=2, subcode=2207001, http_status=500)
    sandbox.fail_next("instagram", "media_publish", code=4, http_status=400)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    assert not outcome.success and outcome.outcome_unknown and outcome.container_id is not None
    assert outcome.error is not None and outcome.error.kind is ErrorKind.RATE_LIMITED


async def test_a_final_refusal_after_a_try_that_went_out_is_that_try_s_success(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    # The second publish goes out but answers a 500 that does not ask to try again: the container says it went.
    sandbox.fail_next("instagram", "media_publish", code=2, subcode=2207001, http_status=500)
    sandbox.fail_after("instagram", "media_publish", code=2, http_status=500)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    assert instagram_posts(sandbox) == 1
    [media] = sandbox.posts()
    assert outcome.success and outcome.platform_post_id == media["id"]


async def test_a_published_container_is_never_taken_for_an_earlier_post_with_the_same_caption(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    first = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")
    # Published again a moment later (a forced republish), behind a 500: the container says it went out.
    sandbox.fail_after("instagram", "media_publish", code=2, subcode=2207001, http_status=500)

    again = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a2")

    assert first.success and again.success
    assert instagram_posts(sandbox) == 2
    # Two media with that caption: which is the new one cannot be told, so no id rather than the first's.
    assert again.platform_post_id != first.platform_post_id
    assert again.platform_post_id is None and again.container_id is not None


async def test_a_rate_limit_met_while_waiting_for_the_container_fails_with_the_platforms_wait(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sandbox.fail_next("instagram", "media_publish", code=9007, subcode=2207027)  # not ready yet
    sandbox.fail_next("instagram", "container_status", code=4, regain_access_minutes=10, times=50)

    with caplog.at_level(logging.DEBUG, logger="publishers.sandbox"):
        outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    # Not polled on through the limit, nor ended as "not ready" with no wait: the handler waits 10 minutes.
    assert outcome.error is not None and outcome.error.kind is ErrorKind.RATE_LIMITED
    assert outcome.error.retry_after_s == 600
    assert instagram_calls(caplog).count("container_status") == 1
    assert instagram_posts(sandbox) == 0


@pytest.mark.parametrize(
    ("endpoint", "code", "subcode", "kind"),
    [
        ("media", 190, 463, ErrorKind.AUTH),
        ("media", 10, None, ErrorKind.PERMISSION),
        ("media", 200, None, ErrorKind.PERMISSION),
        ("media", 4, None, ErrorKind.RATE_LIMITED),
        ("media", 1, None, ErrorKind.TRANSIENT),
        ("media", 100, None, ErrorKind.INVALID_REQUEST),
        ("media", 9004, 2207052, ErrorKind.INVALID_MEDIA),
        ("media", 36003, 2207009, ErrorKind.INVALID_MEDIA),
        ("media_publish", 9, 2207042, ErrorKind.RATE_LIMITED),
        ("media_publish", 25, 2207050, ErrorKind.PERMISSION),
        ("media_publish", 100, 2207020, ErrorKind.TRANSIENT),
    ],
)
async def test_every_instagram_error_is_classified_by_its_code_and_subcode(
    publishers: dict[Platform, Publisher],
    demo_account: AccountCredentials,
    sandbox: SandboxControl,
    endpoint: str,
    code: int,
    subcode: int | None,
    kind: ErrorKind,
) -> None:
    sandbox.fail_next("instagram", endpoint, code=code, subcode=subcode)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None
    assert (outcome.error.kind, outcome.error.code, outcome.error.subcode) == (kind, code, subcode)
    assert instagram_posts(sandbox) == 0


async def test_the_daily_publishing_limit_is_a_rate_limit(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.set_publish_limit(1)
    assert (await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")).success

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a2")

    assert outcome.error is not None
    assert (outcome.error.kind, outcome.error.subcode) == (ErrorKind.RATE_LIMITED, 2207042)
    assert instagram_posts(sandbox) == 1
    # Tried again when the post counted leaves the limit's day (read off the limit and the media, with a minute's
    # margin), not hourly: automatic attempts spent while there is no room would leave the post for the user.
    [media] = sandbox.posts()
    room = datetime.strptime(media["timestamp"], "%Y-%m-%dT%H:%M:%S%z") + timedelta(days=1)
    assert outcome.error.retry_after_s is not None
    assert abs(datetime.now(UTC) + timedelta(seconds=outcome.error.retry_after_s) - room - timedelta(minutes=1)) \
        < timedelta(seconds=5)
    assert f"(room again from {room:%Y-%m-%d %H:%M} UTC)" in outcome.error.message


async def test_a_revoked_token_is_an_auth_error(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.revoke(DEMO_USER_TOKEN)

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH
    assert DEMO_USER_TOKEN not in repr(outcome)


async def test_publish_then_dropped_connection_is_resolved_through_the_container(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    started = datetime.now(UTC)
    sandbox.drop_after("instagram", "media_publish")
    containers = ContainerLog()

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1", on_container=containers)

    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    assert outcome.outcome_unknown
    assert instagram_posts(sandbox) == 1
    found = await publishers["instagram"].find_existing(
        PHOTO, demo_account, attempt_id="a1", container_id=containers.ids[0], attempted_at=started
    )
    [media] = sandbox.posts()
    assert found is not None and found.success
    assert (found.platform_post_id, found.permalink) == (media["id"], media["permalink"])


async def test_a_look_up_finds_its_media_behind_more_newer_media_than_one_page_holds(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    # A burst: the attempt's answer was lost, and 120 other posts went out on the account after it.
    sandbox.set_publish_limit(200)
    started = datetime.now(UTC)
    sandbox.drop_after("instagram", "media_publish")
    containers = ContainerLog()
    await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1", on_container=containers)
    for n in range(120):
        other = PostContent(caption=f"Another post {n}", image_url="https://cdn.example.com/other.jpg")
        assert (await publishers["instagram"].publish(other, demo_account, attempt_id=f"o{n}")).success

    found = await publishers["instagram"].find_existing(
        PHOTO, demo_account, attempt_id="a1", container_id=containers.ids[0], attempted_at=started)

    [media] = [m for m in sandbox.posts() if m.get("caption") == PHOTO.caption]
    assert found is not None and found.success
    assert (found.platform_post_id, found.permalink) == (media["id"], media["permalink"])


async def test_a_look_up_leaves_the_media_unknown_when_another_of_the_caption_is_on_no_record(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    # Two posts of one caption publish together and both lose their answers: neither has its media on record.
    started = datetime.now(UTC)
    sandbox.drop_after("instagram", "media_publish", times=2)
    first, second = ContainerLog(), ContainerLog()
    await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1", on_container=first)
    await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a2", on_container=second)
    assert instagram_posts(sandbox) == 2

    found = await publishers["instagram"].find_existing(
        PHOTO, demo_account, attempt_id="a2", container_id=second.ids[0], attempted_at=started)

    # Published for certain (its container says so), but which media is its own cannot be told: no id rather
    # than the other post's, which the page would link to.
    assert found is not None and found.success and found.container_id == second.ids[0]
    assert found.platform_post_id is None and found.permalink is None


async def test_an_attempt_whose_container_was_never_published_did_not_go_out(
    sandbox: SandboxControl, demo_account: AccountCredentials
) -> None:
    started = datetime.now(UTC)
    sandbox.hang_next("instagram", "media_publish", seconds=5)
    containers = ContainerLog()
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.3)) as impatient:
        instagram = build_publishers(impatient, sandbox.base_url, GRAPH_VERSION, polling=FAST_POLLING)["instagram"]
        outcome = await instagram.publish(PHOTO, demo_account, attempt_id="a1", on_container=containers)

        assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
        assert outcome.outcome_unknown
        found = await instagram.find_existing(PHOTO, demo_account, attempt_id="a1",
                                              container_id=containers.ids[0], attempted_at=started)
        never_had_a_container = await instagram.find_existing(PHOTO, demo_account, attempt_id="a2",
                                                               container_id=None, attempted_at=started)
    assert found is None and never_had_a_container is None
    assert instagram_posts(sandbox) == 0


async def test_a_container_status_the_platform_cannot_tell_is_a_failure_not_a_no(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    containers = ContainerLog()
    first = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1", on_container=containers)
    assert first.success
    sandbox.fail_next("instagram", "container_status", code=4, regain_access_minutes=1)

    found = await publishers["instagram"].find_existing(
        PHOTO, demo_account, attempt_id="a1", container_id=containers.ids[0], attempted_at=datetime.now(UTC)
    )

    # "Ask again in a minute", never "it did not go out": that answer would publish a duplicate.
    assert found is not None and not found.success
    assert found.error is not None
    assert (found.error.kind, found.error.retry_after_s) == (ErrorKind.RATE_LIMITED, 60.0)


async def test_a_container_whose_creation_went_unanswered_never_goes_out(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.drop_after("instagram", "media")
    containers = ContainerLog()

    outcome = await publishers["instagram"].publish(PHOTO, demo_account, attempt_id="a1", on_container=containers)

    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    # Nobody knows the container id, so nobody can publish it: a plain retry is safe.
    assert not outcome.outcome_unknown and containers.ids == []
    assert instagram_posts(sandbox) == 0


async def test_an_account_without_instagram_cannot_publish_there(
    publishers: dict[Platform, Publisher], sandbox: SandboxControl
) -> None:
    account = AccountCredentials("acct-fb-only", SecretStr(DEMO_USER_TOKEN), "747917475065823", None)

    outcome = await publishers["instagram"].publish(PHOTO, account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH


async def test_an_instagram_account_meta_does_not_know_asks_to_connect_the_account_again(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    mistyped = AccountCredentials(demo_account.account_id, demo_account.user_token, demo_account.page_id,
                                  "17841400000000222")

    outcome = await publishers["instagram"].publish(PHOTO, mistyped, attempt_id="a1")

    assert not outcome.success and not outcome.outcome_unknown and outcome.error is not None
    # Not "fix the post": no change to the post helps.
    assert outcome.error.kind is ErrorKind.AUTH
    assert "the Instagram account 17841400000000222 cannot be used with the account's token" in outcome.error.message
    assert outcome.error.message.startswith("Instagram media upload failed: 400 - ")
    assert instagram_posts(sandbox) == 0
