"""A real Apache Kafka broker for the service and the tests: configured, in Docker, or on the local JVM."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

KAFKA_VERSION = "3.9.1"
POM = Path(__file__).with_name("broker") / "pom.xml"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"


class BrokerUnavailable(RuntimeError):
    """The broker could not be provided; the message says what to install or fix."""


def cache_dir() -> Path:
    root = os.environ.get("SMARTRETRY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "smartretry"
    )
    return Path(root)


def kafka_libs(notify: Callable[[str], None] | None = None) -> Path:
    """Kafka's jars, resolved from Maven Central once and cached outside the work tree.

    `notify` gets the line saying they are being fetched (a minute, the first time); by default it goes to stderr.
    """
    libs = cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / ".complete").exists():
        return libs
    for tool, package in (("java", "openjdk-17-jre-headless"), ("mvn", "maven")):
        if shutil.which(tool) is None:
            raise BrokerUnavailable(
                f"`{tool}` is not on PATH: install it (Debian: apt-get install {package}) "
                "or set KAFKA_BOOTSTRAP_SERVERS to an existing broker."
            )
    line = f"Fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {libs} ..."
    if notify is not None:
        notify(line)
    else:
        print(line, file=sys.stderr)
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Staged beside the cache so the final rename never crosses file systems.
    staging = Path(tempfile.mkdtemp(prefix="kafka-libs-", dir=libs.parent))
    try:
        subprocess.run(
            ["mvn", "-B", "-q", "-f", str(POM), DEPENDENCY_PLUGIN,
             "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerUnavailable(f"Maven could not fetch Kafka's jars: {exc.stdout[-2000:]}") from exc
    (staging / ".complete").touch()
    # Another process may have finished first; either copy is complete.
    with contextlib.suppress(OSError):
        staging.rename(libs)
    shutil.rmtree(staging, ignore_errors=True)
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether a listener could take `port` on `host` now (as a server's does: connections of its last run,
    still closing, do not count). Only a port in use counts as taken: a host it cannot tell about is left to
    the server to refuse in its own words."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError:
        return True
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
        return True


def _listener_port(props: Path, name: str = "PLAINTEXT") -> int | None:
    """The port a broker's server.properties gives its listener `name` (PLAINTEXT, CONTROLLER), if it has one."""
    if not props.exists():
        return None
    found = re.search(rf"^listeners=.*\b{name}://127\.0\.0\.1:(\d+)", props.read_text(), re.MULTILINE)
    return int(found.group(1)) if found else None


def _two_ports(port: int, controller: int, requested: int | None) -> int:
    """The controller's port, never the clients' one (the broker would not start): another free one unless it was
    asked for, which is refused."""
    if controller != port:
        return controller
    if requested is not None:
        raise BrokerUnavailable(f"the broker's port and its controller's port are both {port}: give them different "
                                "ports (SMARTRETRY_BROKER_PORT, SMARTRETRY_BROKER_CONTROLLER_PORT)")
    while controller == port:
        controller = free_port()
    return controller


def _kept_port(requested: int | None, previous: int | None) -> int:
    """The port asked for; else the one of the last start while it is free; else a free one."""
    if requested is not None:
        return requested
    if previous is not None and port_free("127.0.0.1", previous):
        return previous
    return free_port()


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    # The JVM gets SIGTERM when the process that started it dies, even by SIGKILL: no orphan brokers.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# In the broker's data directory: held by `smartretry run` and its broker while they use it.
LOCK_FILE = "smartretry.lock"


def _lock_data_dir(data_dir: Path, holder: str = "") -> IO[bytes]:
    """An exclusive lock on the broker's data directory, held until closed (or the process ends). The lock file
    then names who holds it (`holder`: the command that started the broker, `broker_holder`)."""
    lock = open(data_dir / LOCK_FILE, "ab")  # noqa: SIM115 - held for the broker's life
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise BrokerUnavailable(
            f"another broker is using {data_dir} (is `smartretry run` already running here?): a second one would "
            "corrupt its data. Stop the other, or set SMARTRETRY_BROKER_DATA_DIR to another directory.") from None
    os.ftruncate(lock.fileno(), 0)
    lock.write(holder.encode())
    lock.flush()
    return lock


def broker_holder(data_dir: Path) -> str:
    """The command that started the broker holding `data_dir` (`smartretry broker`, say), as its lock file names
    it; "" where it named none."""
    try:
        return (data_dir / LOCK_FILE).read_text(errors="replace").strip()
    except OSError:
        return ""


def local_broker_address(data_dir: Path) -> str | None:
    """The address of the broker whose data is in `data_dir` (`LocalBroker`'s), as its last start wrote it."""
    port = _listener_port(data_dir / "server.properties")
    return f"127.0.0.1:{port}" if port is not None else None


def data_dir_in_use(data_dir: Path) -> bool:
    """Whether a broker (that `smartretry run` started) holds `data_dir`'s lock now."""
    path = data_dir / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "ab") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return False


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "inter.broker.listener.name=PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"log.dirs={data_dir / 'logs'}",
        "num.partitions=1",
        # One node: internal topics cannot have more replicas than that, or transactions hang.
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=6",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=6",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "log.retention.hours=-1",
        "",
    ])


@dataclass
class LocalBroker:
    """A single-node KRaft broker (broker and controller in one JVM) on 127.0.0.1.

    The JVM is tied to the thread that starts it and dies with it, so no broker outlives its owner.
    """

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    _owns_dir: bool = True
    # Held while this broker uses `data_dir`: a second broker on the same data would corrupt it.
    _lock: IO[bytes] | None = None
    # Where this start's output begins in stdout.log (the file keeps every start's).
    _output_from: int = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, data_dir: Path | None = None, port: int | None = None, timeout: float = 90.0,
              notify: Callable[[str], None] | None = None, controller_port: int | None = None,
              holder: str = "") -> LocalBroker:
        """`port`: the clients' listener's; `controller_port`: the KRaft controller's, which only the broker itself
        uses. Unset, each is the one of the last start on `data_dir` while it is free, else a free one. `holder`: the
        command starting it, which the data directory's lock names (`broker_holder`)."""
        if port is not None and controller_port is not None:
            _two_ports(port, controller_port, controller_port)  # both asked for alike: refused before anything starts
        libs = kafka_libs(notify)
        requested = port
        owns = data_dir is None
        data_dir = Path(tempfile.mkdtemp(prefix="smartretry-kafka-")) if data_dir is None else data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock_data_dir(data_dir, holder)
        port = port or free_port()
        broker = cls(port=port, data_dir=data_dir, _owns_dir=owns, _lock=lock)
        props = data_dir / "server.properties"
        classpath = f"{libs}/*"
        log4j = data_dir / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=WARN, file\n"
            "log4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={data_dir / 'broker.log'}\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.server.KafkaServer=INFO\n"
        )
        java = ["java", "-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                f"-Dlog4j.configuration=file:{log4j}", "-cp", classpath]
        formatted = (data_dir / "logs" / "meta.properties").exists()
        try:
            if formatted:
                # Kept data (a restart): its listeners again if free, else others; the data is what counts.
                previous, previous_controller = _listener_port(props), _listener_port(props, "CONTROLLER")
                port = broker.port = _kept_port(requested, previous)
                controller = _two_ports(port, _kept_port(controller_port, previous_controller), controller_port)
                if (port, controller) != (previous, previous_controller):
                    props.write_text(_server_properties(data_dir, port, controller))
            else:
                controller = _two_ports(port, controller_port or free_port(), controller_port)
                props.write_text(_server_properties(data_dir, port, controller))
                cluster_id = subprocess.run(
                    [*java, "kafka.tools.StorageTool", "random-uuid"], check=True, capture_output=True, text=True
                ).stdout.strip().splitlines()[-1]
                subprocess.run(
                    [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
                     "--ignore-formatted"], check=True, capture_output=True, text=True,
                )
        except BaseException:
            broker.stop()  # the data directory's lock let go
            raise
        try:
            out = open(data_dir / "stdout.log", "ab")  # noqa: SIM115 - owned by the broker process
            broker._output_from = out.seek(0, os.SEEK_END)
            # The JVM holds the data directory's lock too: one left behind by a killed owner still keeps the
            # next from starting a second broker on its data.
            broker.process = subprocess.Popen(
                [*java, "kafka.Kafka", str(props)], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent, pass_fds=(lock.fileno(),),
                # Out of the starter's process group: Ctrl-C in its terminal reaches the processes that use the broker,
                # and the starter stops the broker after them (stopped first, it left their clients failing to
                # reconnect). It still dies with its starter.
                start_new_session=True,
            )
            out.close()
            broker.wait_ready(timeout)
        except BaseException:
            broker.stop()
            raise
        return broker

    def wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerUnavailable(f"the Kafka JVM exited with {self.process.returncode}: {self.last_words()}")
            try:
                metadata = admin.list_topics(timeout=1.0)
                if metadata.brokers:
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.2)
        raise BrokerUnavailable(f"the local Kafka broker did not answer within {timeout:.0f}s (see {self.data_dir})")

    def last_words(self) -> str:
        """The end of what the JVM wrote (its own output, else its log), for an error message."""
        for name in ("stdout.log", "broker.log"):
            with contextlib.suppress(OSError):
                with open(self.data_dir / name, "rb") as log_file:
                    log_file.seek(self._output_from if name == "stdout.log" else 0)
                    text = log_file.read().decode(errors="replace")
                # Whole lines: the end of a stack trace, with its cause ("Address already in use") where it says one.
                tail = text[-2000:].partition("\n")[2].strip() if len(text) > 2000 else text.strip()
                cause = [line.strip() for line in text.splitlines() if line.lstrip().startswith("Caused by:")]
                if cause and cause[-1] not in tail:
                    tail = f"{cause[-1]} ... {tail}"
                if tail:
                    return f"{tail} (from {self.data_dir / name})"
        return f"it said nothing (see {self.data_dir})"

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def kill(self) -> None:
        """Stops the JVM abruptly (SIGKILL), keeping its data: for restart tests."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 90.0) -> None:
        """Kills the JVM and starts it again on the same data and port.

        The new JVM dies with the *thread* that calls this (`PR_SET_PDEATHSIG` follows the thread): call it
        from a thread that lives as long as the broker should, such as the main thread.
        """
        self.kill()
        owns, self._owns_dir = self._owns_dir, False
        holder = broker_holder(self.data_dir)
        if self._lock is not None:
            self._lock.close()  # taken again by the new JVM's start
        try:
            started = LocalBroker.start(self.data_dir, self.port, timeout, holder=holder)
        finally:
            self._owns_dir = owns
        self.process, self._lock = started.process, started._lock


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass(frozen=True)
class StartedBroker:
    """The broker a command runs against: its address, and the local JVM when the command started one."""

    bootstrap: str
    local: LocalBroker | None = None

    def exit_code(self) -> int | None:
        """The local JVM's exit code once it has stopped; None while it runs (or when it is not ours)."""
        process = self.local.process if self.local is not None else None
        return process.poll() if process is not None else None


@contextlib.contextmanager
def kept_broker(data_dir: Path, port: int | None = None, notify: Callable[[str], None] | None = None,
                controller_port: int | None = None, holder: str = "") -> Iterator[StartedBroker]:
    """A broker for `smartretry run` whose topics outlive it: the local JVM's, with its data in `data_dir`.

    The projection in the database is of the events on this broker; a broker that started empty each
    time would leave it pointing at events that no longer exist. Without Java, a Docker broker (whose
    data goes with its container: the start-up check then refuses the old projection, saying so). The local
    broker listens on `port`, else on a free port (the one of its last start while that is free), and its
    controller on `controller_port` likewise. `holder`: the command starting it (`LocalBroker.start`).
    """
    if shutil.which("java") is None and docker_available():
        with kafka_broker() as bootstrap:
            yield StartedBroker(bootstrap)
        return
    broker = LocalBroker.start(data_dir=data_dir, port=port, notify=notify, controller_port=controller_port,
                               holder=holder)
    try:
        yield StartedBroker(broker.bootstrap, broker)
    finally:
        broker.stop()


@contextlib.contextmanager
def kafka_broker(prefer_docker: bool = True) -> Iterator[str]:
    """Yields a bootstrap address: `KAFKA_BOOTSTRAP_SERVERS`, else Docker (testcontainers), else the local JVM."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if prefer_docker and docker_available():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer(f"apache/kafka:{KAFKA_VERSION}").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalBroker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
