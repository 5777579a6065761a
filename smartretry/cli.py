"""`smartretry`: run the service and operate it from the command line."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

import typer

from smartretry.settings import Settings
from streams.broker import BrokerUnavailable, LocalBroker, kafka_broker
from streams.topics import ensure_topics

app = typer.Typer(help="Smart-retry publishing: publish to Facebook and Instagram, retry only what failed.",
                  no_args_is_help=True)


@contextlib.contextmanager
def broker_for(settings: Settings) -> Iterator[str]:
    """The configured broker, else one started here (Docker, else the local JVM)."""
    if settings.kafka_bootstrap_servers:
        yield settings.kafka_bootstrap_servers
        return
    try:
        with kafka_broker() as bootstrap:
            yield bootstrap
    except BrokerUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def wait_for_interrupt() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@app.command()
def broker(measure: bool = typer.Option(False, help="Start the local JVM broker, print its start time, stop.")) -> None:
    """Start a Kafka broker on this machine and print its address (Ctrl-C stops it)."""
    if measure:
        started = time.monotonic()
        local = LocalBroker.start()
        elapsed = time.monotonic() - started
        local.stop()
        typer.echo(f"local broker ready in {elapsed:.2f}s (jars cached)")
        return
    with broker_for(Settings()) as bootstrap:
        typer.echo(f"Kafka broker ready at {bootstrap}  (Ctrl-C stops it)")
        wait_for_interrupt()


@app.command()
def run() -> None:
    """Run the service: broker unless configured, topics, and the processes of the service."""
    settings = Settings()
    with broker_for(settings) as bootstrap:
        created = ensure_topics(bootstrap, settings.topics.specs())
        names = ", ".join(spec.name for spec in settings.topics.specs())
        typer.echo(f"Kafka: {bootstrap}  topics: {names}" + (f"  (created {len(created)})" if created else ""))
        typer.echo("Running. Ctrl-C stops everything.")
        wait_for_interrupt()
        typer.echo("Stopping ...")


@app.command()
def handler() -> None:
    """Run the command handler alone (broker from KAFKA_BOOTSTRAP_SERVERS)."""
    import asyncio

    from smartretry.bootstrap import run_handler
    from smartretry.logs import configure

    settings = Settings()
    configure(settings.log_level, settings.log_format)
    if not settings.kafka_bootstrap_servers:
        typer.echo("error: set KAFKA_BOOTSTRAP_SERVERS", err=True)
        raise typer.Exit(2)
    asyncio.run(run_handler(settings, settings.kafka_bootstrap_servers))


@app.command()
def processor() -> None:
    """Run the stream processor: fold post events into the insights projection (Ctrl-C stops it)."""
    import asyncio

    from streams.projector import run_projector

    settings = Settings()
    with broker_for(settings) as bootstrap, contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_projector(settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})))


@app.command()
def replay(scratch: str = typer.Option("", help="Database URL of the scratch store; default a temporary SQLite file.")
           ) -> None:
    """Rebuild the projection from offset 0 into an empty store and compare it with the live one."""
    import tempfile

    from rich.progress import Progress

    from projections.store import ProjectionStore, make_engine
    from streams.replay import replay as replay_events

    settings = Settings()
    if not settings.kafka_bootstrap_servers:
        typer.echo("error: set KAFKA_BOOTSTRAP_SERVERS to the broker the processor reads", err=True)
        raise typer.Exit(2)
    live = ProjectionStore(make_engine(settings.database_url))
    live.create_schema()
    with tempfile.TemporaryDirectory(prefix="smartretry-replay-") as tmp:
        scratch_store = ProjectionStore(make_engine(scratch or f"sqlite:///{tmp}/scratch.db"))
        with Progress() as bar:
            task = bar.add_task("Replaying post events", total=None)
            report = replay_events(settings.kafka_bootstrap_servers, settings.topics, live, scratch_store,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
        scratch_store.engine.dispose()
    typer.echo(f"events replayed: {report.events} into {report.posts} posts in {report.seconds:.1f}s")
    typer.echo(f"live digest:   {report.live_digest}")
    typer.echo(f"replay digest: {report.replay_digest}")
    typer.echo(f"posts that differ: {', '.join(report.differing) if report.differing else 'none'}")
    if not report.identical:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
