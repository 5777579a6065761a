"""The service's log lines: the ids a line names are scrubbed of tokens like its message."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from publishers.redact import register_secret
from smartretry.logs import JsonFormatter, RepeatFilter, ScrubFilter, TextFormatter
from streams.kafka import LIBRDKAFKA_LOG


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


def test_a_librarys_repeated_warnings_are_counted_not_shown_each_time_and_the_services_own_always_are() -> None:
    now = [100.0]
    repeats = RepeatFilter(window=10.0, clock=lambda: now[0])

    def record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, args, None)

    # A broker away: its client says so many times a second.
    shown = [repeats.filter(record("aiokafka", logging.ERROR, "Unable connect to node with id %s: %s", 1, "refused"))
             for _ in range(300)]
    assert shown.count(True) == 1
    assert all(repeats.filter(record("streams.projector", logging.ERROR, "partition %d not stored", 3))
               for _ in range(5))
    assert repeats.filter(record("aiokafka", logging.ERROR, "Another thing happened"))
    # The same template saying something else is shown: a different node, an error of another kind.
    assert repeats.filter(record("aiokafka", logging.ERROR, "Unable connect to node with id %s: %s", 1, "SSL error"))
    # A traceback is each its own.
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        crash = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n",
                                  None, sys.exc_info())
    assert repeats.filter(crash) and repeats.filter(crash)
    now[0] += 10.5
    again = record("aiokafka", logging.ERROR, "Unable connect to node with id %s: %s", 1, "refused")
    assert repeats.filter(again)
    assert again.getMessage() == "Unable connect to node with id 1: refused (and 299 more like it in the 10 s before)"


def test_librdkafkas_lines_go_through_the_log_as_json_and_repeats_are_held_back(
        capfd: pytest.CaptureFixture[str]) -> None:
    import socket
    import time

    from confluent_kafka import KafkaException

    from smartretry.logs import configure
    from streams.kafka import admin_client, producer

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def refusals() -> list[dict[str, str]]:
        lines = [text for text in capfd.readouterr().err.splitlines() if text.strip()]
        records = [json.loads(text) for text in lines]  # a raw librdkafka line would not parse
        return [r for r in records if r["logger"] == "librdkafka" and "Connection refused" in r["message"]]

    try:
        configure("INFO", "json")
        p = producer(closed, **{"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 100})
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # a reconnect every 100 ms: about twenty refusals
            p.poll(0.1)
        shown = refusals()
        assert len(shown) == 1, shown  # the others held back
        assert "producer" in shown[0]["message"] and shown[0]["level"] == "ERROR"

        configure("INFO", "json")
        with admin_client(closed) as admin, pytest.raises(KafkaException):
            admin.list_topics(timeout=1)
        assert refusals()  # handed over once the admin client's block ended
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_a_json_lines_time_is_written_as_events_write_times() -> None:
    import re

    record = logging.LogRecord("smartretry", logging.INFO, __file__, 1, "hello", None, None)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", json.loads(JsonFormatter().format(record))["time"])


def test_runs_own_lines_are_log_records_when_the_log_is_json(caplog: pytest.LogCaptureFixture,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from smartretry.cli import say
    from smartretry.settings import Settings

    with caplog.at_level(logging.INFO, logger="smartretry.run"):
        say(Settings(log_format="json"), "error: the Kafka broker stopped (killed by signal 9); starting it again",
            err=True, level=logging.ERROR)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "the Kafka broker stopped (killed by signal 9); starting it again")]
    assert capsys.readouterr().err == ""  # nothing written past the log

    say(Settings(log_format="text"), "Running. Ctrl-C stops everything.")
    assert capsys.readouterr().out == "Running. Ctrl-C stops everything.\n"

    # What happens while running (a restart) is logged in text mode too: the terminal's line gets its time and level.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="smartretry.run"):
        say(Settings(log_format="text"), "handler was killed by signal 9; starting it again", err=True,
            level=logging.WARNING, logged=True)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "handler was killed by signal 9; starting it again")]


def test_the_first_runs_jar_fetch_is_told_through_the_callers_notice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # `run` passes `say`, so in JSON mode the minute-long first fetch is a log record, not a bare stderr line.
    from streams.broker import kafka_libs

    root = tmp_path
    tools = root / "bin"
    tools.mkdir()
    for tool in ("mvn", "java"):
        (tools / tool).write_text("#!/bin/sh\nexit 0\n")
        (tools / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setenv("SMARTRETRY_CACHE_DIR", str(root / "cache"))
    told: list[str] = []
    libs = kafka_libs(told.append)
    assert len(told) == 1 and told[0].startswith("Fetching Apache Kafka") and str(libs) in told[0]
    assert capsys.readouterr().err == ""
    assert kafka_libs(told.append) == libs and len(told) == 1  # cached: nothing fetched, nothing told


def test_librdkafkas_misleading_lines_say_what_they_mean_here(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    LIBRDKAFKA_LOG.warning("%s [%s] %s: %s", "FAIL", "rdkafka#producer-1", "thrd:127.0.0.1:9092/1",
                           "127.0.0.1:9092/1: ApiVersionRequest failed: Local: Timed out: probably due to broker "
                           "version < 0.10 (see api.version.request configuration)")
    LIBRDKAFKA_LOG.warning("GETPID [rdkafka#producer-2] [thrd:main]: Failed to acquire idempotence PID from broker "
                           "127.0.0.1:9092/1: Broker: Coordinator load in progress: retrying")
    [record] = [r for r in caplog.records if r.name == "librdkafka"]
    # Not pointing at a broker older than Kafka 0.10; a broker still starting is no warning.
    assert record.getMessage() == ("FAIL [rdkafka#producer-1] thrd:127.0.0.1:9092/1: 127.0.0.1:9092/1: "
                                   "ApiVersionRequest failed: Local: Timed out: the broker did not answer in time "
                                   "(stopped, frozen or overloaded?)")


def test_once_the_process_stops_a_broker_away_is_no_news_but_what_a_client_could_not_deliver_still_is(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.kafka

    caplog.set_level(logging.INFO)
    away = ("FAIL [rdkafka#producer-1] [thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/1: Connect to "
            "ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)")
    down = "ERROR [rdkafka#producer-1] [thrd:127.0.0.1:9092/bootstrap]: 1/1 brokers are down"
    undelivered = ("TERMINATE [rdkafka#producer-1] [thrd:app]: Producer terminating with 2 messages (300 bytes) still "
                   "in queue or transit: use flush() to wait for outstanding message delivery")
    monkeypatch.setattr(streams.kafka, "_stopping", False)
    LIBRDKAFKA_LOG.error(away)
    streams.kafka.stopping()
    LIBRDKAFKA_LOG.error(away)
    LIBRDKAFKA_LOG.error(down)
    LIBRDKAFKA_LOG.warning(undelivered)
    shown = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "librdkafka"]
    # While it ran, the broker away was an error; once it stops, only the undelivered messages are.
    assert shown == [("ERROR", away), ("WARNING", undelivered)]
