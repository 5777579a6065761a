"""Stored account tokens taken out of an imported old-system document before it is folded.

The fold scrubs old texts by the shapes of secrets alone (`scrub_shapes`), so that a replay folds the same
events into the same states anywhere. A stored token of another shape (the sandbox's, a token Meta issues
in a new format) can only be recognised by the tokens the service holds, which are not in the events: the
projector and replay take them out here, with the tokens they read from the credential store, before the
fold sees the event.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from publishers.redact import REDACTED
from schemas.events import Event, LegacyInsightsImported


def without_secrets(event: Event, secrets: Collection[str]) -> Event:
    """`event` with each of `secrets` replaced by `[redacted]` in an imported document's texts and content."""
    if type(event) is not LegacyInsightsImported or not secrets:
        return event
    # Longest first: a secret inside another must not leave the rest of that one behind.
    ordered = sorted((s for s in secrets if s), key=len, reverse=True)
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
            return {clean(key): clean(item) for key, item in value.items()}
        return value

    document = clean(event.document)
    content = event.content
    if content is not None:
        fields = {name: clean(value) for name in ("caption", "image_url", "link")
                  if isinstance(value := getattr(content, name), str)}
        content = content.model_copy(update=fields)
    if not changed:
        return event
    return event.model_copy(update={"document": document, "content": content})
