"""Shared fixtures: a real Kafka broker and PostgreSQL for the session, unique topics per test."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator

import pytest

from streams.broker import kafka_broker
from streams.topics import Topics, ensure_topics
from tests.support.postgres import postgres_server

pytest_plugins = ["tests.support.sandbox_fixtures", "tests.support.service"]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real broker: KAFKA_BOOTSTRAP_SERVERS, else Docker, else the local JVM broker."""
    with kafka_broker() as bootstrap:
        yield bootstrap
        # Clients the tests left behind go now, while the broker still answers their goodbyes.
        gc.collect()


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    """The service's four topics under a prefix no other test uses."""
    names = Topics(prefix=f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka_bootstrap, names.specs())
    return names


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url
