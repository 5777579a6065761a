"""`smartretry`: run the service and operate it from the command line."""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import typer

from publishers.redact import scrub
from smartretry.settings import Settings, database_url, development_keys, load_settings, serves_this_machine_only
from streams.broker import BrokerUnavailable, LocalBroker, StartedBroker, kafka_libs, kept_broker, port_free
from streams.topics import StoreAheadOfLog, TopicMismatch, check_store_matches_log, ensure_topics

# How often `run` checks that its projector and handler processes are alive.
SUPERVISE_INTERVAL_S = 1.0
# The longest wait before starting again a process that keeps dying within that long of its start.
RESTART_BACKOFF_CAP_S = 60.0

app = typer.Typer(help="Smart-retry publishing: publish to Facebook and Instagram, retry only what failed.",
                  no_args_is_help=True, rich_markup_mode="markdown")


def say(settings: Settings, text: str, *, err: bool = False, level: int = logging.INFO, logged: bool = False) -> None:
    """A line of `run`'s own: as written on a terminal, or through the log (one JSON object) when it writes JSON.
    `logged`: through the log in text mode too (with its time and level: what happened while running)."""
    if settings.log_format == "json" or logged:
        logging.getLogger("smartretry.run").log(level, text.removeprefix("error: "))
    else:
        typer.echo(text, err=err)


@contextlib.contextmanager
def broker_for(settings: Settings, holder: str = "smartretry run") -> Iterator[StartedBroker]:
    """The configured broker, else one started here whose data is kept (the local JVM, else Docker); `holder`: the
    command starting it, which its data directory's lock names."""
    if settings.kafka_bootstrap_servers:
        yield StartedBroker(settings.kafka_bootstrap_servers)
        return
    try:
        started = contextlib.ExitStack()
        broker = started.enter_context(kept_broker(Path(settings.broker_data_dir), settings.broker_port,
                                                   notify=lambda line: say(settings, line, err=True),
                                                   controller_port=settings.broker_controller_port,
                                                   holder=holder))
    except BrokerUnavailable as exc:
        say(settings, f"error: {exc}", err=True, level=logging.ERROR)
        raise typer.Exit(2) from None
    with started:
        yield broker


def _broker_ports(settings: Settings) -> dict[str, tuple[str, int]]:
    """The ports set for the broker started here (none when one is configured; unset ones are chosen free)."""
    if settings.kafka_bootstrap_servers:
        return {}
    chosen = {"SMARTRETRY_BROKER_PORT": settings.broker_port,
              "SMARTRETRY_BROKER_CONTROLLER_PORT": settings.broker_controller_port}
    return {name: ("127.0.0.1", port) for name, port in chosen.items() if port is not None}


def _refuse_taken_ports(settings: Settings, ports: dict[str, tuple[str, int]]) -> None:
    """Exits (status 2) naming the setting of the first of `ports` that something else listens on."""
    for name, (host, port) in ports.items():
        if not port_free(host, port):
            say(settings, f"error: port {port} is taken (another `smartretry run`?): stop what uses it, or set "
                f"{name} to a free port", err=True, level=logging.ERROR)
            raise typer.Exit(2)


class Interrupted:
    """Set by SIGINT or SIGTERM (`interrupt_event`). A flag polled by `wait`, not a `threading.Event`: an Event's
    lock, taken by a signal handler while the main thread holds it inside `wait`, would never come free, and the
    signal would be lost."""

    POLL_S = 0.1

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it is set, once it is or `timeout` seconds have passed (None: until it is)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            left = self.POLL_S if deadline is None else min(self.POLL_S, deadline - time.monotonic())
            if left <= 0:
                break
            time.sleep(left)
        return self._set


def interrupt_event() -> Interrupted:
    """Set by SIGINT or SIGTERM."""
    from streams.kafka import stopping

    stop = Interrupted()

    def interrupted(*_: object) -> None:
        stopping()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupted)
    return stop


def wait_for_interrupt() -> None:
    interrupt_event().wait()


@app.command()
def broker(measure: bool = typer.Option(False, help="Start the local JVM broker, print its start time, stop.")) -> None:
    """Start a Kafka broker on this machine and print its address (Ctrl-C stops it)."""
    if measure:
        # A throwaway broker (a data directory of its own, free ports): the start time of the JVM broker alone, with
        # the jars fetched first when they are not cached yet, so the figure never counts the download.
        kafka_libs()
        started = time.monotonic()
        local = LocalBroker.start()
        elapsed = time.monotonic() - started
        local.stop()
        typer.echo(f"local broker ready in {elapsed:.2f}s (jars cached)")
        return
    settings = load_settings()
    if settings.kafka_bootstrap_servers:
        # Nothing would be started, and nothing was checked: "ready" would say what is not known.
        typer.echo(f"error: KAFKA_BOOTSTRAP_SERVERS is set ({scrub(settings.kafka_bootstrap_servers)}): that broker is "
                   "the one to use; unset it to start one here", err=True)
        raise typer.Exit(2)
    # Another broker on the port would answer for this one, which would then fail to start.
    _refuse_taken_ports(settings, _broker_ports(settings))
    with broker_for(settings, holder=BROKER_ALONE) as started_broker:
        typer.echo(f"Kafka broker ready at {started_broker.bootstrap}  (Ctrl-C stops it)")
        stop = interrupt_event()
        while not stop.wait(1.0):
            if (code := started_broker.exit_code()) is not None and started_broker.local is not None:
                # Its clients would find no broker, and nothing here would say why.
                typer.echo(f"error: the broker stopped (the JVM exited with {code}): its log is "
                           f"{started_broker.local.data_dir / 'broker.log'}", err=True)
                raise typer.Exit(1)


def _still_default(defaults: list[str]) -> str:
    return f"{' and '.join(defaults)} {'is' if len(defaults) == 1 else 'are'} still the development default"


def _refuse_open_development_keys(settings: Settings) -> None:
    """Exits (status 2) when the API would listen beyond this machine with a key the README prints."""
    defaults = development_keys(settings)
    if defaults and not serves_this_machine_only(settings):
        # Served beyond this machine, the README's keys would let anyone use the API and read the stored tokens.
        where = settings.api_host or "every address of this machine (SMARTRETRY_API_HOST is empty)"
        say(settings, f"error: {_still_default(defaults)} the README prints, and the API would listen on "
            f"{where}: set your own (for example the output of `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`)", err=True, level=logging.ERROR)
        raise typer.Exit(2)


@app.command(epilog="Set from the environment (or a .env file), for example: SMARTRETRY_API_PORT (8080), "
             "SMARTRETRY_SANDBOX_PORT (8081), SMARTRETRY_BROKER_PORT and SMARTRETRY_BROKER_CONTROLLER_PORT (free ones "
             "unless set), KAFKA_BOOTSTRAP_SERVERS (a broker of your own, none started), SMARTRETRY_DATABASE_URL "
             "(sqlite:///var/smartretry.db), SMARTRETRY_API_KEY. The README's Configuration section lists every "
             "setting.")
def run() -> None:
    """Run the service: broker unless configured, topics, sandbox unless Meta is configured, processor, handler, API."""
    import os
    import subprocess
    import sys

    from smartretry.api import start_api
    from smartretry.bootstrap import open_stores
    from smartretry.logs import configure
    from streams.broker import die_with_parent

    settings = load_settings()
    # The API runs in this process: its lines (accepted commands, re-authentications, errors) in the
    # format and level the settings give, scrubbed, as the handler's and the projector's are.
    configure(settings.log_level, settings.log_format)
    _refuse_open_development_keys(settings)
    ports = {"SMARTRETRY_API_PORT": (settings.api_host, settings.api_port)}
    if not settings.graph_api_base_url:
        ports["SMARTRETRY_SANDBOX_PORT"] = ("127.0.0.1", settings.sandbox_port)
    _refuse_taken_ports(settings, {**ports, **_broker_ports(settings)})
    with broker_for(settings) as started_broker, contextlib.ExitStack() as stack:
        bootstrap = started_broker.bootstrap
        # The API's readiness check and its Kafka metrics read the broker from the settings too.
        settings = settings.model_copy(update={"kafka_bootstrap_servers": bootstrap})
        try:
            created = ensure_topics(bootstrap, settings.topics.specs())
        except TopicMismatch as exc:
            say(settings, f"error: {exc}", err=True, level=logging.ERROR)
            raise typer.Exit(2) from None
        names = ", ".join(spec.name for spec in settings.topics.specs())
        say(settings, f"Kafka: {bootstrap}  topics: {names}" + (f"  (created {len(created)})" if created else ""))
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
        if settings.database_url.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(settings.database_url.removeprefix("sqlite:///")) or ".", exist_ok=True)
        stores = open_stores(settings)
        try:
            check_store_matches_log(bootstrap, settings.topics.post_events,
                                    stores.projection.applied_offsets(settings.topics.post_events),
                                    partitions_of=stores.projection.partitions_of)
        except StoreAheadOfLog as exc:
            stores.engine.dispose()
            say(settings, f"error: {exc}", err=True, level=logging.ERROR)
            raise typer.Exit(2) from None
        if not settings.graph_api_base_url:
            from publishers.sandbox import (
                DEMO_ACCOUNT_ID,
                DEMO_IG_USER_ID,
                DEMO_PAGE_ID,
                DEMO_USER_TOKEN,
                run_sandbox,
            )

            sandbox = stack.enter_context(run_sandbox(port=settings.sandbox_port, container_delay_s=1.0))
            settings = settings.model_copy(update={"graph_api_base_url": sandbox.base_url})
            env["SMARTRETRY_GRAPH_API_BASE_URL"] = sandbox.base_url
            stores.credentials.set_token(DEMO_ACCOUNT_ID, DEMO_USER_TOKEN, DEMO_PAGE_ID, DEMO_IG_USER_ID)
            say(settings, f"No Meta credentials configured: using the sandbox Graph API at {sandbox.base_url} "
                f"(account `{DEMO_ACCOUNT_ID}` is set up)")
        else:
            say(settings, f"Graph API: {settings.graph_api_base_url} ({settings.graph_api_version})")
        commands = {"projector": [sys.executable, "-m", "streams.projector"],
                    "handler": [sys.executable, "-m", "smartretry.cli", "handler"]}
        # Each process dies with this one, even when this one is killed: nothing is left behind.
        processes = {name: subprocess.Popen(argv, env=env, preexec_fn=die_with_parent)
                     for name, argv in commands.items()}
        # Its producer of its own, polled by a thread: deliveries and librdkafka's log lines are served as they come.
        api = start_api(settings, stores)
        stack.callback(api.stop)
        default_key = Settings.model_fields["api_key"].default.get_secret_value()
        custom = settings.api_key.get_secret_value() != default_key
        key = "SMARTRETRY_API_KEY" if custom else f"the default, {default_key}"
        say(settings, f"API: {api.url}  (API key: {key})")
        say(settings, f"Posts: {api.url}/ui/posts")
        say(settings, f"Other commands (dlq, replay) reach this broker with KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
        say(settings, "Running. Ctrl-C stops everything.")
        stop = interrupt_event()
        started = dict.fromkeys(commands, time.monotonic())
        delays = dict.fromkeys(commands, 0.0)
        try:
            while not stop.wait(SUPERVISE_INTERVAL_S):
                if (code := started_broker.exit_code()) is not None and started_broker.local is not None:
                    if stop.is_set():
                        break  # Ctrl-C meanwhile (the broker in the terminal's process group had it too): stopping
                    # Nothing can be published or recorded without it; the handler and the projector reconnect.
                    why = f"killed by signal {-code}" if code < 0 else \
                        f"exit code {code}: {started_broker.local.last_words()[-500:]}"
                    say(settings, f"error: the Kafka broker stopped ({why}); starting it again", err=True,
                        level=logging.ERROR, logged=True)
                    try:
                        started_broker.local.restart()
                    except BrokerUnavailable as exc:
                        if stop.is_set():
                            break  # Ctrl-C while it started: stopped as asked, no error
                        say(settings, f"error: the Kafka broker could not be started again: {exc}", err=True,
                            level=logging.ERROR, logged=True)
                        raise typer.Exit(2) from None
                    if stop.is_set():
                        break  # Ctrl-C while it started: the processes it ended are not started again
                    say(settings, f"Kafka broker started again at {bootstrap}", err=True, level=logging.WARNING,
                        logged=True)
                for name, process in processes.items():
                    if stop.is_set():
                        break  # ended by the Ctrl-C that stops this too: not a process to start again
                    if process.poll() is None:
                        continue
                    # A post would wait unnoticed without its handler or projector: say so, start it again; one
                    # that keeps dying at once (a bad setting) is started less and less often, not every second.
                    quick = time.monotonic() - started[name] < RESTART_BACKOFF_CAP_S
                    doubled = min(RESTART_BACKOFF_CAP_S, delays[name] * 2 or SUPERVISE_INTERVAL_S)
                    delays[name] = doubled if quick else 0.0
                    # Said as the broker's end is: a signal by its number, an exit by its code.
                    ended = f"was killed by signal {-process.returncode}" if process.returncode < 0 else \
                        f"exited with code {process.returncode}"
                    say(settings, f"{name} {ended}; starting it again"
                        + (f" in {delays[name]:.0f}s" if delays[name] else ""), err=True, level=logging.WARNING,
                        logged=True)
                    if stop.wait(delays[name]):
                        break
                    processes[name] = subprocess.Popen(commands[name], env=env, preexec_fn=die_with_parent)
                    started[name] = time.monotonic()
        finally:
            say(settings, "Stopping ...")
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
            stores.engine.dispose()


@app.command()
def handler() -> None:
    """Run the command handler alone (broker from KAFKA_BOOTSTRAP_SERVERS)."""
    import asyncio

    from smartretry.bootstrap import run_handler
    from smartretry.logs import configure
    from streams.gc_tuning import disable_gc
    from streams.handler import HandlerOutOfGroup

    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    if not settings.kafka_bootstrap_servers:
        say(settings, "error: set KAFKA_BOOTSTRAP_SERVERS to the service's broker", err=True, level=logging.ERROR)
        raise typer.Exit(2)
    _projection_exists(settings)
    # The handler collects garbage on its own schedule (its consumer loop), as the projector does: the
    # collector's own took about a tenth of its CPU in a burst of publishes.
    disable_gc()
    try:
        asyncio.run(run_handler(settings, settings.kafka_bootstrap_servers))
    except HandlerOutOfGroup as exc:
        # Exits non-zero, for whatever supervises it (`run`) to start it again.
        logging.getLogger("smartretry.handler").error("%s; exiting", exc)
        raise typer.Exit(1) from None


@app.command("api")
def api_alone() -> None:
    """Run the HTTP API and the post pages alone (broker from KAFKA_BOOTSTRAP_SERVERS; Ctrl-C stops it)."""
    import asyncio

    from smartretry.api import reachable_host, serve
    from smartretry.bootstrap import open_stores, stop_on_signals
    from smartretry.logs import configure

    settings = load_settings()
    configure(settings.log_level, settings.log_format)
    if not settings.kafka_bootstrap_servers:
        say(settings, "error: set KAFKA_BOOTSTRAP_SERVERS to the service's broker", err=True, level=logging.ERROR)
        raise typer.Exit(2)
    _refuse_taken_ports(settings, {"SMARTRETRY_API_PORT": (settings.api_host, settings.api_port)})
    _refuse_open_development_keys(settings)
    if defaults := development_keys(settings):
        say(settings, f"warning: {_still_default(defaults)}: fine on this machine only", err=True,
            level=logging.WARNING)
    stores = open_stores(settings)

    async def serving() -> None:
        stop = stop_on_signals()
        say(settings, f"API and pages at http://{reachable_host(settings.api_host)}:{settings.api_port} (post pages: "
            "/ui/posts)")
        await serve(settings, stores, stop)

    try:
        asyncio.run(serving())
    finally:
        stores.engine.dispose()


@app.command()
def processor() -> None:
    """Run the stream processor: fold post events into the insights projection (Ctrl-C stops it)."""
    import asyncio

    from smartretry.logs import configure
    from streams.gc_tuning import disable_gc
    from streams.kafka import stopping
    from streams.projector import ProjectorCrashed, run_projector

    settings = load_settings()
    # As `python -m streams.projector` (what `run` starts) runs it: the log as configured, collections on its own
    # schedule.
    configure(settings.log_level, settings.log_format)
    disable_gc()

    async def projecting(started_broker: StartedBroker) -> None:
        # The broker started here stopping (its JVM killed) ends the processor, which would otherwise wait for it for
        # good; `run` starts its broker again instead.
        stop = asyncio.Event()

        async def watch() -> None:
            while started_broker.exit_code() is None:
                await asyncio.sleep(1.0)
            stop.set()

        watcher = asyncio.ensure_future(watch()) if started_broker.local is not None else None
        try:
            await run_projector(settings.model_copy(update={"kafka_bootstrap_servers": started_broker.bootstrap}),
                                stop=stop, on_stop=stopping)
        finally:
            if watcher is not None:
                watcher.cancel()

    try:
        with broker_for(settings, holder="smartretry processor") as started_broker:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(projecting(started_broker))
            if (code := started_broker.exit_code()) is not None and started_broker.local is not None:
                typer.echo(f"error: the broker stopped (the JVM exited with {code}): its log is "
                           f"{started_broker.local.data_dir / 'broker.log'}", err=True)
                raise typer.Exit(1)
    except ProjectorCrashed as exc:
        # Exits non-zero, for whatever supervises it to start it again.
        raise SystemExit(f"error: {exc}") from None


# The documents call the stream processor the projector: its name works too.
app.command("projector", hidden=True)(processor)


# Post ids `smartretry replay` names when the projections differ; the count says how many in all.
DIFFERING_SHOWN = 20


@app.command()
def replay(scratch: str = typer.Option("", help="Database URL of the scratch store; default a temporary SQLite file."),
           workers: int = typer.Option(0, help="Processes that read and fold partitions; default one per core.",
                                       min=0)) -> None:
    """Rebuild the projection from offset 0 into an empty store and compare it with the live one."""
    import tempfile

    from rich.progress import Progress

    from projections.store import ProjectionStore, make_engine
    from smartretry.cli_ops import on_the_broker
    from smartretry.credentials import CredentialStore
    from streams.replay import ReplayError
    from streams.replay import replay as replay_events

    settings = load_settings()
    if not settings.kafka_bootstrap_servers:
        typer.echo("error: set KAFKA_BOOTSTRAP_SERVERS to the broker the processor reads (`smartretry run` prints it)",
                   err=True)
        raise typer.Exit(2)
    try:
        if scratch:
            database_url(scratch, "--scratch")
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _projection_exists(settings)
    live = ProjectionStore(make_engine(settings.database_url))
    live.create_schema()
    # Taken out of imported documents as the live processor takes them out (`projections.imported`).
    credentials = CredentialStore(live.engine, settings.secret_key.get_secret_value())
    credentials.create_schema()
    secrets = credentials.stored_tokens()
    with tempfile.TemporaryDirectory(prefix="smartretry-replay-") as tmp:
        scratch_store = ProjectionStore(make_engine(scratch or f"sqlite:///{tmp}/scratch.db"))
        try:
            with Progress(transient=True) as bar, on_the_broker(settings):
                task = bar.add_task("Replaying post events", total=None)
                report = replay_events(settings.kafka_bootstrap_servers, settings.topics, live, scratch_store,
                                       progress=lambda done, total: bar.update(task, completed=done, total=total),
                                       workers=workers or None, secrets=secrets)
        except (ValueError, ReplayError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            scratch_store.engine.dispose()
    typer.echo(f"events replayed: {report.events} into {report.posts} posts in {report.seconds:.1f}s")
    typer.echo(f"live digest:   {report.live_digest}")
    typer.echo(f"replay digest: {report.replay_digest}")
    shown = report.differing[:DIFFERING_SHOWN]
    more = f" and {len(report.differing) - len(shown)} more" if len(report.differing) > len(shown) else ""
    typer.echo(f"posts that differ: {len(report.differing)}" + (f" ({', '.join(shown)}{more})" if shown else ""))
    if report.behind:
        typer.echo(f"compared as far as the live projection had applied: {report.behind} event"
                   f"{'s' if report.behind != 1 else ''} written after that were left out of both (a projector that "
                   "is behind, or not running: /metrics shows its lag as smartretry_projection_lag_events)")
    if not report.identical:
        typer.echo("A post differs when the live projection was built by a version whose fold keeps less (see "
                   "Upgrading in the README), or holds a token stored after it was imported with that token in it "
                   "(the rebuild takes it out): with the service stopped, `smartretry reset-projection --yes`, then a "
                   "start, rebuilds the projection from the events.")
        raise typer.Exit(1)


@app.command("reset-projection")
def reset_projection(
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    force: bool = typer.Option(False, "--force", help="Go ahead when the broker cannot say whether the service's "
                               "consumers are up (it is down, or just started). Only with the service stopped."),
) -> None:
    """Empty the projection (posts and applied offsets; account tokens stay), with the service stopped.

    The projector then rebuilds it from the events on the broker, from the first. For a database whose
    broker lost its data (`run` refuses to start on it, and says so).
    """
    from sqlalchemy.engine import make_url

    from projections.store import ProjectionStore, make_engine

    settings = load_settings()
    try:
        running = _service_running(settings)
    except CannotTell as exc:
        if not force:
            retry = "Set it" if isinstance(exc, CannotAsk) else "Try again once the broker answers"
            typer.echo(f"error: {exc}: it may be running. {retry}, or add --force if you know the service is "
                       "stopped", err=True)
            raise typer.Exit(2) from None
        running = None
    if running is not None:
        # Emptied under a running service, posts it published would read as never published: a publish of
        # one again would go out twice, and the projector (past those events) would not rebuild them.
        typer.echo(f"error: the service is running ({running}): stop it first, then reset the projection",
                   err=True)
        raise typer.Exit(2)
    _projection_exists(settings)
    store = ProjectionStore(make_engine(settings.database_url))
    store.create_schema()
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    if not yes:
        typer.confirm(f"Empty the projection of {store.count()} posts in {where}? Stop the service first: a "
                      "running projector would not fold the events again.", abort=True)
    store.reset()
    store.engine.dispose()
    typer.echo(f"The projection in {where} is empty; the projector rebuilds it from the broker's events "
               "when it starts.")


def _projection_exists(settings: Settings) -> None:
    """Exits (status 2) when the projection's SQLite file is not there: a command reading or emptying it would
    create an empty one, such as a relative `var/smartretry.db` run from another directory (a handler would then
    join the service's group and hold its commands, waiting for a projection no processor writes)."""
    from projections.store import missing_sqlite_file

    if (missing := missing_sqlite_file(settings.database_url)) is not None:
        say(settings, f"error: there is no projection at {missing} (SMARTRETRY_DATABASE_URL): set it to the service's "
            "database, or start the processor first (it creates it)", err=True, level=logging.ERROR)
        raise typer.Exit(2)


# What the data directory's lock names while `smartretry broker` alone holds it (no service process started with it).
BROKER_ALONE = "smartretry broker"


class CannotTell(Exception):
    """The broker could not say whether the service's consumers are up."""


class CannotAsk(CannotTell):
    """There is no broker to ask: `KAFKA_BOOTSTRAP_SERVERS` is not set."""


def _service_running(settings: Settings) -> str | None:
    """Why the service looks to be running, or None: members in the projector's or the handler's consumer group (a
    static member stays up to its session timeout). Raises `CannotTell` when the broker does not answer for a group.
    A broker `run` started that holds its data directory says the service runs; one `smartretry broker` started alone
    is asked, on its own address when KAFKA_BOOTSTRAP_SERVERS is not set."""
    from streams.broker import LOCK_FILE, broker_holder, data_dir_in_use, local_broker_address

    data_dir = Path(settings.broker_data_dir)
    if data_dir_in_use(data_dir):
        if (holder := broker_holder(data_dir)) != BROKER_ALONE:
            # `run` (or `processor`) started it, and starts the service's processes: running, or about to be.
            return f"`{holder or 'smartretry run'}` holds the broker data in {data_dir}"
        # Asked as any broker is: the projector and the handler run on their own, or not.
        bootstrap = settings.kafka_bootstrap_servers or local_broker_address(data_dir)
        if bootstrap is None:
            return f"`{BROKER_ALONE}` holds the broker data in {data_dir}, and its address is not known here"
        return _groups_up(settings, bootstrap)
    if not settings.kafka_bootstrap_servers:
        if (data_dir / LOCK_FILE).exists():
            if broker_holder(data_dir) != BROKER_ALONE:
                return None  # `run`'s own broker, stopped: so is the service it ran (its processes die with it)
            raise CannotAsk(f"KAFKA_BOOTSTRAP_SERVERS is not set and the broker data in {data_dir} was last held by "
                            f"`{BROKER_ALONE}`, stopped now: a projector or handler started on their own may still run")
        # A service on another broker (a shell without the deployment's settings) cannot be asked about.
        raise CannotAsk(f"KAFKA_BOOTSTRAP_SERVERS is not set and `smartretry run` has kept no broker data in "
                         f"{data_dir}, so the broker the service uses cannot be asked whether its consumers are up")
    return _groups_up(settings, settings.kafka_bootstrap_servers)


def _groups_up(settings: Settings, bootstrap: str) -> str | None:
    """Which of the projector's and the handler's consumer groups has members on `bootstrap`, said as a reason, or
    None; raises `CannotTell` when the broker does not answer for a group."""
    from streams.kafka import admin_client

    groups = [settings.projector_group, settings.handler_group]
    unanswered: list[str] = []
    with admin_client(bootstrap) as admin:
        for group, described in admin.describe_consumer_groups(groups, request_timeout=10).items():
            try:
                members = described.result(timeout=15).members
            except Exception as exc:
                # Not "stopped": a broker just started again answers so while it loads its groups, and a projector
                # running meanwhile would never fold again what the reset empties. The other group is asked still: one
                # said to be up is running, whatever --force says of the unanswered.
                unanswered.append(f"consumer group {group} ({scrub(str(exc))[:200]})")
                continue
            if members:
                return (f"consumer group {group} has {len(members)} member{'s' if len(members) > 1 else ''}; one "
                        f"stopped a moment ago leaves it within {settings.projector_session_timeout_seconds:.0f}s")
    if unanswered:
        raise CannotTell(f"the broker could not say whether these have members: {'; '.join(unanswered)}")
    return None


# Operator commands (publish, retry, force, show, dlq, accounts, demo), merged into this app.
from smartretry.cli_ops import ops  # noqa: E402

app.add_typer(ops)

def main() -> None:
    """`smartretry`: the commands, where a database or a broker that does not answer, or a file that cannot be
    written, ends the command with one line saying so (exit status 1), not a traceback."""
    from confluent_kafka import KafkaException
    from sqlalchemy.exc import DBAPIError

    from projections.store import database_said
    from smartretry.cli_ops import broker_said

    try:
        app()
    except DBAPIError as exc:
        typer.echo(f"error: a database did not answer ({database_said(exc)}): is its URL right "
                   "(SMARTRETRY_DATABASE_URL, or the command's own, such as replay's --scratch), and is it up?",
                   err=True)
        raise SystemExit(1) from None
    except KafkaException as exc:
        typer.echo(f"error: the Kafka broker did not answer ({broker_said(exc)}): is KAFKA_BOOTSTRAP_SERVERS right, "
                   "and is the broker up?", err=True)
        raise SystemExit(1) from None
    except OSError as exc:
        typer.echo(f"error: {scrub(str(exc))}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
