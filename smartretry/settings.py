"""Settings of the service, from the environment (prefix `SMARTRETRY_`) or a `.env` file."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.topics import DEFAULT_PARTITIONS, Topics


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMARTRETRY_", env_file=".env", extra="ignore")

    # An existing broker; unset, `smartretry run` starts one (Docker, else the local JVM).
    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "SMARTRETRY_KAFKA_BOOTSTRAP_SERVERS")
    )
    topic_prefix: str = "smartretry."
    partitions: int = DEFAULT_PARTITIONS
    database_url: str = "sqlite:///var/smartretry.db"

    # The real Graph API when set (https://graph.facebook.com); unset, the sandbox Graph API is used.
    graph_api_base_url: str | None = None
    graph_api_version: str = "v24.0"
    # Connections to the Graph API at once, shared by all platform calls of one handler.
    graph_max_connections: int = 100
    # Port of the sandbox Graph API that `smartretry run` starts when no Graph API URL is set.
    sandbox_port: int = 8081

    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_key: SecretStr = SecretStr("dev-key-change-me")
    # Encrypts account tokens at rest in the credential store.
    secret_key: SecretStr = SecretStr("dev-secret-change-me")

    log_format: str = "text"  # or "json"
    log_level: str = "INFO"

    # How long publish and retry requests wait for results before answering 202.
    api_wait_seconds: float = 10.0
    # Automatic retries of transient and rate-limited failures.
    max_automatic_attempts: int = 5
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0
    # How long the handler waits for the projection to catch up before retrying a command.
    freshness_timeout_seconds: float = 30.0
    # How soon a dead handler's partitions move to another one (the broker's minimum is 6).
    handler_session_timeout_seconds: float = 10.0
    # Commands one handler runs at once (over all posts); past it, it takes no more until some finish.
    handler_max_in_flight: int = 500
    # How long a handler's consumer may go unpolled before the broker takes it for dead (it polls every 0.1 s).
    handler_max_poll_interval_seconds: float = 600.0
    # Each projector process of one host needs an id of its own (static group membership); unset, the host name.
    projector_instance_id: str | None = None
    projector_session_timeout_seconds: float = 10.0
    # The longest one platform call may take before its outcome is looked up instead of awaited.
    attempt_timeout_seconds: float = 120.0
    # An attempt without a result and without a post on the platform is declared interrupted only this
    # long after it started: until then, the handler that made it may still be finishing it.
    attempt_lease_seconds: float = 150.0
    # How often an interrupted attempt whose look-up failed is looked up again: refused for the token (it goes
    # through once the account is re-authenticated), or the platform could not tell (a rate limit's wait counts).
    reauth_check_seconds: float = 30.0

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix, partitions=self.partitions)
