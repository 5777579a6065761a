"""`python -m bench.chaos [--posts N] [--seed S]` (`make chaos`): the chaos run on a broker of its own.

Posts go through the real broker, projector, handler and sandbox Graph API while Facebook refuses
image URLs with a space (fixed by the user's retry), Instagram fails transiently and rate-limits,
the account's token is revoked and renewed, the handler and the projector are killed with SIGKILL
and restarted, and the broker is restarted once in the middle. Then, like a user, every failed post
is retried until it is posted or the retries run out. Prints one JSON summary line and a table;
exits 1 on any duplicate, loss, unposted post, replay difference or missing dead letter.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.__main__ import machine
from bench.sandbox import sandbox_process
from streams.broker import LocalBroker
from tests.support.chaos import ChaosPlan, ChaosRun, ChaosSummary
from tests.support.service import Service


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(plan: ChaosPlan) -> ChaosSummary:
    with tempfile.TemporaryDirectory(prefix="smartretry-chaos-") as workdir:
        work = Path(workdir)
        started = time.monotonic()
        # Its own broker, never KAFKA_BOOTSTRAP_SERVERS: the run kills and restarts it.
        broker = LocalBroker.start(work / "kafka")
        _log(f"broker {broker.bootstrap} ready in {time.monotonic() - started:.1f}s")
        try:
            with sandbox_process(work / "sandbox.log") as sandbox:
                service = Service(broker.bootstrap, sandbox, work / "service").start()
                try:
                    return ChaosRun(plan, service, work / "service", broker=broker, log=_log).run()
                finally:
                    service.stop()
        finally:
            broker.stop()


def table(summary: ChaosSummary) -> Table:
    result = Table(title=f"smartretry chaos: seed {summary.seed}, {summary.seconds:.0f}s  ({machine()})")
    result.add_column("figure")
    result.add_column("value", justify="right")
    result.add_column("expected", justify="right")
    rows: list[tuple[str, object, object]] = [
        ("posts", summary.posts, ""),
        ("posted", summary.posted, summary.posts),
        ("failed", summary.failed, 0),
        ("duplicates", summary.duplicates, 0),
        ("lost", summary.lost, 0),
        ("projection_equals_replay", summary.projection_equals_replay, True),
        ("dead_letters_expected", summary.dead_letters_expected, ""),
        ("dead_letters_seen", summary.dead_letters_seen, summary.dead_letters_expected),
        ("retries_sent", summary.retries_sent, ""),
        *((f"fault: {name}", count, "") for name, count in sorted(summary.faults.items())),
        *((f"unexpected exit: {name}", count, 0) for name, count in sorted(summary.unexpected_exits.items())),
    ]
    for name, value, expected in rows:
        result.add_row(name, str(value), str(expected))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1000, help="posts to publish (default 1,000)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every random choice (default: random)")
    parser.add_argument("--publish-seconds", type=float, default=None,
                        help="seconds over which the posts are sent (default: 90 for 1,000, scaled)")
    args = parser.parse_args()
    plan = ChaosPlan(posts=args.posts)
    if args.seed is not None:
        plan.seed = args.seed
    plan.publish_seconds = args.publish_seconds or max(20.0, 90.0 * args.posts / 1000)
    summary = run(plan)
    for problem in summary.problems[:50]:
        _log(f"problem: {problem}")
    print(summary.json_line(), flush=True)
    Console().print(table(summary))
    raise SystemExit(0 if summary.ok else 1)


if __name__ == "__main__":
    main()
