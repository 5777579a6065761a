"""The whole service for end-to-end tests: real broker, sandbox Graph API, projector and handler processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel

from projections.resume import command_settled
from projections.state import PostState
from publishers.sandbox import (
    DEMO_ACCOUNT_ID,
    DEMO_IG_USER_ID,
    DEMO_PAGE_ID,
    DEMO_USER_TOKEN,
    SandboxControl,
    SandboxServer,
)
from schemas.commands import ForceRepublishRequested, PostContent, PublishRequested, RetryRequested
from schemas.common import Platform, PublishTarget
from schemas.envelope import encode
from schemas.ids import new_id
from smartretry.bootstrap import Stores, open_stores
from smartretry.settings import Settings
from streams.broker import die_with_parent
from streams.kafka import producer
from streams.topics import Topics, ensure_topics

ROOT = Path(__file__).resolve().parents[2]
# The harness runs the handler with the default number of automatic attempts.
MAX_AUTOMATIC_ATTEMPTS = Settings().max_automatic_attempts


class ServiceProcess:
    """One process of the service (projector or handler), with its output kept in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            # Dies with the test run even when pytest itself is killed: no service process outlives it.
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Service:
    """The service on a unique topic prefix and database, with helpers to send commands and wait."""

    def __init__(self, bootstrap: str, sandbox: SandboxControl, work_dir: Path, database_url: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        sandbox_url = sandbox.base_url
        self.bootstrap = bootstrap
        self.sandbox = sandbox
        self.prefix = f"e{uuid.uuid4().hex[:10]}."
        self.work_dir = work_dir
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SMARTRETRY_TOPIC_PREFIX": self.prefix,
            "SMARTRETRY_DATABASE_URL": database_url or f"sqlite:///{work_dir / 'projection.db'}",
            "SMARTRETRY_GRAPH_API_BASE_URL": sandbox_url,
            "SMARTRETRY_BACKOFF_BASE_SECONDS": "0.05",
            "SMARTRETRY_BACKOFF_CAP_SECONDS": "0.5",
            "SMARTRETRY_SECRET_KEY": "test-secret-key",
            "SMARTRETRY_HANDLER_SESSION_TIMEOUT_SECONDS": "6",
            # Shorter than in production, so interrupted posts do not wait minutes; still longer than the
            # sandbox takes to answer a queued request on a loaded machine.
            "SMARTRETRY_ATTEMPT_TIMEOUT_SECONDS": "20",
            "SMARTRETRY_ATTEMPT_LEASE_SECONDS": "30",
            "SMARTRETRY_REAUTH_CHECK_SECONDS": "1",
            "SMARTRETRY_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.settings = Settings(kafka_bootstrap_servers=bootstrap, topic_prefix=self.prefix,
                                 database_url=self.env["SMARTRETRY_DATABASE_URL"], graph_api_base_url=sandbox_url,
                                 secret_key=self.env["SMARTRETRY_SECRET_KEY"])
        self.topics: Topics = self.settings.topics
        ensure_topics(bootstrap, self.topics.specs())
        self.stores: Stores = open_stores(self.settings)
        self.stores.credentials.set_token(DEMO_ACCOUNT_ID, DEMO_USER_TOKEN, DEMO_PAGE_ID, DEMO_IG_USER_ID)
        self.projector = ServiceProcess("projector", [sys.executable, "-m", "streams.projector"], self.env, work_dir)
        self.handler = ServiceProcess("handler", [sys.executable, "-m", "smartretry.cli", "handler"], self.env,
                                      work_dir)
        self._producer = producer(bootstrap)

    def start(self) -> Service:
        self.projector.start()
        self.handler.start()
        return self

    def stop(self) -> None:
        self.handler.stop()
        self.projector.stop()
        self.stores.engine.dispose()
        self._producer.flush(5)

    # --- commands ------------------------------------------------------------------------------

    def send(self, command: BaseModel, post_id: str) -> None:
        self._producer.produce(self.topics.commands, key=post_id.encode(), value=encode(command))
        assert self._producer.flush(30) == 0

    def send_raw(self, value: bytes, key: bytes = b"raw") -> None:
        self._producer.produce(self.topics.commands, key=key, value=value)
        assert self._producer.flush(30) == 0

    def publish(self, content: PostContent, target: PublishTarget = "both", post_id: str | None = None,
                account: str = DEMO_ACCOUNT_ID) -> PublishRequested:
        command = PublishRequested(command_id=new_id(), post_id=post_id or new_id(), publish_target=target,
                                   content=content, account=account, requested_at=datetime.now(UTC))
        self.send(command, command.post_id)
        return command

    def retry(self, post_id: str, content: PostContent | None = None) -> RetryRequested:
        command = RetryRequested(command_id=new_id(), post_id=post_id, content=content,
                                 requested_at=datetime.now(UTC))
        self.send(command, post_id)
        return command

    def force(self, post_id: str, reason: str = "testing",
              platforms: list[Platform] | None = None) -> ForceRepublishRequested:
        command = ForceRepublishRequested(command_id=new_id(), post_id=post_id, reason=reason,
                                          requested_at=datetime.now(UTC), platforms=platforms)
        self.send(command, post_id)
        return command

    # --- waiting -------------------------------------------------------------------------------

    def wait_for(self, post_id: str, done: Callable[[PostState], bool], timeout: float = 60.0) -> PostState:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.stores.projection.get(post_id)
            if state is not None and done(state):
                return state
            time.sleep(0.05)
        pytest.fail(f"post {post_id} did not reach the expected state in {timeout}s; last: "
                    f"{state.document.to_document() if state else None}\n--- handler log ---\n"
                    f"{self.handler.output()[-4000:]}\n--- projector log ---\n{self.projector.output()[-3000:]}")

    def wait_command(self, post_id: str, command_id: str, timeout: float = 60.0) -> PostState:
        """Waits until the command is decided and every platform it chose has a final result."""
        return self.wait_for(post_id, lambda state: command_settled(state, command_id, MAX_AUTOMATIC_ATTEMPTS),
                             timeout)


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer().start() as server:
        yield server


@pytest.fixture
def service(kafka_bootstrap: str, shared_sandbox: SandboxServer, tmp_path: Path) -> Iterator[Service]:
    """A running service (projector and handler processes) on its own topics and SQLite database."""
    control = SandboxControl(shared_sandbox.base_url)
    control.reset()
    running = Service(kafka_bootstrap, control, tmp_path).start()
    try:
        yield running
    finally:
        running.stop()
        control.close()
