"""A handler frozen long enough for another to take its posts over never publishes them again once it runs on."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from publishers.sandbox import DEMO_IG_USER_ID, SandboxControl, SandboxServer
from schemas.commands import PostContent
from tests.support.service import Service, ServiceProcess, shared_sandbox  # noqa: F401 - the fixture it needs

pytestmark = pytest.mark.integration

PHOTO = PostContent(caption="Stalled handler post", image_url="https://cdn.example.com/autumn-sale.jpg")


@pytest.fixture
def slow_retry_service(kafka_bootstrap: str, shared_sandbox: SandboxServer,  # noqa: F811
                       tmp_path: Path) -> Iterator[Service]:
    control = SandboxControl(shared_sandbox.base_url)
    control.reset()
    # A rate limit without a wait of its own is retried 4 to 8 s later: time to freeze the handler in between.
    running = Service(kafka_bootstrap, control, tmp_path, extra_env={
        "SMARTRETRY_BACKOFF_BASE_SECONDS": "8", "SMARTRETRY_BACKOFF_CAP_SECONDS": "8"}).start()
    try:
        yield running
    finally:
        if running.handler.pid is not None:
            os.kill(running.handler.pid, signal.SIGCONT)
        running.stop()
        control.close()


def test_a_handler_frozen_while_its_retry_waited_does_not_publish_what_another_handler_published(
        slow_retry_service: Service, tmp_path: Path) -> None:
    service = slow_retry_service
    service.sandbox.fail_next("instagram", "media", code=4, http_status=400,
                              message="(#4) Application request limit reached")
    command = service.publish(PHOTO, target="instagram")
    service.wait_for(command.post_id, lambda s: any(a.success is False for a in s.attempts.values()))
    first = service.handler.pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)  # asleep until its automatic retry: frozen past its session timeout
    second = ServiceProcess("handler-2", [sys.executable, "-m", "smartretry.cli", "handler"], service.env, tmp_path)
    second.start()
    try:
        state = service.wait_for(command.post_id, lambda s: s.status == "posted", timeout=90)
        assert len(state.attempts) == 2
        os.kill(first, signal.SIGCONT)  # its retry is long due: it runs on at once
        # Whichever it hears of first, the post in the projection or its partition's revocation, it stands down (the
        # revocation ends its retry's wait at once).
        deadline = time.monotonic() + 20
        while not any(line in service.handler.output() for line in (
                "Instagram not called: another handler has attempted it", "Instagram not retried here: partition",
                "that were only waiting are ended here")):
            assert time.monotonic() < deadline, service.handler.output()[-4000:]
            time.sleep(0.2)
        # Nor does it say the post failed: the other handler published it.
        assert "Post status updated to: failed" not in service.handler.output()
        made = [p for p in service.sandbox.posts() if p.get("caption") == PHOTO.caption]
        assert len(made) == 1, made
        assert service.sandbox.counters()["instagram"][DEMO_IG_USER_ID] == 1
    finally:
        second.stop()
