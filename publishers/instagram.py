"""Publishes to an Instagram business account: create a media container, publish it once it is ready."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr

from publishers.base import AccountCredentials, OnContainer, PublishOutcome
from publishers.errors import (
    IG_DAILY_LIMIT,
    IG_DAILY_LIMIT_WAIT_S,
    MESSAGE_LENGTH,
    container_failed,
    is_retry_same_container,
    is_unknown_object,
    unreachable_account,
)
from publishers.graph import (
    CLOCK_SKEW,
    LOOKUP_WINDOW,
    GraphApi,
    GraphCallFailed,
    answered_id,
    answered_link,
    created_id,
    earliest_match,
    next_page,
    parse_meta_time,
)
from schemas.commands import PostContent
from schemas.common import EARLIER_CONTAINER_UNKNOWN, ErrorKind, Platform, not_connected
from schemas.events import PlatformError

log = logging.getLogger(__name__)

# A container status answer that says nothing of the container: no "not published yet" (`_container_status`).
NO_STATUS = "the platform's answer named no status_code"

# Instagram's publishing limit's window, at most (`content_publishing_limit` says it: a day); and what is waited past
# the moment the oldest post counted leaves it, for the clocks' difference.
DAY_SECONDS = 86400
QUOTA_MARGIN_S = 60.0
# The account's media read back to a time (when the limit has room again, which media an attempt made): pages of so
# many (Meta's limit may be 100 posts a day), so many pages at most.
QUOTA_PAGE_SIZE = 100
QUOTA_PAGES = 5
# Refusals of media_publish that say nothing about the container.
_NOT_THE_CONTAINER = (ErrorKind.AUTH, ErrorKind.PERMISSION)


# What an attempt keeps, after waiting for its container, for media_publish and the permalink.
PUBLISH_MARGIN_S = 30.0
# How long Meta keeps a container (Instagram's content publishing guide: 24 hours).
CONTAINER_LIFETIME = timedelta(hours=24)
# What the account's media say when they show no media of an earlier attempt's time (`_media_while`).
NOTHING_MADE = ""
# How many times, within one attempt, an earlier attempt's container that Meta says does not exist is asked about.
EARLIER_CONTAINER_ASKS = 3


@dataclass(frozen=True)
class ContainerPolling:
    """How long to wait for Instagram to fetch and process an image before publishing it.

    Meta asks for polling about once a minute over five minutes; images are usually ready within seconds,
    so polling starts quick and backs off.
    """

    interval_s: float = 1.0
    max_interval_s: float = 10.0
    backoff: float = 1.5
    timeout_s: float = 300.0
    # media_publish retries on the same container when Instagram says "not ready yet" or hiccups.
    publish_retries: int = 3
    # The longest an attempt's call lasts (the handler's attempt timeout): an attempt's media is made within it.
    attempt_timeout_s: float = timeout_s + PUBLISH_MARGIN_S

    @classmethod
    def within(cls, attempt_timeout_s: float) -> ContainerPolling:
        """Polling that gives up while the attempt still has time to publish and say why, not cut off unanswered.

        The handler ends a platform call at its attempt timeout (and looks the attempt up instead), so a
        wait past it would never end in its own "not ready" message. Half a minute is left for media_publish.
        The wait counts from the attempt's start: what is asked before the container is made comes out of it.
        """
        return cls(timeout_s=max(cls.interval_s, min(cls.timeout_s, attempt_timeout_s - PUBLISH_MARGIN_S)),
                   attempt_timeout_s=attempt_timeout_s)


class InstagramPublisher:
    platform: Platform = "instagram"
    # The container says whether it went out; only the media id is told by caption (left unknown when unsure).
    finds_by_caption = False

    def __init__(
        self, client: httpx.AsyncClient, base_url: str, version: str, polling: ContainerPolling | None = None,
        *, lookup_window: timedelta = LOOKUP_WINDOW,
    ) -> None:
        self._graph = GraphApi(client, base_url, version, "instagram")
        self._polling = polling or ContainerPolling()
        # How long after an attempt began its media can still appear (the handler's attempt lease).
        self._lookup_window = lookup_window

    async def publish(
        self,
        content: PostContent,
        account: AccountCredentials,
        *,
        attempt_id: str,
        on_container: OnContainer | None = None,
        earlier_containers: Sequence[tuple[str, datetime]] = (),
        recorded: Collection[str] = (),
    ) -> PublishOutcome:
        action = "Instagram media upload"
        if not account.ig_user_id:
            return PublishOutcome.failed("instagram", _not_connected(action))
        if not content.image_url:
            return PublishOutcome.failed("instagram", PlatformError(
                kind=ErrorKind.INVALID_MEDIA, message=f"{action} failed: Instagram posts need an image"))
        ig_user, token = account.ig_user_id, account.user_token
        started = datetime.now(UTC)
        # The container is waited for until then at most, whatever asking about earlier ones took first.
        deadline = asyncio.get_running_loop().time() + self._polling.timeout_s
        # A container is published only by media_publish, and its status says for certain whether it was: an
        # earlier attempt's refusal may have published it all the same (an "Instagram server error" answered
        # after the fact, a refusal whose status read lagged behind). Asked before a new container is made.
        for earlier in earlier_containers:
            went_out = await self._earlier_went_out(account, content, *earlier, attempt_id=attempt_id,
                                                    recorded=recorded)
            if went_out is not None:
                return went_out
        try:
            created = await self._graph.post(
                ig_user, "media", token, data={"image_url": content.image_url, "caption": content.caption},
                action=action,
            )
            container_id = created_id(created, "id", action=action)
        except GraphCallFailed as failed:
            # A container whose creation went unanswered is never published by itself: nothing went out. An Instagram
            # account Meta does not know (or not through this token) is the account's to fix, not the post's.
            return PublishOutcome.failed("instagram", unreachable_account(failed.error, "instagram", ig_user)
                                         or await self._until_room(account, failed.error))
        # The container must be on record before it is published: a crash after media_publish is resolved
        # through it.
        if on_container is not None:
            await on_container(container_id)
        try:
            try:
                # An image's container is usually ready by now: publish it at once, a call fewer than asking
                # its status first.
                body = await self._graph.post(
                    ig_user, "media_publish", token, data={"creation_id": container_id}, action="Instagram publish")
                media_id: str | None = created_id(body, "id", action="Instagram publish")
            except GraphCallFailed as refused:
                if refused.error.kind is ErrorKind.RATE_LIMITED and refused.error.http_status is not None:
                    # Meta has refused for a rate limit after putting the post up: one look at the container (a call
                    # more, which the limit may refuse too) rather than a post shown failed for the limit's wait.
                    with contextlib.suppress(GraphCallFailed):
                        if (await self._container_status(container_id, token))[0] == "PUBLISHED":
                            return await self._published_media(account, content, container_id, started, recorded,
                                                               only=True)
                    raise
                if refused.error.http_status is None or refused.error.kind in _NOT_THE_CONTAINER:
                    # No answer: an unknown outcome, resolved through the container. The token: the container's
                    # status would not explain it, and asking would only spend another call.
                    raise
                # The container's status says what the refusal means: not ready yet (wait, then publish), failed
                # or expired (why), published already (by an earlier attempt), or fine (the refusal stands).
                try:
                    status = await self._wait_until_ready(container_id, token, deadline)
                except GraphCallFailed as unclear:
                    # A refusal that may have published it stays unknown, whatever stopped the status from saying.
                    raise GraphCallFailed(unclear.error, outcome_unknown=refused.outcome_unknown or
                                          unclear.outcome_unknown) from None
                if status == "PUBLISHED":
                    return await self._published_media(account, content, container_id, started, recorded, only=True)
                if not is_retry_same_container(refused.error):
                    raise
                # A 5xx may have published it though the status says not yet (it can lag): kept in mind.
                media_id = await self._publish_container(ig_user, container_id, token, refused.outcome_unknown)
            if media_id is None:
                return await self._published_media(account, content, container_id, started, recorded, only=True)
        except GraphCallFailed as failed:
            log.info("Instagram publish failed (%s)", failed.error.kind, extra={"attempt_id": attempt_id})
            unknown = failed.outcome_unknown
            return PublishOutcome.failed("instagram", await self._until_room(account, failed.error), container_id,
                                         outcome_unknown=unknown)
        permalink = await self._permalink(media_id, token)
        log.info("Instagram published media %s", media_id, extra={"attempt_id": attempt_id})
        return PublishOutcome.published("instagram", media_id, permalink, container_id)

    async def find_existing(
        self,
        content: PostContent,
        account: AccountCredentials,
        *,
        attempt_id: str,
        container_id: str | None,
        attempted_at: datetime,
        recorded: Collection[str] = (),
    ) -> PublishOutcome | None:
        # Only a container can be published; without one, the attempt cannot have gone out.
        if container_id is None:
            return None
        if not account.ig_user_id:
            return PublishOutcome.failed("instagram", _not_connected("Instagram post lookup"))
        try:
            status, _ = await self._container_status(container_id, account.user_token)
        except GraphCallFailed as failed:
            return PublishOutcome.failed("instagram", failed.error, container_id)
        if status != "PUBLISHED":
            log.info("Instagram container is %s: not published (so far)", status, extra={"attempt_id": attempt_id})
            return None
        # Only: another media of the caption that is on no record (another post's, still waiting on its own
        # look-up, or one made by hand) is as likely to be the match; the ids are then left unknown.
        return await self._published_media(account, content, container_id, attempted_at, recorded, only=True)

    async def _earlier_went_out(self, account: AccountCredentials, content: PostContent, container_id: str,
                                attempted_at: datetime, *, attempt_id: str,
                                recorded: Collection[str] = ()) -> PublishOutcome | None:
        """The outcome of this attempt when an earlier attempt's container turns out published (or cannot be asked
        about now); None when it is not published, so a new container can be made."""
        asked = 0
        while True:
            asked += 1
            try:
                status, _ = await self._container_status(container_id, account.user_token)
                break
            except GraphCallFailed as failed:
                error = failed.error
            past_its_day = datetime.now(UTC) - attempted_at > CONTAINER_LIFETIME
            if past_its_day and not error.kind.retried_automatically:
                # Meta keeps a container a day: past that, an answer other than "try again" will not change.
                log.info("Instagram container %s of an earlier attempt cannot be read any more (%s): passed over",
                         container_id, error.message, extra={"attempt_id": attempt_id})
                return None
            # An answer that names no status, still so past the container's day, will not change either; asked again
            # and again, it would fail every new attempt. The account's media say whether that attempt went out.
            silent = past_its_day and error.message.endswith(NO_STATUS)
            if not is_unknown_object(error) and not silent:
                # Asked again with the next attempt: nothing was made or published by this one.
                return PublishOutcome.failed("instagram", error)
            if not silent and asked < EARLIER_CONTAINER_ASKS:
                # Meta at times says "does not exist" of a container it has (as while polling): asked again shortly.
                await asyncio.sleep(self._polling.interval_s * asked)
                continue
            # Said of a container of the last day (a glitch that lasts, or a token that cannot see it). The account's
            # media say it where they show nothing made while that attempt could publish, once that time (with the
            # clocks' skew after it) is over.
            since, until = self._window_of(attempted_at)
            early = (until - datetime.now(UTC)).total_seconds()
            media = None if early > 0 else await self._media_while(account, since, until, recorded)
            if media == NOTHING_MADE:
                log.info("Instagram container %s of an earlier attempt is unknown to Meta, and the account has no "
                         "media of that attempt's time: it did not go out", container_id,
                         extra={"attempt_id": attempt_id})
                return None
            # Else whether that attempt went out cannot be told, and a new container could be a second post. Not
            # published now.
            day_old = (attempted_at + CONTAINER_LIFETIME).astimezone(UTC)
            said = f" and the account's media are looked at from {until:%H:%M:%S} UTC" if media is None else ""
            # (Past its day, a container with no status stays so: until an operator settles it.)
            again = "; it is asked again with each attempt" + (
                "" if silent else f" until it is a day old ({day_old:%Y-%m-%d %H:%M} UTC)")
            return PublishOutcome.failed("instagram", error.model_copy(update={
                "kind": ErrorKind.TRANSIENT,
                # The service's next try waits until the media can say, as it waits out a platform's own wait.
                "retry_after_s": early + 1.0 if early > 0 else None,
                "message": f"{EARLIER_CONTAINER_UNKNOWN}{container_id} of an earlier "
                           f"attempt {'has no status' if silent else 'does not exist'}"
                           f"{f' and {media}' if media else ''}, so whether that attempt went out cannot be told"
                           f"{again}{said}: check the Instagram account meanwhile, and resolve that "
                           "attempt"[:MESSAGE_LENGTH]}))
        if status != "PUBLISHED":
            return None
        log.warning("Instagram container %s of an earlier attempt was published after all: not published again",
                    container_id, extra={"attempt_id": attempt_id})
        # Its media was made during that attempt: one of another time is never taken for it.
        latest = attempted_at + timedelta(seconds=self._polling.attempt_timeout_s) + CLOCK_SKEW
        return await self._published_media(account, content, container_id, attempted_at, recorded, only=True,
                                           latest=latest)

    def _window_of(self, attempted_at: datetime) -> tuple[datetime, datetime]:
        """When an attempt begun at `attempted_at` may have made a media: from its start to its lease's end (or its
        timeout's, if longer), with the clocks' skew either side."""
        lasts = max(timedelta(seconds=self._polling.attempt_timeout_s), self._lookup_window)
        return attempted_at - CLOCK_SKEW, attempted_at + lasts + CLOCK_SKEW

    async def _media_while(self, account: AccountCredentials, since: datetime, until: datetime,
                           recorded: Collection[str]) -> str:
        """`NOTHING_MADE` when the account's recent media show for certain that no media but those on record
        (`recorded`) was made between `since` and `until`: the listing answered, and reaches back past `since` (its
        last page, or a page that ends before then). Else why they cannot say so, as words for the attempt's message.
        Any other media of that time, whatever its caption (the post's may have been corrected since), leaves it
        open."""
        try:
            listing = await self._media_back_to(account, "id,timestamp", since)
        except GraphCallFailed as failed:
            return f"the account's media could not be read ({failed.error.message[:200]})"
        items = listing.get("data")
        if not isinstance(items, list) or not all(isinstance(item, dict) and "id" in item for item in items):
            return "the account's media could not be read (an answer without them)"
        times = [parse_meta_time(item.get("timestamp")) for item in items]
        if any(at is None for at in times):
            return "the account's media could not be read (a media without its time)"
        # A page may hold fewer media than asked for with more after it: only the absence of a next page says the
        # listing is whole. Else its last media (newest first; pinned ones come first) must be older than `since`.
        paging = listing.get("paging")
        more = isinstance(paging, dict) and bool(paging.get("next"))
        if more and not (times and (last := times[-1]) is not None and last < since):
            return "the account's newest media do not reach back to that attempt"
        if any(since <= at <= until and str(item["id"]) not in recorded
               for item, at in zip(items, times, strict=True) if at is not None):
            return "the account has a media of that attempt's time"
        return NOTHING_MADE

    async def _wait_until_ready(self, container_id: str, token: SecretStr, deadline: float) -> str:
        """FINISHED or PUBLISHED; ERROR, EXPIRED and a container still not ready at the `deadline` (event loop time,
        the polling's timeout after the attempt began) fail."""
        polling = self._polling
        loop = asyncio.get_running_loop()
        interval = polling.interval_s
        while True:
            try:
                status, detail = await self._container_status(container_id, token)
            except GraphCallFailed as failed:
                # Meta at times answers a container it has just made with "does not exist" (100/33): a glitch
                # of its own, polled through like a server error, and transient if it lasts.
                if is_unknown_object(failed.error) and failed.error.kind is not ErrorKind.TRANSIENT:
                    failed = GraphCallFailed(failed.error.model_copy(update={"kind": ErrorKind.TRANSIENT}))
                # A rate limit is not waited out here, polling on through it: the attempt fails with the
                # platform's wait, which the handler honours before trying again.
                if not failed.error.kind.retried_automatically or failed.error.kind is ErrorKind.RATE_LIMITED \
                        or loop.time() >= deadline:
                    raise failed from None
                status, detail = "IN_PROGRESS", ""
            if status in ("FINISHED", "PUBLISHED"):
                return status
            if status == "ERROR":
                raise GraphCallFailed(container_failed(detail))
            if status == "EXPIRED":
                raise GraphCallFailed(PlatformError(
                    kind=ErrorKind.TRANSIENT, subcode=2207020,
                    message="Instagram publish failed: the media container expired before it was published",
                ))
            now = loop.time()
            if now >= deadline:
                raise GraphCallFailed(PlatformError(
                    kind=ErrorKind.TRANSIENT,
                    message=f"Instagram media processing failed: not ready after "
                            f"{polling.timeout_s - (deadline - now):.0f} s",
                ))
            # Asked once more at the deadline, not given up on a wait that would pass it: the image gets the time the
            # attempt timeout leaves it.
            await asyncio.sleep(min(interval, deadline - now))
            interval = min(interval * polling.backoff, polling.max_interval_s)

    async def _publish_container(self, ig_user: str, container_id: str, token: SecretStr,
                                 may_have_published: bool) -> str | None:
        """The new media id; None when the container turns out to be published already.

        A refusal with a 5xx (this call's or the caller's first) may have published the container all the same,
        even while its status says not yet. From then on, a try that ends it all (a refusal that is not "try
        again", a status that cannot be asked) leaves the outcome unknown, unless the container's status says it
        went out: a known failure would make the handler publish a new container, and the post would go out
        twice.
        """
        retries = self._polling.publish_retries
        interval = self._polling.interval_s
        refusal: GraphCallFailed | None = None
        for attempt in range(retries + 1):
            try:
                body = await self._graph.post(
                    ig_user, "media_publish", token, data={"creation_id": container_id}, action="Instagram publish"
                )
                return created_id(body, "id", action="Instagram publish")
            except GraphCallFailed as failed:
                may_have_published = may_have_published or failed.outcome_unknown
                if failed.error.http_status is None:
                    # No answer at all. Unknown when this call may have reached Meta, and also when an earlier
                    # try's 5xx may have published the container: a connection refused now says nothing of that.
                    raise GraphCallFailed(failed.error, outcome_unknown=may_have_published) from None
                refusal = failed
                if not is_retry_same_container(failed.error) or attempt == retries:
                    break
            await asyncio.sleep(interval)
            interval = min(interval * self._polling.backoff, self._polling.max_interval_s)
            # A container is published at most once, so asking again is safe.
            if await self._went_out(container_id, token, may_have_published):
                return None
        assert refusal is not None
        # Asked once more before the refusal is taken for the attempt's failure: a try Meta refused may have
        # published it all the same ("already published" then follows), and its status can lag behind.
        try:
            if await self._went_out(container_id, token, may_have_published):
                return None
        except GraphCallFailed:
            if may_have_published:
                raise
            # The status could not be asked; the refusal stands (the next attempt asks again before publishing).
        raise GraphCallFailed(refusal.error, outcome_unknown=may_have_published)

    async def _went_out(self, container_id: str, token: SecretStr, may_have_published: bool) -> bool:
        """Whether the container is published; a status that cannot be asked keeps an unknown outcome unknown."""
        try:
            status, _ = await self._container_status(container_id, token)
        except GraphCallFailed as unclear:
            raise GraphCallFailed(unclear.error, outcome_unknown=may_have_published or unclear.outcome_unknown) \
                from None
        return status == "PUBLISHED"

    async def _container_status(self, container_id: str, token: SecretStr) -> tuple[str, str]:
        action = "Instagram media status check"
        body = await self._graph.get(container_id, None, token, params={"fields": "status_code,status"}, action=action)
        status = body.get("status_code")
        if not isinstance(status, str) or not status:
            # An answer that says nothing of the container is no "not published yet": taken for one, a look-up would
            # find the attempt did not go out, and a new container would be published beside a post already out.
            raise GraphCallFailed(PlatformError(
                kind=ErrorKind.TRANSIENT, http_status=200, message=f"{action} failed: 200 - {NO_STATUS}"))
        return status, str(body.get("status") or "")

    async def _published_media(
        self, account: AccountCredentials, content: PostContent, container_id: str, attempted_at: datetime,
        recorded: Collection[str] = (), only: bool = False, latest: datetime | None = None,
    ) -> PublishOutcome:
        """The media a PUBLISHED container became: the account's recent media matched by caption and time.

        It went out for certain; where the media cannot be told (no caption to match, the listing failed, or
        with `only` more than one media matches, as after a forced republish of the same caption a minute
        before), its ids are left unknown rather than guessed.
        """
        if not content.caption.strip():
            return PublishOutcome.published("instagram", None, None, container_id)
        try:
            listing = await self._media_back_to(account, "id,caption,timestamp,permalink", attempted_at - CLOCK_SKEW)
        except GraphCallFailed:
            # It went out for certain; the ids can be filled in later, a second publish cannot be undone.
            return PublishOutcome.published("instagram", None, None, container_id)
        items = listing.get("data")
        if latest is not None and isinstance(items, list):
            items = [item for item in items if isinstance(item, dict)
                     and (at := parse_meta_time(item.get("timestamp"))) is not None and at <= latest]
        media = earliest_match(items, content.caption, attempted_at - CLOCK_SKEW,
                               time_field="timestamp", text_field="caption", exclude=recorded, only=only)
        if media is None:
            return PublishOutcome.published("instagram", None, None, container_id)
        return PublishOutcome.published(
            "instagram", answered_id(media["id"]), answered_link(media.get("permalink")), container_id)

    async def _until_room(self, account: AccountCredentials, error: PlatformError) -> PlatformError:
        """`error`, where it is Instagram's publishing limit, waiting until the account has room again if its limit and
        media tell when: the limit counts the posts of a rolling window (a day), so room comes back as the oldest of
        them leave it. An estimate (the media listed include posts made in Instagram's app, which the limit does not
        count): tried then, a post still refused is read again. Never sooner than a wait Meta's headers gave."""
        if error.subcode != IG_DAILY_LIMIT:
            return error
        try:
            limit = await self._graph.get(account.ig_user_id or "", "content_publishing_limit", account.user_token,
                                          params={"fields": "quota_usage,config"},
                                          action="Instagram publishing limit")
            listing = await self._media_of_the_day(account)
        except GraphCallFailed:
            return error  # the limit's own wait stands
        room = _room_again(limit, listing, datetime.now(UTC))
        if room is None:
            return error
        wait = max((room - datetime.now(UTC)).total_seconds(), 0.0) + QUOTA_MARGIN_S
        if error.retry_after_s is not None and error.retry_after_s != IG_DAILY_LIMIT_WAIT_S:
            # A wait Meta's headers gave (the app's usage at 100%, say) is not cut short.
            wait = max(wait, error.retry_after_s)
        return error.model_copy(update={
            "retry_after_s": wait,
            "message": f"{error.message} (room again from {room:%Y-%m-%d %H:%M} UTC)"[:MESSAGE_LENGTH]})

    async def _media_of_the_day(self, account: AccountCredentials) -> dict[str, Any]:
        """The account's media of the last day (their ids and times), newest first (`_media_back_to`)."""
        return await self._media_back_to(account, "id,timestamp", datetime.now(UTC) - timedelta(seconds=DAY_SECONDS),
                                         "Instagram publishing limit")

    async def _media_back_to(self, account: AccountCredentials, fields: str, start: datetime,
                             action: str = "Instagram post lookup") -> dict[str, Any]:
        """The account's media (their `fields`), newest first, read page by page until one reaches back past `start`
        or none follows (at most `QUOTA_PAGES`): as one listing, with the last page's `paging`, which says whether
        more follow. `GraphCallFailed` if refused."""
        params = {"fields": fields, "limit": str(QUOTA_PAGE_SIZE)}
        items: list[Any] = []
        listing: dict[str, Any] = {}
        for _ in range(QUOTA_PAGES):
            listing = await self._graph.get(account.ig_user_id or "", "media", account.user_token, params=params,
                                            action=action)
            page = listing.get("data")
            if not isinstance(page, list):
                return listing
            items.extend(page)
            times = [parse_meta_time(item.get("timestamp")) for item in page if isinstance(item, dict)]
            paging = listing.get("paging")
            following = next_page(paging) if isinstance(paging, dict) and paging.get("next") else {}
            # By the page's last media: pinned ones, however old, come first. A next page asked with the same cursor
            # again would answer the same page.
            if not following or (times and times[-1] is not None and times[-1] < start) \
                    or all(params.get(k) == v for k, v in following.items()):
                break
            params = {"fields": fields, "limit": str(QUOTA_PAGE_SIZE), **following}
        return {"data": items, **({"paging": listing["paging"]} if "paging" in listing else {})}

    async def _permalink(self, media_id: str, token: SecretStr) -> str | None:
        try:
            body = await self._graph.get(media_id, None, token, params={"fields": "permalink"},
                                         action="Instagram permalink")
        except GraphCallFailed:
            return None
        return answered_link(body.get("permalink"))


def _room_again(limit: dict[str, Any], listing: dict[str, Any], now: datetime) -> datetime | None:
    """When an account at its publishing limit has room again, from `content_publishing_limit` (its usage, total
    and window) and its newest media (newest first); None when they cannot tell: no usage at the limit, a listing
    that does not reach back across the window, or one with fewer posts in it than the limit counts."""
    entries = limit.get("data")
    entry: dict[str, Any] = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) \
        else {}
    config: dict[str, Any] = entry["config"] if isinstance(entry.get("config"), dict) else {}
    usage, total = _count(entry.get("quota_usage")), _count(config.get("quota_total"))
    duration = _count(config.get("quota_duration", DAY_SECONDS))
    if usage is None or total is None or duration is None or usage < total or not 0 < duration <= DAY_SECONDS:
        return None
    items = listing.get("data")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return None
    times = [parse_meta_time(item.get("timestamp")) for item in items]
    if any(at is None for at in times):
        return None
    start = now - timedelta(seconds=duration)
    paging = listing.get("paging")
    whole = not (isinstance(paging, dict) and paging.get("next"))
    known = [at for at in times if at is not None]
    if not whole and not (known and min(known) < start):
        return None
    counted = sorted(at for at in known if at >= start)
    # Room for one more post once `usage - total + 1` of those counted have left the window. Fewer listed than the
    # limit counts (a post deleted since, a story): which are missing cannot be told.
    gone = usage - total
    if len(counted) < usage:
        return None
    return counted[gone] + timedelta(seconds=duration)


def _count(value: Any) -> int | None:
    """A whole number of Meta's answer (not a bool, not negative); None for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _not_connected(action: str) -> PlatformError:
    # As Facebook's `_no_page`: the account is connected again, with its Instagram account.
    return PlatformError(kind=ErrorKind.AUTH,
                         message=f"{action} failed: {not_connected('instagram')}")
