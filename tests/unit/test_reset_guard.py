"""`reset-projection` goes ahead only when the broker says the service's consumers are down."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import confluent_kafka.admin
import pytest
from confluent_kafka import KafkaError, KafkaException
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from projections.store import ProjectionStore, make_engine, same_database
from smartretry.cli import app
from tests.unit.test_fold import History


class OneGroupLoading:
    """The projector's group is on a coordinator still loading; the handler's answers: one member, up."""

    def __init__(self, _config: dict[str, str]) -> None:
        pass

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[str, Future[object]]:
        answers: dict[str, Future[object]] = {}
        for group in groups:
            answers[group] = Future()
            if group.endswith("projector"):
                answers[group].set_exception(KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)))
            else:
                answers[group].set_result(SimpleNamespace(members=[object()]))
        return answers


class CoordinatorLoading:
    """An admin client of a broker just started again: it cannot describe a group while it loads them."""

    def __init__(self, _config: dict[str, str]) -> None:
        pass

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[str, Future[object]]:
        answers: dict[str, Future[object]] = {}
        for group in groups:
            answers[group] = Future()
            answers[group].set_exception(KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)))
        return answers


def test_a_broker_that_cannot_say_whether_the_service_runs_stops_the_reset_unless_forced(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", CoordinatorLoading)
    url = f"sqlite:///{tmp_path}/projection.db"
    store = ProjectionStore(make_engine(url))
    store.create_schema()
    history = History("post-1")
    history.publish()
    store.apply_batch("post-events", 0, list(enumerate(history.events)))
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "SMARTRETRY_DATABASE_URL": url,
           "SMARTRETRY_BROKER_DATA_DIR": str(tmp_path / "kafka")}

    refused = CliRunner().invoke(app, ["reset-projection", "--yes"], env=env)
    assert refused.exit_code == 2, refused.output
    assert "could not say whether these have members: consumer group smartretry.projector" in refused.output
    assert "add --force" in refused.output
    assert store.count() == 1  # a projector running meanwhile would never fold the emptied posts again

    forced = CliRunner().invoke(app, ["reset-projection", "--yes", "--force"], env=env)
    assert forced.exit_code == 0, forced.output
    assert store.count() == 0


def test_force_never_overrides_a_group_the_broker_says_is_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", OneGroupLoading)
    url = f"sqlite:///{tmp_path}/projection.db"
    store = ProjectionStore(make_engine(url))
    store.create_schema()
    history = History("post-1")
    history.publish()
    store.apply_batch("post-events", 0, list(enumerate(history.events)))
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "SMARTRETRY_DATABASE_URL": url,
           "SMARTRETRY_BROKER_DATA_DIR": str(tmp_path / "kafka")}

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
])
def test_a_replays_scratch_store_is_told_from_the_live_one_however_its_url_is_written(
        one: str, other: str, same: bool) -> None:
    engines = [SimpleNamespace(url=make_url(url)) for url in (one, other)]
    assert same_database(*engines) is same  # type: ignore[arg-type]
