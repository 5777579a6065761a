"""Classification of Graph API errors, rate-limit waits, and keeping tokens out of messages and URLs."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from projections.fold import needed_action
from publishers import redact
from publishers.base import AccountCredentials, PublishOutcome
from publishers.errors import (
    APP_USAGE_FULL_WAIT_S,
    classify,
    classify_transport,
    container_error_kind,
    is_retry_same_container,
    may_have_reached_platform,
    rate_limit_wait,
)
from publishers.facebook import FacebookPagePublisher
from publishers.graph import answered_id, answered_link
from publishers.instagram import ContainerPolling, InstagramPublisher, _room_again
from publishers.redact import REDACTED, scrub
from schemas.commands import PostContent
from schemas.common import ErrorKind
from schemas.events import PLATFORM_TEXT_LIMIT, PlatformResult


def envelope(code: int | None, subcode: int | None = None, *, message: str = "boom", transient: bool = False) -> dict:
    error: dict = {"message": message, "type": "OAuthException", "is_transient": transient, "fbtrace_id": "Ab1"}
    if code is not None:
        error["code"] = code
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


@pytest.mark.parametrize(
    ("code", "subcode", "kind"),
    [
        (190, None, ErrorKind.AUTH),
        (190, 460, ErrorKind.AUTH),
        (190, 463, ErrorKind.AUTH),
        (102, None, ErrorKind.AUTH),
        (10, None, ErrorKind.PERMISSION),
        (200, None, ErrorKind.PERMISSION),
        (299, None, ErrorKind.PERMISSION),
        (4, None, ErrorKind.RATE_LIMITED),
        (17, None, ErrorKind.RATE_LIMITED),
        (32, None, ErrorKind.RATE_LIMITED),
        (613, None, ErrorKind.RATE_LIMITED),
        (80000, None, ErrorKind.RATE_LIMITED),
        (80014, None, ErrorKind.RATE_LIMITED),
        (9, 2207042, ErrorKind.RATE_LIMITED),
        (1, None, ErrorKind.TRANSIENT),
        (2, None, ErrorKind.TRANSIENT),
        (341, None, ErrorKind.RATE_LIMITED),
        (9007, 2207027, ErrorKind.TRANSIENT),
        (-1, 2207001, ErrorKind.TRANSIENT),
        (-2, 2207003, ErrorKind.TRANSIENT),
        (2, 2207008, ErrorKind.TRANSIENT),
        (24, 2207020, ErrorKind.TRANSIENT),
        (-1, 2207032, ErrorKind.TRANSIENT),
        (324, None, ErrorKind.INVALID_MEDIA),
        (9004, 2207052, ErrorKind.INVALID_MEDIA),
        (9004, None, ErrorKind.INVALID_MEDIA),  # "Only photo or video can be accepted as media type": the image's
        (36000, 2207004, ErrorKind.INVALID_MEDIA),
        (36001, 2207005, ErrorKind.INVALID_MEDIA),
        (36003, 2207009, ErrorKind.INVALID_MEDIA),
        (100, 2207010, ErrorKind.INVALID_MEDIA),
        (25, 2207050, ErrorKind.PERMISSION),
        (100, None, ErrorKind.INVALID_REQUEST),
        (506, None, ErrorKind.INVALID_REQUEST),
        (1609005, None, ErrorKind.INVALID_REQUEST),
        (12345, None, ErrorKind.INVALID_REQUEST),
    ],
)
def test_errors_are_classified_by_code_and_subcode(code: int, subcode: int | None, kind: ErrorKind) -> None:
    error = classify("instagram", 400, envelope(code, subcode))

    assert (error.kind, error.code, error.subcode) == (kind, code, subcode)


def test_instagrams_media_code_with_a_5xx_is_metas_own_failure_not_the_images() -> None:
    assert classify("instagram", 400, envelope(9004)).kind is ErrorKind.INVALID_MEDIA
    assert classify("instagram", 500, envelope(9004)).kind is ErrorKind.TRANSIENT


def test_is_transient_makes_any_code_transient_but_auth_and_rate_limits_keep_their_meaning() -> None:
    assert classify("facebook", 400, envelope(100, transient=True)).kind is ErrorKind.TRANSIENT
    assert classify("facebook", 400, envelope(190, transient=True)).kind is ErrorKind.AUTH
    assert classify("facebook", 400, envelope(17, transient=True)).kind is ErrorKind.RATE_LIMITED


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, ErrorKind.TRANSIENT), (502, ErrorKind.TRANSIENT), (503, ErrorKind.TRANSIENT),
     (429, ErrorKind.RATE_LIMITED), (404, ErrorKind.INVALID_REQUEST)],
)
def test_without_an_envelope_the_http_status_decides(status: int, kind: ErrorKind) -> None:
    error = classify("facebook", status, None, action="Facebook post")

    assert error.kind is kind
    assert error.message.startswith(f"Facebook post failed: {status} - ")


@pytest.mark.parametrize(("subcode", "kind"), [
    (2207001, ErrorKind.TRANSIENT),  # Instagram's server error: a new container is tried by itself
    (2207003, ErrorKind.TRANSIENT),  # timed out fetching the image
    (2207032, ErrorKind.TRANSIENT),  # "create the container again"
    (2207052, ErrorKind.INVALID_MEDIA),  # the image could not be fetched: the user fixes the URL
    (2207026, ErrorKind.INVALID_MEDIA),
    (None, ErrorKind.INVALID_MEDIA),
])
def test_a_container_that_ended_in_error_is_classified_by_the_subcode_its_status_names(
        subcode: int | None, kind: ErrorKind) -> None:
    assert container_error_kind(subcode) is kind


def test_the_message_reads_like_the_seeds() -> None:
    error = classify("facebook", 400, envelope(324, message="(#324) Missing or invalid image file"),
                     action="Facebook photo upload")

    assert error.message == "Facebook photo upload failed: 400 - Missing or invalid image file"
    assert error.http_status == 400


def test_the_users_message_is_preferred_to_the_developers() -> None:
    body = envelope(9007, 2207027, message="Media ID is not available")
    body["error"]["error_user_msg"] = "The media is not ready for publishing, please wait for a moment"

    error = classify("instagram", 400, body, action="Instagram publish")

    assert error.message == (
        "Instagram publish failed: 400 - The media is not ready for publishing, please wait for a moment"
    )


def test_a_token_echoed_in_the_error_is_scrubbed() -> None:
    token = "EAA" + "Gm0PX4ZCpsBAZAlongtokenvalue123"  # built, so no token-shaped literal is committed
    error = classify("facebook", 400, envelope(190, message=f"Malformed access token {token}"))

    assert token not in error.message and REDACTED in error.message


def test_a_registered_token_not_shaped_like_one_is_scrubbed_and_never_in_a_repr() -> None:
    account = AccountCredentials("acct-1", SecretStr("plain-looking-secret-42"), "1", "2")

    assert "plain-looking-secret-42" not in repr(account)
    assert scrub("token was plain-looking-secret-42.") == f"token was {REDACTED}."
    assert "plain-looking-secret-42" not in classify(
        "facebook", 400, envelope(190, message="bad token plain-looking-secret-42")).message


def test_ordinary_words_that_look_a_little_like_credentials_are_left_alone() -> None:
    caption = "The ring bearer wore green. Follow #EAAGLESFANCLUB and #BearerBonds"
    assert scrub(caption) == caption
    header = "Authorization: Bearer " + "abcdefghij" * 3
    assert scrub(header) == f"Authorization: Bearer {REDACTED}"


def test_the_secrets_remembered_are_bounded_and_a_token_in_use_stays_among_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact, "KNOWN_SECRETS", 3)
    monkeypatch.setattr(redact, "_known", OrderedDict())
    monkeypatch.setattr(redact, "_longest_first", ())
    for n in range(3):
        redact.register_secret(f"rotated-secret-{n}")
    redact.register_secret("rotated-secret-0")  # still in use: registered again with each command
    redact.register_secret("rotated-secret-3")

    assert len(redact._known) == 3
    assert scrub("rotated-secret-0 rotated-secret-3") == f"{REDACTED} {REDACTED}"
    assert scrub("rotated-secret-1") == "rotated-secret-1"  # out of use longest, not shaped like a token: let go
    # A secret inside a longer one never leaves part of the longer one behind.
    redact.register_secret("rotated-secret-3-long")
    assert scrub("x rotated-secret-3-long y") == f"x {REDACTED} y"


def test_rate_limit_wait_is_the_longest_business_use_case_estimate_in_seconds() -> None:
    headers = {"X-Business-Use-Case-Usage": json.dumps({
        "747917475065823": [{"type": "pages", "call_count": 100, "estimated_time_to_regain_access": 7},
                            {"type": "pages", "call_count": 80, "estimated_time_to_regain_access": 0}],
        "17841400000000000": [{"type": "instagram", "estimated_time_to_regain_access": 2}],
    })}

    assert rate_limit_wait(headers) == 420.0
    assert classify("facebook", 400, envelope(80001), headers).retry_after_s == 420.0


def test_rate_limit_wait_from_app_usage_only_when_it_is_full() -> None:
    full = {"x-app-usage": json.dumps({"call_count": 100, "total_cputime": 5, "total_time": 5})}
    busy = {"x-app-usage": json.dumps({"call_count": 95, "total_cputime": 5, "total_time": 5})}

    assert rate_limit_wait(full) == APP_USAGE_FULL_WAIT_S
    assert rate_limit_wait(busy) is None


def test_a_page_at_its_limit_waits_as_the_app_at_its_limit_and_a_business_use_case_by_its_estimate() -> None:
    page = {"X-Page-Usage": json.dumps({"call_count": 3, "total_cputime": 100, "total_time": 4})}
    busy_page = {"X-Page-Usage": json.dumps({"call_count": 99, "total_cputime": 9, "total_time": 9})}
    # Meta counts in whole minutes: an estimate of 0 is under a minute, left to the backoff's own wait.
    under_a_minute = {"x-business-use-case-usage": json.dumps({
        "747917475065823": [{"type": "pages", "call_count": 100, "estimated_time_to_regain_access": 0}]})}

    assert rate_limit_wait(under_a_minute) is None
    assert rate_limit_wait(page) == APP_USAGE_FULL_WAIT_S
    assert rate_limit_wait(busy_page) is None
    assert classify("facebook", 400, envelope(32), page).retry_after_s == APP_USAGE_FULL_WAIT_S


def test_instagrams_temporary_publishing_error_is_tried_again_after_the_wait_meta_advises() -> None:
    # "Try again 1-2 times in the next 30 seconds to 2 minutes": not seconds apart, spending every automatic attempt.
    error = classify("instagram", 400, envelope(2, 2207008))

    assert error.kind is ErrorKind.TRANSIENT and error.retry_after_s == 30.0


def test_a_restricted_instagram_account_asks_to_sign_in_to_instagram_not_for_a_permission() -> None:
    error = classify("instagram", 400, envelope(25, 2207050))

    assert error.kind is ErrorKind.PERMISSION
    assert needed_action("instagram", error.kind, error.code, error.subcode) == \
        "sign in to Instagram and complete what it asks there (it restricted the account)"
    assert needed_action("instagram", ErrorKind.PERMISSION, 10, None) == "grant the missing permission to Instagram"


def test_room_under_instagrams_publishing_limit_comes_back_as_the_oldest_posts_counted_leave_its_day() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    limit = {"data": [{"quota_usage": 3, "config": {"quota_total": 2, "quota_duration": 86400}}]}

    def media(*hours_ago: float, more: bool = False) -> dict:
        listing: dict = {"data": [{"id": str(i), "timestamp": (now - timedelta(hours=h)).strftime(
            "%Y-%m-%dT%H:%M:%S+0000")} for i, h in enumerate(sorted(hours_ago))]}
        if more:
            listing["paging"] = {"next": "https://graph.facebook.com/next"}
        return listing

    # Three counted, two allowed: room for one once two have left, the second oldest a day after it was made.
    assert _room_again(limit, media(1, 5, 20, 30), now) == now + timedelta(hours=19)
    # A listing that stops short of the window's start cannot tell; nor a limit with room, or an answer without it.
    assert _room_again(limit, media(1, 5, 20, more=True), now) is None
    assert _room_again(limit, media(1, 5, 20, 30, more=True), now) == now + timedelta(hours=19)
    assert _room_again({"data": [{"quota_usage": 1, "config": {"quota_total": 2}}]}, media(1), now) is None
    assert _room_again({"data": []}, media(1), now) is None
    assert _room_again({"data": [{"quota_usage": True, "config": {"quota_total": 1}}]}, media(1), now) is None
    # Fewer media in the window than the limit counts: not to be told from them.
    assert _room_again(limit, media(1, 30), now) is None


def test_rate_limit_wait_reads_retry_after_and_ignores_garbage() -> None:
    assert rate_limit_wait({"Retry-After": "30"}) == 30.0
    assert rate_limit_wait({"x-business-use-case-usage": "not json", "x-app-usage": "[1, 2]"}) is None
    assert rate_limit_wait({}) is None


def test_a_refusal_to_fix_carries_no_wait() -> None:
    headers = {"Retry-After": "30"}

    assert classify("facebook", 400, envelope(100), headers).retry_after_s is None


def test_network_failures_are_transient_and_say_whether_the_request_may_have_arrived() -> None:
    request = httpx.Request("POST", "https://graph.facebook.com/v24.0/1/photos")
    read_timeout = httpx.ReadTimeout("timed out", request=request)
    refused = httpx.ConnectError("refused", request=request)

    assert classify_transport("facebook", read_timeout, action="Facebook photo upload").message == (
        "Facebook photo upload failed: timed out waiting for the platform"
    )
    assert classify_transport("facebook", refused).kind is ErrorKind.TRANSIENT
    assert may_have_reached_platform(read_timeout)
    assert may_have_reached_platform(httpx.RemoteProtocolError("closed", request=request))
    assert not may_have_reached_platform(refused)


def test_instagram_codes_that_mean_publish_the_same_container_again() -> None:
    assert is_retry_same_container(classify("instagram", 400, envelope(9007, 2207027)))
    assert is_retry_same_container(classify("instagram", 500, envelope(2, 2207001)))
    assert not is_retry_same_container(classify("instagram", 400, envelope(24, 2207020)))
    assert not is_retry_same_container(classify("instagram", 400, envelope(9004, 2207052)))


async def test_tokens_travel_in_the_authorization_header_never_in_the_url_or_body() -> None:
    seen: list[httpx.Request] = []

    def graph(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v24.0/747917475065823":
            return httpx.Response(200, json={"id": "747917475065823", "access_token": "page-token-secret-9"})
        if request.url.path.endswith("/photos"):
            return httpx.Response(200, json={"id": "1", "post_id": "747917475065823_2"})
        return httpx.Response(404, json={"error": {"message": "unexpected call", "code": 803}})

    account = AccountCredentials("acct", SecretStr("user-token-secret-7"), "747917475065823", None)
    content = PostContent(caption="hi", image_url="https://cdn.example.com/a.jpg")
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        outcome = await FacebookPagePublisher(client, "https://graph.facebook.com", "v24.0").publish(
            content, account, attempt_id="a1")

    assert outcome.success and outcome.platform_post_id == "747917475065823_2"
    # The Page token, then the photo: a publish is one call of the Page's rate limit.
    assert [(r.url.path, r.headers["authorization"]) for r in seen] == [
        ("/v24.0/747917475065823", "Bearer user-token-secret-7"),
        ("/v24.0/747917475065823/photos", "Bearer page-token-secret-9")]
    for request in seen:
        assert "secret" not in str(request.url) and b"secret" not in request.content


async def facebook_photo_answered(answer: httpx.Response) -> PublishOutcome:
    """A Facebook photo publish whose photo call gets `answer` (the Page token call answers as Meta does)."""
    def graph(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v24.0/747917475065823":
            return httpx.Response(200, json={"id": "747917475065823", "access_token": "page-token-secret-9"})
        return answer

    account = AccountCredentials("acct", SecretStr("user-token-secret-7"), "747917475065823", None)
    content = PostContent(caption="hi", image_url="https://cdn.example.com/a.jpg")
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        return await FacebookPagePublisher(client, "https://graph.facebook.com", "v24.0").publish(
            content, account, attempt_id="a1")


@pytest.mark.parametrize("answer", [b"", b"<html>upstream</html>", b'["1"]'])
async def test_an_unreadable_success_answer_to_a_publish_leaves_its_outcome_unknown(answer: bytes) -> None:
    outcome = await facebook_photo_answered(httpx.Response(200, content=answer))

    # Facebook took the photo call: the post may exist, so it is looked up before any new publish, never
    # recorded as a failure the user would retry into a second post.
    assert not outcome.success and outcome.outcome_unknown
    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    assert "200 - the platform's answer could not be read" in outcome.error.message


@pytest.mark.parametrize("answer", [{}, {"id": None}, {"id": ""}, {"post_id": None, "id": True}])
async def test_a_facebook_publish_answered_without_an_id_leaves_its_outcome_unknown(answer: dict) -> None:
    outcome = await facebook_photo_answered(httpx.Response(200, json=answer))

    # Not a success with the post id "None" (the page would link to facebook.com/None): looked up instead.
    assert not outcome.success and outcome.outcome_unknown and outcome.platform_post_id is None
    assert outcome.error is not None and "answer named no post_id or id" in outcome.error.message


async def instagram_publish_through(graph: Callable[[httpx.Request], httpx.Response]) -> PublishOutcome:
    """An Instagram publish against the Graph API `graph` stands in for, its container polled at once."""
    account = AccountCredentials("acct", SecretStr("user-token-secret-7"), None, "17841400000000001")
    content = PostContent(caption="hi", image_url="https://cdn.example.com/a.jpg")
    polling = ContainerPolling(interval_s=0.01, max_interval_s=0.01, timeout_s=1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        return await InstagramPublisher(client, "https://graph.facebook.com", "v24.0", polling).publish(
            content, account, attempt_id="a1")


def publishing_limit_graph(media_ages: list[timedelta], usage: int, total: int,
                           headers: dict[str, str] | None = None) -> Callable[[httpx.Request], httpx.Response]:
    """A Graph API whose media_publish answers Instagram's publishing limit, the account's media (newest first, in
    pages of 100 by cursor) made `media_ages` ago."""
    now = datetime.now(UTC)
    stamps = [(now - age).strftime("%Y-%m-%dT%H:%M:%S+0000") for age in sorted(media_ages)]

    def graph(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/media") and request.method == "POST":
            return httpx.Response(200, json={"id": "17889455560051444"})
        if path.endswith("/media_publish"):
            return httpx.Response(400, headers=headers or {}, json={"error": {
                "message": "Application request limit reached", "code": 9, "error_subcode": 2207042,
                "error_user_msg": "You reached the maximum number of posts allowed in 24 hours"}})
        if path.endswith("/content_publishing_limit"):
            return httpx.Response(200, json={"data": [{"quota_usage": usage, "config": {
                "quota_total": total, "quota_duration": 86400}}]})
        if path.endswith("/media"):
            start = int(request.url.params.get("after") or 0)
            page = [{"id": str(n), "timestamp": stamps[n]} for n in range(start, min(start + 100, len(stamps)))]
            more = {"paging": {"cursors": {"after": str(start + 100)}, "next": "https://graph.facebook.com/next"}} \
                if start + 100 < len(stamps) else {}
            return httpx.Response(200, json={"data": page, **more})
        if path.endswith("/17889455560051444"):
            return httpx.Response(200, json={"status_code": "FINISHED", "status": "Finished"})
        return httpx.Response(404, json={"error": {"message": f"no {path}", "code": 100}})

    return graph


async def test_instagrams_publishing_limit_waits_until_the_oldest_post_counted_leaves_its_day() -> None:
    # A hundred posts of the last day, ten minutes apart, and older ones: listed over two pages.
    ages = [timedelta(minutes=10 * n + 5) for n in range(100)] + [timedelta(hours=30 + n) for n in range(20)]
    outcome = await instagram_publish_through(publishing_limit_graph(ages, usage=100, total=100))

    assert outcome.error is not None and outcome.error.retry_after_s is not None
    # Room once the oldest (995 minutes old) is a day old, with a minute's margin: about 7 h 26 min.
    expected = (timedelta(days=1) - timedelta(minutes=995) + timedelta(minutes=1)).total_seconds()
    assert abs(outcome.error.retry_after_s - expected) < 5


async def test_a_publishing_limit_read_off_the_media_never_cuts_short_a_wait_metas_headers_gave() -> None:
    full = {"x-app-usage": json.dumps({"call_count": 100, "total_cputime": 5, "total_time": 5})}
    # The oldest post counted leaves the day in a few seconds, but the app is at its limit for 5 minutes.
    ages = [timedelta(hours=23, minutes=59, seconds=55), timedelta(hours=1)]
    outcome = await instagram_publish_through(publishing_limit_graph(ages, usage=2, total=2, headers=full))

    assert outcome.error is not None and outcome.error.retry_after_s == APP_USAGE_FULL_WAIT_S
    # Fewer listed than the limit counts (a post deleted since): the limit's own hour.
    outcome = await instagram_publish_through(publishing_limit_graph([timedelta(hours=1)], usage=2, total=2))
    assert outcome.error is not None and outcome.error.retry_after_s == 3600.0


INSTAGRAM_SERVER_ERROR = {"error": {"message": "An unknown error occurred", "code": 2, "error_subcode": 2207001,
                                    "is_transient": True}}


async def test_an_instagram_publish_refused_at_connect_after_a_server_error_stays_unknown() -> None:
    # The first media_publish answers 500 (Meta may have published the container, and its status can lag
    # behind); the next cannot even connect. That says nothing of the first: the outcome stays unknown, or the
    # handler would publish a new container and the post would go out twice.
    publishes: list[int] = []

    def graph(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/media"):
            return httpx.Response(200, json={"id": "17889455560051444"})
        if request.url.path.endswith("/media_publish"):
            publishes.append(1)
            if len(publishes) == 1:
                return httpx.Response(500, json=INSTAGRAM_SERVER_ERROR)
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path.endswith("/17889455560051444"):
            return httpx.Response(200, json={"status_code": "FINISHED", "status": "Finished"})
        return httpx.Response(404, json={"error": {"message": "unexpected call", "code": 803}})

    outcome = await instagram_publish_through(graph)

    assert len(publishes) == 2
    assert not outcome.success and outcome.outcome_unknown and outcome.container_id == "17889455560051444"


def instagram_answering(endpoint: str, answer: dict[str, object],
                        calls: list[str] | None = None) -> Callable[[httpx.Request], httpx.Response]:
    """A Graph API whose `endpoint` (`media`: the container's creation, `media_publish`) answers `answer`, the rest
    as Meta would for a container that is ready; the last part of each path called goes to `calls`."""
    def graph(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(request.url.path.rsplit("/", 1)[-1])
        if request.url.path.endswith(f"/{endpoint}"):
            return httpx.Response(200, json=answer)
        if request.url.path.endswith("/media"):
            return httpx.Response(200, json={"id": "17889455560051444"})
        if request.url.path.endswith("/17889455560051444"):
            return httpx.Response(200, json={"status_code": "FINISHED", "status": "Finished"})
        return httpx.Response(404, json={"error": {"message": "unexpected call", "code": 803}})
    return graph


@pytest.mark.parametrize(("endpoint", "unknown"), [("media", False), ("media_publish", True)])
async def test_an_instagram_call_answered_without_an_id_is_no_success(endpoint: str, unknown: bool) -> None:
    calls: list[str] = []
    outcome = await instagram_publish_through(instagram_answering(endpoint, {"id": None}, calls))

    # A container with no id was never published (a plain failure: nothing more is called); a publish with no
    # media id may have published it (looked up through the container).
    assert not outcome.success and outcome.outcome_unknown is unknown and outcome.platform_post_id is None
    assert outcome.error is not None and "the platform's answer named no id" in outcome.error.message
    assert ("media_publish" in calls) is unknown


def test_instagrams_daily_publishing_limit_is_waited_out_in_hours_not_minutes() -> None:
    limited = classify("instagram", 400, envelope(9, 2207042, message="Application request limit reached"))
    assert limited.kind is ErrorKind.RATE_LIMITED and limited.retry_after_s == 3600.0
    # Where Meta says when access returns, that counts.
    told = classify("instagram", 400, envelope(9, 2207042), {
        "X-Business-Use-Case-Usage": json.dumps({"1784": [{"estimated_time_to_regain_access": 20}]})})
    assert told.retry_after_s == 1200.0


@pytest.mark.parametrize("caption", [
    "Our API takes an access_token: ask us how",
    "The ring bearer walks in first",
    "Go #EAAGLES go",
    "Authorization: Bearer of good news, all of them",
    # Built here, so that no token-shaped word stands in the source.
    "Y" + "EAA" + "A" * 44 + "H we won!!",
    "See you at #" + "EAA" + "AirVentureOshkosh2025 and #" + "EAA" + "AirVentureOshkosh2025AndMoreWordsHere",
])
def test_ordinary_captions_are_not_taken_for_content_that_carries_a_token(caption: str) -> None:
    assert redact.secret_field(PostContent(caption=caption)) is None


def test_content_that_carries_a_token_is_told_by_the_field_that_carries_it() -> None:
    shaped = "EAA" + "Bz4k" * 12
    stored = ("a-token-this-service-stores-" + "9c1d" * 3, "summer")
    assert redact.secret_field(PostContent(caption=f"our token: {shaped}")) == "caption"
    assert redact.secret_field(PostContent(caption="Sale", image_url=f"https://cdn.example.com/a.jpg?t={stored[0]}"),
                               stored) == "image_url"
    assert redact.secret_field(PostContent(caption="Sale", link=f"https://shop.example.com/?k={stored[0]}"),
                               stored) == "link"
    # A stored token as short as a word is no reason to refuse every caption that says the word.
    assert redact.secret_field(PostContent(caption="Our summer sale"), stored) is None
    assert redact.secret_field(None, stored) is None


def test_a_policy_block_waits_for_the_user_and_says_why_in_metas_words() -> None:
    """Meta's 368, "temporarily blocked for policy violations": not called again and again by the service."""
    error = classify("facebook", 400, envelope(368, message="(#368) The action attempted has been deemed abusive or "
                                                            "is otherwise disallowed"))
    assert error.kind is ErrorKind.INVALID_REQUEST and not error.kind.retried_automatically
    assert error.message == ("Facebook publish failed: 400 - The action attempted has been deemed abusive or is "
                             "otherwise disallowed")
    # Also when Meta marks it transient.
    assert classify("facebook", 400, envelope(368, 1390008, transient=True)).kind is ErrorKind.INVALID_REQUEST


# Built at run time, so that no token-shaped word stands in the source.
PLAIN_SECRET = "not-shaped-like-meta-" + "5e1f" * 4


def container_status_graph(status: str) -> Callable[[httpx.Request], httpx.Response]:
    """A Graph API whose container is not ready at once, then ends in ERROR with `status` as its text."""
    def graph(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/media"):
            return httpx.Response(200, json={"id": "17889455560051444"})
        if request.url.path.endswith("/media_publish"):
            return httpx.Response(400, json={"error": {"message": "The media is not ready for publishing",
                                                       "code": 9007, "error_subcode": 2207027}})
        if request.url.path.endswith("/17889455560051444"):
            return httpx.Response(200, json={"status_code": "ERROR", "status": status})
        return httpx.Response(404, json={"error": {"message": "unexpected call", "code": 803}})
    return graph


@pytest.mark.parametrize("carried", [
    f"GET https://cdn.example.com/a.jpg?access_token={PLAIN_SECRET}",
    f"Authorization: Bearer {PLAIN_SECRET}",
    "token " + "EAA" + "Gm0dEl" * 8,
    "token user-token-secret-7",  # the account's own token (not shaped like Meta's)
], ids=["access_token", "bearer", "meta-shaped", "stored"])
async def test_an_instagram_containers_failed_status_gives_its_reason_without_the_token_it_carried(
        carried: str) -> None:
    status = f"Error: 2207052 Media download failed ({carried})"
    outcome = await instagram_publish_through(container_status_graph(status))

    # The reason the user reads (and the result, insights and pages keep): Meta's, with the token taken out.
    assert outcome.error is not None and not outcome.success
    message = outcome.error.message
    assert message.startswith("Instagram media processing failed: Error: 2207052 Media download failed (")
    assert REDACTED in message
    for secret in (PLAIN_SECRET, "EAA" + "Gm0dEl" * 8, "user-token-secret-7"):
        assert secret not in message
    assert (outcome.error.kind, outcome.error.subcode) == (ErrorKind.INVALID_MEDIA, 2207052)


async def test_an_instagram_containers_very_long_status_is_cut_to_an_errors_length() -> None:
    outcome = await instagram_publish_through(container_status_graph("Error: 2207052 " + "x" * 5000))

    assert outcome.error is not None and len(outcome.error.message) == 2000
    assert outcome.error.subcode == 2207052


def carrying(kind: str) -> str:
    """A token as a Graph answer could carry it: in a query, of Meta's shape, or the account's own token."""
    return {"access_token": f"access_token={PLAIN_SECRET}", "meta-shaped": "EAA" + "Gm0dEl" * 8,
            "stored": "user-token-secret-7"}[kind]


def tokens_in(text: str | None) -> list[str]:
    return [s for s in (PLAIN_SECRET, "EAA" + "Gm0dEl" * 8, "user-token-secret-7") if s in (text or "")]


@pytest.mark.parametrize("kind", ["access_token", "meta-shaped", "stored"])
async def test_an_instagram_permalink_that_carries_a_token_is_kept_without_it(kind: str) -> None:
    def graph(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/media"):
            return httpx.Response(200, json={"id": "17889455560051444"})
        if request.url.path.endswith("/media_publish"):
            return httpx.Response(200, json={"id": "18107758234627017"})
        if request.url.path.endswith("/18107758234627017"):
            return httpx.Response(200, json={"permalink": f"https://www.instagram.com/p/DRJ1nlKDgY9/?{carrying(kind)}"})
        return httpx.Response(404, json={"error": {"message": "unexpected call", "code": 803}})

    outcome = await instagram_publish_through(graph)

    # Published, and its address still one (the page links to it), with the token taken out.
    assert outcome.success and outcome.platform_post_id == "18107758234627017"
    assert outcome.permalink is not None and outcome.permalink.startswith("https://www.instagram.com/p/DRJ1nlKDgY9/?")
    assert "redacted" in outcome.permalink and tokens_in(outcome.permalink) == []


@pytest.mark.parametrize("kind", ["access_token", "meta-shaped", "stored"])
async def test_a_facebook_publish_answered_with_a_post_id_that_carries_a_token_is_published_without_it(
        kind: str) -> None:
    outcome = await facebook_photo_answered(httpx.Response(200, json={"id": "1", "post_id": f"7479_{carrying(kind)}"}))

    # Published (the answer says so: never published again), its id recorded without the token.
    assert outcome.success and outcome.platform_post_id is not None
    assert outcome.platform_post_id.startswith("7479_") and REDACTED in outcome.platform_post_id
    assert tokens_in(outcome.platform_post_id) == []


@pytest.mark.parametrize(("endpoint", "published"), [("media", False), ("media_publish", True)])
async def test_an_instagram_id_that_carries_a_token_is_recorded_without_it(endpoint: str, published: bool) -> None:
    outcome = await instagram_publish_through(instagram_answering(endpoint, {"id": f"1788_{carrying('meta-shaped')}"}))

    # A container whose id lost its token cannot be published (Meta knows no such id): a failure, nothing out. A
    # media id that lost it is a post that went out: published, never again.
    assert outcome.success is published and not outcome.outcome_unknown
    assert tokens_in(outcome.container_id) == [] and tokens_in(outcome.platform_post_id) == []
    if published:
        assert outcome.platform_post_id is not None and REDACTED in outcome.platform_post_id
    else:
        assert outcome.error is not None and tokens_in(outcome.error.message) == []


@pytest.mark.parametrize("kind", ["access_token", "meta-shaped", "stored"])
async def test_a_post_found_by_its_caption_is_recorded_without_a_token_its_listing_carried(kind: str) -> None:
    def graph(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/17889455560051444"):
            return httpx.Response(200, json={"status_code": "PUBLISHED", "status": "Published"})
        if request.url.path.endswith("/media"):
            return httpx.Response(200, json={"data": [{
                "id": f"1810_{carrying(kind)}", "caption": "hi", "timestamp": "2025-11-17T10:10:13+0000",
                "permalink": f"https://www.instagram.com/p/DRJ1nlKDgY9/?{carrying(kind)}"}]})
        return httpx.Response(404, json={"error": {"message": "unexpected call", "code": 803}})

    account = AccountCredentials("acct", SecretStr("user-token-secret-7"), None, "17841400000000001")
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        found = await InstagramPublisher(client, "https://graph.facebook.com", "v24.0").find_existing(
            PostContent(caption="hi", image_url="https://cdn.example.com/a.jpg"), account, attempt_id="a1",
            container_id="17889455560051444", attempted_at=datetime(2025, 11, 17, 10, 10, tzinfo=UTC))

    # It went out (never published again); its id and its address kept without the token.
    assert found is not None and found.success and found.platform_post_id is not None
    assert found.platform_post_id.startswith("1810_") and tokens_in(found.platform_post_id) == []
    assert found.permalink is not None and "redacted" in found.permalink and tokens_in(found.permalink) == []


async def test_a_facebook_post_found_by_its_caption_with_a_token_in_its_id_is_recorded_without_it() -> None:
    def graph(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v24.0/747917475065823":
            return httpx.Response(200, json={"id": "747917475065823", "access_token": "page-token-secret-9"})
        if request.url.path.endswith("/published_posts"):
            return httpx.Response(200, json={"data": [{"id": f"7479_{carrying('meta-shaped')}", "message": "hi",
                                                       "created_time": "2025-11-17T10:10:13+0000"}]})
        return httpx.Response(404, json={"error": {"message": "unexpected call", "code": 803}})

    account = AccountCredentials("acct", SecretStr("user-token-secret-7"), "747917475065823", None)
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        found = await FacebookPagePublisher(client, "https://graph.facebook.com", "v24.0").find_existing(
            PostContent(caption="hi"), account, attempt_id="a1", container_id=None,
            attempted_at=datetime(2025, 11, 17, 10, 10, tzinfo=UTC))

    # Found, so never published a second time; its id (and the address built from it) without the token.
    assert found is not None and found.success and found.platform_post_id is not None
    assert found.platform_post_id.startswith("7479_") and tokens_in(found.platform_post_id) == []


def test_a_platform_wait_past_a_day_is_taken_as_a_day() -> None:
    # A header's absurd wait would otherwise be a date past the calendar's end: every list of posts would fail.
    from datetime import UTC, datetime

    from projections.resume import automatic_retries
    from schemas.common import MAX_PLATFORM_WAIT_S
    from schemas.events import PlatformError, PlatformResult
    from tests.unit.test_fold import History

    assert rate_limit_wait({"Retry-After": "99999999999999999999"}) == MAX_PLATFORM_WAIT_S
    history = History(at=datetime(2025, 11, 17, tzinfo=UTC))
    attempts = history.publish(target="facebook")
    history.events.append(PlatformResult(
        event_id="limited", post_id=history.post_id, occurred_at=datetime(2025, 11, 17, tzinfo=UTC),
        platform="facebook", attempt_id=attempts["facebook"], success=False,
        error=PlatformError(kind=ErrorKind.RATE_LIMITED, message="limit", retry_after_s=1e20)))
    assert automatic_retries(history.state(), 5) == {"facebook": datetime(2025, 11, 18, tzinfo=UTC)}


def test_an_id_or_address_in_an_answer_longer_than_an_event_keeps_is_cut_and_the_result_still_recorded() -> None:
    # Meta's are a few dozen characters; one past the limit would make the result event invalid and leave the
    # attempt without a result (and the insights message past the broker's limit).
    post_id = answered_id("1" * 400_000)
    permalink = answered_link("https://www.instagram.com/p/" + "a" * 400_000)
    assert post_id is not None and permalink is not None
    assert len(post_id) == len(permalink) == PLATFORM_TEXT_LIMIT and post_id.endswith("…")
    result = PlatformResult(event_id="e", post_id="p", occurred_at=datetime.now(UTC), platform="instagram",
                            attempt_id="a", success=True, platform_post_id=post_id, permalink=permalink)
    assert result.platform_post_id == post_id
    assert answered_id("747917475065823_122104567890123") == "747917475065823_122104567890123"
