"""A handler with as many commands in progress as it takes keeps its partitions while they run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from publishers.sandbox import DEMO_PAGE_ID, SandboxControl, SandboxServer
from schemas.commands import PostContent
from tests.integration.test_api import messages_on
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
    assert "maximum poll interval" not in output and "revoked by a rebalance" not in output, output


@pytest.fixture
def narrow_service(kafka_bootstrap: str, shared_sandbox: SandboxServer, tmp_path: Path) -> Iterator[Service]:  # noqa: F811
    control = SandboxControl(shared_sandbox.base_url)
    control.reset()
    running = Service(kafka_bootstrap, control, tmp_path, extra_env={"SMARTRETRY_HANDLER_MAX_IN_FLIGHT": "2"}).start()
    try:
        yield running
    finally:
        control.reset()
        running.stop()
        control.close()


def test_posts_waiting_out_a_rate_limit_hold_up_no_other_post(narrow_service: Service) -> None:
    service = narrow_service
    # Two posts meet the Page's rate limit, which lifts in 10 minutes: their commands wait that long.
    service.sandbox.fail_next("facebook", "photos", code=32, regain_access_minutes=10, times=2)
    limited = [service.publish(PHOTO, target="facebook") for _ in range(2)]
    for command in limited:
        state = service.wait_for(command.post_id, lambda s: any(
            a.error_kind is not None and a.error_kind.value == "rate_limited" for a in s.attempts.values()))
        assert state.status == "failed"

    # As many commands as the handler works on at once are waiting: a third post is published all the same.
    other = service.publish(PHOTO, target="facebook")
    state = service.wait_command(other.post_id, other.command_id, timeout=30)

    assert state.status == "posted"
    assert service.sandbox.counters()["facebook"][DEMO_PAGE_ID] == 1


def test_a_command_finished_behind_one_that_waits_is_not_handled_again_after_a_restart(
        narrow_service: Service) -> None:
    service = narrow_service
    # The post's publish meets the Page's rate limit, which lifts in an hour: its command waits that long, and holds
    # the partition's committed offset back.
    service.sandbox.fail_next("facebook", "photos", code=32, regain_access_minutes=60)
    waiting = service.publish(PHOTO, target="facebook")
    service.wait_for(waiting.post_id, lambda s: any(a.success is False for a in s.attempts.values()))
    # A command after it on the same partition that cannot be read: set aside once.
    service.send_raw(b"{not json", key=waiting.post_id.encode())
    deadline = time.monotonic() + 30
    while len(letters := messages_on(service.bootstrap, service.topics.dead_letters)) < 1:
        assert time.monotonic() < deadline, "the bad command was not dead-lettered"
        time.sleep(0.2)
    time.sleep(2)  # its commit (asynchronous) on its way

    # The handler stops (a deploy); the next one reads the partition again from the waiting command.
    service.handler.stop()
    service.handler.start()
    deadline = time.monotonic() + 60
    while "finished before: they are skipped" not in service.handler.output() and \
            len(messages_on(service.bootstrap, service.topics.dead_letters)) == 1:
        assert time.monotonic() < deadline, service.handler.output()[-3000:]
        time.sleep(0.2)
    time.sleep(3)  # what it would do with the bad command, done by now

    # Not set aside a second time (nor, for a valid command refused, decided anew by a handler knowing other tokens).
    assert len(messages_on(service.bootstrap, service.topics.dead_letters)) == len(letters) == 1
