"""`smartretry run`, the README's quick start, as one process tree: ready, and it keeps its workers alive."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from projections.store import ProjectionStore, make_engine
from publishers.sandbox import SandboxControl
from streams.topics import Topics

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "dev-key-change-me"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """A `smartretry run` process, its output collected line by line."""

    def __init__(self, process: subprocess.Popen[str], api: str, env: dict[str, str]) -> None:
        self.process = process
        self.api = api
        self.env = env
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def close(self) -> None:
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def wait_for_line(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in self.lines if text in line), None)
            if found is not None:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not printed; output:\n" + "\n".join(self.lines))

    def child(self, marker: str) -> int:
        """The pid of the child process whose command line contains `marker`."""
        return child_of(self.process.pid, marker)


def child_of(pid: int, marker: str) -> int:
    """The pid of `pid`'s child process whose command line contains `marker`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and marker in cmdline:
            return int(entry.name)
    raise AssertionError(f"no child running {marker!r}")


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "SMARTRETRY_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
           "SMARTRETRY_DATABASE_URL": f"sqlite:///{tmp_path / 'smartretry.db'}",
           "SMARTRETRY_API_PORT": str(free_port()), "SMARTRETRY_SANDBOX_PORT": str(free_port()),
           "PYTHONUNBUFFERED": "1", **extra}
    for name in ("SMARTRETRY_GRAPH_API_BASE_URL", "SMARTRETRY_API_KEY"):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def start_run(env: dict[str, str], cwd: Path, ctrl_c: bool = False) -> Iterator[Running]:
    """`smartretry run`, stopped at the end with SIGTERM, or with `ctrl_c` as Ctrl-C in its terminal stops it: SIGINT
    to its whole process group."""
    process = subprocess.Popen([sys.executable, "-m", "smartretry.cli", "run"], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=ctrl_c)
    run = Running(process, f"http://127.0.0.1:{env['SMARTRETRY_API_PORT']}", env)
    try:
        run.wait_for_line("Running. Ctrl-C stops everything.", timeout=120)
        yield run
    finally:
        if ctrl_c:
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        run.close()


@pytest.fixture
def running(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Running]:
    with start_run(run_env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap), tmp_path) as run:
        yield run


def wait_posted(api: str, post_id: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        response = httpx.get(f"{api}/posts/{post_id}", headers=KEY)
        if response.status_code == 200:
            body = response.json()
            if body.get("status") == "posted":
                return body
        time.sleep(0.2)
    raise AssertionError(f"post {post_id} not posted: {body}")


def test_run_is_ready_and_starts_a_worker_again_when_it_dies(running: Running) -> None:
    assert "API key: the default, dev-key-change-me" in running.wait_for_line("API key")

    ready = httpx.get(f"{running.api}/readyz", headers=KEY)
    assert ready.status_code == 200, ready.text
    assert ready.json()["broker"] == "ok"

    handler = running.child("smartretry.cli handler")
    os.kill(handler, signal.SIGKILL)
    restarted = running.wait_for_line("handler was killed by signal 9; starting it again", timeout=15)
    # With its time and level, as the log's lines are: when it happened is what an operator reading back needs.
    assert re.match(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d\S* WARNING ", restarted), restarted

    post = {"post_id": f"run-{uuid.uuid4().hex[:8]}", "publish_target": "facebook", "account": "demo",
            "content": {"caption": "Autumn sale starts today", "image_url": "https://cdn.example.com/autumn-sale.jpg"}}
    assert httpx.post(f"{running.api}/posts", json=post, headers=KEY, timeout=30).status_code in (200, 202)
    insights = wait_posted(running.api, str(post["post_id"]))
    assert running.child("smartretry.cli handler") != handler
    assert insights["status"] == "posted"
    # The API's own lines are logged too (it runs in the `run` process), with the post they concern.
    assert f"post_id={post['post_id']}" in running.wait_for_line("PublishRequested accepted", timeout=5)
    # Emptying the projection under the running service is refused: the posted post would read as never
    # published, and publishing it again would post it twice.
    reset = subprocess.run([sys.executable, "-m", "smartretry.cli", "reset-projection", "--yes"],
                           env=running.env, capture_output=True, text=True, timeout=60)
    assert reset.returncode == 2
    assert "the service is running (consumer group " in reset.stderr and "stop it first" in reset.stderr
    assert httpx.get(f"{running.api}/posts/{post['post_id']}", headers=KEY).status_code == 200


def publish(api: str, post_id: str) -> None:
    post = {"post_id": post_id, "publish_target": "both", "account": "demo",
            "content": {"caption": f"Autumn sale {post_id}", "image_url": "https://cdn.example.com/autumn-sale.jpg"}}
    assert httpx.post(f"{api}/posts", json=post, headers=KEY, timeout=30).status_code in (200, 202)


def test_run_started_again_has_its_broker_and_posts_as_it_left_them(tmp_path: Path) -> None:
    env = run_env(tmp_path)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # the broker `run` starts itself, as `make run` does
    with start_run(env, tmp_path, ctrl_c=True) as first:
        assert "(created 4)" in first.wait_for_line("topics:")
        publish(first.api, "before-restart")
        wait_posted(first.api, "before-restart")
    assert (tmp_path / "var" / "kafka").is_dir()
    # Ctrl-C stops it all without an error: the broker outlives the processes that use it.
    stopping = first.lines.index("Stopping ...")
    assert not [line for line in first.lines[stopping:] if "ERROR" in line or "FAIL" in line], first.lines[stopping:]

    # On a port of the user's choosing this time: the same broker data, at another address.
    port = free_port()
    with start_run({**env, "SMARTRETRY_BROKER_PORT": str(port)}, tmp_path) as again:
        topics = again.wait_for_line("topics:")
        assert "created" not in topics  # the same topics, with their events
        assert f"Kafka: 127.0.0.1:{port} " in topics
        assert wait_posted(again.api, "before-restart")["status"] == "posted"
        # Publishing it again is still refused: the post is known, so it cannot go out twice.
        repeat = {"post_id": "before-restart", "publish_target": "both", "account": "demo",
                  "content": {"caption": "Autumn sale", "image_url": "https://cdn.example.com/autumn-sale.jpg"}}
        assert httpx.post(f"{again.api}/posts", json=repeat, headers=KEY, timeout=30).status_code == 409
        publish(again.api, "after-restart")
        wait_posted(again.api, "after-restart")


def test_a_second_run_on_the_same_broker_data_is_refused_and_a_broker_that_dies_is_started_again(
        tmp_path: Path) -> None:
    env = run_env(tmp_path)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    with start_run(env, tmp_path) as first:
        properties = (tmp_path / "var" / "kafka" / "server.properties").read_text()
        # Started again in the same place (other ports): its broker would share the first's data and corrupt it.
        second = subprocess.run([sys.executable, "-m", "smartretry.cli", "run"], cwd=tmp_path, timeout=120,
                                env={**env, "SMARTRETRY_API_PORT": str(free_port()),
                                     "SMARTRETRY_SANDBOX_PORT": str(free_port())},
                                capture_output=True, text=True)
        assert second.returncode == 2
        assert "another broker is using" in second.stderr and "SMARTRETRY_BROKER_DATA_DIR" in second.stderr
        assert (tmp_path / "var" / "kafka" / "server.properties").read_text() == properties
        # Again on the first's own port: refused before anything starts, naming the setting.
        taken = subprocess.run([sys.executable, "-m", "smartretry.cli", "run"], cwd=tmp_path, timeout=60,
                               env=env, capture_output=True, text=True)
        assert taken.returncode == 2 and "SMARTRETRY_API_PORT" in taken.stderr and "Traceback" not in taken.stderr
        # Its own broker asked for on the first's broker port: refused the same way.
        broker_port = re.search(r"PLAINTEXT://127\.0\.0\.1:(\d+)", properties)
        assert broker_port is not None
        clash = subprocess.run([sys.executable, "-m", "smartretry.cli", "run"], cwd=tmp_path, timeout=60,
                               env={**env, "SMARTRETRY_API_PORT": str(free_port()),
                                    "SMARTRETRY_SANDBOX_PORT": str(free_port()),
                                    "SMARTRETRY_BROKER_DATA_DIR": str(tmp_path / "other-kafka"),
                                    "SMARTRETRY_BROKER_PORT": broker_port.group(1)},
                               capture_output=True, text=True)
        assert clash.returncode == 2 and "set SMARTRETRY_BROKER_PORT to a free port" in clash.stderr
        reset = subprocess.run([sys.executable, "-m", "smartretry.cli", "reset-projection", "--yes"], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=60)
        assert reset.returncode == 2 and "`smartretry run` holds the broker data in var/kafka" in reset.stderr
        publish(first.api, "before-broker-death")
        wait_posted(first.api, "before-broker-death")

        os.kill(first.child("kafka.Kafka"), signal.SIGKILL)
        assert "killed by signal 9" in first.wait_for_line("the Kafka broker stopped", timeout=15)
        first.wait_for_line("Kafka broker started again", timeout=90)
        # Started again on its data: what was posted is there, and publishing goes on. Until the clients have
        # reconnected the API answers 503, and the request is sent again with the same command id, as it says.
        post = {"post_id": "after-broker-death", "command_id": "publish-after-broker-death", "publish_target": "both",
                "account": "demo", "content": {"caption": "Autumn sale", "image_url": "https://cdn.example.com/a.jpg"}}
        deadline = time.monotonic() + 60
        while (answer := httpx.post(f"{first.api}/posts", json=post, headers=KEY, timeout=30)).status_code == 503:
            assert time.monotonic() < deadline, answer.text
        assert answer.status_code in (200, 202), answer.text
        assert wait_posted(first.api, "after-broker-death", timeout=120)["status"] == "posted"
        assert wait_posted(first.api, "before-broker-death")["status"] == "posted"
        with SandboxControl(f"http://127.0.0.1:{env['SMARTRETRY_SANDBOX_PORT']}") as sandbox:
            resent = [p for p in sandbox.posts() if p["image_url"] == "https://cdn.example.com/a.jpg"]
        assert len(resent) == 2, resent  # once on each platform, however often the request was sent


def test_ctrl_c_while_run_starts_its_broker_again_stops_everything_without_starting_anything_again(
        tmp_path: Path) -> None:
    env = run_env(tmp_path)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    with start_run(env, tmp_path, ctrl_c=True) as run:
        os.kill(run.child("kafka.Kafka"), signal.SIGKILL)
        run.wait_for_line("the Kafka broker stopped", timeout=15)
        # Ctrl-C while the broker starts again: the handler and the projector end with it.
    stopping = run.lines.index("Stopping ...")
    assert run.process.returncode == 0, run.lines
    # Nothing is said to be started again, nor is anything an error.
    assert not [line for line in run.lines if "starting it again" in line and "Kafka broker stopped" not in line], \
        run.lines
    assert not [line for line in run.lines[stopping:] if "ERROR" in line or "FAIL" in line], run.lines[stopping:]


def test_run_refuses_a_projection_of_events_its_broker_does_not_have_until_it_is_reset(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    env = run_env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    store = ProjectionStore(make_engine(env["SMARTRETRY_DATABASE_URL"]))
    store.create_schema()
    # What a database keeps after its broker's data is gone: offsets of events the topic no longer has.
    store.write_states([], {(f"{env['SMARTRETRY_TOPIC_PREFIX']}post-events", 0): 200})
    store.engine.dispose()

    refused = subprocess.run([sys.executable, "-m", "smartretry.cli", "run"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "projection is ahead of" in refused.stderr and "smartretry reset-projection" in refused.stderr

    reset = subprocess.run([sys.executable, "-m", "smartretry.cli", "reset-projection", "--yes"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert reset.returncode == 0, reset.stderr
    with start_run(env, tmp_path) as run:
        publish(run.api, "after-reset")
        wait_posted(run.api, "after-reset")


def test_the_api_runs_as_a_process_of_its_own(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    # A deployment that runs the parts apart: the API alone takes commands onto the broker, and stops on SIGTERM.
    from tests.integration.test_api import messages_on

    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "SMARTRETRY_TOPIC_PREFIX": topics.prefix,
           "SMARTRETRY_API_PORT": str(port), "SMARTRETRY_DATABASE_URL": f"sqlite:///{tmp_path}/api.db"}
    process = subprocess.Popen([sys.executable, "-m", "smartretry.cli", "api"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{api}/healthz", timeout=2).status_code == 200:
                    break
            assert process.poll() is None and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        httpx.put(f"{api}/accounts/acme/token", headers=KEY, timeout=10,
                  json={"token": "acme-user-token-0001", "page_id": "747917475065823"}).raise_for_status()
        answer = httpx.post(f"{api}/posts", headers=KEY, timeout=60, json={
            "post_id": "alone-1", "publish_target": "facebook", "account": "acme",
            "content": {"caption": "Autumn sale", "image_url": "https://cdn.example.com/a.jpg"}})
        # No handler runs: accepted, its command on the broker for one to take.
        assert answer.status_code == 202, answer.text
        assert [key for key, _value in messages_on(kafka_bootstrap, topics.commands)] == ["alone-1"]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert f"API and pages at http://127.0.0.1:{port}" in output


def test_the_broker_command_says_when_its_broker_stops_and_starts_none_where_one_is_configured(
        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    configured = subprocess.run([sys.executable, "-m", "smartretry.cli", "broker"], cwd=tmp_path, timeout=60,
                                env={**env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
                                capture_output=True, text=True)
    assert configured.returncode == 2, configured.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS is set" in configured.stderr and "ready" not in configured.stdout

    process = subprocess.Popen([sys.executable, "-m", "smartretry.cli", "broker"], cwd=tmp_path, text=True,
                               env={**env, "SMARTRETRY_BROKER_DATA_DIR": str(tmp_path / "kafka")},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert "Kafka broker ready at" in process.stdout.readline()
        java = child_of(process.pid, "kafka.Kafka")
        os.kill(java, signal.SIGKILL)
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 1, err
        assert "error: the broker stopped (the JVM exited with -9): its log is " in err
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
