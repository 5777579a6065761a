"""Stored account tokens kept out of what an imported old-system document becomes.

The fold scrubs old texts by the shapes of secrets alone (`scrub_shapes`), so that a replay folds the same
events into the same states anywhere. A stored token of another shape (the sandbox's, a token Meta issues
in a new format) can only be recognised by the tokens the service holds, which are not in the events: the
projector and replay take them out with the tokens they read from the credential store, before the fold
sees the event. Only texts change, never whether the post exists: a projection rebuilt after a token was
stored has the same posts, with less in their texts.

The content an import brings (what a retry publishes) has its tokens replaced by "[redacted]" too; a retry
that would publish such a field as it is, is refused until the retry corrects it (`taken_out`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from projections.state import PostState
from publishers.redact import MIN_MATCHED_TOKEN, REDACTED, without_tokens
from schemas.commands import PostContent
from schemas.events import Event, LegacyInsightsImported

CONTENT_FIELDS = ("caption", "image_url", "link")


def without_secrets(event: Event, secrets: Collection[str]) -> Event:
    """`event` with each of `secrets` replaced by `[redacted]` in an imported document's texts, and in its content
    those and any token of Meta's shape.

    Only texts: a key is the old system's field name, not something it wrote down. A secret as short as a word
    ("summer") is left alone, as `secret_field` leaves it: it would take words out of every text.
    """
    if type(event) is not LegacyInsightsImported:
        return event
    # Longest first: a secret inside another must not leave the rest of that one behind.
    ordered = sorted((s for s in secrets if len(s) >= MIN_MATCHED_TOKEN), key=len, reverse=True)
    changes: dict[str, Any] = {}
    if ordered:
        changed: list[bool] = []

        def clean(value: Any) -> Any:
            if isinstance(value, str):
                for secret in ordered:
                    if secret in value:
                        value = value.replace(secret, REDACTED)
                        changed.append(True)
                return value
            if isinstance(value, list):
                return [clean(item) for item in value]
            if isinstance(value, dict):
                return {key: clean(item) for key, item in value.items()}
            return value

        document = clean(event.document)
        if changed:
            changes["document"] = document
    content = event.content
    if content is not None:
        fields = {name: cleaned for name in CONTENT_FIELDS if isinstance(value := getattr(content, name), str)
                  and (cleaned := without_tokens(value, ordered)) != value}
        if fields:
            changes["content"] = content.model_copy(update=fields)
    return event.model_copy(update=changes) if changes else event


def taken_out(state: PostState | None, content: PostContent | None) -> str | None:
    """Why `content` may not be published: a field of it is the imported post's own, with a token taken out of
    it ("[redacted]"), which a retry must correct; None otherwise."""
    if state is None or not state.legacy or state.content is None or content is None:
        return None
    for name in CONTENT_FIELDS:
        value = getattr(content, name)
        if isinstance(value, str) and REDACTED in value and value == getattr(state.content, name):
            return (f"content.{name} had an access token taken out when the post was imported ({REDACTED}): send "
                    f"it again with content.{name} corrected")
    return None
