"""The chaos run, short: posts through the whole service while faults and SIGKILLs hit it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chaos import ChaosPlan, ChaosRun
from tests.support.service import Service

pytestmark = pytest.mark.integration


def test_chaos_run_loses_nothing_and_posts_nothing_twice(service: Service, tmp_path: Path) -> None:
    """The shared broker cannot be restarted here; `make chaos` does that on a broker of its own."""
    plan = ChaosPlan(posts=40, publish_seconds=20.0, handler_kills=1, projector_kills=1, token_revocations=1,
                     instagram_transient_bursts=2, rate_limit_bursts=1, rate_limit_regain_minutes=0,
                     broker_restart=False, retry_rounds=4, round_timeout=60.0)
    lines: list[str] = []
    summary = ChaosRun(plan, service, tmp_path, log=lines.append).run()
    print("\n".join([*lines, summary.json_line()]))  # shown by pytest -rP
    report = "\n".join([*lines, summary.json_line(), "--- handler log ---", service.handler.output()[-3000:]])
    assert summary.duplicates == 0, report
    assert summary.lost == 0, report
    assert summary.posted == summary.posts == 40, report
    assert summary.projection_equals_replay, report
    assert summary.dead_letters_seen == summary.dead_letters_expected > 0, report
