"""Stored account tokens kept out of what an imported old-system document becomes.

The fold scrubs old texts by the shapes of secrets alone (`scrub_shapes`), so that a replay folds the same
events into the same states anywhere. A stored token of another shape (the sandbox's, a token Meta issues
in a new format) can only be recognised by the tokens the service holds, which are not in the events: the
projector and replay take them out with the tokens they read from the credential store, before the fold
sees the event. Only texts change, never whether the post exists: a projection rebuilt after a token was
stored has the same posts, with less in their texts.

The content an import brings (what a retry publishes) loses its tokens too, and the fields that lost one are
listed for the fold (`TAKEN_OUT` in the document): a retry that would publish one of them as it is, is
refused until the retry corrects it (`taken_out`).
"""

from __future__ import annotations

from collections.abc import Collection

from pydantic import ValidationError

from projections.fold import CONTENT_FIELDS, TAKEN_OUT
from projections.state import PostState
from publishers.redact import (
    MIN_MATCHED_TOKEN,
    REDACTED,
    REDACTED_IN_URL,
    map_strings,
    secret_forms,
    without_escaped,
    without_tokens,
)
from schemas.commands import PostContent
from schemas.common import Platform
from schemas.events import Event, LegacyInsightsImported

# The fields each platform publishes: Instagram has no link.
PUBLISHED: dict[Platform, tuple[str, ...]] = {"facebook": CONTENT_FIELDS, "instagram": ("caption", "image_url")}


def without_secrets(event: Event, secrets: Collection[str]) -> Event:
    """`event` with each of `secrets` replaced by `[redacted]` in an imported document's texts, and in its content
    those and any token of Meta's shape, the fields that lost one listed in the document under `TAKEN_OUT`.

    Only texts: a key is the old system's field name, not something it wrote down. A secret as short as a word
    ("summer") is left alone, as `secret_field` leaves it: it would take words out of every text.
    """
    if type(event) is not LegacyInsightsImported:
        return event
    # Longest first: a secret inside another must not leave the rest of that one behind. Written URL-encoded too.
    # (Ties in their own order: a set's changes from process to process, and a fold must not.)
    ordered = sorted({form for s in secrets if len(s) >= MIN_MATCHED_TOKEN for form in secret_forms(s)},
                     key=lambda form: (-len(form), form))

    changed: list[bool] = []

    def clean(value: str) -> str:
        for secret in ordered:
            if secret in value:
                value = value.replace(secret, REDACTED)
                changed.append(True)
        # Spelled with more escapes than any of its forms has ("token%2Dvalue").
        if (unescaped := without_escaped(value, ordered)) != value:
            value = unescaped
            changed.append(True)
        return value

    document = map_strings(event.document, clean) if ordered else event.document
    content, lost = _content_without(event.content, ordered)
    if not changed and not lost and TAKEN_OUT not in document:
        return event
    # Only this says which fields lost a token: what upstream wrote under the key is not taken for it.
    document = {**{k: v for k, v in document.items() if k != TAKEN_OUT}, **({TAKEN_OUT: lost} if lost else {})}
    return event.model_copy(update={"document": document, "content": content})


def _content_without(content: PostContent | None, ordered: list[str]) -> tuple[PostContent | None, list[str]]:
    """The content with its tokens taken out, and the fields that lost one."""
    if content is None:
        return None, []
    values = content.model_dump()
    lost = []
    for name in CONTENT_FIELDS:
        value = values.get(name)
        if isinstance(value, str) and (cleaned := without_tokens(value, ordered)) != value:
            values[name] = cleaned if name == "caption" else cleaned.replace(REDACTED, REDACTED_IN_URL)
            lost.append(name)
    if not lost:
        return content, []
    try:
        return PostContent.model_validate(values), lost
    except ValidationError:
        # An address that is none without its token: left out, as the post could not use it anyway.
        for name in ("image_url", "link"):
            if name in lost:
                values[name] = None
        try:
            return PostContent.model_validate(values), lost
        except ValidationError:
            return None, lost


def taken_out(state: PostState | None, content: PostContent | None, platforms: Collection[Platform]) -> str | None:
    """Why `content` may not be published on `platforms`: a field of it they publish is the imported post's own,
    as it is, with a token taken out of it; None otherwise."""
    if state is None or not state.taken_out or state.content is None or content is None:
        return None
    published = {name for platform in platforms for name in PUBLISHED[platform]}
    for name in state.taken_out:
        value = getattr(content, name)
        # As it is, or corrected around what was taken out ("Autumn sale [redacted]" with a word changed).
        if name in published and value is not None and (
                value == getattr(state.content, name) or (REDACTED if name == "caption" else REDACTED_IN_URL) in value):
            return (f"content.{name} had an access token taken out when the post was imported: send it again with "
                    f"content.{name} corrected")
    return None
