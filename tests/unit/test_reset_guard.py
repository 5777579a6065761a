"""`reset-projection` goes ahead only when the broker says the service's consumers are down."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

import streams.kafka
from projections.store import ProjectionStore, make_engine, same_database
from smartretry.cli import BROKER_ALONE, app
from streams.broker import LOCK_FILE, _lock_data_dir
from tests.unit.test_fold import History


class CoordinatorLoading:
    """An admin client of a broker just started again: it cannot describe a group while it loads them. `up`: the
    groups whose coordinator has loaded, each with one member."""

    up: tuple[str, ...] = ()

    def __init__(self, _config: dict[str, str]) -> None:
        pass

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[str, Future[object]]:
        answers: dict[str, Future[object]] = {}
        for group in groups:
            answers[group] = Future()
            if group.endswith(self.up):
                answers[group].set_result(SimpleNamespace(members=[object()]))
            else:
                answers[group].set_exception(KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)))
        return answers

    def poll(self, timeout: float) -> int:
        return 0


class HandlersGroupUp(CoordinatorLoading):
    """The projector's group still loading; the handler's answers: one member, up."""

    up = ("command-handler",)


def projection_of_one_post(tmp_path: Path) -> tuple[ProjectionStore, dict[str, str]]:
    """A projection holding one post, and the environment of a CLI run on it."""
    url = f"sqlite:///{tmp_path}/projection.db"
    store = ProjectionStore(make_engine(url))
    store.create_schema()
    history = History("post-1")
    history.publish()
    store.apply_batch("post-events", 0, list(enumerate(history.events)))
    return store, {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "SMARTRETRY_DATABASE_URL": url,
                   "SMARTRETRY_BROKER_DATA_DIR": str(tmp_path / "kafka")}


def test_a_broker_that_cannot_say_whether_the_service_runs_stops_the_reset_unless_forced(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(streams.kafka, "AdminClient", CoordinatorLoading)
    store, env = projection_of_one_post(tmp_path)

    refused = CliRunner().invoke(app, ["reset-projection", "--yes"], env=env)
    assert refused.exit_code == 2, refused.output
    assert "could not say whether these have members: consumer group smartretry.projector" in refused.output
    assert "add --force" in refused.output
    assert store.count() == 1  # a projector running meanwhile would never fold the emptied posts again

    forced = CliRunner().invoke(app, ["reset-projection", "--yes", "--force"], env=env)
    assert forced.exit_code == 0, forced.output
    assert store.count() == 0


def test_force_never_overrides_a_group_the_broker_says_is_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(streams.kafka, "AdminClient", HandlersGroupUp)
    store, env = projection_of_one_post(tmp_path)

    forced = CliRunner().invoke(app, ["reset-projection", "--yes", "--force"], env=env)

    assert forced.exit_code == 2, forced.output
    assert "the service is running (consumer group smartretry.command-handler has 1 member" in forced.output
    assert store.count() == 1


@pytest.mark.parametrize(("one", "other", "same"), [
    ("postgresql+psycopg://app@db.internal/smartretry", "postgresql+psycopg://app@db.internal:5432/smartretry", True),
    ("postgresql+psycopg://app@localhost/smartretry", "postgresql+psycopg://app@127.0.0.1/smartretry", True),
    ("postgresql+psycopg://app@db.internal/smartretry", "postgresql+psycopg://app@db.internal/scratch", False),
    ("postgresql+psycopg://app@db.internal/smartretry", "postgresql+psycopg://app@db.other/smartretry", False),
    ("sqlite:///var/smartretry.db", "sqlite:///./var/../var/smartretry.db", True),
    ("sqlite:///var/smartretry.db", "sqlite://", False),
    ("sqlite:////tmp/live/smartretry.db", "sqlite:///file:/tmp/live/smartretry.db?uri=true", True),
    ("sqlite:///file:/tmp/live/smartretry.db?mode=memory&uri=true",
     "sqlite:///file:/tmp/live/smartretry.db?mode=memory&uri=true", False),
])
def test_a_replays_scratch_store_is_told_from_the_live_one_however_its_url_is_written(
        one: str, other: str, same: bool) -> None:
    engines = [SimpleNamespace(url=make_url(url)) for url in (one, other)]
    assert same_database(*engines) is same  # type: ignore[arg-type]


def test_without_the_brokers_address_the_reset_needs_run_s_stopped_broker_or_force(tmp_path: Path) -> None:
    # A shell without the deployment's settings: the service runs on a broker this command cannot ask.
    store, env = projection_of_one_post(tmp_path)
    env = {**env, "KAFKA_BOOTSTRAP_SERVERS": None}  # type: ignore[dict-item]

    refused = CliRunner().invoke(app, ["reset-projection", "--yes"], env=env)
    assert refused.exit_code == 2, refused.output
    assert "KAFKA_BOOTSTRAP_SERVERS is not set" in refused.output and "Set it, or add --force" in refused.output
    assert store.count() == 1

    # Where `run` keeps its broker's data, and holds it no more: the service it ran has stopped.
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / LOCK_FILE).touch()
    stopped = CliRunner().invoke(app, ["reset-projection", "--yes"], env=env)
    assert stopped.exit_code == 0, stopped.output
    assert store.count() == 0


class NoMembers(CoordinatorLoading):
    """A broker whose service groups have no members: the projector and the handler are stopped. Records where it
    was asked."""

    asked: ClassVar[list[str]] = []

    def __init__(self, config: dict[str, str]) -> None:
        NoMembers.asked.append(config["bootstrap.servers"])

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[str, Future[object]]:
        answers: dict[str, Future[object]] = {}
        for group in groups:
            answers[group] = Future()
            answers[group].set_result(SimpleNamespace(members=[]))
        return answers


@contextlib.contextmanager
def broker_data_held(data_dir: Path, port: int, holder: str) -> Iterator[None]:
    """`data_dir` held as a broker started here by `holder` holds it, its last start on `port`."""
    data_dir.mkdir()
    (data_dir / "server.properties").write_text(f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:1\n")
    lock = _lock_data_dir(data_dir, holder)
    try:
        yield
    finally:
        lock.close()


def test_a_broker_started_alone_is_asked_whether_the_service_runs(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    # `smartretry broker` alone holds the data directory, its projector and handler run (or not) on their own: its
    # groups say which. Before, the reset was refused as if `run` held it.
    store, env = projection_of_one_post(tmp_path)
    env = {**env, "KAFKA_BOOTSTRAP_SERVERS": None}  # type: ignore[dict-item]
    NoMembers.asked = []
    with broker_data_held(tmp_path / "kafka", 27654, BROKER_ALONE):
        monkeypatch.setattr(streams.kafka, "AdminClient", HandlersGroupUp)
        refused = CliRunner().invoke(app, ["reset-projection", "--yes"], env=env)
        assert refused.exit_code == 2, refused.output
        assert "the service is running (consumer group smartretry.command-handler has 1 member" in refused.output
        assert store.count() == 1

        monkeypatch.setattr(streams.kafka, "AdminClient", CoordinatorLoading)
        # As any broker that cannot say (a new one: its group coordinator is not up before it is first asked for).
        unsure = CliRunner().invoke(app, ["reset-projection", "--yes"], env=env)
        assert unsure.exit_code == 2, unsure.output
        assert "could not say whether these have members" in unsure.output and "add --force" in unsure.output
        assert store.count() == 1

        monkeypatch.setattr(streams.kafka, "AdminClient", NoMembers)
        reset = CliRunner().invoke(app, ["reset-projection", "--yes"], env=env)
        assert reset.exit_code == 0, reset.output
        assert NoMembers.asked == ["127.0.0.1:27654"]
        assert store.count() == 0


@pytest.mark.parametrize("holder", ["smartretry run", "smartretry processor", ""])
def test_a_broker_run_started_refuses_the_reset_whatever_its_groups_say(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, holder: str) -> None:
    # `run` starts the projector and the handler after its broker: groups with no member yet are no stopped service.
    store, env = projection_of_one_post(tmp_path)
    monkeypatch.setattr(streams.kafka, "AdminClient", NoMembers)
    with broker_data_held(tmp_path / "kafka", 27654, holder):
        refused = CliRunner().invoke(app, ["reset-projection", "--yes", "--force"], env=env)
    assert refused.exit_code == 2, refused.output
    assert f"the service is running (`{holder or 'smartretry run'}` holds the broker data in" in refused.output
    assert store.count() == 1


def test_a_scratch_store_at_a_hard_link_of_the_live_sqlite_file_is_the_live_one(tmp_path: Path) -> None:
    live = tmp_path / "smartretry.db"
    live.write_bytes(b"")
    (tmp_path / "scratch.db").hardlink_to(live)
    engines = [SimpleNamespace(url=make_url(f"sqlite:///{path}")) for path in (live, tmp_path / "scratch.db")]
    assert same_database(*engines)  # type: ignore[arg-type]


def test_a_reset_where_there_is_no_projection_says_so_and_creates_none(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/elsewhere/projection.db"

    refused = CliRunner().invoke(app, ["reset-projection", "--yes", "--force"], env={
        "KAFKA_BOOTSTRAP_SERVERS": None, "SMARTRETRY_DATABASE_URL": url,  # type: ignore[dict-item]
        "SMARTRETRY_BROKER_DATA_DIR": str(tmp_path / "kafka")})

    assert refused.exit_code == 2, refused.output
    assert f"error: there is no projection at {tmp_path / 'elsewhere' / 'projection.db'}" in refused.output
    assert not (tmp_path / "elsewhere").exists()


def test_a_stopped_broker_that_was_started_alone_says_nothing_of_the_service(tmp_path: Path) -> None:
    # Its projector and handler were started on their own and do not stop with it, unlike `run`'s.
    store, env = projection_of_one_post(tmp_path)
    env = {**env, "KAFKA_BOOTSTRAP_SERVERS": None}  # type: ignore[dict-item]
    with broker_data_held(tmp_path / "kafka", 27654, BROKER_ALONE):
        pass  # stopped now; its lock file still names it

    refused = CliRunner().invoke(app, ["reset-projection", "--yes"], env=env)
    assert refused.exit_code == 2, refused.output
    assert "last held by `smartretry broker`, stopped now" in refused.output and "add --force" in refused.output
    assert store.count() == 1
