"""Fixtures for the sandbox Graph API: one server per test session, reset before every test that uses it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from pydantic import SecretStr

from publishers.base import AccountCredentials, Publisher, build_publishers
from publishers.sandbox import (
    DEMO_ACCOUNT_ID,
    DEMO_IG_USER_ID,
    DEMO_PAGE_ID,
    DEMO_PAGE_TOKEN,
    DEMO_USER_TOKEN,
    SandboxControl,
    SandboxServer,
    run_sandbox,
)
from schemas.common import Platform
from tests.support.sandbox import FAST_POLLING, GRAPH_VERSION


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with run_sandbox() as server:
        yield server


@pytest.fixture(scope="session")
def sandbox_control(sandbox_server: SandboxServer) -> Iterator[SandboxControl]:
    with SandboxControl(sandbox_server.base_url) as control:
        yield control


@pytest.fixture
def sandbox(sandbox_control: SandboxControl) -> SandboxControl:
    """The control API of a sandbox holding only the demo account, with no faults and no posts."""
    sandbox_control.reset()
    return sandbox_control


@pytest.fixture
def demo_account() -> AccountCredentials:
    return AccountCredentials(DEMO_ACCOUNT_ID, SecretStr(DEMO_USER_TOKEN), DEMO_PAGE_ID, DEMO_IG_USER_ID)


@pytest.fixture
async def graph_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(2.0)) as client:
        yield client


@pytest.fixture
def publishers(graph_client: httpx.AsyncClient, sandbox: SandboxControl) -> dict[Platform, Publisher]:
    return build_publishers(graph_client, sandbox.base_url, GRAPH_VERSION, polling=FAST_POLLING)


@pytest.fixture
def tokens_kept_out_of_logs(caplog: pytest.LogCaptureFixture) -> Iterator[set[str]]:
    """Captures every log record (httpx and httpcore at DEBUG included) and fails the test if a token is in one.

    Yields the set of tokens to look for; a test adds the tokens it makes up.
    """
    tokens = {DEMO_USER_TOKEN, DEMO_PAGE_TOKEN}
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "h11", "publishers"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield tokens
    records = caplog.get_records("setup") + caplog.get_records("call")
    text = "\n".join(_everything_in(record) for record in records)
    leaked = sorted(token for token in tokens if token in text)
    assert not leaked, f"{len(leaked)} token(s) appeared in the log output"


def _everything_in(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.__dict__)]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)
