"""The composition root: builds each process's dependencies from the settings, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import Engine

from projections.store import ProjectionStore, make_engine
from publishers.base import build_publishers
from publishers.instagram import PUBLISH_MARGIN_S, ContainerPolling
from publishers.transport import AiohttpTransport
from smartretry.credentials import CredentialStore
from smartretry.settings import Settings
from streams.handler import CommandHandler, HandlerConfig
from streams.kafka import stopping
from streams.topics import StoreAheadOfLog, check_store_matches_log

log = logging.getLogger("smartretry")


@dataclass
class Stores:
    engine: Engine
    projection: ProjectionStore
    credentials: CredentialStore


def open_stores(settings: Settings) -> Stores:
    engine = make_engine(settings.database_url)
    projection = ProjectionStore(engine)
    projection.create_schema()
    credentials = CredentialStore(engine, settings.secret_key.get_secret_value())
    credentials.create_schema()
    credentials.stored_tokens()  # read once here: the scrubber knows every stored token from the start
    return Stores(engine, projection, credentials)


def handler_config(settings: Settings) -> HandlerConfig:
    return HandlerConfig(
        max_automatic_attempts=settings.max_automatic_attempts,
        backoff_base_seconds=settings.backoff_base_seconds,
        backoff_cap_seconds=settings.backoff_cap_seconds,
        freshness_timeout_seconds=settings.freshness_timeout_seconds,
        group_id=settings.handler_group,
        session_timeout_seconds=settings.handler_session_timeout_seconds,
        max_in_flight=settings.handler_max_in_flight,
        max_poll_interval_seconds=settings.handler_max_poll_interval_seconds,
        shutdown_grace_seconds=settings.handler_shutdown_grace_seconds,
        attempt_timeout_seconds=settings.attempt_timeout_seconds,
        attempt_lease_seconds=settings.attempt_lease_seconds,
        reauth_check_seconds=settings.reauth_check_seconds,
    )


@contextlib.asynccontextmanager
async def graph_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    # A call may take as long as its attempt allows (SMARTRETRY_ATTEMPT_TIMEOUT_SECONDS; the handler bounds each call
    # by what is left of it): a photo Meta takes a minute to fetch is published, not left to a look-up.
    # The bytes go through aiohttp: a fifth of the CPU per request of httpx's own pool (see its module).
    # A request holds its connection until this loop has read the answer, so in a burst the pool is what
    # limits: 300 posts to both platforms against the sandbox took 3.8 s over 20 connections, 3.1 s over
    # 50, 2.6 s over 100 and 2.9 s over 200. (Through httpx's own pool, more connections were slower.)
    transport = AiohttpTransport(max_connections=settings.graph_max_connections)
    async with httpx.AsyncClient(timeout=httpx.Timeout(settings.attempt_timeout_seconds, connect=5.0),
                                 transport=transport) as client:
        yield client


# Below this, Instagram's processing of an ordinary image may not be waited out.
SHORT_PROCESSING_S = 20.0


def short_processing_warning(polling: ContainerPolling) -> str | None:
    """What to say at start when the attempt timeout leaves Instagram little time to process an image."""
    if polling.timeout_s >= SHORT_PROCESSING_S:
        return None
    return (f"SMARTRETRY_ATTEMPT_TIMEOUT_SECONDS leaves Instagram {polling.timeout_s:.0f}s to process an image (the "
            f"last {PUBLISH_MARGIN_S:.0f}s of an attempt are kept for publishing it): an image that takes longer "
            "fails as not ready. Raise it, and SMARTRETRY_ATTEMPT_LEASE_SECONDS, for longer processing")


async def run_handler(settings: Settings, bootstrap: str, stop: asyncio.Event | None = None) -> None:
    """Runs the command handler until `stop` is set (or SIGINT/SIGTERM)."""
    if not settings.graph_api_base_url:
        raise SystemExit("error: SMARTRETRY_GRAPH_API_BASE_URL is not set (the sandbox's URL or the Graph API's)")
    stores = open_stores(settings)
    try:
        # Deciding on a projection of events this broker does not have would publish posts again.
        check_store_matches_log(bootstrap, settings.topics.post_events,
                                stores.projection.applied_offsets(settings.topics.post_events),
                                partitions_of=stores.projection.partitions_of)
    except StoreAheadOfLog as exc:
        stores.engine.dispose()
        raise SystemExit(f"error: {exc}") from None
    stop = stop or stop_on_signals()
    polling = ContainerPolling.within(settings.attempt_timeout_seconds)
    if (short := short_processing_warning(polling)) is not None:
        log.warning("%s", short)
    async with graph_client(settings) as client:
        handler = CommandHandler(
            bootstrap=bootstrap, topics=settings.topics, projection=stores.projection,
            credentials=stores.credentials,
            publishers=build_publishers(client, settings.graph_api_base_url, settings.graph_api_version,
                                        polling=polling,
                                        lookup_window=timedelta(seconds=settings.attempt_lease_seconds),
                                        on_obtained_token=lambda account, token: asyncio.to_thread(
                                            stores.credentials.remember_obtained, account, token)),
            config=handler_config(settings),
        )
        await handler.run(stop)
    stores.engine.dispose()


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM on the running loop, which marks the process as stopping (`stopping`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stopped() -> None:
        stopping()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped)
    return stop
