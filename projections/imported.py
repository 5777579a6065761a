"""Stored account tokens kept out of what an imported old-system document becomes.

The fold scrubs old texts by the shapes of secrets alone (`scrub_shapes`), so that a replay folds the same
events into the same states anywhere. A stored token of another shape (the sandbox's, a token Meta issues
in a new format) can only be recognised by the tokens the service holds, which are not in the events: the
projector and replay use the tokens they read from the credential store, before the fold sees the event.
An import whose content (what a retry would publish) carries a token is refused instead: scrubbed, the post
would go out with "[redacted]" in it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from publishers.redact import MIN_MATCHED_TOKEN, REDACTED, secret_field
from schemas.events import Event, LegacyInsightsImported


def refused_import(event: Event, secrets: Collection[str]) -> str | None:
    """Why an imported post is refused (its content carries one of `secrets`, or a token of Meta's shape), or None."""
    if type(event) is not LegacyInsightsImported:
        return None
    field = secret_field(event.content, secrets)
    if field is None:
        return None
    return (f"LegacyInsightsImported {event.event_id}: its content carries an access token (in its {field}), which a "
            "retry would publish: import the post again without it")


def without_secrets(event: Event, secrets: Collection[str]) -> Event:
    """`event` with each of `secrets` replaced by `[redacted]` in an imported document's texts.

    Only the texts: a key is the old system's field name, not something it wrote down. A secret as short as a
    word ("summer") is left alone, as `secret_field` leaves it: it would take words out of every text.
    """
    if type(event) is not LegacyInsightsImported:
        return event
    # Longest first: a secret inside another must not leave the rest of that one behind.
    ordered = sorted((s for s in secrets if len(s) >= MIN_MATCHED_TOKEN), key=len, reverse=True)
    if not ordered:
        return event
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
    return event.model_copy(update={"document": document}) if changed else event
