"""Shapes of the HTTP API's answers, as the seed's "API Response" section shows them."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from schemas.common import Frozen, Platform, PublishTarget
from schemas.insights import PostStatus, PublishResult


class PostSummary(Frozen):
    id: str
    status: PostStatus
    error_message: str | None = None


class RetryInfo(Frozen):
    """`retry_info`: the seed's three fields, plus per-platform counts that the seed's single number hides."""

    is_retry: bool
    # Publish attempts made for this post before the one this answer reports (the seed counted results).
    previous_attempts: int
    retried_platform: PublishTarget | None = None
    attempts_by_platform: dict[Platform, int] = Field(default_factory=dict)
    retries_by_platform: dict[Platform, int] = Field(default_factory=dict)


class PublishResponse(Frozen):
    """`success`, `post`, `results` per platform and, for a retry, `retry_info`."""

    success: bool
    post: PostSummary
    results: dict[Platform, PublishResult]
    retry_info: RetryInfo | None = None
    command_id: str | None = None
    # Set when the answer was given before every result arrived (HTTP 202): where to look next.
    pending: bool = False
    location: str | None = None
    # What the command waits for, when it is more than the platforms (a retry queued behind the post's own
    # automatic retry, which waits out the platform's rate limit); or, once decided, that it published nothing
    # ("Nothing to retry: ...").
    note: str | None = None

    def to_document(self) -> dict[str, Any]:
        """The seed's JSON: absent fields left out, except `post.error_message`, null once all succeeded."""
        document = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        document["post"]["error_message"] = self.post.error_message
        return document
