"""One valid instance of every command and event, for round-trip and contract tests."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from schemas.commands import (
    ForceRepublishRequested,
    PostContent,
    PublishRequested,
    ResolveAttemptRequested,
    RetryRequested,
)
from schemas.common import ErrorKind
from schemas.events import (
    AttemptOutcomeUnknown,
    CommandDecided,
    ContainerCreated,
    LegacyInsightsImported,
    PlatformError,
    PlatformResult,
    PostSubmitted,
    PublishAttempted,
)

POST_ID = "01KA8MNE2DT1E31F8Z3TJHF96E"
AT = datetime(2025, 11, 17, 10, 10, 13, 151000, tzinfo=UTC)
CONTENT = PostContent(caption="Autumn sale starts today", image_url="https://cdn.example.com/autumn sale.jpg")


def all_commands() -> list[BaseModel]:
    return [
        PublishRequested(command_id="cmd-1", post_id=POST_ID, publish_target="both", content=CONTENT,
                         account="acme", requested_at=AT),
        RetryRequested(command_id="cmd-2", post_id=POST_ID, requested_at=AT,
                       content=CONTENT.model_copy(update={"image_url": "https://cdn.example.com/autumn-sale.jpg"})),
        ForceRepublishRequested(command_id="cmd-3", post_id=POST_ID, requested_at=AT, reason="testing"),
        ResolveAttemptRequested(command_id="cmd-4", post_id=POST_ID, requested_at=AT, platform="facebook",
                                attempt_id="a2", published=True, platform_post_id="747917475065823_122104567890123",
                                note="found on the Page"),
    ]


def all_events() -> list[BaseModel]:
    return [
        PostSubmitted(event_id="e1", post_id=POST_ID, occurred_at=AT, command_id="cmd-1", publish_target="both",
                      content=CONTENT, account="acme"),
        CommandDecided(event_id="e2", post_id=POST_ID, occurred_at=AT, command_id="cmd-1",
                       command_type="PublishRequested", platforms=("facebook", "instagram")),
        PublishAttempted(event_id="e3", post_id=POST_ID, occurred_at=AT, platform="instagram", attempt_id="a1",
                         attempt_number=1, command_id="cmd-1", reason="first publish"),
        ContainerCreated(event_id="e4", post_id=POST_ID, occurred_at=AT, platform="instagram", attempt_id="a1",
                         container_id="17889455560051444"),
        PlatformResult(event_id="e5", post_id=POST_ID, occurred_at=AT, platform="instagram", attempt_id="a1",
                       success=True, platform_post_id="18107758234627017",
                       permalink="https://www.instagram.com/p/DRJ1nlKDgY9/"),
        PlatformResult(event_id="e6", post_id=POST_ID, occurred_at=AT, platform="facebook", attempt_id="a2",
                       success=False, error=PlatformError(
                           kind=ErrorKind.INVALID_MEDIA, code=324, http_status=400,
                           message="Facebook photo upload failed: 400 - Missing or invalid image file")),
        PlatformResult(event_id="e9", post_id=POST_ID, occurred_at=AT, platform="facebook", attempt_id="a3",
                       success=True, platform_post_id="747917475065823_122104567890123", resolved_by="cmd-4"),
        AttemptOutcomeUnknown(event_id="e8", post_id=POST_ID, occurred_at=AT, platform="facebook", attempt_id="a2",
                              error=PlatformError(kind=ErrorKind.AUTH, code=190, http_status=401,
                                                  message="Facebook post lookup failed: Invalid OAuth access token")),
        LegacyInsightsImported(event_id="e7", post_id="legacy-1", occurred_at=AT, publish_target="both",
                               document={"insights": {}, "status": "failed"}),
    ]
