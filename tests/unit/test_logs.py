"""The service's log lines: the ids a line names are scrubbed of tokens like its message."""

from __future__ import annotations

import json
import logging

import pytest

from publishers.redact import register_secret
from smartretry.logs import JsonFormatter, ScrubFilter, TextFormatter


def line(formatter: logging.Formatter, **context: str) -> str:
    record = logging.LogRecord("smartretry", logging.INFO, __file__, 1, "PublishRequested accepted", None, None)
    record.__dict__.update(context)
    assert ScrubFilter().filter(record)
    return formatter.format(record)


@pytest.mark.parametrize("formatter", [TextFormatter("%(levelname)s %(message)s"), JsonFormatter()])
def test_a_token_in_a_post_or_command_id_is_scrubbed_from_the_line(formatter: logging.Formatter) -> None:
    stored = "shop1userSECRET0123456789abcdef"
    register_secret(stored)
    meta_shaped = "EAA" + "Gm0dEl" * 8
    text = line(formatter, post_id=f"p-{stored}", command_id=meta_shaped, attempt_id="a-1")
    assert stored not in text and meta_shaped not in text
    assert "[redacted]" in text and "a-1" in text
    if isinstance(formatter, JsonFormatter):
        assert json.loads(text)["post_id"] == "p-[redacted]"
