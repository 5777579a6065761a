"""Keeps access tokens out of everything the service writes: logs, events, errors, dead letters."""

from __future__ import annotations

import functools
import html
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote

from schemas.commands import PostContent

# Meta user, Page and app tokens start with "EAA"; long-lived ones run to hundreds of characters. Words
# that merely start so ("#EAAGLES") are too short to be one.
_TOKEN_SHAPED = re.compile(r"EAA[A-Za-z0-9]{20,}")
# Query parameters and JSON fields that carry secrets (paging URLs from Meta include access_token).
# Written as query parameters, JSON fields (snake or camel case) or URL-encoded ("access_token%3D...").
_SECRET_PARAM = re.compile(
    r"((?:access_?token|appsecret_?proof|client_?secret|input_?token|fb_exchange_token)[\"']?\s*"
    # The value runs to a separator; a %XX escape is part of it (a token with "/" or "=" is written %2F, %3D), but
    # for the escapes of separators (an encoded query: "access_token%3D...%26next").
    r"(?:[=:]|%3[DdAa])\s*[\"']?)(?:[^&\s\"',};%]|%(?!2[0267Cc]|3[Bb]|7[Dd])[0-9A-Fa-f]{2})+",
    re.IGNORECASE,
)
# An Authorization header value copied into an exception or a debug dump: a credential, 16 characters or more
# ("the ring bearer walks" is no header).
_BEARER = re.compile(r"(\bBearer\s+)(?=[A-Za-z0-9._~+/=-]{16,})[^\s\"',}]+", re.IGNORECASE)
REDACTED = "[redacted]"
# What a token in an address becomes: a word an address may hold anywhere ("[redacted]" may not, in a host or
# its user part, and an address the contract refuses could not be read back from the projection).
REDACTED_IN_URL = "redacted"

# The secrets seen lately, least recently registered first. Every use of a token registers it again (each
# command's credentials do), so only tokens out of use for a long while fall off the end; a rotated-out
# token shaped like Meta's is still caught by its shape.
KNOWN_SECRETS = 10_000
_known: OrderedDict[str, None] = OrderedDict()
# `_known` longest first (a secret inside another must not leave the rest of that one behind), kept
# between changes: scrub runs on every log record.
_longest_first: tuple[str, ...] = ()
# Of those, the ones with no escape (a token as written, and as JSON and HTML quote it): what a text with escapes is
# searched for once decoded.
_unescaped: tuple[str, ...] = ()
_lock = threading.Lock()


# Every content check asks for the forms of every stored token: each token's are worked out once.
@functools.lru_cache(maxsize=4 * KNOWN_SECRETS)
def secret_forms(secret: str) -> tuple[str, ...]:
    """`secret` as written, as it is written in an address (URL-encoded): a token with "/", "+", "=" or "%"
    appears so in a query string, or in an error that quotes one; and as JSON and HTML quote it. Meta's tokens
    (letters and digits) have one form.

    The encodings clients use: Python's (`quote`, with and without "/", and `quote_plus`), JavaScript's
    `encodeURIComponent` (which leaves ``!'()*~`` as they are), each with its escapes in lower case too, and the
    whole encoded once more (an address inside an address)."""
    encoded = [quote(secret, safe=""), quote(secret), quote_plus(secret), quote(secret, safe="!'()*~")]
    encoded += [_ESCAPE.sub(lambda m: m.group().lower(), form) for form in encoded]
    encoded.append(quote(encoded[0], safe=""))
    # As a JSON string or an HTML page quotes it (an error body that echoes the request): a token with `"`, `\`,
    # `<`, `&` or a character past ASCII is written otherwise there.
    encoded += [json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], html.escape(secret),
                html.escape(secret, quote=False)]
    forms = [secret]
    for form in encoded:
        if form not in forms:
            forms.append(form)
    return tuple(forms)


_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def _closing(match: re.Match[str]) -> str:
    """The ")" a secret parameter's value ran into, and the stops after it, given back where the text before it left
    a "(" open (a message quoting the address in brackets: "(url: ...?access_token=...)."). Only a bracket and stops
    are: nothing of a token that holds a ")" but them."""
    before = match.string[:match.start()]
    ending = _BRACKET_ENDING.search(match.group(0))
    return ending.group(0) if ending is not None and before.count("(") > before.count(")") else ""


_BRACKET_ENDING = re.compile(r"\)[.,;:!?]*$")


def _hex_digits(byte: int) -> str:
    return "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02X}")


@functools.lru_cache(maxsize=4 * KNOWN_SECRETS)
def _spelled_any_way(secret: str) -> re.Pattern[str]:
    """`secret` with any of its characters percent-encoded, in either case, once or twice over (an encoder that
    escapes more than it must writes "token%2Dvalue" or "%74oken-value", and "token%252Dvalue" inside an address):
    no list of forms can hold every such spelling."""
    def spellings(c: str) -> str:
        escaped = [f"%(?:25)?{_hex_digits(b)}" for b in c.encode()]
        return f"(?:{re.escape(c)}|{''.join(escaped)})"
    return re.compile("".join(spellings(c) for c in secret))


def _decoded(text: str) -> str:
    """`text` with its percent escapes decoded, twice over (an address inside an address)."""
    for _ in range(2):
        if "%" not in text:
            break
        text = unquote(text)
    return text


def without_escaped(text: str, secrets: Collection[str], replacement: str = REDACTED) -> str:
    """`text` with each of `secrets` it holds spelled with escapes (`_spelled_any_way`) replaced."""
    if "%" not in text:
        return text
    decoded = _decoded(text)
    if decoded == text:
        return text
    for secret in secrets:
        if secret in decoded:
            text = _spelled_any_way(secret).sub(replacement, text)
    return text


def register_secret(secret: str) -> None:
    """Remembers a secret (in each of its `secret_forms`) so that `scrub` removes it even when it is not
    token-shaped."""
    global _longest_first, _unescaped
    if len(secret) < 6:
        return
    forms = secret_forms(secret)
    with _lock:
        # Every use registers it again: all its forms go to the end together, so none of them falls off alone.
        added = any(form not in _known for form in forms)
        for form in forms:
            _known[form] = None
            _known.move_to_end(form)
        if not added:
            return
        while len(_known) > KNOWN_SECRETS:
            _known.popitem(last=False)
        _longest_first = tuple(sorted(_known, key=len, reverse=True))
        _unescaped = tuple(form for form in _longest_first if "%" not in form)


def scrub(text: str) -> str:
    """The text with every known secret and every token-shaped string replaced by `[redacted]`."""
    if not text:
        return text
    for secret in _longest_first:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return scrub_shapes(without_escaped(text, _unescaped))


def scrub_shapes(text: str) -> str:
    """`scrub` by the shapes of secrets alone (Meta's tokens, `access_token=...`, `Bearer ...`), not the secrets
    this process has seen: the same text gives the same result in every process, as a fold (replayed) must."""
    if not text:
        return text
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED + _closing(m), text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _TOKEN_SHAPED.sub(REDACTED, text)
    # One of Meta's spelled with escapes ("EAA%41b..."): found decoded, taken out where it stands.
    return without_escaped(text, [m.group() for m in _TOKEN_SHAPED.finditer(_decoded(text))]) if "%" in text \
        else text


def scrub_url(url: str) -> str:
    """`scrub` for an address: what took a token's place is "redacted", so that the address stays one."""
    return scrub(url).replace(REDACTED, REDACTED_IN_URL)


def map_strings(value: Any, change: Callable[[str], str], *, keys: bool = False) -> Any:
    """A JSON value (decoded) with `change` applied to each of its strings; to object keys too with `keys`."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [map_strings(item, change, keys=keys) for item in value]
    if isinstance(value, dict):
        return {(change(key) if keys and isinstance(key, str) else key): map_strings(item, change, keys=keys)
                for key, item in value.items()}
    return value


def known_secrets() -> tuple[str, ...]:
    """The secrets this process has seen lately (tokens it stored, used or fetched), as `scrub` removes them."""
    return _longest_first


def secret_field(content: PostContent | None, *tokens: Collection[str]) -> str | None:
    """The first field of a post's content that carries a token: one of `tokens` (collections of them: the
    stored ones, the ones a process has seen), or one of Meta's shape.

    Such content is refused, never published: the post, its events and the projection would all show it.
    Only tokens count here, not the words around one that `scrub` also catches in logs ("access_token: ask
    us" is a sentence a post may say), and only a whole token of Meta's shape: long, mixed letters and
    digits (a long "YEAAA...AH!" or the hashtag "#EAAAirVenture2025" is no token).
    """
    if content is None:
        return None
    return secret_value({name: getattr(content, name) for name in ("caption", "image_url", "link")}, *tokens)


def secret_value(values: Mapping[str, str | None], *tokens: Collection[str]) -> str | None:
    """The name of the first of `values` that carries a token (as `secret_field` counts them), or None."""
    # A token short enough to be a word ("summer") would refuse every caption that says it. Written URL-encoded too.
    known = [form for collection in tokens for token in collection if len(token) >= MIN_MATCHED_TOKEN
             for form in secret_forms(token)]
    for name, value in values.items():
        # Also decoded: a token spelled with more escapes than any of its forms has ("token%2Dvalue") is one too.
        for seen in dict.fromkeys((value, _decoded(value))) if value else ():
            if any(_looks_like_a_token(m.group()) for m in _WHOLE_TOKEN.finditer(seen)) or \
                    any(token in seen for token in known):
                return name
    return None


MIN_MATCHED_TOKEN = 16


# A Meta token standing alone: "EAA" and at least 40 more letters and digits, not inside a longer word.
_WHOLE_TOKEN = re.compile(r"(?<![A-Za-z0-9])EAA[A-Za-z0-9]{40,}(?![A-Za-z0-9])")


def without_tokens(value: str, tokens: Collection[str]) -> str:
    """`value` with each token `secret_value` would find in it (one of `tokens`, longest first, or a whole one of
    Meta's shape) replaced by `[redacted]`, and nothing else: for text that is published, where `scrub`'s patterns
    would take out words ("access_token: ask us")."""
    forms = {form for t in tokens if len(t) >= MIN_MATCHED_TOKEN for form in secret_forms(t)}
    # Ties in their own order, not a set's: the same text and tokens give the same result in every process.
    ordered = sorted(forms, key=lambda form: (-len(form), form))
    for token in ordered:
        value = value.replace(token, REDACTED)
    value = _WHOLE_TOKEN.sub(lambda m: REDACTED if _looks_like_a_token(m.group()) else m.group(), value)
    # Spelled with more escapes than any of its forms has: found decoded, taken out where it stands.
    whole = [m.group() for m in _WHOLE_TOKEN.finditer(_decoded(value)) if _looks_like_a_token(m.group())] \
        if "%" in value else []
    return without_escaped(value, [*ordered, *whole])


def _looks_like_a_token(word: str) -> bool:
    rest = word[3:]
    return any(c.isdigit() for c in rest) and any(c.islower() for c in rest) and any(c.isupper() for c in rest)


class ScrubbingFilter(logging.Filter):
    """Scrubs a record where it is made, so every handler (a test's log capture included) sees it clean."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


# httpcore logs response headers at DEBUG, and Meta repeats a rejected token in WWW-Authenticate on 190
# errors. Logger filters do not apply to records of child loggers, so each logger that writes is named.
HTTP_CLIENT_LOGGERS = (
    "httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy", "hpack",
)
_FILTER = ScrubbingFilter()


def scrub_http_client_logs() -> None:
    """Installs the scrubbing filter on httpx's and httpcore's loggers (idempotent)."""
    for name in HTTP_CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
