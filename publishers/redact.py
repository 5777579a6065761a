"""Keeps access tokens out of everything the service writes: logs, events, errors, dead letters."""

from __future__ import annotations

import re
import threading

# Meta user, Page and app tokens start with "EAA"; long-lived ones run to hundreds of characters.
_TOKEN_SHAPED = re.compile(r"EAA[A-Za-z0-9]{10,}")
# Query parameters and JSON fields that carry secrets (paging URLs from Meta include access_token).
_SECRET_PARAM = re.compile(
    r"((?:access_token|appsecret_proof|client_secret|input_token)[\"']?\s*[=:]\s*[\"']?)[^&\s\"',}]+",
    re.IGNORECASE,
)
# An Authorization header value copied into an exception or a debug dump.
_BEARER = re.compile(r"(Bearer\s+)[^\s\"',}]+", re.IGNORECASE)
REDACTED = "[redacted]"

_known: set[str] = set()
_lock = threading.Lock()


def register_secret(secret: str) -> None:
    """Remembers a secret so that `scrub` removes it even when it is not token-shaped."""
    if len(secret) >= 6:
        with _lock:
            _known.add(secret)


def scrub(text: str) -> str:
    """The text with every known secret and every token-shaped string replaced by `[redacted]`."""
    if not text:
        return text
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _TOKEN_SHAPED.sub(REDACTED, text)
