"""Settings of the service, from the environment (prefix `SMARTRETRY_`) or a `.env` file."""

from __future__ import annotations

import logging
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.topics import DEFAULT_PARTITIONS, Topics

# The keys a development machine runs with: printed in the README, so never for real accounts' tokens.
DEV_API_KEY = "dev-key-change-me"
DEV_SECRET_KEY = "dev-secret-change-me"
# The pages' sign-in cookie and forms are signed with the API key: a short one is one anyone can guess.
MIN_API_KEY_LENGTH = 16

Port = Annotated[int, Field(ge=1, le=65535)]


def _level_name(level: object) -> object:
    """A log level as its name, in any case; Python's aliases (WARN, FATAL) and numbers (10, 20, ...) too."""
    if not isinstance(level, str):
        return level
    name = level.strip().upper() or "INFO"  # set but empty: the default
    if name.isascii() and name.isdigit():
        name = str(logging.getLevelName(int(name))).upper()
    return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(name, name)


def _on_this_machine(url: str) -> bool:
    return _loopback(urlsplit(url).hostname or "")


def _loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without its brackets) is this machine's loopback."""
    host = host.strip("[]").lower()
    return host == "localhost" or host == "::1" or host.startswith("127.")


def database_url(url: str, named: str) -> str:
    """`url` when it is a database URL this service can use, else `ValueError` saying so (`named`: where it was)."""
    from sqlalchemy.engine import make_url

    # What is wrong, in words that never quote the URL (a password misread as its port would be quoted).
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            why = f"{backend[:40]} is not SQLite or PostgreSQL"
        else:
            # Its driver too: one not installed would fail the first connection instead.
            parsed.get_dialect().import_dbapi()
            return url
    except ModuleNotFoundError as exc:
        why = f"its driver {exc.name} is not installed"
    except Exception as exc:
        why = type(exc).__name__
    raise ValueError(f"{named} is no database URL this service can use ({why}): sqlite:///path/to.db, or "
                     "postgresql+psycopg://user:password@host/database")


def development_keys(settings: Settings) -> list[str]:
    """The settings among the API key and the secret key still at the development default the README prints."""
    return [name for name, value, default in (("SMARTRETRY_API_KEY", settings.api_key, DEV_API_KEY),
                                              ("SMARTRETRY_SECRET_KEY", settings.secret_key, DEV_SECRET_KEY))
            if value.get_secret_value() == default]


def serves_this_machine_only(settings: Settings) -> bool:
    """Whether the API listens on this machine's loopback only."""
    return _loopback(settings.api_host)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMARTRETRY_", env_file=".env", extra="ignore")

    # An existing broker; unset, `smartretry run` starts one (the local JVM, else Docker).
    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "SMARTRETRY_KAFKA_BOOTSTRAP_SERVERS")
    )
    # Where the broker `smartretry run` starts keeps its data between starts (with the database, the
    # service's state: the projection is of the events on that broker).
    broker_data_dir: str = "var/kafka"
    # The port of the broker `smartretry run` starts (on 127.0.0.1); unset, a free one, kept between starts
    # while it stays free.
    broker_port: Port | None = None
    # The port of that broker's KRaft controller listener, which only the broker uses (on 127.0.0.1); unset, as
    # `broker_port`.
    broker_controller_port: Port | None = None
    topic_prefix: str = "smartretry."
    partitions: PositiveInt = DEFAULT_PARTITIONS
    database_url: str = "sqlite:///var/smartretry.db"

    # The real Graph API when set (https://graph.facebook.com); unset, the sandbox Graph API is used.
    graph_api_base_url: str | None = None
    graph_api_version: str = "v24.0"
    # Connections to the Graph API at once, shared by all platform calls of one handler.
    graph_max_connections: PositiveInt = 100
    # Port of the sandbox Graph API that `smartretry run` starts when no Graph API URL is set.
    sandbox_port: Port = 8081

    api_host: str = "127.0.0.1"
    api_port: Port = 8080
    # The API the CLI's post commands talk to (their --api-url); unset, the host and port above.
    api_url: str | None = None
    # The sandbox Graph API `smartretry demo` sets up (its --sandbox-url); unset, the one `run` starts on
    # 127.0.0.1:SMARTRETRY_SANDBOX_PORT when no Graph API address is set (left alone when it does not answer).
    sandbox_url: str | None = None
    api_key: SecretStr = SecretStr(DEV_API_KEY)
    # Encrypts account tokens at rest in the credential store.
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)

    log_format: Literal["text", "json"] = "text"
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                         BeforeValidator(_level_name)] = "INFO"

    # How long publish and retry requests wait for results before answering 202.
    api_wait_seconds: PositiveFloat = 10.0
    # Automatic retries of transient and rate-limited failures.
    max_automatic_attempts: PositiveInt = 5
    backoff_base_seconds: PositiveFloat = 1.0
    backoff_cap_seconds: PositiveFloat = 60.0
    # How long the handler waits for the projection to catch up before retrying a command.
    freshness_timeout_seconds: PositiveFloat = 30.0
    # How soon a dead handler's partitions move to another one (the broker's minimum is 6).
    handler_session_timeout_seconds: PositiveFloat = 10.0
    # Commands one handler runs at once (over all posts); past it, it takes no more until some finish.
    handler_max_in_flight: PositiveInt = 500
    # How long a handler's consumer may go unpolled before the broker takes it for dead (it polls every 0.1 s).
    handler_max_poll_interval_seconds: PositiveFloat = 600.0
    # On a stop (SIGTERM, Ctrl-C), how long the handler lets the platform calls under way finish and record their
    # results before it cancels them; `smartretry run` waits 15 s for it. 0: cancelled at once.
    handler_shutdown_grace_seconds: NonNegativeFloat = 10.0
    # Each projector process of one host needs an id of its own (static group membership); unset, the host name.
    projector_instance_id: str | None = None
    projector_session_timeout_seconds: PositiveFloat = 10.0
    # The longest one platform call may take before its outcome is looked up instead of awaited.
    attempt_timeout_seconds: PositiveFloat = 120.0
    # An attempt without a result and without a post on the platform is declared interrupted only this
    # long after it started: until then, the handler that made it may still be finishing it.
    attempt_lease_seconds: PositiveFloat = 150.0
    # How often an interrupted attempt whose look-up failed is looked up again: refused for the token (it goes
    # through once the account is re-authenticated), or the platform could not tell (a rate limit's wait counts).
    reauth_check_seconds: PositiveFloat = 30.0

    @field_validator("database_url")
    @classmethod
    def _a_database(cls, url: str) -> str:
        return database_url(url, "SMARTRETRY_DATABASE_URL")

    @field_validator("graph_api_base_url")
    @classmethod
    def _an_http_address(cls, url: str | None) -> str | None:
        if url:
            try:
                parts = urlsplit(url.strip())
                usable = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
            except ValueError:
                usable = False
            if not usable:
                raise ValueError("SMARTRETRY_GRAPH_API_BASE_URL is no http:// or https:// address: "
                                 "https://graph.facebook.com, or the sandbox's http://127.0.0.1:8081")
            return url.strip()
        return url

    @field_validator("api_key")
    @classmethod
    def _long_enough(cls, key: SecretStr) -> SecretStr:
        if len(key.get_secret_value()) < MIN_API_KEY_LENGTH:
            raise ValueError(f"SMARTRETRY_API_KEY must be at least {MIN_API_KEY_LENGTH} characters: the API, "
                             "the pages' sign-in and their forms are all secured by it")
        return key

    @model_validator(mode="after")
    def _own_keys_for_real_tokens(self) -> Settings:
        # Real accounts' tokens: the README's keys would let anyone who reads it use the API and decrypt them.
        if self.graph_api_base_url and not _on_this_machine(self.graph_api_base_url):
            defaults = development_keys(self)
            if defaults:
                raise ValueError(f"{' and '.join(defaults)} {'is' if len(defaults) == 1 else 'are'} still the "
                                 "development default, which the README prints: "
                                 "set your own before using the real Graph API (for example the output of "
                                 "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        return self

    @model_validator(mode="after")
    def _keys_are_secrets(self) -> Settings:
        # Scrubbed from whatever this process writes, and refused in content like a stored token: a post's caption
        # or an error is no place for them. (The development defaults are in the README: nothing to keep.)
        from publishers.redact import MIN_MATCHED_TOKEN, register_secret

        for value, default in ((self.api_key, DEV_API_KEY), (self.secret_key, DEV_SECRET_KEY)):
            # One as short as a word would be taken out of every log line and dead letter that says the word.
            if value.get_secret_value() != default and len(value.get_secret_value()) >= MIN_MATCHED_TOKEN:
                register_secret(value.get_secret_value())
        return self

    @model_validator(mode="after")
    def _lease_outlasts_the_call(self) -> Settings:
        # Another handler takes an attempt with no result and no post for interrupted once its lease is over,
        # and publishes again: a call still under way then would post twice.
        if self.attempt_lease_seconds <= self.attempt_timeout_seconds:
            raise ValueError(f"SMARTRETRY_ATTEMPT_LEASE_SECONDS ({self.attempt_lease_seconds:g}) must be longer than "
                             f"SMARTRETRY_ATTEMPT_TIMEOUT_SECONDS ({self.attempt_timeout_seconds:g}): an attempt "
                             "still under way past its lease could be published a second time")
        return self

    @property
    def backoff(self) -> tuple[float, float]:
        """The handler's automatic retry backoff: its first wait and its longest, in seconds."""
        return self.backoff_base_seconds, self.backoff_cap_seconds

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix, partitions=self.partitions)

    @property
    def projector_group(self) -> str:
        """The projector's consumer group (its faust app's id)."""
        return f"{self.topic_prefix}projector"

    @property
    def handler_group(self) -> str:
        """The command handler's consumer group."""
        return f"{self.topic_prefix}command-handler"


def load_settings() -> Settings:
    """The settings from the environment; one that is wrong ends the program saying what to fix (no traceback)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] != "value_error":  # the checks above name their settings themselves
                names = [str(part) for part in error["loc"]]
                message = f"SMARTRETRY_{'_'.join(names).upper()}: {message}"
            problems.append(message)
        raise SystemExit("error: invalid settings:\n  " + "\n  ".join(problems)) from None
