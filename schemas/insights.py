"""The insights document of a post, exactly as the seed's "Data Structure" section shows it."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ConfigDict, Field

from schemas.common import Frozen, Identifier, Platform, Timestamp

PostStatus = Literal["publishing", "posted", "failed"]


class PublishResult(Frozen):
    """The latest result of one platform: `postId`/`permalink` on success, `error` on failure."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    platform: Platform
    success: bool
    error: str | None = None
    post_id: str | None = Field(default=None, alias="postId")
    permalink: str | None = None


class Insights(Frozen):
    """`insights`: the merged per-platform results and the ids the rest of the product reads."""

    publish_results: list[PublishResult] = Field(default_factory=list)
    published_at: Timestamp | None = Field(default=None, description=(
        "When the post first went live on a platform: the `occurred_at` of its first successful PlatformResult "
        "(for a result found after an interrupted attempt, when it was found). Never changes after: an import "
        "sets the old document's only on a post that has none yet. Absent until then"))
    last_retry_at: Timestamp | None = Field(default=None, description=(
        "When the latest result (success or failure) of a retry attempt came in: the `occurred_at` of the newest "
        "PlatformResult of an attempt with `is_retry` or `forced`: a user's retry, a forced republish, or the "
        "service's own automatic retry. An import sets the old document's on a post that has none yet; a later "
        "retry's result replaces it. Absent until then"))
    facebook_post_id: str | None = None
    instagram_media_id: str | None = None
    instagram_permalink: str | None = None


class PostInsights(Frozen):
    """The post's document: `insights`, `status`, `error_message` and `post_url`."""

    insights: Insights = Field(default_factory=Insights)
    status: PostStatus = Field(default="publishing", description=(
        "`publishing` while a platform has an attempt without a result, or was chosen and not attempted yet; else "
        "`failed` when a platform's latest result failed, also while the service will publish it again by itself "
        "(a transient error or a rate limit, attempts left: this document carries no time for that, the API's "
        "GET /posts/{id} `automatic_retry` does); else `posted` once every targeted platform's latest result "
        "succeeded"))
    error_message: str | None = None
    post_url: str | None = None

    def to_document(self) -> dict[str, Any]:
        """The seed's JSON: absent fields left out, except `error_message`, which is null once all succeeded."""
        document = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        document["error_message"] = self.error_message
        keys = ("insights", "status", "error_message", "post_url")
        ordered: dict[str, Any] = {key: document[key] for key in keys if key in document}
        return ordered

    def to_json(self, post_id: str | None = None) -> bytes:
        """`to_document()` as JSON bytes (UTF-8), led by `post_id` when given: as the insights topic carries it.

        Written by pydantic's serializer, not through a dict and `json.dumps`: the projector writes one
        per changed post per batch, and this is about three times faster.
        """
        parts = ['{"post_id":', json.dumps(post_id, ensure_ascii=False), ","] if post_id is not None else ["{"]
        parts += ['"insights":', self.insights.model_dump_json(by_alias=True, exclude_none=True),
                  ',"status":"', self.status, '","error_message":', json.dumps(self.error_message, ensure_ascii=False)]
        if self.post_url is not None:
            parts += [',"post_url":', json.dumps(self.post_url, ensure_ascii=False)]
        parts.append("}")
        return "".join(parts).encode()


class InsightsMessage(PostInsights):
    """A message of the insights topic (keyed by post id): the post's document, led by its `post_id`."""

    post_id: Identifier
