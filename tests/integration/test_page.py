"""The post pages: what an operator sees, the key-protected session, and the retry button in real Chromium."""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from publishers.sandbox import DEMO_ACCOUNT_ID, DEMO_IG_USER_ID, DEMO_PAGE_ID
from schemas.commands import ForceRepublishRequested, PostContent, RetryRequested, fingerprint
from schemas.common import ErrorKind, PublishTarget, format_timestamp, platforms_of
from schemas.envelope import decode_command
from schemas.events import (
    CommandDecided,
    LegacyInsightsImported,
    PlatformError,
    PlatformResult,
    PostSubmitted,
    PublishAttempted,
)
from smartretry import pages
from smartretry.pages import clock_time, code_spans, retry_token
from streams.topics import Topics
from tests.integration.test_api import (
    API_KEY,
    AT,
    FB_ERROR,
    FIXED_URL,
    RunningApi,
    add_account,
    api_fixture,  # noqa: F401 - the `api` fixture
    assert_nothing_on_commands,
    messages_on,
    overtaken_retry,
    seed_events,
    store_events,
    store_for_an_operator,
    store_limited_for_an_hour,
    store_post,
)
from tests.integration.test_api_end_to_end import API_KEY as E2E_KEY
from tests.integration.test_api_end_to_end import (
    ServiceApi,
    publish_with_a_space,
    service_api_fixture,  # noqa: F401 - the `service_api` fixture
)
from tests.support.service import service, shared_sandbox  # noqa: F401 - fixtures it needs
from tests.unit.test_fold import History
from tests.unit.test_handler_attempts import rate_limited_state

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def signed_in(api: RunningApi) -> Iterator[httpx.Client]:
    """A browser-like client that signed in with the key in a link, as an operator would."""
    with httpx.Client(base_url=api.url, timeout=10, follow_redirects=True) as browser:
        assert browser.get("/ui/posts", params={"key": API_KEY}).status_code == 200
        yield browser


def test_a_command_in_a_message_is_shown_as_code_and_everything_else_escaped() -> None:
    assert str(code_spans("connect it with `smartretry accounts set-token <acme>`, then retry")) == \
        "connect it with <code>smartretry accounts set-token &lt;acme&gt;</code>, then retry"
    assert str(code_spans("an odd ` and <b>")) == "an odd ` and &lt;b&gt;"


def test_the_post_page_shows_the_whole_caption(api: RunningApi) -> None:
    caption = "Autumn sale starts today. " * 20 + "The end."
    history = History(post_id="post-long")
    history.submit(target="facebook")
    history.events[-1] = history.events[-1].model_copy(update={"content": PostContent(
        caption=caption, image_url="https://cdn.example.com/autumn-sale.jpg")})
    api.stores.projection.apply_batch(api.topics.post_events, 3, list(enumerate(history.events)))
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-long").text
    assert html.escape(caption, quote=False) in page


def test_pages_send_a_browser_without_the_key_to_sign_in(api: RunningApi) -> None:
    store_post(api, "post-1")
    answer = api.anonymous.get("/ui/posts/post-1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fposts%2Fpost-1"
    wrong = api.anonymous.post("/ui/login", content="key=nope&next=/ui/posts/post-1",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong.status_code == 401
    assert "That is not the API key" in wrong.text
    right = api.anonymous.post("/ui/login", content=f"key={API_KEY}&next=/ui/posts/post-1",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert right.status_code == 303
    assert right.headers["location"] == "/ui/posts/post-1"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert f"Max-Age={12 * 3600}" in cookie
    assert API_KEY not in cookie


def test_a_key_in_the_address_becomes_a_session_and_leaves_the_address(api: RunningApi) -> None:
    store_post(api, "post-1")
    first = api.anonymous.get("/ui/posts/post-1", params={"key": API_KEY, "awaiting": "x"})
    assert first.status_code == 303
    assert first.headers["location"] == "/ui/posts/post-1?awaiting=x"
    assert api.anonymous.get("/ui/posts", params={"key": "wrong"}).headers["location"].startswith("/ui/login")


def test_a_session_ends_when_the_operator_signs_out(api: RunningApi) -> None:
    store_post(api, "post-1")
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-1")
        assert 'action="/ui/logout"' in page.text
        # Never kept by the browser: Back after signing out must not show it from a cache.
        assert page.headers["cache-control"] == "no-store"
        out = browser.post("/ui/logout", follow_redirects=False)
        assert out.status_code == 303
        assert out.headers["location"] == "/ui/login?signed_out=1"
        assert "You are signed out" in browser.get(out.headers["location"]).text
        again = browser.get("/ui/posts/post-1", follow_redirects=False)
        assert again.status_code == 303 and again.headers["location"].startswith("/ui/login")


def test_a_session_lasts_twelve_hours(api: RunningApi, monkeypatch: pytest.MonkeyPatch) -> None:
    store_post(api, "post-1")
    with signed_in(api) as browser:
        signed_at = pages._now()
        monkeypatch.setattr(pages, "_now", lambda: signed_at + 11 * 3600)
        assert browser.get("/ui/posts/post-1", follow_redirects=False).status_code == 200
        # Signed by a replica whose clock is a minute ahead: still a session.
        monkeypatch.setattr(pages, "_now", lambda: signed_at - 60)
        assert browser.get("/ui/posts/post-1", follow_redirects=False).status_code == 200
        monkeypatch.setattr(pages, "_now", lambda: signed_at + 12 * 3600 + 1)
        late = browser.get("/ui/posts/post-1", follow_redirects=False)
        assert late.status_code == 303 and late.headers["location"].startswith("/ui/login")


def test_a_session_cookie_from_another_time_or_key_is_refused(api: RunningApi) -> None:
    store_post(api, "post-1")
    with signed_in(api) as browser:
        cookie = browser.cookies[pages.SESSION_COOKIE]
    issued, signature = cookie.split(".")
    for forged in (f"{int(issued) + 1}.{signature}", signature, f"{issued}.", "", f"-5.{signature}", "²",
                   f"¹².{signature}", f"{issued}.{signature[:-1]}é"):
        answer = api.anonymous.get("/ui/posts/post-1",
                                   headers={"Cookie": f"{pages.SESSION_COOKIE}={forged}".encode("latin-1")})
        assert answer.status_code == 303, forged
    genuine = api.anonymous.get("/ui/posts/post-1", headers={"Cookie": f"{pages.SESSION_COOKIE}={cookie}"})
    assert genuine.status_code == 200


def test_login_never_redirects_off_the_site(api: RunningApi) -> None:
    answer = api.anonymous.post("/ui/login", content=f"key={API_KEY}&next=//evil.example/x",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.headers["location"] == "/ui/posts"


def test_a_failed_post_page_shows_what_the_seed_draws(api: RunningApi) -> None:
    store_post(api, "post-1")
    with signed_in(api) as browser:
        html = browser.get("/ui/posts/post-1").text
    assert "Status: ❌ Failed" in html
    # As the product note draws it, Meta's words; what failed and its HTTP status on hover.
    assert "Error: facebook: Missing or invalid image file</p>" in html
    assert f'title="{FB_ERROR}"' in html
    assert "Needed for Facebook: fix the image URL" in html
    assert "✅ Instagram: Published" in html
    assert 'href="https://www.instagram.com/p/DRJ1nlKDgY9/"' in html
    assert "📘 + 📷 Retry Publishing" in html
    assert "Note: Will only retry Facebook" in html
    assert "http-equiv=\"refresh\"" not in html


def store_unchecked(api: RunningApi) -> None:
    """post-unchecked (account acct-1): its Facebook attempt has no result, and the look-up was refused the token."""
    history = History(post_id="post-unchecked")
    attempts = history.publish(target="facebook")
    history.unknown("facebook", attempts["facebook"], ErrorKind.AUTH,
                    "Facebook post lookup failed: Error validating access token")
    # A partition of its own: `store_post` numbers partition 0's offsets.
    api.stores.projection.apply_batch(api.topics.post_events, 5, list(enumerate(history.events)))


def test_an_attempt_that_cannot_be_checked_asks_to_re_authenticate_on_the_page_and_in_the_api(
        api: RunningApi) -> None:
    store_unchecked(api)

    with signed_in(api) as browser:
        html = browser.get("/ui/posts/post-unchecked").text
    assert "Facebook: whether the post went out is not known yet: " \
           "Facebook post lookup failed: Error validating access token" in html
    assert "Needed for Facebook: re-authenticate Facebook (store the account's new token below, or with " \
           "<code>smartretry accounts set-token " in html  # and how
    assert 'id="reauth"' in html
    assert "<code>smartretry resolve post-unchecked facebook --published-as POST_ID</code>" in html
    assert "Retry Publishing" not in html
    detail = api.client.get("/posts/post-unchecked").json()
    assert detail["status"] == "publishing"
    assert detail["needed_action"] == {"facebook": "re-authenticate Facebook"}
    assert detail["outcome_unknown"] == {"facebook": "Facebook post lookup failed: Error validating access token"}


def test_a_post_that_failed_for_its_token_asks_to_re_authenticate_then_retry(api: RunningApi) -> None:
    # Re-authenticating alone publishes nothing: the failed platform goes out when the post is retried then.
    store_post(api, "post-expired", facebook_ok=True, instagram_ok=False)
    with signed_in(api) as browser:
        before = browser.get("/ui/posts/post-expired").text
    assert "Needed for Instagram: re-authenticate Instagram, then retry" in before
    assert api.client.get("/posts/post-expired").json()["needed_action"] == {
        "instagram": "re-authenticate Instagram, then retry"}
    # Once the account's token is stored again, what is left is the retry, and the page says the token is renewed.
    account = api.client.get("/posts/post-expired").json()["account"]
    api.stores.credentials.set_token(account, "renewed-user-token-0002", "747917475065823", "17841400000000000")
    renewed = api.stores.credentials.token_updated_at(account)
    assert renewed is not None
    action = (f"retry Instagram (a token was stored for the account at {renewed.strftime('%Y-%m-%d %H:%M:%S')} UTC, "
              "after the failed attempt began)")
    with signed_in(api) as browser:
        page = html.unescape(browser.get("/ui/posts/post-expired").text)
    assert f"Needed for Instagram: {action}" in page and "re-authenticate" not in page
    assert api.client.get("/posts/post-expired").json()["needed_action"] == {"instagram": action}


def test_the_page_stores_the_accounts_new_token_and_then_asks_only_for_the_retry(
        api: RunningApi, caplog: pytest.LogCaptureFixture) -> None:
    store_post(api, "post-expired", facebook_ok=True, instagram_ok=False)  # account acme, never stored here
    csrf = retry_token(api.settings, "post-expired")
    new_token = "renewed-user-token-7c41ab"
    with signed_in(api) as browser:
        before = browser.get("/ui/posts/post-expired").text
        # A paste gone wrong: refused, saying which field and why, and never shown back.
        bad = browser.post("/ui/posts/post-expired/token", data={"csrf": csrf, "access_token": "renewed token 7c41"})
        stale = browser.post("/ui/posts/post-expired/token", data={"csrf": "old", "access_token": new_token})
        # The account was never connected: the ids its platforms publish to come with the token.
        no_ids = browser.post("/ui/posts/post-expired/token", data={"csrf": csrf, "access_token": new_token})
        # A Page id typed with its name.
        named = browser.post("/ui/posts/post-expired/token", data={
            "csrf": csrf, "access_token": new_token, "page_id": "Acme Page", "ig_user_id": "17841400000000000"})
        # A browser's password manager filling in the sign-in's key.
        key = browser.post("/ui/posts/post-expired/token", data={
            "csrf": csrf, "access_token": API_KEY, "page_id": "747917475065823", "ig_user_id": "17841400000000000"})
        with caplog.at_level("DEBUG"):
            stored = browser.post("/ui/posts/post-expired/token", follow_redirects=False, data={
                "csrf": csrf, "access_token": f" {new_token}\n", "page_id": "747917475065823",
                "ig_user_id": "17841400000000000"})
            after = browser.get(stored.headers["location"])

    assert 'id="reauth"' in before and "New access token for account acme" in before
    # The account was never stored: the ids it publishes to are asked for too.
    assert 'name="page_id"' in before and 'name="ig_user_id"' in before
    assert "store the account's new token below, or with <code>smartretry accounts set-token acme</code>" in before
    assert bad.status_code == 422
    assert "Access token: Value error" not in bad.text and \
        "Access token: an access token is printable ASCII, without spaces" in bad.text
    assert "renewed token 7c41" not in bad.text and 'id="reauth"' in bad.text
    assert stale.status_code == 403
    assert no_ids.status_code == 422 and \
        "Facebook Page id and Instagram account id: needed to connect account acme" in html.unescape(no_ids.text)
    assert key.status_code == 422 and "that is this service&#39;s API key" in key.text and API_KEY not in key.text
    assert 'autocomplete="new-password"' in before
    assert named.status_code == 422 and "Facebook Page id: an id is digits only, as Meta shows it" in named.text
    assert "should match pattern" not in named.text
    # The command to type is shown as code, not with its backquotes.
    assert "`smartretry" not in before
    assert stored.status_code == 303 and stored.headers["location"] == "/ui/posts/post-expired?token_stored=1"
    credentials = api.stores.credentials.get("acme")
    assert credentials.user_token.get_secret_value() == new_token
    assert (credentials.page_id, credentials.ig_user_id) == ("747917475065823", "17841400000000000")
    page = html.unescape(after.text)
    assert "The token of account acme was stored at " in page
    assert "Needed for Instagram: retry Instagram (a token was stored for the account at " in page
    assert 'id="reauth"' not in page and 'id="retry"' in page
    assert new_token not in after.text and new_token not in caplog.text
    assert "Token of account acme stored (a new account)" in caplog.text


def test_a_post_not_known_to_have_gone_out_takes_the_token_and_says_the_service_looks_again(api: RunningApi) -> None:
    api.stores.credentials.set_token("acct-1", "acct-1-user-token-0001", "747917475065823")
    store_unchecked(api)
    with signed_in(api) as browser:
        before = browser.get("/ui/posts/post-unchecked").text
        stored = browser.post("/ui/posts/post-unchecked/token", data={
            "csrf": retry_token(api.settings, "post-unchecked"), "access_token": "renewed-user-token-7c41ab"})
    # Publishing, waiting for the token: the page does not reload itself with the token form (it would empty the field).
    assert 'id="reauth"' in before and 'http-equiv="refresh"' not in before
    assert "Publishing Facebook waits for what is needed above.</p>" in before
    # The account has its Page id: only the token is asked for.
    assert 'name="page_id"' not in before
    assert "The service looks the post up again with it within 30 s" in stored.text


def test_a_token_form_sent_after_the_session_ended_says_the_token_was_not_stored(api: RunningApi) -> None:
    store_post(api, "post-expired", facebook_ok=True, instagram_ok=False)
    answer = api.anonymous.post("/ui/posts/post-expired/token", data={
        "csrf": retry_token(api.settings, "post-expired"), "access_token": "renewed-user-token-7c41ab"})
    assert answer.status_code == 303
    page = api.anonymous.get(answer.headers["location"]).text
    assert "Your session had ended, so the token was not stored: sign in, then store it again." in page
    assert api.client.get("/accounts").json()["accounts"] == []


def test_a_post_that_needs_no_new_token_has_no_token_form(api: RunningApi) -> None:
    add_account(api)
    store_post(api, "post-1")  # Facebook refused the image URL: a token would not help
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-1").text
    assert 'id="reauth"' not in page and 'id="retry"' in page


def test_a_retry_in_progress_says_which_platform_is_being_published(api: RunningApi) -> None:
    history = History(post_id="post-retrying")
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "18107758234627017")
    history.retry("cmd-retry", ("facebook",))
    api.stores.projection.apply_batch(api.topics.post_events, 6, list(enumerate(history.events)))

    with signed_in(api) as browser:
        html = browser.get("/ui/posts/post-retrying").text

    assert "Publishing Facebook… this page refreshes itself." in html
    assert "Publishing Facebook and Instagram" not in html


def test_a_platform_published_before_a_correction_says_what_its_post_keeps_on_the_page_and_in_the_api(
        api: RunningApi) -> None:
    history = History(post_id="post-corrected")
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "18107758234627017")
    retried = history.retry("cmd-retry", ("facebook",), content=PostContent(
        caption="Autumn sale: 30% off", image_url="https://cdn.example.com/autumn-sale.jpg"))
    history.success("facebook", retried["facebook"], "747917475065823_122104567890123")
    api.stores.projection.apply_batch(api.topics.post_events, 8, list(enumerate(history.events)))

    with signed_in(api) as browser:
        html = browser.get("/ui/posts/post-corrected").text

    assert "Status: ✅ Posted" in html
    assert ("ℹ️ Instagram&#39;s post went out with the earlier caption “Autumn sale” and the image at "
            "https://cdn.example.com/autumn sale.jpg, not the post&#39;s content now") in html
    detail = api.client.get("/posts/post-corrected").json()
    assert detail["published_with"] == {"instagram": {"caption": "Autumn sale", "image_url":
                                                      "https://cdn.example.com/autumn sale.jpg", "link": None}}
    assert list(detail["kept_from_before"]) == ["instagram"]
    # Where it can be republished alone, from the page: that platform alone chosen in the form, which stays closed
    # until opened (the post went out as the product note's retry leaves it: nothing more is asked for).
    assert '<details class="republish" id="republish">' in html
    assert re.search(r'id="republish-instagram" checked', html)
    assert not re.search(r'id="republish-facebook" checked', html)


def test_a_platform_that_failed_while_the_other_is_still_publishing_shows_its_failure_and_what_it_needs(
        api: RunningApi) -> None:
    history = History(post_id="post-half-done", at=datetime.now(UTC))
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"])  # Instagram's container is still processing
    api.stores.projection.apply_batch(api.topics.post_events, 9, list(enumerate(history.events)))

    with signed_in(api) as browser:
        html = browser.get("/ui/posts/post-half-done").text

    assert "Status: ⏳ Publishing" in html and "Publishing Instagram… this page refreshes itself." in html
    assert "Error: facebook: Missing or invalid image file" in html
    assert "Needed for Facebook: fix the image URL" in html
    assert "A retry of Facebook can be sent here once Instagram has its result (one sent meanwhile" in html
    assert "Retry Publishing" not in html


def test_a_platform_the_service_retries_by_itself_while_the_other_is_still_publishing_says_so(
        api: RunningApi) -> None:
    history = History(post_id="post-hiccup", at=datetime.now(UTC))
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"], "Facebook photo upload failed: 500 - hiccup", ErrorKind.TRANSIENT,
                    when=datetime.now(UTC))
    api.stores.projection.apply_batch(api.topics.post_events, 10, list(enumerate(history.events)))

    with signed_in(api) as browser:
        html = browser.get("/ui/posts/post-hiccup").text

    assert "Publishing Instagram… this page refreshes itself." in html
    assert "🔄 Facebook will be retried automatically" in html
    assert "can be sent here" not in html and "Needed for Facebook" not in html


def test_a_failure_the_service_retries_by_itself_says_so_on_the_page_and_in_the_api(api: RunningApi) -> None:
    history, _state = rate_limited_state()
    history.post_id = "post-limited"
    events = [event.model_copy(update={"post_id": "post-limited"}) for event in history.events]
    api.stores.projection.apply_batch(api.topics.post_events, 7, list(enumerate(events)))

    with signed_in(api) as browser:
        html = browser.get("/ui/posts/post-limited").text

    # Facebook's rate limit lifts ten minutes after the refusal: the service publishes it again then (long past here,
    # so the page says it is late).
    assert "Status: ❌ Failed" in html
    assert ("🔄 Facebook will be retried automatically (it was due at 2025-11-17 10:20:13 UTC: the service may be away "
            "or behind); this page refreshes itself.") in html  # not today: with its date
    # Followed to its result: the page looks again (its time is past here, so in the shortest wait).
    assert '<meta http-equiv="refresh" content="5">' in html
    detail = api.client.get("/posts/post-limited").json()
    assert detail["automatic_retry"] == {"facebook": "2025-11-17T10:20:13.000Z"}  # as events write times


def test_a_posted_post_page_shows_both_links_and_no_retry_button(api: RunningApi) -> None:
    store_post(api, "post-1", facebook_ok=True)
    with signed_in(api) as browser:
        html = browser.get("/ui/posts/post-1").text
    assert "Status: ✅ Posted" in html
    assert "Facebook Post:" in html
    assert "https://www.facebook.com/747917475065823_122104567890123" in html
    assert "Instagram Post:" in html
    assert "Retry Publishing" not in html


def test_a_posted_post_is_published_again_from_its_page_on_the_platforms_chosen(api: RunningApi) -> None:
    store_post(api, "post-1", facebook_ok=True)
    with signed_in(api) as browser:
        opened = browser.get("/ui/posts/post-1").text
        # The product note's case 4 ("still allows republishing"): every platform offered, and chosen at first.
        assert 'action="/ui/posts/post-1/republish"' in opened
        assert re.search(r'value="facebook" id="republish-facebook" checked', opened)
        assert re.search(r'value="instagram" id="republish-instagram" checked', opened)
        drawn = re.search(r'name="command_id" value="([0-9A-Z]{26})"', opened)
        assert drawn is not None
        form = {"token": retry_token(api.settings, "post-1"), "command_id": drawn.group(1),
                "platforms": "instagram", "reason": "Instagram post deleted by mistake"}
        # A double click: the second is sent before the first is taken up, as the same command.
        answer, again = (browser.post("/ui/posts/post-1/republish", data=form, follow_redirects=False)
                         for _ in range(2))
        assert answer.status_code == again.status_code == 303
        location = answer.headers["location"]
        assert re.fullmatch(rf"/ui/posts/post-1\?awaiting={drawn.group(1)}&sent=\d+&republish=instagram", location)
        page = browser.get(location).text
        sent = int(re.search(r"sent=(\d+)", location).group(1))  # type: ignore[union-attr]
        later = browser.get(location.replace(f"sent={sent}", f"sent={sent - 61}")).text
    sent = messages_on(api.bootstrap, api.topics.commands)
    assert {key for key, _value in sent} == {"post-1"}
    # The handler does a command id once: one republish.
    assert {decode_command(value).command_id for _key, value in sent} == {drawn.group(1)}
    command = decode_command(sent[0][1])
    assert isinstance(command, ForceRepublishRequested)
    assert command.platforms == ["instagram"] and command.reason == "Instagram post deleted by mistake"
    # Named: the platform republished, not every platform of the post; and no form to send it twice meanwhile.
    assert "Status: ⏳ Publishing" in page and "Publishing Instagram… this page refreshes itself." in page
    assert 'action="/ui/posts/post-1/republish"' not in page
    assert "Your republish (command " in later and "has not been taken up 6" in later
    assert "Status: ✅ Posted" in later


def test_a_republish_from_a_page_opened_before_the_post_was_published_again_is_refused(api: RunningApi) -> None:
    store_post(api, "post-1", facebook_ok=True)
    with signed_in(api) as browser:
        opened = browser.get("/ui/posts/post-1").text
        seen = re.search(r'name="seen" value="(\d+)"', opened.split('id="republish"', 1)[1])
        assert seen is not None
        # Meanwhile, another tab republished Instagram, and it went out.
        store_events(api, [
            CommandDecided(event_id="other-d", post_id="post-1", occurred_at=AT, command_id="other-tab",
                           command_type="ForceRepublishRequested", platforms=("instagram",), is_retry=True,
                           forced=True),
            PublishAttempted(event_id="other-a", post_id="post-1", occurred_at=AT, platform="instagram",
                             attempt_id="other-ig", attempt_number=2, command_id="other-tab", is_retry=True,
                             forced=True),
            PlatformResult(event_id="other-r", post_id="post-1", occurred_at=AT, platform="instagram",
                           attempt_id="other-ig", success=True, platform_post_id="18107758234627999")])
        stale = browser.post("/ui/posts/post-1/republish", data={
            "token": retry_token(api.settings, "post-1"), "seen": seen.group(1), "platforms": "instagram",
            "reason": "Instagram post deleted by mistake"})
    # Not a third Instagram post: the page says what it missed.
    assert stale.status_code == 409, stale.text[-2000:]
    assert "was published again after this republish was asked for" in html.unescape(stale.text)
    assert_nothing_on_commands(api)


def test_a_caption_too_long_for_the_platform_republished_is_said_at_once_and_corrected_in_the_form(
        api: RunningApi) -> None:
    # A Facebook retry lengthened the caption past Instagram's 2,200 characters; Instagram kept the earlier one.
    history = History(post_id="post-long")
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "18107758234627017")
    long_caption = "Autumn sale, the whole story. " * 100
    retried = history.retry("cmd-retry", ("facebook",), content=PostContent(
        caption=long_caption, image_url="https://cdn.example.com/autumn-sale.jpg"))
    history.success("facebook", retried["facebook"], "747917475065823_122104567890123")
    api.stores.projection.apply_batch(api.topics.post_events, 8, list(enumerate(history.events)))
    form = {"token": retry_token(api.settings, "post-long"), "platforms": "instagram", "reason": "the new caption"}
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-long").text
        # Said before it is sent, in the form that can correct it.
        assert re.search(r'id="republish-instagram" checked', page)
        assert "The post's caption as it is now does not fit: Instagram captions are limited to 2200 characters" \
            in html.unescape(page)
        unchanged = browser.post("/ui/posts/post-long/republish", data={**form, "caption": long_caption})
        shortened = browser.post("/ui/posts/post-long/republish", data={**form, "caption": "Autumn sale: 30% off"},
                                 follow_redirects=False)
    assert unchanged.status_code == 422
    assert "(correct the Caption in the form below)" in html.unescape(unchanged.text)
    assert shortened.status_code == 303, shortened.text[-2000:]
    [(_key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert isinstance(command, ForceRepublishRequested) and command.platforms == ["instagram"]
    assert command.content is not None and command.content.caption == "Autumn sale: 30% off"
    assert command.content.image_url == "https://cdn.example.com/autumn-sale.jpg"


def test_a_post_imported_without_its_account_or_content_offers_no_republish_form(api: RunningApi) -> None:
    store_events(api, History(post_id="legacy-posted").legacy(
        {"insights": {"facebook_post_id": "747917475065823_1"}, "status": "posted"}, target="facebook").events)
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/legacy-posted").text
    assert "Status: ✅ Posted" in page and 'id="republish"' not in page


def test_an_imported_post_that_may_have_gone_out_is_republished_from_its_page_once_looked_at_never_retried(
        api: RunningApi) -> None:
    # The old system was publishing it and kept no result: it may be on both platforms.
    history = History(post_id="legacy-unsure")
    history.events.append(LegacyInsightsImported(
        event_id="imported", post_id=history.post_id, occurred_at=history.at, publish_target="both",
        account=DEMO_ACCOUNT_ID, content=PostContent(caption="Autumn sale", image_url=FIXED_URL),
        document={"status": "publishing"}))
    store_events(api, history.events)
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/legacy-unsure").text
    # No retry button that would publish nothing; the republish form open, both platforms chosen, saying to choose only
    # a platform looked at.
    assert 'id="retry"' not in page
    assert '<details class="republish" id="republish" open>' in page and 'id="republish-unsure"' in page
    assert re.search(r'id="republish-facebook" checked', page) and re.search(r'id="republish-instagram" checked', page)
    assert "if not, republish Facebook (Publish again, below, with only Facebook chosen, or " \
           "<code>smartretry force legacy-unsure --platform facebook --reason ...</code>)" in page
    assert "if it is there, record it (<code>smartretry resolve legacy-unsure facebook --published-as POST_ID</code>)" \
        in page


def test_a_republish_form_without_platforms_a_reason_or_its_session_sends_nothing(api: RunningApi) -> None:
    store_post(api, "post-1", facebook_ok=True)
    token = "EAA" + "Bc1dE" * 12  # Meta's shape, built here so that no token is written down
    form = {"token": retry_token(api.settings, "post-1"), "reason": "testing"}
    with signed_in(api) as browser:
        none_chosen = browser.post("/ui/posts/post-1/republish", data=form)
        blank = browser.post("/ui/posts/post-1/republish", data={**form, "platforms": "facebook", "reason": "  "})
        secret = browser.post("/ui/posts/post-1/republish",
                              data={**form, "platforms": ["facebook", "instagram"], "reason": f"token {token}"})
        unknown = browser.post("/ui/posts/post-1/republish", data={**form, "platforms": "myspace"})
        forged = browser.post("/ui/posts/post-1/republish", data={**form, "platforms": "facebook", "token": "x"})
    assert none_chosen.status_code == 422 and "Choose the platforms to publish again." in none_chosen.text
    # The form comes back as it was sent, to correct: the reason typed, the platforms chosen.
    assert 'name="reason" id="reason" value="testing"' in none_chosen.text
    assert not re.search(r'id="republish-(facebook|instagram)" checked', none_chosen.text)
    assert blank.status_code == 422 and "Why: must say why" in blank.text
    assert re.search(r'id="republish-facebook" checked', blank.text)
    assert not re.search(r'id="republish-instagram" checked', blank.text)
    assert secret.status_code == 422 and token not in secret.text
    assert unknown.status_code == 422 and "Platforms" in unknown.text
    assert forged.status_code == 403
    ended = api.anonymous.post("/ui/posts/post-1/republish", data={**form, "platforms": "facebook"})
    assert ended.status_code == 303 and "unsent=republish" in ended.headers["location"]
    assert "so the post was not published again" in api.anonymous.get(ended.headers["location"]).text
    assert_nothing_on_commands(api)


def test_an_imported_permalink_that_is_no_web_address_is_never_a_link(api: RunningApi) -> None:
    history = History(post_id="legacy-js").legacy({"insights": {"publish_results": [
        {"platform": "instagram", "success": True, "postId": "18107758234627017",
         "permalink": "javascript:alert(document.cookie)"}]}, "status": "posted"}, target="instagram")
    store_events(api, history.events)
    with signed_in(api) as browser:
        html = browser.get("/ui/posts/legacy-js").text
    assert "Status: ✅ Posted" in html
    assert "javascript:" not in html


def test_the_list_page_filters_by_status(api: RunningApi) -> None:
    store_post(api, "failed-1")
    store_post(api, "posted-1", facebook_ok=True)
    with signed_in(api) as browser:
        failed = browser.get("/ui/posts", params={"status": "failed"}).text
        everything = browser.get("/ui/posts").text
        assert browser.get("/ui/posts/unknown-post").status_code == 404
    assert "failed-1" in failed and "posted-1" not in failed
    # A filter edited by hand, or a cut-short link: the list says what it shows instead.
    with signed_in(api) as browser:
        unknown = browser.get("/ui/posts", params={"status": "bogus<b>"}).text
        mangled = browser.get("/ui/posts", params={"cursor": "not-a-cursor"}).text
    assert "There is no status “bogus&lt;b&gt;”: every post is shown." in unknown
    assert "failed-1" in unknown and "posted-1" in unknown
    assert "That link&#39;s place in the list could not be read: the newest posts are shown." in mangled
    assert 'role="alert"' not in everything
    with signed_in(api) as browser:
        # A filter left empty (a form sent with "All") is every post, with nothing to say.
        assert 'role="alert"' not in browser.get("/ui/posts", params={"status": ""}).text
    assert "failed-1" in everything and "posted-1" in everything
    # Posts are told apart by what they say, not only by their ids.
    assert '<td class="caption">Autumn sale starts today</td>' in everything


def test_the_list_page_names_each_posts_business_and_every_failed_platforms_error(api: RunningApi) -> None:
    # Both platforms failed: each platform's error on a line of its own, so a long one never hides the other's.
    events = seed_events("both-failed", facebook_ok=False, instagram_ok=False)
    long_error = "Facebook photo upload failed: 400 - " + "the image could not be read " * 10
    events = [e.model_copy(update={"error": e.error.model_copy(update={"message": long_error})})
              if isinstance(e, PlatformResult) and e.platform == "facebook" and e.error is not None else e
              for e in events]
    store_events(api, events)
    with signed_in(api) as browser:
        listed = browser.get("/ui/posts").text
    row = listed[listed.index("both-failed</a>"):]
    row = row[:row.index("</tr>")]
    # Whose post it is: one service publishes for several businesses.
    assert '<td class="wide-only">acme</td>' in row
    assert "facebook: Facebook photo upload failed: 400 - the image could not be read" in row
    assert "<br>instagram: Instagram token expired" in row


def test_the_list_page_leads_to_older_posts_page_by_page(api: RunningApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "LIST_PAGE", 2)
    for i in range(3):
        store_post(api, f"older-{i}")
    store_post(api, "posted-9", facebook_ok=True)
    with signed_in(api) as browser:
        first = browser.get("/ui/posts", params={"status": "failed"}).text
        older = re.search(r'<a href="(/ui/posts\?[^"]+)">Older posts</a>', first)
        assert older is not None
        second = browser.get(older.group(1).replace("&amp;", "&")).text
    listed = re.compile(r'<a href="/ui/posts/([^"]+)">')
    assert listed.findall(first) == ["older-0", "older-1"]
    assert listed.findall(second) == ["older-2"]
    assert "Older posts" not in second and ">Newest posts</a>" in second


def test_the_retry_form_puts_a_retry_on_kafka_and_the_page_shows_publishing(api: RunningApi) -> None:
    store_post(api, "post-1")
    form = {"token": retry_token(api.settings, "post-1"), "image_url": "https://cdn.example.com/autumn-sale.jpg"}
    with signed_in(api) as browser:
        answer = browser.post("/ui/posts/post-1/retry", data=form, follow_redirects=False)
        assert answer.status_code == 303
        assert re.fullmatch(r"/ui/posts/post-1\?awaiting=[0-9A-Z]{26}&sent=\d+", answer.headers["location"])
        # No handler runs here: the command stays unsettled, so the page says so and keeps refreshing.
        page = browser.get(answer.headers["location"]).text
        # Named: what the retry publishes (Facebook failed, Instagram went out), not every platform of the post.
        assert "Publishing Facebook… this page refreshes itself." in page
        # The failure the retry is to mend is not shown as still needing it.
        assert "Needed for Facebook" not in page and "Error: facebook" not in page and "can be sent here" not in page
        # Still not taken up a minute later (no handler runs here): said so, no longer "publishing" for ever.
        sent = int(answer.headers["location"].rsplit("=", 1)[1])
        later = browser.get(answer.headers["location"].replace(f"sent={sent}", f"sent={sent - 61}")).text
    [(key, _value)] = messages_on(api.bootstrap, api.topics.commands)
    assert key == "post-1"
    assert "Status: ⏳ Publishing" in page
    assert 'http-equiv="refresh"' in page
    assert "Status: ❌ Failed" in later and "Publishing Facebook" not in later
    assert "has not been taken up 6" in later and "smartretry dlq list" in later
    assert 'http-equiv="refresh"' not in later


def test_the_retry_form_sent_twice_is_one_retry(api: RunningApi) -> None:
    store_post(api, "post-1")
    with signed_in(api) as browser:
        opened = browser.get("/ui/posts/post-1").text
        drawn = re.search(r'name="command_id" value="([0-9A-Z]{26})"', opened)
        assert drawn is not None
        command_id = drawn.group(1)
        again = re.search(r'name="command_id" value="([0-9A-Z]{26})"', browser.get("/ui/posts/post-1").text)
        assert again is not None and again.group(1) != command_id  # each drawing of the form sends its own
        form = {"token": retry_token(api.settings, "post-1"), "command_id": command_id, "image_url": FIXED_URL}
        # A double click: the second is sent before the first is taken up.
        answers = [browser.post("/ui/posts/post-1/retry", data=form, follow_redirects=False) for _ in range(2)]
        assert [a.status_code for a in answers] == [303, 303]
        assert all(f"awaiting={command_id}&" in a.headers["location"] for a in answers)
        sent = [decode_command(value) for _key, value in messages_on(api.bootstrap, api.topics.commands)]
        # The handler does a command id once: one retry.
        assert {(type(c), c.command_id) for c in sent} == {(RetryRequested, command_id)}
        assert len({c.content for c in sent}) == 1
        # Taken up (its correction is the post's content now), then sent once more: answered, not sent again.
        store_events(api, [
            CommandDecided(event_id="form-d", post_id="post-1", occurred_at=AT, command_id=command_id,
                           command_type="RetryRequested", platforms=("facebook",), is_retry=True,
                           content=sent[0].content, fingerprint=fingerprint(sent[0])),
            PublishAttempted(event_id="form-a", post_id="post-1", occurred_at=AT, platform="facebook",
                             attempt_id="form-fb", attempt_number=2, command_id=command_id, is_retry=True)])
        resent = browser.post("/ui/posts/post-1/retry", data=form, follow_redirects=False)
        assert resent.status_code == 303 and f"awaiting={command_id}&" in resent.headers["location"]
        assert len(messages_on(api.bootstrap, api.topics.commands)) == len(sent)
        # Sent once more with another image URL: not answered as that retry, which did not carry it.
        changed = browser.post("/ui/posts/post-1/retry", data={**form, "image_url": "https://cdn.example.com/b.jpg"})
        assert changed.status_code == 409
        assert "This form was already sent with other values and its retry taken up: nothing was sent now." in \
            html.unescape(changed.text)
        # A command id that is no id: the form is not one the page drew.
        for bad in ("01M8KCV10Y74AW57HH6THPMKM9\n", "../x", "x" * 200):
            refused = browser.post("/ui/posts/post-1/retry", data={**form, "command_id": bad})
            assert refused.status_code == 403 and "This form has expired" in refused.text, bad
    assert len(messages_on(api.bootstrap, api.topics.commands)) == len(sent)


def test_the_retry_form_says_before_it_is_sent_that_a_corrected_caption_reaches_the_retried_platform_only(
        api: RunningApi) -> None:
    api.stores.credentials.set_token("acct-1", "acct-user-token-0001", "747917475065823", "17841400000000000")
    history = History(post_id="post-kept-caption", at=datetime.now(UTC))
    attempts = history.publish(target="both")
    history.failure("facebook", attempts["facebook"], "Facebook post failed: 400 - Invalid parameter",
                    ErrorKind.INVALID_REQUEST)
    history.success("instagram", attempts["instagram"], "18107758234627017")
    store_events(api, history.events)
    with signed_in(api) as browser:
        page = html.unescape(browser.get("/ui/posts/post-kept-caption").text)
    assert 'id="caption"' in page
    assert ("A corrected caption goes out on Facebook only: the post already on Instagram keeps the caption it went "
            "out with.") in page


def test_a_post_a_platform_refused_as_it_is_offers_its_caption_to_correct_on_the_retry_form(api: RunningApi) -> None:
    # Instagram refused the post itself ("fix the post"): its caption is what the user corrects, on the page.
    api.stores.credentials.set_token("acct-1", "acct-user-token-0001", "747917475065823", "17841400000000000")
    history = History(post_id="post-caption", at=datetime.now(UTC))
    attempts = history.publish(target="instagram")
    history.failure("instagram", attempts["instagram"], "Instagram media upload failed: 400 - Invalid parameter",
                    ErrorKind.INVALID_REQUEST)
    store_events(api, history.events)
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-caption").text
        assert re.search(r'<textarea name="caption" id="caption"[^>]*>\nAutumn sale</textarea>', page), page
        drawn = re.search(r'name="command_id" value="([0-9A-Z]{26})"', page)
        assert drawn is not None
        form = {"token": retry_token(api.settings, "post-caption"), "command_id": drawn.group(1),
                "image_url": "https://cdn.example.com/autumn sale.jpg", "caption": "Autumn sale\r\nstarts today"}
        sent = browser.post("/ui/posts/post-caption/retry", data=form, follow_redirects=False)
        assert sent.status_code == 303, sent.text
        refused = browser.post("/ui/posts/post-caption/retry", data={**form, "command_id": drawn.group(1)[:-1] + "0",
                                                                     "caption": "x" * 70_000})
        assert refused.status_code == 422 and "Caption" in html.unescape(refused.text)
    [command] = [decode_command(value) for _key, value in messages_on(api.bootstrap, api.topics.commands)]
    assert isinstance(command, RetryRequested) and command.content is not None
    # The caption as typed (a browser's line breaks as the post's own), the rest of the content as it was.
    assert command.content == PostContent(caption="Autumn sale\nstarts today",
                                          image_url="https://cdn.example.com/autumn sale.jpg")


def refused_as_it_is(api: RunningApi, post_id: str, content: PostContent, target: PublishTarget = "instagram") -> None:
    """A post whose platform refused it as it is ("fix the post"), with `content`."""
    api.stores.credentials.set_token("acct-1", "acct-user-token-0001", "747917475065823", "17841400000000000")
    history = History(post_id=post_id, at=datetime.now(UTC))
    history.events.append(PostSubmitted(event_id=f"{post_id}-s", post_id=post_id, occurred_at=history.at,
                                        command_id="cmd-publish", publish_target=target, content=content,
                                        account="acct-1"))
    history.decide("cmd-publish", platforms_of(target))
    attempts = {p: history.attempt(p, "cmd-publish") for p in platforms_of(target)}
    for platform, attempt in attempts.items():
        history.failure(platform, attempt, "Instagram media upload failed: 400 - Invalid parameter",
                        ErrorKind.INVALID_REQUEST)
    store_events(api, history.events)


def retry_form_sent(api: RunningApi, post_id: str, **fields: str) -> httpx.Response:
    """The post page's retry form, drawn then sent with `fields` as typed in."""
    with signed_in(api) as browser:
        drawn = re.search(r'name="command_id" value="([0-9A-Z]{26})"', browser.get(f"/ui/posts/{post_id}").text)
        assert drawn is not None
        return browser.post(f"/ui/posts/{post_id}/retry", follow_redirects=False, data={
            "token": retry_token(api.settings, post_id), "command_id": drawn.group(1), **fields})


def test_a_caption_emptied_on_the_retry_form_is_removed_and_one_left_as_it_was_is_no_correction(
        api: RunningApi) -> None:
    refused_as_it_is(api, "post-emptied", PostContent(caption="Line one\r\nLine two",
                                                      image_url="https://cdn.example.com/a.jpg"))
    # Sent untouched: the browser's own line breaks are no change of the caption.
    assert retry_form_sent(api, "post-emptied", image_url="https://cdn.example.com/a.jpg",
                           caption="Line one\r\nLine two").status_code == 303
    # Emptied: the post goes out with its image alone.
    assert retry_form_sent(api, "post-emptied", image_url="https://cdn.example.com/a.jpg",
                           caption="").status_code == 303
    untouched, emptied = [decode_command(value) for _key, value in messages_on(api.bootstrap, api.topics.commands)]
    assert isinstance(untouched, RetryRequested) and untouched.content is None
    assert isinstance(emptied, RetryRequested) and emptied.content == PostContent(
        caption="", image_url="https://cdn.example.com/a.jpg")


def test_an_image_url_emptied_on_the_retry_form_is_refused_not_left_as_it_was(api: RunningApi) -> None:
    refused_as_it_is(api, "post-noimage", PostContent(caption="Autumn sale", image_url="https://cdn.example.com/a.jpg"))
    answer = retry_form_sent(api, "post-noimage", image_url="", caption="Autumn sale")
    assert answer.status_code == 422
    assert "The Image URL was emptied: a retry publishes the post's image or a new one, it cannot remove it." \
        in html.unescape(answer.text)
    assert 'value="https://cdn.example.com/a.jpg"' in answer.text  # the field shows the image again
    assert_nothing_on_commands(api)


def test_an_instagram_post_without_its_image_gets_the_field_to_give_one(api: RunningApi) -> None:
    refused_as_it_is(api, "post-imageless", PostContent(caption="Autumn sale"), target="both")
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-imageless").text
    assert 'name="image_url" id="image_url" value=""' in page


def test_a_post_failed_on_its_image_offers_no_caption_to_change(api: RunningApi) -> None:
    store_post(api, "post-1")
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-1").text
    assert 'name="image_url"' in page and 'name="caption"' not in page


def test_the_retry_form_sent_again_after_its_retry_found_nothing_to_publish_says_so(api: RunningApi) -> None:
    store_post(api, "post-1")
    with signed_in(api) as browser:
        drawn = re.search(r'name="command_id" value="([0-9A-Z]{26})"', browser.get("/ui/posts/post-1").text)
        assert drawn is not None
        command_id = drawn.group(1)
        form = {"token": retry_token(api.settings, "post-1"), "command_id": command_id, "image_url": FIXED_URL}
        assert browser.post("/ui/posts/post-1/retry", data=form, follow_redirects=False).status_code == 303
        # Another retry published Facebook first: this one was decided to publish nothing (its correction unused).
        store_events(api, overtaken_retry("post-1", command_id, "Nothing to retry: Facebook and Instagram already "
                                                                "succeeded; the corrected content it carried was "
                                                                "not applied"))

        resent = browser.post("/ui/posts/post-1/retry", data=form)
        # Sent with the same values: what came of it, not "sent with other values".
        assert resent.status_code == 409
        assert "Nothing to retry: Facebook and Instagram already succeeded" in html.unescape(resent.text)
        assert "other values" not in resent.text
        # Resent with another image URL: the same, not advice about a command id the page owns.
        changed = browser.post("/ui/posts/post-1/retry", data={**form, "image_url": "https://cdn.example.com/b.jpg"})
        assert changed.status_code == 409
        assert "Nothing to retry: Facebook and Instagram already succeeded" in html.unescape(changed.text)
        alert = re.search(r'<p class="problem" role="alert">(.*?)</p>', changed.text, re.S)
        assert alert is not None and "command" not in alert.group(1)
        # Resent with an account that is no id: refused as a field of the form, not a server error.
        odd = browser.post("/ui/posts/post-1/retry", data={**form, "account": "acme corp"})
        assert odd.status_code == 422


def test_a_post_that_went_out_without_its_address_says_so(api: RunningApi) -> None:
    # Instagram's container went out, but neither its answers nor its media listing named the media.
    history = History(post_id="post-no-address", at=datetime.now(UTC))
    attempts = history.publish(target="instagram")
    history.events.append(PlatformResult(event_id="went-out", post_id=history.post_id, occurred_at=datetime.now(UTC),
                                         platform="instagram", attempt_id=attempts["instagram"], success=True))
    api.stores.projection.apply_batch(api.topics.post_events, 5, list(enumerate(history.events)))
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-no-address").text
    assert "Status: ✅ Posted" in page
    assert "Its address could not be told from Instagram's answers: see the account." in page


def test_a_post_an_operator_recorded_without_its_address_says_it_was_not_given(api: RunningApi) -> None:
    # Instagram's answer never came; an operator found the post on the account and recorded its media id alone.
    history = History(post_id="post-recorded-id", at=datetime.now(UTC))
    attempt = history.publish(target="instagram")["instagram"]
    history.events.append(PlatformResult(event_id="found", post_id=history.post_id, occurred_at=datetime.now(UTC),
                                         platform="instagram", attempt_id=attempt, success=True,
                                         platform_post_id="18107758234627017", resolved_by="resolve-1"))
    store_events(api, history.events)
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-recorded-id").text
    assert "Status: ✅ Posted" in page
    assert "Its address was not given when it was recorded: see the account." in page
    assert "could not be told from Instagram's answers" not in page
    # The API says it too, for `smartretry show`.
    assert api.client.get("/posts/post-recorded-id").json()["recorded_by_operator"] == ["instagram"]


def test_an_imported_post_without_its_address_says_the_old_system_did_not_keep_it(api: RunningApi) -> None:
    store_events(api, History(post_id="post-old-address").legacy(
        {"status": "posted", "insights": {"instagram_media_id": "18107758234627017"}}, target="instagram").events)
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-old-address").text
    assert "Its address was not kept by the old system: see the account." in page
    assert "could not be told from Instagram's answers" not in page


def test_an_instagram_post_known_by_its_media_id_alone_is_never_given_a_facebook_address(api: RunningApi) -> None:
    # Published, its media id known, its permalink not (the permalink's read failed after the publish).
    history = History(post_id="post-media-only", at=datetime.now(UTC))
    attempts = history.publish(target="instagram")
    history.events.append(PlatformResult(event_id="went-out", post_id=history.post_id, occurred_at=datetime.now(UTC),
                                         platform="instagram", attempt_id=attempts["instagram"], success=True,
                                         platform_post_id="18107758234627017"))
    api.stores.projection.apply_batch(api.topics.post_events, 5, list(enumerate(history.events)))
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-media-only").text
    assert "facebook.com/18107758234627017" not in page
    assert "Its address could not be told from Instagram's answers: see the account." in page
    assert api.client.get("/posts/post-media-only").json()["links"] == {}


def test_a_retry_whose_attempt_met_a_rate_limit_shows_the_post_failed_and_when_it_is_tried_again(
        api: RunningApi) -> None:
    history = History(post_id="post-limited-retry", at=datetime.now(UTC) - timedelta(minutes=2))
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"]).success("instagram", attempts["instagram"], "18107758234627017")
    [retried] = history.retry("cmd-retry", ("facebook",)).values()
    history.events.append(PlatformResult(
        event_id="limited", post_id=history.post_id, occurred_at=datetime.now(UTC), platform="facebook",
        attempt_id=retried, success=False, error=PlatformError(
            kind=ErrorKind.RATE_LIMITED, code=32, http_status=400, retry_after_s=3600.0,
            message="Facebook photo upload failed: 400 - Page request limit reached")))
    api.stores.projection.apply_batch(api.topics.post_events, 4, list(enumerate(history.events)))
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-limited-retry", params={"awaiting": "cmd-retry",
                                                                   "sent": str(int(pages._now()))}).text
    # Not "publishing" for the hour the platform asked to wait, nor naming Instagram, which went out.
    assert "Status: ❌ Failed" in page and "Publishing" not in page.replace("Retry Publishing", "")
    assert "🔄 Facebook will be retried automatically at " in page
    assert "✅ Instagram: Published" in page


def test_a_link_awaiting_a_command_the_post_never_had_shows_the_post_as_it_is(api: RunningApi) -> None:
    store_post(api, "post-1", facebook_ok=True)
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-1", params={"awaiting": "01M8KCV10Y74AW57HH6THPMKM9"}).text
    assert "Status: ✅ Posted" in page and "Publishing Facebook" not in page
    assert "Your retry (command 01M8KCV10Y74AW57HH6THPMKM9) has not been taken up:" in page
    # Sent a moment ago, to a post with nothing left to publish: the retry will publish nothing, and the page shows
    # the post as it is, not "publishing" for the minute.
    with signed_in(api) as browser:
        recent = browser.get("/ui/posts/post-1", params={"awaiting": "01M8KCV10Y74AW57HH6THPMKM9",
                                                          "sent": str(int(pages._now()))}).text
    assert "Status: ✅ Posted" in recent and "Publishing" not in recent.replace("Retry Publishing", "")
    # A `sent` edited by hand is read as none, also one to come (the page would refresh for ever).
    with signed_in(api) as browser:
        for sent in ("²", "-5", "1e9", "99999999999999999999", str(int(pages._now()) + 86_400)):
            edited = browser.get("/ui/posts/post-1", params={"awaiting": "01M8KCV10Y74AW57HH6THPMKM9", "sent": sent})
            assert edited.status_code == 200 and "has not been taken up:" in edited.text, sent


def test_a_post_waiting_for_an_operator_says_so_in_the_list_and_its_page_does_not_reload_every_second(
        api: RunningApi) -> None:
    store_for_an_operator(api, "post-1")
    until = api.client.get("/posts/post-1").json()["not_published_from"]["facebook"][11:19]
    with signed_in(api) as browser:
        page = html.unescape(browser.get("/ui/posts/post-1").text)
        listed = html.unescape(browser.get("/ui/posts").text)
    assert f"or <code>--not-published</code> (from {until} UTC: Facebook may still hold the request until " \
           "then)." in page
    assert "Publishing Facebook waits for what is needed above; this page looks again every 30 s." in page
    assert '<meta http-equiv="refresh" content="30">' in page
    # The list shows it publishing, and that it waits for someone.
    assert "⚠ Needed for Facebook: check Facebook for the post, then resolve the attempt" in listed
    summary = api.client.get("/posts", params={"status": "publishing"}).json()["posts"][0]
    assert summary["needed_action"] == {"facebook": "check Facebook for the post, then resolve the attempt"}


def test_a_failures_words_stay_in_the_posts_history_after_its_retry_published_it(api: RunningApi) -> None:
    history = History(post_id="post-history", at=datetime.now(UTC))
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"], FB_ERROR).success("instagram", attempts["instagram"], "1810_1")
    retried = history.retry("cmd-retry", ("facebook",))
    history.success("facebook", retried["facebook"], "747917475065823_7")
    store_events(api, history.events)
    detail = api.client.get("/posts/post-history").json()
    assert detail["status"] == "posted" and FB_ERROR not in json.dumps(detail["insights"])
    assert [(a["platform"], a["kind"], a["outcome"], a["error"]) for a in detail["attempts"]] == [
        ("facebook", "first publish", "failed", FB_ERROR), ("instagram", "first publish", "published", None),
        ("facebook", "retry", "published", None)]
    with signed_in(api) as browser:
        page = html.unescape(browser.get("/ui/posts/post-history").text)
    assert "<summary>History (3 attempts)</summary>" in page
    assert f"Facebook · first publish: ❌ failed: {FB_ERROR}</li>" in page
    assert "Facebook · retry: ✅ published</li>" in page


def test_an_account_without_its_page_is_given_its_page_id_on_the_page(api: RunningApi) -> None:
    from publishers.facebook import _no_page

    api.stores.credentials.set_token("acct-1", "acct-1-user-token-0001", None, "17841400000000000")
    history = History(post_id="post-no-page", at=datetime.now(UTC))
    attempts = history.publish(target="facebook")
    missing = _no_page("Facebook photo upload")
    history.failure("facebook", attempts["facebook"], missing.message, missing.kind)
    store_events(api, history.events)
    with signed_in(api) as browser:
        page = html.unescape(browser.get("/ui/posts/post-no-page").text)
    assert "Needed for Facebook: connect Facebook to account acct-1: set it below, or with <code>smartretry accounts " \
           "set-token acct-1 --page-id ...</code>, then retry" in page
    assert 'id="reauth"' in page and 'name="page_id"' in page


def test_an_id_with_a_line_break_after_it_is_no_id_to_the_pages(api: RunningApi) -> None:
    store_post(api, "post-1", facebook_ok=True)
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-1", params={"awaiting": "01M8KCV10Y74AW57HH6THPMKM9\n"}).text
        assert "Status: ✅ Posted" in page and "has not been taken up" not in page
        for form, field in (("retry", "token"), ("token", "csrf")):
            sent = browser.post(f"/ui/posts/post-1%0A/{form}",
                                data={field: retry_token(api.settings, "post-1\n"), "access_token": "a-new-token-1"})
            assert sent.status_code == 403 and "This form has expired" in sent.text, form
    assert_nothing_on_commands(api)


def test_a_retry_the_service_cannot_take_is_explained_and_drawn_again_as_the_same_retry(
        topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Kafka away: the page says so in its own words, and its form, sent again, is the same retry (its command id).
    from smartretry import api as api_module
    from smartretry.api import create_app, serve_in_thread
    from smartretry.bootstrap import open_stores
    from streams.broker import free_port
    from streams.kafka import producer
    from tests.integration.test_api import api_settings

    monkeypatch.setattr(api_module, "SEND_TIMEOUT_S", 1.0)
    settings = api_settings("127.0.0.1:1", topics, f"sqlite:///{tmp_path}/projection.db")
    stores = open_stores(settings)
    stores.projection.apply_batch(topics.post_events, 0, list(enumerate(seed_events("post-1", facebook_ok=False))))
    server = serve_in_thread(create_app(settings, stores, producer("127.0.0.1:1")), "127.0.0.1", free_port())
    try:
        with httpx.Client(base_url=server.url, timeout=30, follow_redirects=True) as browser:
            assert browser.get("/ui/posts", params={"key": API_KEY}).status_code == 200
            form = {"token": retry_token(settings, "post-1"), "command_id": "cmd-page-1", "image_url": FIXED_URL}
            answer = browser.post("/ui/posts/post-1/retry", data=form)
    finally:
        server.stop()
        stores.engine.dispose()
    assert answer.status_code == 503
    page = html.unescape(answer.text)
    assert ("The service could not take this retry just now (its message broker did not answer in time): send the "
            "form again in a moment. Sent again, it is the same retry, which cannot publish twice.") in page
    assert "command_id" not in page.split('class="problem"', 1)[1].split("</p>", 1)[0]
    assert re.search(r'name="command_id" value="cmd-page-1"', page)


def test_a_retry_queued_behind_an_automatic_retry_waiting_out_a_limit_says_so_not_publishing(
        api: RunningApi) -> None:
    store_limited_for_an_hour(api, "post-limited")
    form = {"token": retry_token(api.settings, "post-limited")}
    with signed_in(api) as browser:
        answer = browser.post("/ui/posts/post-limited/retry", data=form, follow_redirects=False)
        page = browser.get(answer.headers["location"]).text

    assert "Status: ❌ Failed" in page and "Publishing Facebook" not in page
    assert "Your retry is queued behind the automatic retry of Facebook at " in page
    assert 'content="30"' in page  # looked at again now and then, not every second for an hour
    assert 'id="retry"' not in page  # one retry queued is enough
    # The post's own page, before any retry: when the service publishes it again.
    state = api.stores.projection.get("post-limited")
    assert state is not None
    at = state.attempts_of("facebook")[-1].finished_at
    assert at is not None
    with signed_in(api) as browser:
        own = browser.get("/ui/posts/post-limited").text
    due = clock_time(at + timedelta(hours=1), datetime.now(UTC))
    assert f"🔄 Facebook will be retried automatically at {due}; this page refreshes itself." in own
    # The retry button says before it is pressed that its retry waits for that one.
    assert (f"Will retry Facebook, after the automatic retry of Facebook at {due} (the platform&#39;s own wait): "
            "a post&#39;s retries run in turn, and it retries Facebook only if its automatic retry fails") in own


def test_a_retry_button_beside_an_automatic_retry_by_backoff_says_it_runs_after_it(api: RunningApi) -> None:
    # Facebook refused the image (it waits for the user); Instagram met a rate limit without a wait, retried by the
    # service's own backoff within moments.
    history = History(post_id="post-mixed", at=datetime.now(UTC))
    attempts = history.publish()
    history.failure("facebook", attempts["facebook"])
    history.failure("instagram", attempts["instagram"], "Instagram container failed: 400 - Application request limit "
                    "reached", ErrorKind.RATE_LIMITED)
    store_events(api, history.events)
    with signed_in(api) as browser:
        page = html.unescape(browser.get("/ui/posts/post-mixed").text)
    said = (r"Will retry Facebook and Instagram, after the automatic retry of Instagram (by [0-9:]+ UTC|in a moment): "
            r"a post's retries run in turn, and it retries Instagram only if its automatic retry fails")
    assert re.search(said, page), page
    # The API's post (what `smartretry show` prints) says the same.
    assert re.fullmatch(f"Note: {said}", api.client.get("/posts/post-mixed").json()["retry_preview"])


def test_a_retry_behind_the_services_own_backoff_is_queued_not_left_untaken(api: RunningApi) -> None:
    store_limited_for_an_hour(api, "post-limited", wait=None)
    form = {"token": retry_token(api.settings, "post-limited")}
    with signed_in(api) as browser:
        answer = browser.post("/ui/posts/post-limited/retry", data=form, follow_redirects=False)
        # Long after it was sent, it is still queued behind the retries the service makes by itself.
        location = re.sub(r"sent=\d+", "sent=1000", answer.headers["location"])
        page = browser.get(location).text
    assert "Your retry is queued behind the automatic retries of Facebook" in page
    assert "has not been taken up" not in page and "Publishing Facebook" not in page


def test_a_post_imported_without_an_account_is_retried_from_its_page_naming_one(api: RunningApi) -> None:
    add_account(api)
    store_events(api, History(post_id="imported-1").legacy(
        {"insights": {}, "status": "failed", "error_message": "token expired"}, target="facebook").events)
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/imported-1").text
        assert 'name="account"' in page and "Needed for Facebook: retry naming the account to publish with" in page
        assert "Error: token expired" in page  # the old system's own failure: all it kept
        # A mistyped account: the page says how to connect it, and keeps what was typed to correct.
        typo = browser.post("/ui/posts/imported-1/retry",
                            data={"token": retry_token(api.settings, "imported-1"), "account": "acmee"})
        assert typo.status_code == 422
        assert "unknown account 'acmee'" in html.unescape(typo.text)
        assert "smartretry accounts set-token acmee" in typo.text
        assert "PUT /accounts" not in typo.text and 'value="acmee"' in typo.text
        # Imported without content too: the retry brings it, from the form's fields (empty until typed in).
        assert '<textarea name="caption" id="caption" rows="4" cols="60">\n</textarea>' in page
        assert 'name="image_url" id="image_url" value=""' in page
        form = {"token": retry_token(api.settings, "imported-1"), "account": "acme"}
        bare = browser.post("/ui/posts/imported-1/retry", data=form)
        assert bare.status_code == 422
        assert "the post has no content to publish (imported without it)" in html.unescape(bare.text)
        answer = browser.post("/ui/posts/imported-1/retry", data={**form, "caption": "Autumn sale"},
                              follow_redirects=False)
    assert answer.status_code == 303
    [(_key, value)] = messages_on(api.bootstrap, api.topics.commands)
    command = decode_command(value)
    assert isinstance(command, RetryRequested) and command.account == "acme"
    assert command.content == PostContent(caption="Autumn sale")


def test_a_retry_form_without_its_token_or_session_changes_nothing(api: RunningApi) -> None:
    store_post(api, "post-1")
    with signed_in(api) as browser:
        assert browser.post("/ui/posts/post-1/retry", data={"token": "forged"}).status_code == 403
        # Beyond ASCII, or no UTF-8 at all: refused the same way, not a server error.
        for forged in ("é", "\u2028"):
            assert browser.post("/ui/posts/post-1/retry", data={"token": forged}).status_code == 403, forged
            assert browser.post("/ui/posts/post-1/token", data={"csrf": forged}).status_code == 403, forged
        raw = browser.post("/ui/posts/post-1/retry", content=b"token=\xff",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert raw.status_code == 403
    unsent = api.anonymous.post("/ui/posts/post-1/retry", data={"token": retry_token(api.settings, "post-1")})
    assert unsent.status_code == 303
    # A session that ended while the page was open: signing in again says the retry was not sent.
    login = api.anonymous.get(unsent.headers["location"])
    assert "Your session had ended, so the retry was not sent: sign in, then retry." in login.text
    assert_nothing_on_commands(api)


def test_a_bad_image_url_in_the_form_is_shown_on_the_page(api: RunningApi) -> None:
    store_post(api, "post-1")
    with signed_in(api) as browser:
        answer = browser.post("/ui/posts/post-1/retry",
                              data={"token": retry_token(api.settings, "post-1"), "image_url": "cdn/x.jpg"})
    assert answer.status_code == 422
    assert "Image URL: must be an http(s) URL" in answer.text and "Value error" not in answer.text
    assert '<a id="back" href="/ui/posts/post-1">Back to the post</a>' in answer.text
    assert 'value="cdn/x.jpg"' in answer.text  # what was typed, to correct, not the old address
    assert_nothing_on_commands(api)


def test_a_retry_refused_on_the_page_is_explained_without_api_routes(api: RunningApi) -> None:
    store_events(api, seed_events("inflight-1", facebook_ok=True)[:-1])
    store_post(api, "posted-1", facebook_ok=True)
    with signed_in(api) as browser:
        still = browser.post("/ui/posts/inflight-1/retry", data={"token": retry_token(api.settings, "inflight-1")})
        done = browser.post("/ui/posts/posted-1/retry", data={"token": retry_token(api.settings, "posted-1")})
    assert still.status_code == done.status_code == 409
    assert "Facebook still publishing (its last attempt has no result yet); Instagram already succeeded. Wait " \
           "for its result, then retry if it failed." in still.text
    assert "Nothing to retry: Facebook and Instagram already succeeded (to publish it again anyway: Publish again, " \
           "below)" in done.text
    assert 'action="/ui/posts/posted-1/republish"' in done.text
    assert "POST /posts" not in still.text + done.text
    # The answer stays to be read: no refresh (it would ask the form's address with GET), a link to the post instead.
    assert 'http-equiv="refresh"' not in still.text + done.text
    assert ('Publishing Facebook… <a id="follow" href="/ui/posts/inflight-1">follow it on the post\'s page</a>.'
            in html.unescape(still.text))
    assert_nothing_on_commands(api)


def test_the_post_page_takes_no_message_from_its_address(api: RunningApi) -> None:
    # A link could otherwise put any words in the page's alert box.
    store_post(api, "post-1")
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-1", params={"problem": "Your account is suspended: call +1 555"}).text
    assert "suspended" not in page


@contextlib.contextmanager
def failed_post_in_chromium(service_api: ServiceApi, width: int, height: int) -> Iterator[tuple[Page, str]]:
    """The seed's failed post (Facebook refused its image URL), its page open in Chromium at that size."""
    published = publish_with_a_space(service_api)
    assert published.status_code == 200, published.text
    post_id = published.json()["post"]["id"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page: Page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{service_api.url}/ui/posts/{post_id}?key={E2E_KEY}")
            expect(page.locator("#status")).to_have_text("Status: ❌ Failed")
            yield page, post_id
        finally:
            browser.close()


@pytest.mark.browser
def test_in_chromium_a_failed_post_is_retried_from_its_page_and_becomes_posted(service_api: ServiceApi) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with failed_post_in_chromium(service_api, 900, 700) as (page, _post_id):
        expect(page.locator(".error")).to_contain_text("Missing or invalid image file")
        expect(page.locator(".published[data-platform=instagram]")).to_contain_text("✅ Instagram: Published")
        expect(page.locator("#note")).to_have_text("Note: Will only retry Facebook")
        assert "key=" not in page.url
        page.screenshot(path=str(ARTIFACTS / "post-detail-failed.png"), full_page=True)

        page.fill("#image_url", "https://cdn.example.com/autumn-sale.jpg")
        page.click("#retry")
        expect(page.locator("#status")).to_have_text("Status: ✅ Posted", timeout=30_000)
        expect(page.locator(".published[data-platform=facebook] a")).to_have_attribute(
            "href", re.compile(r"^https://www\.facebook\.com/\d+_\d+$"))
        expect(page.locator(".published[data-platform=instagram] a")).to_have_attribute(
            "href", re.compile(r"^https://www\.instagram\.com/p/"))
        expect(page.locator("#retried")).to_have_text("🔄 Retried: Facebook (1 retry)")
        expect(page.locator("#retry")).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "post-detail-posted.png"), full_page=True)
        counters = service_api.service.sandbox.counters()
        assert sorted(c for counts in counters.values() for c in counts.values() if c) == [1, 1]

        # Instagram's post kept the image URL with the space: offered to be published again alone, from the page (the
        # product note's case 4), a new post beside the first.
        expect(page.locator(".kept[data-platform=instagram]")).to_contain_text("went out with the image at")
        expect(page.locator("#republish-instagram")).to_be_checked()
        expect(page.locator("#republish-facebook")).not_to_be_checked()
        # Closed until the user opens it: the post is as the product note's retry leaves it.
        expect(page.locator("#reason")).not_to_be_visible()
        page.click("#republish summary")
        page.fill("#reason", "Instagram post with the corrected image")
        page.click("#republish-send")
        expect(page.locator(".earlier[data-platform=instagram]")).to_have_count(1, timeout=30_000)
        expect(page.locator("#status")).to_have_text("Status: ✅ Posted", timeout=30_000)
        expect(page.locator(".earlier[data-platform=facebook]")).to_have_count(0)
        # Its post now has the post's content: nothing is said to be kept from before.
        expect(page.locator(".kept")).to_have_count(0)
    after = service_api.service.sandbox.counters()
    assert (sum(after["facebook"].values()), sum(after["instagram"].values())) == (1, 2), after


@pytest.mark.browser
def test_in_chromium_the_seeds_example_2_re_authenticate_on_the_page_then_retry(service_api: ServiceApi) -> None:
    """Instagram failed on an expired token: the new token is stored from the page, and Retry publishes Instagram
    alone, Facebook's post kept."""
    running = service_api.service
    running.sandbox.fail_next("instagram", "media", code=190, subcode=463, http_status=400,
                              message="Error validating access token: Session has expired")
    published = service_api.client.post("/posts", json={
        "content": {"caption": "Autumn sale starts today", "image_url": FIXED_URL}, "publish_target": "both",
        "account": DEMO_ACCOUNT_ID})
    assert published.status_code == 200, published.text
    post_id = published.json()["post"]["id"]
    new_token = "sandbox-renewed-user-token-5e2d"
    running.sandbox.register_account(DEMO_PAGE_ID, DEMO_IG_USER_ID, new_token)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page: Page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(f"{service_api.url}/ui/posts/{post_id}?key={E2E_KEY}")
            expect(page.locator("#status")).to_have_text("Status: ❌ Failed")
            expect(page.locator(".action[data-platform=instagram]")).to_contain_text("re-authenticate Instagram")
            # The account has its ids: only the token is asked for.
            expect(page.locator("#page_id")).to_have_count(0)
            page.fill("#access_token", new_token)
            page.click("#store-token")
            expect(page.locator("#token-stored")).to_contain_text(f"The token of account {DEMO_ACCOUNT_ID} was stored")
            expect(page.locator("#reauth")).to_have_count(0)
            assert new_token not in page.content()
            page.click("#retry")
            expect(page.locator("#status")).to_have_text("Status: ✅ Posted", timeout=30_000)
            expect(page.locator("#retried")).to_have_text("🔄 Retried: Instagram (1 retry)")
        finally:
            browser.close()
    counters = running.sandbox.counters()
    assert sorted(c for counts in counters.values() for c in counts.values() if c) == [1, 1]


@pytest.mark.browser
def test_on_a_phone_the_pages_fit_its_width_and_the_image_url_to_fix_is_seen_whole(service_api: ServiceApi) -> None:
    with failed_post_in_chromium(service_api, 375, 740) as (page, post_id):
        # Nothing to scroll sideways for, and the field holding the address to fix within the screen.
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        field = page.locator("#image_url").bounding_box()
        assert field is not None and field["x"] >= 0 and field["x"] + field["width"] <= 375
        page.goto(f"{service_api.url}/ui/posts?status=failed")
        expect(page.locator(f"a[href='/ui/posts/{post_id}']")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        # The status and the error of each post, the columns a phone has room for.
        expect(page.locator("th", has_text="Status")).to_be_visible()
        expect(page.locator("th", has_text="Error")).to_be_visible()
        expect(page.locator("th", has_text="Target")).to_be_hidden()


def test_a_retry_that_published_nothing_by_its_turn_says_so_on_its_page(api: RunningApi) -> None:
    # Queued behind another retry that published everything: by its turn it had nothing to publish.
    store_post(api, "post-1", facebook_ok=True)
    store_events(api, [CommandDecided(event_id="late-d", post_id="post-1", occurred_at=AT, command_id="late-retry",
                                      command_type="RetryRequested", platforms=(), is_retry=True,
                                      skipped={"facebook": "already succeeded", "instagram": "already succeeded"},
                                      note="Nothing to retry: Facebook and Instagram already succeeded; the "
                                           "corrected content it carried was not applied")])
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-1", params={"awaiting": "late-retry"}).text
    assert "Status: ✅ Posted" in page
    assert ("Your retry had nothing left to publish by its turn (Nothing to retry: Facebook and Instagram already "
            "succeeded; the corrected content it carried was not applied).") in page


def test_after_a_forced_republish_the_earlier_posts_are_still_named_on_the_page_api_and_cli(api: RunningApi) -> None:
    from tests.integration.test_cli import run

    history = History(post_id="post-forced")
    first = history.publish()
    history.success("facebook", first["facebook"], "747917475065823_1").success(
        "instagram", first["instagram"], "1788", permalink="https://www.instagram.com/p/A/")
    again = history.retry("cmd-force", ("facebook", "instagram"), forced=True)
    history.success("facebook", again["facebook"], "747917475065823_2", permalink=None)
    history.success("instagram", again["instagram"], "1789", permalink="https://www.instagram.com/p/B/")
    store_events(api, history.events)
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-forced").text
    assert "🔄 Retried: Facebook (1 forced republish), Instagram (1 forced republish)" in page
    assert ("Earlier Facebook post, still on Facebook unless deleted there: <a class=\"link\" "
            "href=\"https://www.facebook.com/747917475065823_1\"") in page
    # By the permalink Instagram gave with it: the media id alone does not open it.
    assert ("Earlier Instagram post, still on Instagram unless deleted there: <a class=\"link\" "
            "href=\"https://www.instagram.com/p/A/\"") in page
    detail = api.client.get("/posts/post-forced").json()
    assert detail["earlier_posts"] == {
        "facebook": [{"post_id": "747917475065823_1", "link": "https://www.facebook.com/747917475065823_1"}],
        "instagram": [{"post_id": "1788", "link": "https://www.instagram.com/p/A/"}]}
    assert detail["links"]["facebook"] == "https://www.facebook.com/747917475065823_2"
    code, output = run(api, "show", "post-forced")
    assert code == 0, output
    assert ("Earlier Facebook post, still on Facebook unless deleted there: https://www.facebook.com/747917475065823_1"
            in output)
    assert "Earlier Instagram post, still on Instagram unless deleted there: https://www.instagram.com/p/A/" in output


def test_the_post_lists_mark_failed_posts_the_service_retries_by_itself(api: RunningApi) -> None:
    from tests.integration.test_cli import run

    store_limited_for_an_hour(api, "post-limited")
    store_post(api, "post-1")  # failed for its image: it needs someone
    with signed_in(api) as browser:
        page = browser.get("/ui/posts", params={"status": "failed"}).text
    assert page.count("to be retried automatically") == 1
    assert "🔄 Facebook to be retried automatically" in page
    listed = {p["id"]: p for p in api.client.get("/posts", params={"status": "failed"}).json()["posts"]}
    assert listed["post-1"]["automatic_retry"] == {}
    assert list(listed["post-limited"]["automatic_retry"]) == ["facebook"]
    code, output = run(api, "list", "--status", "failed")
    assert code == 0 and output.count("🔄 Facebook will be retried automatically at ") == 1


def _limited_without_a_wait(api: RunningApi, post_id: str, at: datetime | None = None) -> tuple[datetime, str]:
    """A post rate limited at `at` (now) with no wait given: the latest its automatic retry is due, and its page."""
    store_limited_for_an_hour(api, post_id, wait=None, at=at)
    state = api.stores.projection.get(post_id)
    assert state is not None
    failed_at = state.attempts_of("facebook")[-1].finished_at
    assert failed_at is not None
    with signed_in(api) as browser:
        page = browser.get(f"/ui/posts/{post_id}").text
    return failed_at + timedelta(seconds=api.settings.backoff_cap_seconds), page


def test_an_automatic_retry_by_the_services_own_backoff_says_by_when(api: RunningApi) -> None:
    from tests.integration.test_cli import run

    by, page = _limited_without_a_wait(api, "post-limited")  # a rate limit that gave no wait: from the cap
    assert f"🔄 Facebook will be retried automatically by {clock_time(by, datetime.now(UTC))};" in page
    detail = api.client.get("/posts/post-limited").json()
    assert detail["automatic_retry"] == {"facebook": None}
    assert detail["automatic_retry_by"] == {"facebook": format_timestamp(by)}
    code, output = run(api, "show", "post-limited")
    assert code == 0 and f"🔄 Facebook will be retried automatically by {clock_time(by, datetime.now(UTC))}" in output
    # Long past that time (the handler away): said so, not a time gone by.
    due, page = _limited_without_a_wait(api, "post-overdue", at=datetime.now(UTC) - timedelta(minutes=10))
    assert (f"🔄 Facebook will be retried automatically (it was due by {clock_time(due, datetime.now(UTC))}: the "
            "service may be away or behind)") in page
    code, output = run(api, "show", "post-overdue")
    assert f"(it was due by {clock_time(due, datetime.now(UTC))}: the service may be away or behind)" in output
    # The platform's own wait, long past, is as late.
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    store_limited_for_an_hour(api, "post-late", at=long_ago)
    with signed_in(api) as browser:
        page = browser.get("/ui/posts/post-late").text
        listed = browser.get("/ui/posts").text
    at = clock_time(long_ago + timedelta(hours=1), datetime.now(UTC))
    assert f"🔄 Facebook will be retried automatically (it was due at {at}: the service may be away or behind)" in page
    assert "🔄 Facebook to be retried automatically (Facebook overdue: the service may be away or behind)" in listed
    assert api.client.get("/posts/post-late").json()["automatic_retry_overdue"] == ["facebook"]
    assert {p["id"]: p["automatic_retry_overdue"] for p in api.client.get("/posts").json()["posts"]}[
        "post-limited"] == []
    code, output = run(api, "list")
    assert f"🔄 Facebook will be retried automatically (it was due at {at}: the service may be away or behind)" \
        in output


def test_a_stale_page_whose_post_was_retried_elsewhere_says_so_rather_than_pointing_to_republish(
        api: RunningApi) -> None:
    store_post(api, "post-1")  # Facebook failed: the page offers the retry
    with signed_in(api) as browser:
        opened = browser.get("/ui/posts/post-1").text
        seen = re.search(r'name="seen" value="(\d+)"', opened)
        assert seen is not None
        # Retried from another tab meanwhile, and published.
        store_events(api, [
            CommandDecided(event_id="other-d", post_id="post-1", occurred_at=AT, command_id="other-tab",
                           command_type="RetryRequested", platforms=("facebook",), is_retry=True),
            PublishAttempted(event_id="other-a", post_id="post-1", occurred_at=AT, platform="facebook",
                             attempt_id="other-fb", attempt_number=2, command_id="other-tab", is_retry=True),
            PlatformResult(event_id="other-r", post_id="post-1", occurred_at=AT, platform="facebook",
                           attempt_id="other-fb", success=True, platform_post_id="747917475065823_9")])
        answer = browser.post("/ui/posts/post-1/retry",
                              data={"token": retry_token(api.settings, "post-1"), "seen": seen.group(1)})
    assert answer.status_code == 409
    page = html.unescape(answer.text)
    assert ("Nothing to retry: Facebook and Instagram already succeeded: the post changed after this page was opened "
            "(it is shown as it is now), and nothing is left to retry.") in page
    assert "smartretry force" not in page
    assert_nothing_on_commands(api)


def test_a_retry_form_refused_for_a_token_does_not_show_the_token_back(api: RunningApi) -> None:
    store_post(api, "post-1")
    token = "EAA" + "Bc1dE" * 12  # Meta's shape, built here so that no token is written down
    typed = f"https://cdn.example.com/autumn-sale.jpg?access_token={token}"
    with signed_in(api) as browser:
        answer = browser.post("/ui/posts/post-1/retry", data={"token": retry_token(api.settings, "post-1"),
                                                               "image_url": typed})
        assert answer.status_code == 422 and "access token" in answer.text
        assert token not in answer.text
        # An account name carrying one, the same.
        answer = browser.post("/ui/posts/post-1/retry", data={"token": retry_token(api.settings, "post-1"),
                                                               "account": token})
        assert answer.status_code == 422 and token not in answer.text, answer.text[-2000:]
        # And beside an image URL refused for being no address, on a post whose form asks for the account.
        store_events(api, History(post_id="imported-2").legacy(
            {"insights": {}, "status": "failed", "error_message": "token expired"}, target="facebook").events)
        answer = browser.post("/ui/posts/imported-2/retry", data={"token": retry_token(api.settings, "imported-2"),
                                                                   "image_url": "not a url", "account": token})
        assert answer.status_code == 422 and 'name="account"' in answer.text
        assert token not in answer.text, answer.text[-2000:]
        # Nor does the page of a post named by a token.
        missing = browser.get(f"/ui/posts/{token}")
        assert missing.status_code == 404 and token not in missing.text


def test_an_earlier_container_an_operator_found_not_published_is_said_in_the_attempts_history(api: RunningApi) -> None:
    from tests.unit.test_fold import held_by_an_earlier_container, operators_word

    history, first, _second = held_by_an_earlier_container()
    store_events(api, operators_word(history, first, published=False).events)
    with signed_in(api) as browser:
        page = html.unescape(browser.get(f"/ui/posts/{history.post_id}").text)
    # Its own failure, and what the operator found: as `smartretry show` says it.
    assert ("❌ failed: Instagram container not ready after 30s (an operator found its container was not published)"
            in page)
