"""Logging set-up: human-readable lines by default, JSON on request; secrets scrubbed from every record."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from publishers.redact import scrub, scrub_http_client_logs

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


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        # Ids come from callers too: one that carries a token is scrubbed like the message.
        context = " ".join(f"{k}={scrub(str(getattr(record, k)))}" for k in CONTEXT_FIELDS if getattr(record, k, None))
        return f"{line}  [{context}]" if context else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
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
    handler.addFilter(ScrubFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; URLs must never matter for secrets, but keep the noise out.
    for noisy in ("httpx", "httpcore", "aiokafka", "faust", "mode", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    scrub_http_client_logs()
