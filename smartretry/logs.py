"""Logging set-up: human-readable lines by default, JSON on request; secrets scrubbed from every record."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from publishers.redact import scrub, scrub_http_client_logs
from schemas.common import format_timestamp

# Fields a log call may pass with `extra=` that belong in the line (post and attempt ids).
CONTEXT_FIELDS = ("post_id", "attempt_id", "command_id", "platform")


class ScrubFilter(logging.Filter):
    """Formats the message once, removes any token from it, and keeps the result."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


# The service's own loggers: every line of theirs is kept.
OWN_LOGGERS = ("smartretry", "streams", "projections", "publishers", "schemas", "bench", "__main__")
_NUMBERS = re.compile(r"\d+")
# Seconds within which a library's line like one already shown is counted, not shown again.
REPEAT_WINDOW_S = 10.0


class RepeatFilter(logging.Filter):
    """Keeps a library's repeated warnings from burying everything else: while the broker is away, its clients say
    the same thing many times a second. The first of a kind is shown; the others within `REPEAT_WINDOW_S` are
    counted, and the next one shown after that says how many there were."""

    def __init__(self, window: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window, self.clock = window, clock
        # (logger, level, message template) -> (when last shown, how many held back since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(OWN_LOGGERS) or record.levelno < logging.WARNING or record.exc_info:
            return True  # a traceback is each its own
        # The line as written, its numbers aside (a node id, a client's number, milliseconds): another message,
        # even under the same template, is shown.
        key = (record.name, record.levelno, _NUMBERS.sub("#", record.getMessage()))
        now = self.clock()
        shown, held = self._seen.get(key, (None, 0))
        if shown is not None and now - shown < self.window:
            self._seen[key] = (shown, held + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held and shown is not None:
            record.msg = f"{record.getMessage()} (and {held} more like it in the {now - shown:.0f} s before)"
            record.args = None
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        # Ids come from callers too: one that carries a token is scrubbed like the message.
        context = " ".join(f"{k}={scrub(str(getattr(record, k)))}" for k in CONTEXT_FIELDS if getattr(record, k, None))
        return f"{line}  [{context}]" if context else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            # As the events write times: UTC, milliseconds, "Z".
            "time": format_timestamp(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            if getattr(record, key, None):
                payload[key] = scrub(str(getattr(record, key)))
        if record.exc_text:
            payload["exception"] = record.exc_text
        return json.dumps(payload, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatFilter())
    handler.addFilter(ScrubFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; URLs must never matter for secrets, but keep the noise out.
    for noisy in ("httpx", "httpcore", "aiokafka", "faust", "mode", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    scrub_http_client_logs()
