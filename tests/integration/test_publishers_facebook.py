"""The Facebook Page publisher over real HTTP against the sandbox Graph API: posts, every error class, recovery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from projections.fold import needed_action
from publishers.base import AccountCredentials, Publisher, PublishOutcome, build_publishers
from publishers.facebook import FacebookPagePublisher
from publishers.sandbox import DEMO_PAGE_ID, DEMO_PAGE_TOKEN, DEMO_USER_TOKEN, SandboxControl
from schemas.commands import PostContent
from schemas.common import ErrorKind, Platform
from tests.support.sandbox import FAST_POLLING, GRAPH_VERSION

# The sandbox fixtures; tests/conftest.py may register them for every module instead.
pytestmark = pytest.mark.usefixtures("tokens_kept_out_of_logs")

PHOTO = PostContent(caption="Autumn menu is here", image_url="https://cdn.example.com/autumn-menu.jpg")
SEED_BAD_PHOTO = PostContent(caption="Autumn menu is here", image_url="https://cdn.example.com/autumn menu.jpg")
LINK = PostContent(caption="Read the story", link="https://example.com/story")


def facebook_posts(sandbox: SandboxControl) -> int:
    return sandbox.counters()["facebook"][DEMO_PAGE_ID]


async def post_other_news(client: httpx.AsyncClient, sandbox: SandboxControl, count: int, first: int = 0) -> None:
    """Another tool posting to the same Page: `count` text posts straight through the Graph API."""
    for n in range(first, first + count):
        response = await client.post(f"{sandbox.base_url}/{GRAPH_VERSION}/{DEMO_PAGE_ID}/feed",
                                     data={"message": f"Today's special #{n}"},
                                     headers={"Authorization": f"Bearer {DEMO_PAGE_TOKEN}"})
        response.raise_for_status()


def assert_no_token_in(outcome: PublishOutcome, *tokens: str) -> None:
    text = repr(outcome)
    for token in (DEMO_USER_TOKEN, *tokens):
        assert token not in text


async def test_photo_post_returns_the_post_id(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    outcome = await publishers["facebook"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.success and outcome.error is None
    assert outcome.platform_post_id is not None and outcome.platform_post_id.startswith(f"{DEMO_PAGE_ID}_")
    # The address is built from the id (the seed's `post_url`): no permalink call.
    assert outcome.permalink is None
    [post] = sandbox.posts()
    assert (post["id"], post["message"], post["image_url"]) == (outcome.platform_post_id, PHOTO.caption,
                                                                 PHOTO.image_url)
    assert facebook_posts(sandbox) == 1


async def test_the_page_token_fetched_is_given_to_the_service_to_keep_once_per_fetch(
    graph_client: httpx.AsyncClient, demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    kept: list[tuple[str, str]] = []

    async def keep(account: str, token: str) -> None:
        kept.append((account, token))

    publishers = build_publishers(graph_client, sandbox.base_url, GRAPH_VERSION, polling=FAST_POLLING,
                                  on_obtained_token=keep)
    for attempt in ("a1", "a2"):
        assert (await publishers["facebook"].publish(PHOTO, demo_account, attempt_id=attempt)).success
    # Every process then knows it as a secret; fetched once, kept once.
    assert kept == [(demo_account.account_id, DEMO_PAGE_TOKEN)]


async def test_a_page_token_the_service_could_not_keep_still_publishes_and_is_kept_at_the_next_fetch(
    graph_client: httpx.AsyncClient, demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    calls: list[str] = []

    async def failing_then_kept(account: str, token: str) -> None:
        calls.append(token)
        if len(calls) == 1:
            raise OSError("database is locked")

    publishers = build_publishers(graph_client, sandbox.base_url, GRAPH_VERSION, polling=FAST_POLLING,
                                  on_obtained_token=failing_then_kept)
    for attempt in ("a1", "a2", "a3"):
        assert (await publishers["facebook"].publish(PHOTO, demo_account, attempt_id=attempt)).success
    assert calls == [DEMO_PAGE_TOKEN, DEMO_PAGE_TOKEN]
    assert facebook_posts(sandbox) == 3


async def test_text_and_link_post_goes_to_the_feed(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    outcome = await publishers["facebook"].publish(LINK, demo_account, attempt_id="a1")

    assert outcome.success
    [post] = sandbox.posts()
    assert (post["message"], post["link"], post["image_url"]) == (LINK.caption, LINK.link, None)


async def test_a_photo_with_a_link_keeps_the_link_in_its_text_and_is_found_by_that_text(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    # A photo post has no link field: the link is not dropped, it follows the caption.
    both = PostContent(caption="Autumn menu is here", image_url="https://cdn.example.com/autumn-menu.jpg",
                       link="https://shop.example.com/autumn")
    started = datetime.now(UTC)
    sandbox.drop_after("facebook", "photos")

    outcome = await publishers["facebook"].publish(both, demo_account, attempt_id="a1")

    assert outcome.outcome_unknown
    [post] = sandbox.posts()
    assert post["message"] == "Autumn menu is here\n\nhttps://shop.example.com/autumn"
    assert post["image_url"] == both.image_url
    # The look-up matches the text the Page holds, so the interrupted attempt is found, not published again.
    found = await publishers["facebook"].find_existing(both, demo_account, attempt_id="a1", container_id=None,
                                                       attempted_at=started)
    assert found is not None and found.success and found.platform_post_id == post["id"]


async def test_a_photo_with_a_link_published_by_an_earlier_version_is_still_found_by_its_caption(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    # Interrupted before an upgrade: that version published the caption alone (the link left out).
    both = PostContent(caption="Winter menu is here", image_url="https://cdn.example.com/winter-menu.jpg",
                       link="https://shop.example.com/winter")
    started = datetime.now(UTC)
    sandbox.drop_after("facebook", "photos")
    earlier = PostContent(caption=both.caption, image_url=both.image_url)
    assert (await publishers["facebook"].publish(earlier, demo_account, attempt_id="a1")).outcome_unknown

    found = await publishers["facebook"].find_existing(both, demo_account, attempt_id="a1", container_id=None,
                                                       attempted_at=started)

    [post] = sandbox.posts()
    assert found is not None and found.success and found.platform_post_id == post["id"]


async def test_a_captionless_photo_with_a_link_is_never_matched_to_another_captionless_post(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    started = datetime.now(UTC)
    other = PostContent(caption="", image_url="https://cdn.example.com/someone-elses.jpg")
    assert (await publishers["facebook"].publish(other, demo_account, attempt_id="other")).success
    ours = PostContent(caption="", image_url="https://cdn.example.com/ours.jpg", link="https://shop.example.com/x")

    found = await publishers["facebook"].find_existing(ours, demo_account, attempt_id="a1", container_id=None,
                                                       attempted_at=started)

    # Its text on the Page would be the link: the other post, with no text, is not ours.
    assert found is None


async def test_the_page_token_is_fetched_once_and_reused(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    assert (await publishers["facebook"].publish(PHOTO, demo_account, attempt_id="a1")).success
    # Were the Page token fetched again, this fault would fail the second post.
    sandbox.fail_next("facebook", "page_token", code=2, http_status=500)

    assert (await publishers["facebook"].publish(LINK, demo_account, attempt_id="a2")).success
    assert facebook_posts(sandbox) == 2


async def test_a_page_token_the_platform_invalidated_is_fetched_again(
    publishers: dict[Platform, Publisher], sandbox: SandboxControl, tokens_kept_out_of_logs: set[str]
) -> None:
    user_token = "sandbox-user-token-rotating-page"
    first_page_token = sandbox.register_account("111000111", None, user_token)
    tokens_kept_out_of_logs.update({user_token, first_page_token})
    account = AccountCredentials("acct-2", SecretStr(user_token), "111000111", None)
    assert (await publishers["facebook"].publish(LINK, account, attempt_id="a1")).success

    sandbox.revoke(first_page_token)
    tokens_kept_out_of_logs.add(sandbox.register_account("111000111", None, user_token))
    outcome = await publishers["facebook"].publish(PHOTO, account, attempt_id="a2")

    assert outcome.success
    assert sandbox.counters()["facebook"]["111000111"] == 2


async def test_the_seeds_image_url_with_a_space_fails_with_the_seeds_message_and_works_once_fixed(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    failed = await publishers["facebook"].publish(SEED_BAD_PHOTO, demo_account, attempt_id="a1")

    assert not failed.success and failed.error is not None
    assert failed.error.message == "Facebook photo upload failed: 400 - Missing or invalid image file"
    assert (failed.error.kind, failed.error.code, failed.error.http_status) == (ErrorKind.INVALID_MEDIA, 324, 400)
    assert not failed.outcome_unknown
    assert facebook_posts(sandbox) == 0

    fixed = await publishers["facebook"].publish(PHOTO, demo_account, attempt_id="a2")
    assert fixed.success and facebook_posts(sandbox) == 1


async def test_a_revoked_user_token_is_an_auth_error(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.revoke(DEMO_USER_TOKEN)

    outcome = await publishers["facebook"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None
    assert (outcome.error.kind, outcome.error.code, outcome.error.subcode) == (ErrorKind.AUTH, 190, 460)
    assert facebook_posts(sandbox) == 0
    assert_no_token_in(outcome)


async def test_a_token_meta_echoes_back_in_an_error_is_scrubbed(
    publishers: dict[Platform, Publisher], sandbox: SandboxControl, tokens_kept_out_of_logs: set[str]
) -> None:
    # Meta answers "Malformed access token <the token>"; neither the message nor a log line may carry it.
    unknown = "EAA" + "Gm0PX4ZCpsBAUnknownTokenZZ"  # built, so no token-shaped literal is committed
    tokens_kept_out_of_logs.add(unknown)
    account = AccountCredentials("acct-x", SecretStr(unknown), DEMO_PAGE_ID, None)

    outcome = await publishers["facebook"].publish(PHOTO, account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH
    assert "Malformed access token [redacted]" in outcome.error.message
    assert_no_token_in(outcome, unknown)


@pytest.mark.parametrize(
    ("code", "subcode", "http_status", "is_transient", "kind"),
    [
        (10, None, 403, False, ErrorKind.PERMISSION),
        (200, None, 403, False, ErrorKind.PERMISSION),
        (190, 463, 400, False, ErrorKind.AUTH),
        (102, None, 400, False, ErrorKind.AUTH),
        (4, None, 400, False, ErrorKind.RATE_LIMITED),
        (17, None, 400, False, ErrorKind.RATE_LIMITED),
        (32, None, 400, False, ErrorKind.RATE_LIMITED),
        (613, None, 400, False, ErrorKind.RATE_LIMITED),
        (80001, None, 400, False, ErrorKind.RATE_LIMITED),
        (1, None, 500, False, ErrorKind.TRANSIENT),
        (2, None, 503, True, ErrorKind.TRANSIENT),
        (100, None, 400, True, ErrorKind.TRANSIENT),
        (100, None, 400, False, ErrorKind.INVALID_REQUEST),
        (506, None, 400, False, ErrorKind.INVALID_REQUEST),
        (324, None, 400, False, ErrorKind.INVALID_MEDIA),
    ],
)
async def test_every_graph_error_is_classified_by_its_code(
    publishers: dict[Platform, Publisher],
    demo_account: AccountCredentials,
    sandbox: SandboxControl,
    code: int,
    subcode: int | None,
    http_status: int,
    is_transient: bool,
    kind: ErrorKind,
) -> None:
    sandbox.fail_next("facebook", "photos", code=code, subcode=subcode, http_status=http_status,
                      is_transient=is_transient)

    outcome = await publishers["facebook"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None
    assert (outcome.error.kind, outcome.error.code, outcome.error.http_status) == (kind, code, http_status)
    assert outcome.error.message.startswith(f"Facebook photo upload failed: {http_status} - ")
    assert facebook_posts(sandbox) == 0


async def test_rate_limit_wait_comes_from_the_business_use_case_header(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.fail_next("facebook", "feed", code=80001, regain_access_minutes=3)

    outcome = await publishers["facebook"].publish(LINK, demo_account, attempt_id="a1")

    assert outcome.error is not None
    assert (outcome.error.kind, outcome.error.retry_after_s) == (ErrorKind.RATE_LIMITED, 180.0)


async def test_rate_limit_wait_comes_from_the_app_usage_header_when_it_is_full(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.fail_next("facebook", "feed", code=4, app_usage={"call_count": 100, "total_cputime": 12, "total_time": 9})

    outcome = await publishers["facebook"].publish(LINK, demo_account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.RATE_LIMITED
    assert outcome.error.retry_after_s is not None and outcome.error.retry_after_s > 0


async def test_a_timeout_is_transient_and_the_post_is_then_found_not_to_exist(
    sandbox: SandboxControl, demo_account: AccountCredentials
) -> None:
    sandbox.hang_next("facebook", "photos", seconds=5)
    started = datetime.now(UTC)
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.3)) as impatient:
        facebook = build_publishers(impatient, sandbox.base_url, GRAPH_VERSION, polling=FAST_POLLING)["facebook"]
        outcome = await facebook.publish(PHOTO, demo_account, attempt_id="a1")

        assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
        assert "timed out" in outcome.error.message
        # The request was sent: only asking the platform can tell whether it went out.
        assert outcome.outcome_unknown

        found = await facebook.find_existing(PHOTO, demo_account, attempt_id="a1", container_id=None,
                                             attempted_at=started)
    assert found is None
    assert facebook_posts(sandbox) == 0


@pytest.mark.parametrize(("code", "http_status", "is_transient", "unknown"), [
    (2, 400, False, True), (1, 400, False, True), (6000, 400, True, True), (100, 500, False, True),
    (12345, 200, False, True), (4, 400, False, False), (100, 400, False, False), (324, 400, False, False),
    (368, 400, False, False), (190, 500, False, False), (10, 500, False, False)])
async def test_an_error_that_may_follow_a_post_leaves_its_outcome_unknown_and_only_a_refusal_is_a_failure(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl,
    code: int, http_status: int, is_transient: bool, unknown: bool,
) -> None:
    # Meta's "unknown error" and "service temporarily unavailable" come with a 400 too, as may any error Meta marks
    # `is_transient`; a 5xx is a failure on Meta's side whatever its code, and an error in a 200's answer is no
    # refusal either: the post may be on the Page all the same, and trying again without looking would post it
    # twice. A rate limit, the token, a permission, or a post Meta finds wrong (a 4xx) is refused before anything
    # is created.
    sandbox.fail_after("facebook", "photos", code=code, http_status=http_status, is_transient=is_transient)

    outcome = await publishers["facebook"].publish(PHOTO, demo_account, attempt_id="a1")

    assert not outcome.success and outcome.outcome_unknown is unknown


async def test_publish_then_dropped_connection_is_resolved_by_finding_the_post(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    started = datetime.now(UTC)
    sandbox.drop_after("facebook", "photos")

    outcome = await publishers["facebook"].publish(PHOTO, demo_account, attempt_id="a1")

    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    assert outcome.outcome_unknown
    assert facebook_posts(sandbox) == 1
    found = await publishers["facebook"].find_existing(PHOTO, demo_account, attempt_id="a1", container_id=None,
                                                       attempted_at=started)
    [post] = sandbox.posts()
    assert found is not None and found.success
    assert (found.platform_post_id, found.permalink) == (post["id"], None)


async def test_an_attempt_that_did_not_go_out_is_not_found(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    started = datetime.now(UTC)
    # An older post with the same caption and a recent one with another caption must not match.
    assert (await publishers["facebook"].publish(LINK, demo_account, attempt_id="other")).success

    found = await publishers["facebook"].find_existing(PHOTO, demo_account, attempt_id="a1", container_id=None,
                                                       attempted_at=started)
    too_late = await publishers["facebook"].find_existing(
        LINK, demo_account, attempt_id="a2", container_id=None, attempted_at=started + timedelta(minutes=10)
    )

    assert found is None and too_late is None


async def test_a_forced_republishs_lookup_never_takes_the_posts_earlier_post_for_its_own(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    first = await publishers["facebook"].publish(PHOTO, demo_account, attempt_id="a1")
    assert first.success and first.platform_post_id is not None
    # The republish starts a moment later, with the same caption, and its answer is lost on the way back.
    republish_started = datetime.now(UTC)
    sandbox.drop_after("facebook", "photos")
    assert (await publishers["facebook"].publish(PHOTO, demo_account, attempt_id="a2")).outcome_unknown
    [republished] = [post for post in sandbox.posts() if post["id"] != first.platform_post_id]

    found = await publishers["facebook"].find_existing(PHOTO, demo_account, attempt_id="a2", container_id=None,
                                                       attempted_at=republish_started,
                                                       recorded=(first.platform_post_id,))

    assert found is not None and found.success and found.platform_post_id == republished["id"]
    assert found.platform_post_id != first.platform_post_id


async def test_a_post_without_a_caption_cannot_be_told_apart_so_its_lookup_is_not_a_no(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    image_only = PostContent(caption="", image_url="https://cdn.example.com/autumn-menu.jpg")
    started = datetime.now(UTC)
    # Another post without a caption on the Page: it is no evidence either way about the attempt's.
    assert (await publishers["facebook"].publish(image_only, demo_account, attempt_id="other")).success

    found = await publishers["facebook"].find_existing(image_only, demo_account, attempt_id="a1", container_id=None,
                                                       attempted_at=started)

    assert found is not None and not found.success
    assert found.error is not None and "could not tell" in found.error.message
    assert "check the Page and say whether it went out (smartretry resolve)" in found.error.message
    # Of a kind the post asks the user to resolve the attempt for: asking again would never tell.
    assert found.error.kind is ErrorKind.INVALID_REQUEST


async def test_a_lookup_the_platform_cannot_answer_is_a_failure_not_a_no(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    sandbox.fail_next("facebook", "published_posts", code=2, http_status=500, is_transient=True)

    found = await publishers["facebook"].find_existing(PHOTO, demo_account, attempt_id="a1", container_id=None,
                                                       attempted_at=datetime.now(UTC))

    assert found is not None and not found.success
    assert found.error is not None and found.error.kind is ErrorKind.TRANSIENT


async def test_an_account_without_a_page_cannot_publish_to_facebook(
    publishers: dict[Platform, Publisher], sandbox: SandboxControl
) -> None:
    account = AccountCredentials("acct-ig-only", SecretStr(DEMO_USER_TOKEN), None, "17841400000000000")

    outcome = await publishers["facebook"].publish(PHOTO, account, attempt_id="a1")

    # Connecting the account again with its Page is the fix, not changing the post.
    assert outcome.error is not None and outcome.error.kind is ErrorKind.AUTH
    assert "no Facebook Page" in outcome.error.message
    assert needed_action("facebook", outcome.error.kind) == "re-authenticate Facebook"


async def test_an_interrupted_attempts_post_is_found_behind_a_busy_pages_newer_posts(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl,
    graph_client: httpx.AsyncClient,
) -> None:
    started = datetime.now(UTC)
    sandbox.drop_after("facebook", "photos")
    interrupted = await publishers["facebook"].publish(PHOTO, demo_account, attempt_id="a1")
    assert interrupted.outcome_unknown
    # More posts since the attempt than one page of the listing holds (Meta's pages are 100 at most).
    await post_other_news(graph_client, sandbox, 120)

    found = await publishers["facebook"].find_existing(PHOTO, demo_account, attempt_id="a1", container_id=None,
                                                       attempted_at=started)

    [ours] = [post for post in sandbox.posts() if post["message"] == PHOTO.caption]
    assert found is not None and found.success
    assert (found.platform_post_id, found.permalink) == (ours["id"], None)
    assert facebook_posts(sandbox) == 121


async def test_a_window_too_busy_to_read_to_its_start_is_could_not_tell_not_a_no(
    demo_account: AccountCredentials, sandbox: SandboxControl, graph_client: httpx.AsyncClient,
) -> None:
    # The bound scaled down (2 pages of 10) so the test posts 25 posts instead of over a thousand.
    facebook = FacebookPagePublisher(graph_client, sandbox.base_url, GRAPH_VERSION,
                                     lookup_page_size=10, lookup_max_pages=2)
    started = datetime.now(UTC)
    await post_other_news(graph_client, sandbox, 15)

    readable = await facebook.find_existing(PHOTO, demo_account, attempt_id="a1", container_id=None,
                                            attempted_at=started)
    assert readable is None

    await post_other_news(graph_client, sandbox, 10, first=15)
    too_busy = await facebook.find_existing(PHOTO, demo_account, attempt_id="a1", container_id=None,
                                            attempted_at=started)

    # None would mean "it did not go out" and publish it again; the handler asks again later instead.
    assert too_busy is not None and not too_busy.success
    assert too_busy.error is not None and too_busy.error.kind is ErrorKind.TRANSIENT
    assert "could not tell" in too_busy.error.message
    assert facebook_posts(sandbox) == 25


async def test_posts_after_the_attempts_window_do_not_bury_it(
    demo_account: AccountCredentials, sandbox: SandboxControl, graph_client: httpx.AsyncClient,
) -> None:
    """Once an attempt's lease has run out, posts published later are outside its window: a Page busy
    since then does not turn the look-up into "could not tell" for ever."""
    facebook = FacebookPagePublisher(graph_client, sandbox.base_url, GRAPH_VERSION,
                                     lookup_page_size=10, lookup_max_pages=2, lookup_window=timedelta(seconds=150))
    await post_other_news(graph_client, sandbox, 25)
    busy_since = await facebook.find_existing(PHOTO, demo_account, attempt_id="a1", container_id=None,
                                              attempted_at=datetime.now(UTC) - timedelta(seconds=30))
    # Within the lease, the window reaches to now: 25 posts in it are more than 2 pages of 10.
    assert busy_since is not None and busy_since.error is not None and "could not tell" in busy_since.error.message

    long_ago = await facebook.find_existing(PHOTO, demo_account, attempt_id="a1", container_id=None,
                                            attempted_at=datetime.now(UTC) - timedelta(minutes=10))
    # Its window ended minutes before those posts (150 s, plus the 2 minutes allowed for clock skew).
    assert long_ago is None


async def test_the_sandbox_pages_published_posts_with_cursors_newest_first(
    sandbox: SandboxControl, graph_client: httpx.AsyncClient
) -> None:
    await post_other_news(graph_client, sandbox, 5)
    url = f"{sandbox.base_url}/{GRAPH_VERSION}/{DEMO_PAGE_ID}/published_posts"
    headers = {"Authorization": f"Bearer {DEMO_PAGE_TOKEN}"}

    first = (await graph_client.get(url, params={"fields": "message", "limit": "3"}, headers=headers)).json()
    after = first["paging"]["cursors"]["after"]
    last = (await graph_client.get(url, params={"fields": "message", "limit": "3", "after": after},
                                   headers=headers)).json()
    future = int((datetime.now(UTC) + timedelta(minutes=5)).timestamp())
    none_yet = (await graph_client.get(url, params={"since": str(future)}, headers=headers)).json()

    assert [post["message"] for post in first["data"]] == [f"Today's special #{n}" for n in (4, 3, 2)]
    assert "next" in first["paging"]
    assert [post["message"] for post in last["data"]] == ["Today's special #1", "Today's special #0"]
    # The last page has cursors but no `next`, as on Meta.
    assert "next" not in last["paging"] and last["paging"]["cursors"]["after"]
    assert none_yet == {"data": []}


async def test_a_page_id_meta_does_not_know_asks_to_connect_the_account_again_not_to_fix_the_post(
    publishers: dict[Platform, Publisher], demo_account: AccountCredentials, sandbox: SandboxControl
) -> None:
    mistyped = AccountCredentials(demo_account.account_id, demo_account.user_token, "222222222222222",
                                  demo_account.ig_user_id)

    outcome = await publishers["facebook"].publish(PHOTO, mistyped, attempt_id="a1")

    assert not outcome.success and not outcome.outcome_unknown and outcome.error is not None
    assert outcome.error.kind is ErrorKind.AUTH
    assert outcome.error.message == (
        "Facebook photo upload failed: 400 - the Page 222222222222222 cannot be used with the account's token (Meta "
        "does not know it, or the token has no access to it): connect the account again with its Page's right id")
    # A new token for the same wrong Page would not help: the post asks for the account's right Page id.
    assert needed_action("facebook", outcome.error.kind, outcome.error.code) == (
        "connect the account again with its right Page id")
    assert facebook_posts(sandbox) == 0
