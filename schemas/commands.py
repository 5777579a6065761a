"""Commands on the commands topic: what upstream services and people ask the service to do."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, ConfigDict, Field, Strict, model_validator

from schemas.common import Frozen, Identifier, Platform, PublishTarget, Timestamp

COMMAND_SCHEMA_VERSION = 1

# Instagram's own caption limit; Facebook's is far larger, so this one applies to both targets.
INSTAGRAM_CAPTION_LIMIT = 2200
# The longest text a Facebook post takes.
FACEBOOK_TEXT_LIMIT = 63206
# Instagram refuses a caption with more hashtags than this.
INSTAGRAM_HASHTAG_LIMIT = 30
HASHTAG = re.compile(r"(?<![\w#])#\w+")


def _http_url(value: str) -> str:
    # Blanks around a pasted address are no part of it (Facebook would refuse the image for them); inside, they are.
    value = value.strip()
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"must be an http(s) URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL")
    return value


# Characters that print as nothing though Unicode files them as letters or symbols: the Hangul fillers and the braille
# blank.
_BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def says_nothing(text: str) -> bool:
    """Whether `text` shows nothing: blanks, and characters that print as nothing (a zero-width space, a combining mark
    with nothing to mark, a Hangul filler), alone."""
    return all(c.isspace() or c in _BLANK_LOOKING or unicodedata.category(c) in ("Cf", "Cc", "Zs", "Zl", "Zp", "Mn",
                                                                                  "Me")
               for c in text)


def text_problem(text: str) -> str | None:
    """What makes a text (a caption, a republish's reason) one no platform shows as written: a control character
    other than a tab or a line break; None when it is fine. Checked where commands come in, as `url_problem` is."""
    found = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
    if found is None:
        return None
    return f"holds the control character U+{ord(found):04X}, which no platform shows: take it out"


def url_problem(value: str) -> str | None:
    """What makes an http(s) address one no platform can fetch; None when it is fine.

    Checked where posts come in (the API, and the handler's decision for a command written on Kafka), not by the
    schema: events keep the content they were given, and an
    event written before a check existed must still be read (by the projector, by replay) as it was then.
    Blanks inside the path are the platform's to judge (the seed's image URL has one), never in the host.
    """
    parts = urlsplit(value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F or unicodedata.category(c) in ("Zl", "Zp") for c in value):
        return "must be one line: it holds a control character (a line break, a tab)"
    if any(unicodedata.category(c) == "Cf" for c in value):
        return "holds an invisible formatting character (a zero-width space, a direction mark): type the address again"
    host = parts.hostname or ""
    # Only the host is quoted, never a user name, password or port: any of them may be a token pasted there, and the
    # answer is shown.
    if not host:
        return "must name a host: the address names none"
    if any(c.isspace() or c in "<>\"{}|\\^`" for c in host):
        return f"must name a host: {host!r} is not one (a space or a stray character in it?)"
    try:
        port = parts.port  # out of range or not a number raises
    except ValueError:
        port = 0
    if port == 0:
        return f"has an invalid port: what follows {host!r} and a colon is no port (a number from 1 to 65535)"
    return None


# The longest address a command (and so a result an operator gives) may carry.
ADDRESS_LIMIT = 2048
# Not JSON Schema's "uri" format: an address with a blank in its path (the seed's image URL) is taken, and the
# platform says whether it can fetch it.
HttpUrlText = Annotated[str, Field(max_length=ADDRESS_LIMIT, description="an http:// or https:// address",
                                   json_schema_extra={
    # What `_http_url` takes: the scheme (any case) and a host, blanks around the address allowed.
    "pattern": r"^\s*[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s]"}), AfterValidator(_http_url)]


class PostContent(Frozen):
    """What gets published: a caption with an image (Instagram needs one) and, for Facebook, a link.

    On Facebook a post with an image and a link is a photo whose text is the caption followed by the link
    (a photo post has no link field); Instagram publishes the caption and image only.
    """

    # `_not_empty`, in the JSON Schema too.
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        # A character `str.strip` keeps: ECMAScript's \s (most validators') lacks \x1c-\x1f and \x85, Python's has them.
        {"properties": {"caption": {"pattern": r"[^\s\x1c-\x1f\x85]"}}},
        {"required": ["image_url"], "properties": {"image_url": {"type": "string"}}},
        {"required": ["link"], "properties": {"link": {"type": "string"}}},
    ]})

    caption: str = Field(max_length=FACEBOOK_TEXT_LIMIT)
    image_url: HttpUrlText | None = None
    link: HttpUrlText | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> PostContent:
        if not self.caption.strip() and self.image_url is None and self.link is None:
            raise ValueError("content is empty: give a caption, an image_url or a link")
        return self


def facebook_text(content: PostContent) -> str:
    """The text of the post on the Page: the caption, and a photo's link after it.

    A photo post has no link field (only a feed post has), so a link given with an image goes into the
    text, where it is still a link, rather than being left out. The look-up matches this same text.
    """
    if content.image_url and content.link and content.link not in content.caption:
        return f"{content.caption.rstrip()}\n\n{content.link}" if content.caption.strip() else content.link
    return content.caption


def corrected(content: PostContent | None, correction: PostContent | None) -> PostContent | None:
    """A post's content once a retry's corrected content applies: the fields the correction gives replace the
    post's, and an `image_url` or `link` it leaves out keeps the post's (given as null, it is removed)."""
    if correction is None or content is None:
        return correction or content
    kept = {name: getattr(content, name) for name in ("image_url", "link") if name not in correction.model_fields_set}
    return correction.model_copy(update=kept) if kept else correction


def content_problem(content: PostContent, target: PublishTarget | None, *,
                    publishing: PublishTarget | None = None) -> str | None:
    """Why the post's `target` platforms cannot take `content`, or None. `publishing` names the platforms a retry
    publishes now, when only some: the caption need only fit those (Instagram's limits do not bind a retry of
    Facebook alone), while a post for Instagram keeps an image whichever it publishes now. None: a new post."""
    now = target if publishing is None else publishing
    if now in ("facebook", "both") and len(facebook_text(content)) > FACEBOOK_TEXT_LIMIT:
        # A photo's link goes after its caption (see `facebook_text`): the two together must fit.
        return (f"Facebook posts are limited to {FACEBOOK_TEXT_LIMIT} characters, a photo's link after its caption "
                f"included; this one has {len(facebook_text(content))}")
    if target in ("instagram", "both") and content.image_url is None:
        return "Instagram needs content.image_url"
    if now in ("instagram", "both") and len(content.caption) > INSTAGRAM_CAPTION_LIMIT:
        return _too_long_for_instagram(content.caption)
    if now in ("instagram", "both") and (hashtags := len(HASHTAG.findall(content.caption))) > INSTAGRAM_HASHTAG_LIMIT:
        return f"Instagram captions take at most {INSTAGRAM_HASHTAG_LIMIT} hashtags; this one has {hashtags}"
    if publishing is None and target == "instagram" and content.link is not None:
        # Published to Instagram alone, it would be dropped without a word. (A post made before this was checked
        # keeps its link on a retry, which Instagram leaves out as before.)
        return "Instagram posts carry no link: put it in the caption, or publish to Facebook too (publish_target both)"
    return None


def fields_problem(content: PostContent, kept: PostContent | None = None) -> str | None:
    """What the API answers 422 for field by field in content a command brings (a new post's, a retry's correction),
    for a command written on Kafka too: a platform would publish a control character as it is, or fail on an address
    it cannot fetch, counted as an attempt. None when its fields are fine. A field as the post has it (`kept`, its own
    content: a correction sent whole repeats what it does not change) is not held to it: what an earlier version or an
    old system took in is published as it was."""
    if (kept is None or content.caption != kept.caption) and (problem := text_problem(content.caption)) is not None:
        return f"content.caption {problem}"
    for field in ("image_url", "link"):
        address = getattr(content, field)
        if address is not None and (kept is None or address != getattr(kept, field)) and \
                (problem := url_problem(address)) is not None:
            return f"content.{field} {problem}"
    return None


def _too_long_for_instagram(caption: str) -> str:
    return f"Instagram captions are limited to {INSTAGRAM_CAPTION_LIMIT} characters; this one has {len(caption)}"


class CommandBase(Frozen):
    """What every command carries: its schema version, a unique id (for idempotency) and the post."""

    # Strict and bounded: pydantic alone then refuses what the envelope refuses ("1", 1.0, true, a
    # version this service does not read), so `schemas.envelope` can decode in one pass.
    schema_version: Annotated[int, Strict(), Field(ge=1, le=COMMAND_SCHEMA_VERSION)] = COMMAND_SCHEMA_VERSION
    command_id: Identifier
    post_id: Identifier
    requested_at: Timestamp


def fingerprint(command: CommandBase) -> str:
    """What identifies a command's body: a command id reused for another body can then be told apart."""
    # What the request saw of the post (`seen_attempts`) is no part of what it asks: a resent request sees more.
    body = command.model_dump_json(exclude={"requested_at", "schema_version", "seen_attempts"})
    return hashlib.sha256(body.encode()).hexdigest()[:32]


class PublishRequested(CommandBase):
    """Publish a new post to its target platforms."""

    # `_fits_target`, in the JSON Schema too: what the schema takes, the handler does.
    model_config = ConfigDict(json_schema_extra={"allOf": [{
        "if": {"properties": {"publish_target": {"enum": ["instagram", "both"]}}, "required": ["publish_target"]},
        "then": {"properties": {"content": {
            "required": ["image_url"],
            "properties": {"image_url": {"type": "string"}, "caption": {"maxLength": INSTAGRAM_CAPTION_LIMIT}},
        }}},
    }]})

    type: Literal["PublishRequested"] = "PublishRequested"
    publish_target: PublishTarget
    content: PostContent
    # A reference into the service's credential store; tokens never travel on Kafka.
    account: Identifier

    @model_validator(mode="after")
    def _fits_target(self) -> PublishRequested:
        if self.publish_target in ("instagram", "both"):
            if self.content.image_url is None:
                raise ValueError("Instagram needs content.image_url")
            if len(self.content.caption) > INSTAGRAM_CAPTION_LIMIT:
                raise ValueError(_too_long_for_instagram(self.content.caption))
        return self


CORRECTION = (
    "Corrected content, published from now on; absent or null, the post's own. Its caption replaces the post's; an "
    "image_url or link it leaves out keeps the post's, and one given as null is removed. Checked against the "
    "platforms it is published to (Instagram needs an image_url, at most 2,200 characters and 30 hashtags): "
    "content they cannot take is refused (dead-lettered with the reason), not published.")


class RetryRequested(CommandBase):
    """Retry a post: only the platforms whose latest result failed are published again."""

    type: Literal["RetryRequested"] = "RetryRequested"
    # Corrected content (the seed's "fix the image URL"); None keeps the post's content.
    content: PostContent | None = Field(default=None, description=CORRECTION)
    # The account to publish with from now on (a post imported from the old system without one); None keeps it.
    account: Identifier | None = None


class ForceRepublishRequested(CommandBase):
    """Publish again even to platforms that succeeded (the seed's case 4, "e.g. for testing")."""

    type: Literal["ForceRepublishRequested"] = "ForceRepublishRequested"
    content: PostContent | None = Field(default=None, description=CORRECTION)
    account: Identifier | None = None
    reason: str = Field(default="forced republish", max_length=500)
    # Left out of the command's JSON when not given, so a republish of every platform keeps the fingerprint (and the
    # bytes) it had before this field existed.
    platforms: list[Platform] | None = Field(default=None, min_length=1, max_length=2, exclude_if=lambda v: v is None,
                                             description=(
        "The platforms to publish again (each one the post targets, once); absent: every platform the post targets. "
        "A platform left out is not published, and the decision skips it as \"not asked to be republished\""))
    seen_attempts: Annotated[int, Strict()] | None = Field(default=None, ge=0, description=(
        "How many publish attempts the post had on record when this was asked for: its PublishAttempted events, "
        "all platforms together (an imported old-system result is none). The API sets it from the post it read. "
        "When the post has more attempts by the time this is decided (another republish sent at the same moment, "
        "or the service's own automatic retry), nothing is republished: its CommandDecided has no platforms and "
        "each targeted platform skipped as \"published again after this republish was asked for\". Null or "
        "absent: not checked, the republish goes out whatever happened meanwhile. No part of the command's "
        "identity: the same command_id sent again with another count is the same command"))


    @model_validator(mode="after")
    def _platforms_once(self) -> ForceRepublishRequested:
        if self.platforms is not None and len(set(self.platforms)) != len(self.platforms):
            raise ValueError("platforms names each platform once")
        return self


class ResolveAttemptRequested(CommandBase):
    """An operator's word on an attempt left without a result that the service cannot settle itself.

    The handler asks the platform whether an interrupted attempt went out; when the platform cannot be
    asked (the account's token was revoked and will not be renewed) or cannot tell, someone who checked
    the Page or the Instagram account says so here. Applied only to the platform's attempt that has no
    result (`attempt_id`, when given, must be that one); `published` records the post found there (at
    once), not published lets the command that made the attempt carry on (once the attempt's lease has run
    out: until then the platform may still hold the request).
    """

    type: Literal["ResolveAttemptRequested"] = "ResolveAttemptRequested"
    platform: Platform
    attempt_id: Identifier | None = None
    published: bool
    # The post on the platform, when it went out: Facebook's post id, Instagram's media id.
    platform_post_id: Identifier | None = None
    permalink: HttpUrlText | None = None
    note: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _names_the_post_if_published(self) -> ResolveAttemptRequested:
        if self.published and self.platform_post_id is None:
            raise ValueError("a published attempt needs platform_post_id: the post's id on the platform")
        if not self.published and (self.platform_post_id is not None or self.permalink is not None):
            raise ValueError("an attempt that was not published has no platform_post_id or permalink")
        return self


Command = Annotated[
    PublishRequested | RetryRequested | ForceRepublishRequested | ResolveAttemptRequested,
    Field(discriminator="type"),
]
COMMAND_TYPES: dict[str, type[CommandBase]] = {
    "PublishRequested": PublishRequested,
    "RetryRequested": RetryRequested,
    "ForceRepublishRequested": ForceRepublishRequested,
    "ResolveAttemptRequested": ResolveAttemptRequested,
}
