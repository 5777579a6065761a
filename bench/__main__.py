"""`python -m bench [--events N] [--only NAME]`: one JSON line per figure, then a table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile

from rich.console import Console
from rich.table import Table

import bench.handler  # registers its benches
import bench.projection  # noqa: F401 - registers its benches
from bench import BENCHES, BenchContext, Figure
from streams.broker import kafka_broker


def machine() -> str:
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {total_kb / 1024 / 1024:.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="post events to write (default 1,000,000)")
    parser.add_argument("--posts", type=int, default=0, help="posts they belong to (default events / 10)")
    parser.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only these benches")
    args = parser.parse_args()
    figures: list[Figure] = []
    with kafka_broker() as bootstrap, tempfile.TemporaryDirectory(prefix="smartretry-bench-") as workdir:
        context = BenchContext(bootstrap=bootstrap, events=args.events, posts=args.posts or max(1, args.events // 10),
                               workdir=workdir)
        for name, run in BENCHES.items():
            if args.only and name not in args.only:
                continue
            for figure in run(context):
                context.figures[figure.key] = figure
                figures.append(figure)
                print(json.dumps({"figure": figure.key, "value": round(figure.value, 3), "unit": figure.unit,
                                  "target": figure.target, "met": figure.met, "events": context.events,
                                  "posts": context.posts, "note": figure.note}), flush=True)
    table = Table(title=f"smartretry bench: {args.events:,} events  ({machine()})")
    for column in ("figure", "value", "unit", "target", "met"):
        table.add_column(column)
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "NO")
        table.add_row(f.key, f"{f.value:,.1f}", f.unit, f.target or "", met)
    Console().print(table)


if __name__ == "__main__":
    main()
