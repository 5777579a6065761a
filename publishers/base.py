"""The one interface every platform client implements: publish a post, and find one whose outcome is unknown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from pydantic import SecretStr

from publishers.redact import register_secret
from schemas.commands import PostContent
from schemas.common import Platform
from schemas.events import PlatformError

if TYPE_CHECKING:
    import httpx

    from publishers.instagram import ContainerPolling

OnContainer = Callable[[str], Awaitable[None]]
# Called with (account id, token) for a token the publisher obtained from Meta (a Page token): kept by the service,
# so that every process knows it as a secret.
OnObtainedToken = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class AccountCredentials:
    """An account's user token and the Page and Instagram user it publishes to.

    Built only at the edge that reads the credential store; the token is a `SecretStr`, so the repr
    shows stars, and it is registered with the scrubber so no log line or error can carry it.
    """

    account_id: str
    user_token: SecretStr = field(repr=False)
    page_id: str | None = None
    ig_user_id: str | None = None

    def __post_init__(self) -> None:
        register_secret(self.user_token.get_secret_value())


@dataclass(frozen=True)
class PublishOutcome:
    """What one platform call came to: the platform's post id and permalink, or a classified error.

    `outcome_unknown` is True when the request may have reached the platform but no answer came back
    (timeout after sending, connection dropped): the post may exist, so resolve it with
    `Publisher.find_existing` before publishing again.
    """

    platform: Platform
    success: bool
    platform_post_id: str | None = None
    permalink: str | None = None
    error: PlatformError | None = None
    container_id: str | None = None
    outcome_unknown: bool = False

    @classmethod
    def published(
        cls, platform: Platform, post_id: str | None, permalink: str | None, container_id: str | None = None
    ) -> PublishOutcome:
        return cls(platform=platform, success=True, platform_post_id=post_id, permalink=permalink,
                   container_id=container_id)

    @classmethod
    def failed(
        cls, platform: Platform, error: PlatformError, container_id: str | None = None, *, outcome_unknown: bool = False
    ) -> PublishOutcome:
        return cls(platform=platform, success=False, error=error, container_id=container_id,
                   outcome_unknown=outcome_unknown)


class Publisher(Protocol):
    """A platform client. Platform errors come back classified in the outcome; they are never raised."""

    platform: Platform
    # Whether `find_existing` tells an attempt's post by its caption and time (no platform handle to ask): then
    # another post of the service's with the same caption, published at the same time, makes it ambiguous.
    finds_by_caption: bool

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
        """Publishes `content`; `on_container` is awaited with a platform-side handle as soon as one exists.

        `earlier_containers`: the handles (and start times) of the post's earlier attempts on this platform that
        failed, newest first. A platform whose handle says for certain whether it went out asks first, and does not
        publish again when one did. `recorded`: the platform's posts the post already has, never taken for the one a
        handle made where it is looked for by caption.
        """
        ...

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
        """Whether an attempt whose outcome is unknown went out. `recorded`: the platform's post ids the post
        already has (an earlier attempt's), which are never this attempt's.

        A successful outcome: it did (with the post's id and permalink where the platform tells them).
        None: it did not, so publishing again creates no duplicate. A failed outcome: the platform could
        not be asked (the error says why); ask again later rather than publish.
        """
        ...


def build_publishers(
    client: httpx.AsyncClient, base_url: str, version: str, *, polling: ContainerPolling | None = None,
    lookup_window: timedelta | None = None, on_obtained_token: OnObtainedToken | None = None,
) -> dict[Platform, Publisher]:
    """One publisher per platform, all sharing `client` (its timeouts apply to every Graph API call).

    `lookup_window`: how long after an attempt began its post can still appear (the attempt lease).
    `on_obtained_token`: told of each Page token fetched (see `OnObtainedToken`).
    """
    from publishers.facebook import FacebookPagePublisher
    from publishers.graph import LOOKUP_WINDOW
    from publishers.instagram import InstagramPublisher

    return {
        "facebook": FacebookPagePublisher(client, base_url, version, lookup_window=lookup_window or LOOKUP_WINDOW,
                                          on_obtained_token=on_obtained_token),
        "instagram": InstagramPublisher(client, base_url, version, polling,
                                        lookup_window=lookup_window or LOOKUP_WINDOW),
    }
