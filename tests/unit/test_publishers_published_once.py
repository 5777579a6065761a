"""A post Meta put up behind a refusal is never published a second time: Instagram's containers are asked, and a
Facebook look-up reads every page of its window, however Meta pages it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import SecretStr

from projections.fold import needed_action
from publishers.base import AccountCredentials, PublishOutcome
from publishers.errors import classify
from publishers.facebook import FacebookPagePublisher
from publishers.graph import next_page
from publishers.instagram import ContainerPolling, InstagramPublisher
from schemas.commands import PostContent
from schemas.common import ErrorKind
from tests.unit.test_publishers_errors import envelope

ACCOUNT = AccountCredentials("acct", SecretStr("user-token-secret-7"), "747917475065823", "17841400000000001")
CONTENT = PostContent(caption="Autumn sale starts today", image_url="https://cdn.example.com/autumn-sale.jpg")
CONTAINER, EARLIER = "17889455560051444", "17889455560050001"
STARTED = datetime(2025, 11, 17, 10, 10, 13, tzinfo=UTC)
MEDIA = {"data": [{"id": "18107758234627017", "caption": CONTENT.caption, "timestamp": "2025-11-17T10:10:20+0000",
                   "permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/"}]}


class Graph:
    """Stands in for Meta: each endpoint (the last part of the path, or the method and it: "GET media") answers from a
    list, its last answer repeated; the calls made are kept in order."""

    def __init__(self, answers: dict[str, list[httpx.Response]]) -> None:
        self.answers = answers
        self.calls: list[str] = []
        self.requests: list[str] = []  # the same, with each one's method ("POST media")

    def __call__(self, request: httpx.Request) -> httpx.Response:
        endpoint = request.url.path.rsplit("/", 1)[-1]
        self.calls.append(endpoint)
        self.requests.append(f"{request.method} {endpoint}")
        queue = self.answers.get(f"{request.method} {endpoint}") or self.answers.get(endpoint)
        if not queue:
            return httpx.Response(404, json={"error": {"message": "unexpected call", "code": 803}})
        return queue.pop(0) if len(queue) > 1 else queue[0]


def status(code: str) -> httpx.Response:
    return httpx.Response(200, json={"status_code": code, "status": code.title()})


def refusal(code: int, subcode: int | None = None, http_status: int = 400, message: str = "boom") -> httpx.Response:
    return httpx.Response(http_status, json=envelope(code, subcode, message=message))


async def instagram_publish(graph: Graph, earlier: Sequence[tuple[str, datetime]] = ()) -> PublishOutcome:
    polling = ContainerPolling(interval_s=0.01, max_interval_s=0.01, timeout_s=1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        return await InstagramPublisher(client, "https://graph.facebook.com", "v24.0", polling).publish(
            CONTENT, ACCOUNT, attempt_id="a2", earlier_containers=earlier)


# ------------------------------------------------------------------------- an earlier attempt's container


async def test_an_earlier_attempts_container_that_went_out_is_this_attempts_success_and_nothing_is_made() -> None:
    graph = Graph({EARLIER: [status("PUBLISHED")], "media": [httpx.Response(200, json=MEDIA)]})

    outcome = await instagram_publish(graph, [(EARLIER, STARTED)])

    assert outcome.success and outcome.container_id == EARLIER
    assert (outcome.platform_post_id, outcome.permalink) == ("18107758234627017", MEDIA["data"][0]["permalink"])
    # The account's media were read (GET /media) to name the post; no container was made, none published.
    assert graph.calls == [EARLIER, "media"] and "media_publish" not in graph.calls


async def test_earlier_containers_not_published_let_the_attempt_make_its_own() -> None:
    graph = Graph({EARLIER: [status("FINISHED")], "17889455560050002": [status("EXPIRED")],
                   "media": [httpx.Response(200, json={"id": CONTAINER})],
                   "media_publish": [httpx.Response(200, json={"id": "18107758234627017"})],
                   "18107758234627017": [httpx.Response(200, json={"permalink": "https://www.instagram.com/p/x/"})]})

    outcome = await instagram_publish(graph, [(EARLIER, STARTED), ("17889455560050002", STARTED)])

    assert outcome.success and outcome.container_id == CONTAINER
    assert graph.calls == [EARLIER, "17889455560050002", "media", "media_publish", "18107758234627017"]


@pytest.mark.parametrize(("answer", "kind"), [
    (refusal(2, http_status=500), ErrorKind.TRANSIENT),
    (refusal(190, 463), ErrorKind.AUTH),
    (refusal(4), ErrorKind.RATE_LIMITED),
], ids=["server error", "token expired", "rate limit"])
async def test_an_earlier_container_that_cannot_be_asked_now_fails_the_attempt_before_anything_is_made(
        answer: httpx.Response, kind: ErrorKind) -> None:
    graph = Graph({EARLIER: [answer]})

    outcome = await instagram_publish(graph, [(EARLIER, datetime.now(UTC) - timedelta(hours=2))])

    assert not outcome.success and not outcome.outcome_unknown
    assert outcome.error is not None and outcome.error.kind is kind
    assert graph.calls == [EARLIER]


async def test_a_container_status_that_names_no_status_is_no_not_published_yet() -> None:
    # Taken for IN_PROGRESS, it let a new container be published beside an earlier attempt's that may be out, and
    # a look-up find that an attempt whose outcome is unknown did not go out.
    nothing = httpx.Response(200, json={"id": EARLIER})
    graph = Graph({EARLIER: [nothing]})

    outcome = await instagram_publish(graph, [(EARLIER, datetime.now(UTC) - timedelta(hours=2))])

    assert not outcome.success and outcome.error is not None
    assert "named no status_code" in outcome.error.message
    assert graph.calls == [EARLIER]  # no container made, none published
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        found = await InstagramPublisher(client, "https://graph.facebook.com", "v24.0").find_existing(
            CONTENT, ACCOUNT, attempt_id="a1", container_id=EARLIER, attempted_at=STARTED)
    # Not "did not go out" (None): the look-up could not tell, and is asked again.
    assert found is not None and not found.success


@pytest.mark.parametrize("answer", [
    refusal(100, 33, message="Unsupported get request"),
    httpx.Response(403, text="<html>Forbidden</html>"),
], ids=["does not exist", "a proxy's page"])
async def test_an_earlier_container_past_its_day_that_cannot_be_read_is_passed_over(answer: httpx.Response) -> None:
    # Meta keeps a container a day: STARTED is long past.
    graph = Graph({EARLIER: [answer],
                   "media": [httpx.Response(200, json={"id": CONTAINER})],
                   "media_publish": [httpx.Response(200, json={"id": "18107758234627017"})],
                   "18107758234627017": [httpx.Response(200, json={"permalink": "https://www.instagram.com/p/x/"})]})

    outcome = await instagram_publish(graph, [(EARLIER, STARTED)])

    assert outcome.success and outcome.container_id == CONTAINER


async def test_an_earlier_container_of_the_last_day_that_cannot_be_read_fails_the_attempt_before_anything_is_made(
        ) -> None:
    # A minute old: Meta still has it, so an answer that does not say whether it went out is no "no".
    graph = Graph({EARLIER: [httpx.Response(403, text="<html>Forbidden</html>")]})

    outcome = await instagram_publish(graph, [(EARLIER, datetime.now(UTC) - timedelta(minutes=1))])

    assert not outcome.success and outcome.error is not None and outcome.error.kind is ErrorKind.INVALID_REQUEST
    assert graph.calls == [EARLIER]


async def test_an_earlier_container_meta_says_does_not_exist_is_asked_again_and_never_passed_over_within_its_day(
        ) -> None:
    missing = refusal(100, 33, message="Unsupported get request")
    made = {"media": [httpx.Response(200, json={"id": CONTAINER})],
            "media_publish": [httpx.Response(200, json={"id": "18107758234627017"})],
            "18107758234627017": [httpx.Response(200, json={"permalink": "https://www.instagram.com/p/x/"})]}
    minute_ago = datetime.now(UTC) - timedelta(minutes=1)

    # Once: Meta's glitch; asked again, it says not published.
    glitch = Graph({EARLIER: [missing, status("FINISHED")], **made})
    assert (await instagram_publish(glitch, [(EARLIER, minute_ago)])).success
    assert glitch.calls[:2] == [EARLIER, EARLIER]
    # Said every time (a glitch that lasts, a token that cannot see it), of an attempt that could still be making its
    # media: whether it went out cannot be told, so nothing is made, and the attempt says why and until when.
    gone = Graph({EARLIER: [missing], **{k: list(v) for k, v in made.items()}})
    outcome = await instagram_publish(gone, [(EARLIER, minute_ago)])
    assert not outcome.success and gone.calls == [EARLIER, EARLIER, EARLIER]
    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT
    assert outcome.error.message.startswith(f"Instagram publish not attempted: Meta says the container {EARLIER} of "
                                            "an earlier attempt does not exist")
    # Its media are not looked at before its lease and the clocks' skew are over (Meta lists a media a moment late),
    # and the service's next try waits until then: its timeout here (330 s, past the lease) and 2 minutes after it
    # began, a minute ago.
    assert "and the account's media are looked at from " in outcome.error.message
    assert outcome.error.retry_after_s is not None and 385 < outcome.error.retry_after_s < 395


def listing(*ages: timedelta, more: bool = False) -> httpx.Response:
    """The account's recent media, newest first: one made each of `ages` ago; `more`: a next page follows."""
    now = datetime.now(UTC)
    page: dict[str, object] = {"data": [
        {"id": f"1810775823462{index:04d}", "timestamp": (now - age).strftime("%Y-%m-%dT%H:%M:%S+0000")}
        for index, age in enumerate(sorted(ages))]}
    if more:
        page["paging"] = {"cursors": {"after": "QVFI"}, "next": "https://graph.facebook.com/v24.0/x/media?after=QVFI"}
    return httpx.Response(200, json=page)


async def test_an_earlier_container_meta_does_not_know_with_no_media_of_its_time_did_not_go_out() -> None:
    # Meta forgot the container (the sandbox started again, say); the account's media go back past that attempt and
    # show nothing made while it ran: it did not go out, and this attempt publishes.
    graph = Graph({EARLIER: [refusal(100, 33, message="Unsupported get request")],
                   "GET media": [listing(timedelta(minutes=2), timedelta(hours=3), timedelta(days=2), more=True)],
                   "POST media": [httpx.Response(200, json={"id": CONTAINER})],
                   CONTAINER: [status("FINISHED")],
                   "media_publish": [httpx.Response(200, json={"id": "18107758234627017"})],
                   "18107758234627017": [httpx.Response(200, json={"permalink": "https://www.instagram.com/p/x/"})]})

    outcome = await instagram_publish(graph, [(EARLIER, datetime.now(UTC) - timedelta(minutes=10))])

    assert outcome.success and outcome.container_id == CONTAINER
    assert graph.calls == [EARLIER, EARLIER, EARLIER, "media", "media", "media_publish", "18107758234627017"]


async def test_an_earlier_container_meta_does_not_know_is_looked_for_past_a_page_of_newer_media() -> None:
    # A busy account: its first page is all newer than the attempt; the next one reaches back past it, with nothing of
    # that attempt's time. It did not go out, and this attempt publishes.
    graph = Graph({EARLIER: [refusal(100, 33, message="Unsupported get request")],
                   "GET media": [listing(*(timedelta(minutes=minutes) for minutes in range(100)), more=True),
                                 listing(timedelta(hours=3), timedelta(days=2))],
                   "POST media": [httpx.Response(200, json={"id": CONTAINER})],
                   CONTAINER: [status("FINISHED")],
                   "media_publish": [httpx.Response(200, json={"id": "18107758234627017"})],
                   "18107758234627017": [httpx.Response(200, json={"permalink": "https://www.instagram.com/p/x/"})]})

    outcome = await instagram_publish(graph, [(EARLIER, datetime.now(UTC) - timedelta(hours=2))])

    assert outcome.success and outcome.container_id == CONTAINER
    assert graph.requests.count("GET media") == 2


async def test_an_earlier_container_meta_does_not_know_on_an_account_with_no_media_did_not_go_out() -> None:
    # The whole listing (no next page) and nothing in it: the sandbox after it started again.
    graph = Graph({EARLIER: [refusal(100, 33, message="Unsupported get request")], "GET media": [listing()],
                   "POST media": [httpx.Response(200, json={"id": CONTAINER})],
                   "media_publish": [httpx.Response(200, json={"id": "18107758234627017"})],
                   "18107758234627017": [httpx.Response(200, json={"permalink": "https://www.instagram.com/p/x/"})]})

    outcome = await instagram_publish(graph, [(EARLIER, datetime.now(UTC) - timedelta(minutes=10))])

    assert outcome.success and outcome.container_id == CONTAINER


SHORT = "and the account's newest media do not reach back to that attempt"


@pytest.mark.parametrize(("media", "why"), [
    # Made as the test runs (the listing's times are the clock's then).
    (lambda: listing(*(timedelta(minutes=minutes) for minutes in range(50)), more=True), SHORT),
    (lambda: listing(*(timedelta(minutes=minutes) for minutes in range(20)), more=True), SHORT),
    (lambda: listing(more=True), SHORT),
    (lambda: listing(timedelta(hours=2, minutes=1)), "and the account has a media of that attempt's time"),
    (lambda: refusal(2, http_status=500), "and the account's media could not be read (Instagram post lookup failed"),
    (lambda: httpx.Response(200, json={"data": [{"id": "18107758234620001"}]}),
     "and the account's media could not be read (a media without its time)"),
], ids=["a full page newer than the attempt", "a short page newer than it, with more after",
        "an empty page with more after", "a media of its time", "no listing", "a media without its time"])
async def test_an_earlier_container_meta_does_not_know_stays_open_where_the_media_cannot_say(
        media: Callable[[], httpx.Response], why: str) -> None:
    graph = Graph({EARLIER: [refusal(100, 33, message="Unsupported get request")], "GET media": [media()]})

    outcome = await instagram_publish(graph, [(EARLIER, datetime.now(UTC) - timedelta(hours=2))])

    assert not outcome.success and outcome.error is not None
    assert outcome.error.message.startswith("Instagram publish not attempted: Meta says the container "
                                            f"{EARLIER} of an earlier attempt does not exist {why}")
    assert outcome.error.retry_after_s is None  # nothing to wait for: the next try asks again
    assert "media_publish" not in graph.calls and "POST media" not in graph.requests  # no container made


async def test_a_media_made_late_in_an_earlier_attempts_lease_is_of_its_time() -> None:
    # Attempts time out after a minute here, but the handler's lease (150 s) is how long one's post may still appear.
    started = datetime.now(UTC) - timedelta(hours=2)
    graph = Graph({EARLIER: [refusal(100, 33, message="Unsupported get request")],
                   "GET media": [listing(timedelta(hours=2) - timedelta(seconds=200))]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        outcome = await InstagramPublisher(client, "https://graph.facebook.com", "v24.0",
                                           ContainerPolling.within(60.0)).publish(
            CONTENT, ACCOUNT, attempt_id="a2", earlier_containers=[(EARLIER, started)])

    assert not outcome.success and outcome.error is not None
    assert outcome.error.message.startswith("Instagram publish not attempted")
    assert "media_publish" not in graph.calls


async def test_only_media_on_record_of_an_earlier_attempts_time_let_it_be_told_apart() -> None:
    started = datetime.now(UTC) - timedelta(minutes=10)
    ours = listing(timedelta(minutes=9))  # a media on record: the post's own success of that time, say
    recorded = [ours.json()["data"][0]["id"]]
    graph = Graph({EARLIER: [refusal(100, 33, message="Unsupported get request")], "GET media": [ours],
                   "POST media": [httpx.Response(200, json={"id": CONTAINER})], CONTAINER: [status("FINISHED")],
                   "media_publish": [httpx.Response(200, json={"id": "18107758234627017"})],
                   "18107758234627017": [httpx.Response(200, json={"permalink": "https://www.instagram.com/p/x/"})]})
    polling = ContainerPolling(interval_s=0.01, max_interval_s=0.01, timeout_s=1)
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        outcome = await InstagramPublisher(client, "https://graph.facebook.com", "v24.0", polling).publish(
            CONTENT, ACCOUNT, attempt_id="a2", earlier_containers=[(EARLIER, started)], recorded=recorded)

    assert outcome.success and outcome.container_id == CONTAINER


async def test_an_earlier_container_published_is_never_matched_to_a_media_of_another_time() -> None:
    # The attempt's own media has left the listing's newest 50; a media of the same caption posted days later is
    # another post's (or one made by hand): the ids are left unknown rather than taken from it.
    later = {"data": [{**MEDIA["data"][0], "id": "18107758234620000", "timestamp": "2025-11-20T09:00:00+0000"}]}
    graph = Graph({EARLIER: [status("PUBLISHED")], "media": [httpx.Response(200, json=later)]})

    outcome = await instagram_publish(graph, [(EARLIER, STARTED)])

    assert outcome.success and outcome.container_id == EARLIER
    assert (outcome.platform_post_id, outcome.permalink) == (None, None)


async def test_an_earlier_container_published_late_in_a_long_attempt_is_matched_to_its_media() -> None:
    # Attempts may last ten minutes here (SMARTRETRY_ATTEMPT_TIMEOUT_SECONDS=600): that attempt's media went out 9
    # minutes into it, past the container's five minutes of polling, and is still its own.
    late = {"data": [{**MEDIA["data"][0], "timestamp": "2025-11-17T10:19:13+0000"}]}
    graph = Graph({EARLIER: [status("PUBLISHED")], "media": [httpx.Response(200, json=late)]})
    polling = ContainerPolling.within(600.0)
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        outcome = await InstagramPublisher(client, "https://graph.facebook.com", "v24.0", polling).publish(
            CONTENT, ACCOUNT, attempt_id="a2", earlier_containers=[(EARLIER, STARTED)])

    assert outcome.success and outcome.platform_post_id == "18107758234627017"


async def test_asking_about_earlier_containers_comes_out_of_the_attempts_wait_for_its_own() -> None:
    # Meta took longer to answer about the earlier container than the attempt may wait for its own: the new container,
    # not ready, is not waited for past the attempt's time (the handler would cut the call and leave it unknown).
    async def slow_then_not_ready(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(EARLIER):
            await asyncio.sleep(0.3)
        return graph(request)

    graph = Graph({EARLIER: [status("FINISHED")], "media": [httpx.Response(200, json={"id": CONTAINER})],
                   "media_publish": [refusal(9007, 2207027, message="Media ID is not available")],
                   CONTAINER: [status("IN_PROGRESS")]})
    polling = ContainerPolling(interval_s=0.01, max_interval_s=0.01, timeout_s=0.2)
    async with httpx.AsyncClient(transport=httpx.MockTransport(slow_then_not_ready)) as client:
        outcome = await InstagramPublisher(client, "https://graph.facebook.com", "v24.0", polling).publish(
            CONTENT, ACCOUNT, attempt_id="a2", earlier_containers=[(EARLIER, STARTED)])

    assert not outcome.success and not outcome.outcome_unknown and outcome.container_id == CONTAINER
    assert outcome.error is not None
    assert outcome.error.message.startswith("Instagram media processing failed: not ready")
    assert graph.calls.count(CONTAINER) == 1  # its status read once: the attempt's time was up


# ------------------------------------------------------------------------- this attempt's own refusals


async def test_an_instagram_server_error_answered_with_400_may_have_published_and_stays_unknown() -> None:
    # Meta's "Instagram server error. Try again" is HTTP 400, code -1: after it, every try refused the same way
    # while the status lags at FINISHED. A known failure would have the next attempt make a second container.
    graph = Graph({"media": [httpx.Response(200, json={"id": CONTAINER})],
                   "media_publish": [refusal(-1, 2207001, message="Instagram server error. Try again.")],
                   CONTAINER: [status("FINISHED")]})

    outcome = await instagram_publish(graph)

    assert not outcome.success and outcome.outcome_unknown and outcome.container_id == CONTAINER
    assert outcome.error is not None and outcome.error.kind is ErrorKind.TRANSIENT


async def test_a_refusal_whose_container_went_out_after_all_is_the_attempts_success() -> None:
    # Not ready, then "already published": the status, asked once more before the refusal is taken, says it went.
    listed = {"data": [{**MEDIA["data"][0], "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")}]}
    graph = Graph({"media": [httpx.Response(200, json={"id": CONTAINER}), httpx.Response(200, json=listed)],
                   "media_publish": [refusal(9007, 2207027), refusal(100, message="This media has already been "
                                                                                  "published")],
                   CONTAINER: [status("FINISHED"), status("PUBLISHED")]})

    outcome = await instagram_publish(graph)

    assert outcome.success and outcome.container_id == CONTAINER
    assert outcome.platform_post_id == "18107758234627017"


async def test_instagrams_activity_block_is_asked_about_and_waits_for_the_user() -> None:
    # "We restrict certain activity to protect our community" comes with code 4, as a rate limit does; Meta may
    # have published the container before it said so.
    blocked = refusal(4, 2207051, message="We restrict certain activity to protect our community.")
    error = classify("instagram", 400, blocked.json())
    assert error.kind is ErrorKind.INVALID_REQUEST and not error.kind.retried_automatically
    assert needed_action("instagram", error.kind, error.code, error.subcode) == (
        "wait until Instagram lifts its temporary block, then retry")
    # The subcode with another code is not Meta's block, and a refusal recorded so before reads as it did.
    assert needed_action("instagram", ErrorKind.INVALID_REQUEST, 100, 2207051) == "fix the post"

    graph = Graph({"media": [httpx.Response(200, json={"id": CONTAINER}), httpx.Response(200, json=MEDIA)],
                   "media_publish": [blocked], CONTAINER: [status("PUBLISHED")]})
    assert (await instagram_publish(graph)).success

    graph = Graph({"media": [httpx.Response(200, json={"id": CONTAINER})], "media_publish": [blocked],
                   CONTAINER: [status("FINISHED")]})
    outcome = await instagram_publish(graph)
    assert not outcome.success and not outcome.outcome_unknown
    assert outcome.error is not None and outcome.error.subcode == 2207051


async def test_a_container_meta_briefly_says_does_not_exist_is_polled_through() -> None:
    graph = Graph({"media": [httpx.Response(200, json={"id": CONTAINER})],
                   "media_publish": [refusal(9007, 2207027), httpx.Response(200, json={"id": "18107758234627017"})],
                   CONTAINER: [refusal(100, 33, message="Unsupported get request"), status("FINISHED")],
                   "18107758234627017": [httpx.Response(200, json={"permalink": "https://www.instagram.com/p/x/"})]})

    outcome = await instagram_publish(graph)

    assert outcome.success and outcome.platform_post_id == "18107758234627017"


@pytest.mark.parametrize(("code", "subcode"), [(-1, None), (-2, None), (-1, 2207053)])
def test_instagrams_own_server_errors_are_transient(code: int, subcode: int | None) -> None:
    assert classify("instagram", 400, envelope(code, subcode)).kind is ErrorKind.TRANSIENT


# ------------------------------------------------------------------------- Facebook's look-up


def page_of(posts: list[dict[str, str]], paging: dict[str, object] | None) -> httpx.Response:
    return httpx.Response(200, json={"data": posts, **({"paging": paging} if paging else {})})


def time_paged_listing(found_on_second: bool) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.URL]]:
    """A Page whose listing pages by time (`until` and `__paging_token` in `paging.next`, no cursors): an unrelated
    post first, then (on the second page) the attempt's post or nothing."""
    asked: list[httpx.URL] = []
    token_in_url = "access_token=" + "page-token-secret-3"

    def graph(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/747917475065823") or request.url.path.endswith("/accounts"):
            return httpx.Response(200, json={"access_token": "page-token-secret-3", "id": "747917475065823"})
        asked.append(request.url)
        query = parse_qs(request.url.query.decode())
        if "__paging_token" not in query:
            following = (f"https://graph.facebook.com/v24.0/747917475065823/published_posts?{token_in_url}"
                         "&until=1763374216&__paging_token=enc_AdB")
            return page_of([{"id": "747917475065823_9", "message": "Other news", "created_time":
                             "2025-11-17T10:10:30+0000"}], {"previous": following, "next": following})
        assert query["until"] == ["1763374216"] and query["__paging_token"] == ["enc_AdB"]
        posts = [{"id": "747917475065823_7", "message": CONTENT.caption, "created_time": "2025-11-17T10:10:15+0000"}]
        return page_of(posts if found_on_second else [], None)
    return graph, asked


@pytest.mark.parametrize("found", [True, False], ids=["found", "not there"])
async def test_a_facebook_look_up_reads_a_time_paged_listing_to_its_end(found: bool) -> None:
    graph, asked = time_paged_listing(found)
    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        publisher = FacebookPagePublisher(client, "https://graph.facebook.com", "v24.0",
                                          lookup_window=timedelta(minutes=10))
        outcome = await publisher.find_existing(CONTENT, ACCOUNT, attempt_id="a1", container_id=None,
                                                attempted_at=STARTED)

    # Read to its end: the post found on the second page, or a sure "did not go out" (None), never "could not tell".
    assert (outcome is not None and outcome.success and outcome.platform_post_id == "747917475065823_7") if found \
        else outcome is None
    assert len(asked) == 2
    # Meta's paging URL carries the token; it is never requested.
    assert all("access_token" not in str(url) for url in asked)


def test_the_next_page_is_asked_for_by_cursor_where_meta_gives_one() -> None:
    assert next_page({"cursors": {"before": "b", "after": "QVFI"}, "next": "https://x/?after=QVFI&until=1"}) == \
        {"after": "QVFI"}
    assert next_page({"next": "https://x/?access_token=t&until=17&__paging_token=p&limit=25"}) == \
        {"until": "17", "__paging_token": "p"}
    assert next_page({"previous": "https://x/?since=1"}) == {}
    assert next_page({"next": "https://[graph.facebook.com/?until=17"}) == {}


async def test_a_facebook_look_up_that_turns_from_cursors_to_time_based_paging_drops_the_cursor() -> None:
    asked: list[dict[str, list[str]]] = []

    def graph(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/747917475065823"):
            return httpx.Response(200, json={"access_token": "page-token-secret-3", "id": "747917475065823"})
        query = parse_qs(request.url.query.decode())
        asked.append(query)
        other = [{"id": f"747917475065823_{len(asked)}", "message": "Other news",
                  "created_time": "2025-11-17T10:10:30+0000"}]
        if len(asked) == 1:
            return page_of(other, {"cursors": {"after": "QVFI"}, "next": "https://graph.facebook.com/x?after=QVFI"})
        if len(asked) == 2:
            return page_of(other, {"next": "https://graph.facebook.com/x?until=1763374216&__paging_token=enc_AdB"})
        return page_of([], None)

    async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as client:
        publisher = FacebookPagePublisher(client, "https://graph.facebook.com", "v24.0",
                                          lookup_window=timedelta(minutes=10))
        outcome = await publisher.find_existing(CONTENT, ACCOUNT, attempt_id="a1", container_id=None,
                                                attempted_at=STARTED)

    assert outcome is None and len(asked) == 3
    assert asked[1]["after"] == ["QVFI"]
    assert "after" not in asked[2] and asked[2]["until"] == ["1763374216"] and asked[2]["since"] == asked[0]["since"]


async def test_a_container_ready_just_before_the_deadline_is_published_not_given_up_a_long_wait_before_it() -> None:
    # Polled ever less often: a next wait that would pass the deadline is cut short to ask once more at it.
    made = asyncio.get_running_loop().time()

    def ready_late(request: httpx.Request) -> httpx.Response:
        endpoint = request.url.path.rsplit("/", 1)[-1]
        ready = asyncio.get_running_loop().time() - made > 0.3
        if endpoint == "media":
            return httpx.Response(200, json={"id": CONTAINER})
        if endpoint == CONTAINER:
            return status("FINISHED" if ready else "IN_PROGRESS")
        if endpoint == "media_publish":
            return httpx.Response(200, json={"id": "18107758234627017"}) if ready else \
                refusal(9007, 2207027, message="Media ID is not available")
        return httpx.Response(200, json={"permalink": "https://www.instagram.com/p/DRJ1nlKDgY9/"})

    polling = ContainerPolling(interval_s=0.05, max_interval_s=5.0, backoff=20.0, timeout_s=0.5)
    async with httpx.AsyncClient(transport=httpx.MockTransport(ready_late)) as client:
        outcome = await InstagramPublisher(client, "https://graph.facebook.com", "v24.0", polling).publish(
            CONTENT, ACCOUNT, attempt_id="a2")

    assert outcome.success, outcome.error


def test_a_post_whose_text_meta_stored_with_other_line_ends_and_blanks_is_still_the_attempts() -> None:
    from publishers.graph import earliest_match

    sent = "Autumn sale\r\n\r\nStarts  today "
    posts = [{"id": "1_2", "message": "Autumn sale\n\nStarts today", "created_time": "2025-11-17T10:10:20+0000"},
             {"id": "1_3", "message": "Autumn sale starts later", "created_time": "2025-11-17T10:10:21+0000"}]

    found = earliest_match(posts, sent, STARTED, time_field="created_time", text_field="message")

    # Taken for no match, the look-up would say the attempt did not go out, and the post would go out twice.
    assert found is not None and found["id"] == "1_2"


@pytest.mark.parametrize("media_of_its_time", [False, True], ids=["no media then", "a media then"])
async def test_an_earlier_container_past_its_day_whose_status_names_nothing_is_settled_by_the_accounts_media(
        media_of_its_time: bool) -> None:
    # Asked again and again, it would fail every new attempt; passed over blindly, a new container could be a second
    # post. The account's media of that attempt's time say which.
    then = datetime(2025, 11, 17, 10, 10, 20, tzinfo=UTC)
    listing = {"data": [{"id": "18107758234620000", "timestamp": then.strftime("%Y-%m-%dT%H:%M:%S+0000")}]}
    older = {"data": [{"id": "18107758234610000", "timestamp": "2025-11-16T09:00:00+0000"}]}
    graph = Graph({EARLIER: [httpx.Response(200, json={"id": EARLIER})],
                   "GET media": [httpx.Response(200, json=listing if media_of_its_time else older)],
                   "POST media": [httpx.Response(200, json={"id": CONTAINER})],
                   "media_publish": [httpx.Response(200, json={"id": "18107758234627017"})],
                   "18107758234627017": [httpx.Response(200, json={"permalink": "https://www.instagram.com/p/x/"})]})

    outcome = await instagram_publish(graph, [(EARLIER, STARTED)])

    if media_of_its_time:
        assert not outcome.success and outcome.error is not None and "POST media" not in graph.requests
        assert f"container {EARLIER} of an earlier attempt has no status" in outcome.error.message
    else:
        assert outcome.success and outcome.container_id == CONTAINER
