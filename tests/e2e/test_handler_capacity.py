"""A handler with as many commands in progress as it takes keeps its partitions while they run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from publishers.sandbox import DEMO_PAGE_ID, SandboxControl, SandboxServer
from schemas.commands import PostContent
from tests.support.service import Service, shared_sandbox  # noqa: F401 - the fixture it needs

pytestmark = pytest.mark.integration

PHOTO = PostContent(caption="Autumn sale starts today", image_url="https://cdn.example.com/autumn-sale.jpg")


@pytest.fixture
def busy_service(kafka_bootstrap: str, shared_sandbox: SandboxServer, tmp_path: Path) -> Iterator[Service]:  # noqa: F811
    control = SandboxControl(shared_sandbox.base_url)
    control.reset()
    # Two commands at a time, and a consumer taken for dead after 7 s unpolled: Facebook takes 10 s a photo.
    running = Service(kafka_bootstrap, control, tmp_path, extra_env={
        "SMARTRETRY_HANDLER_MAX_IN_FLIGHT": "2", "SMARTRETRY_HANDLER_MAX_POLL_INTERVAL_SECONDS": "7"}).start()
    control.add_latency("facebook", 10.0, endpoint="photos")
    try:
        yield running
    finally:
        control.add_latency("facebook", 0.0, endpoint="photos")
        running.stop()
        control.close()


def test_a_handler_at_capacity_goes_on_polling_and_keeps_its_partitions(busy_service: Service) -> None:
    service = busy_service
    before = service.sandbox.counters()["facebook"].get(DEMO_PAGE_ID, 0)
    commands = [service.publish(PHOTO, target="facebook") for _ in range(4)]

    states = [service.wait_command(c.post_id, c.command_id, timeout=90) for c in commands]

    assert [s.status for s in states] == ["posted"] * 4
    assert service.sandbox.counters()["facebook"][DEMO_PAGE_ID] == before + 4
    output = service.handler.output()
    # Not left unpolled past max.poll.interval.ms while its commands ran: it would have left the group.
    assert "maximum poll interval" not in output and "moved to another handler" not in output, output
