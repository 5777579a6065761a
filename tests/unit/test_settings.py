"""Settings that would leave the API or the stored tokens open are refused, saying what to set; risky ones are
warned of at start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from publishers.instagram import ContainerPolling
from smartretry.bootstrap import short_processing_warning
from smartretry.settings import DEV_API_KEY, Settings, load_settings, serves_this_machine_only

OWN_KEY = "an-api-key-of-our-own-0123"
OWN_SECRET = "a-secret-key-of-our-own-4567"


def test_a_short_api_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="SMARTRETRY_API_KEY must be at least 16 characters"):
        Settings(api_key="")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(api_key="short-key")  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["not a url", "ftp://graph.facebook.com", "http://[::1", "https://",
                                 "graph.facebook.com"])
def test_a_graph_api_address_that_is_none_is_refused_by_its_name(url: str) -> None:
    with pytest.raises(ValidationError, match="SMARTRETRY_GRAPH_API_BASE_URL is no http:// or https:// address"):
        Settings(graph_api_base_url=url, api_key=OWN_KEY, secret_key=OWN_SECRET)  # type: ignore[arg-type]


def test_the_development_keys_are_refused_with_the_real_graph_api_and_fine_with_the_sandbox() -> None:
    real = "https://graph.facebook.com"
    with pytest.raises(ValidationError, match="SMARTRETRY_API_KEY and SMARTRETRY_SECRET_KEY are still the development"):
        Settings(graph_api_base_url=real)
    with pytest.raises(ValidationError, match="SMARTRETRY_SECRET_KEY is still the development default"):
        Settings(graph_api_base_url=real, api_key=OWN_KEY)  # type: ignore[arg-type]
    own = Settings(graph_api_base_url=real, api_key=OWN_KEY, secret_key=OWN_SECRET)  # type: ignore[arg-type]
    assert own.api_key.get_secret_value() == OWN_KEY
    sandbox = Settings(graph_api_base_url="http://127.0.0.1:8081")
    assert sandbox.api_key.get_secret_value() == DEV_API_KEY


def test_wrong_settings_end_the_program_with_what_to_fix_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTRETRY_API_KEY", "short")
    monkeypatch.setenv("SMARTRETRY_PARTITIONS", "six")
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    message = str(stopped.value.code)
    assert message.startswith("error: invalid settings:")
    assert "SMARTRETRY_PARTITIONS: Input should be a valid integer" in message
    assert "SMARTRETRY_API_KEY must be at least 16 characters" in message


def test_settings_that_cannot_work_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTRETRY_DATABASE_URL", "bogus://x")
    monkeypatch.setenv("SMARTRETRY_MAX_AUTOMATIC_ATTEMPTS", "-1")
    monkeypatch.setenv("SMARTRETRY_LOG_FORMAT", "xml")
    monkeypatch.setenv("SMARTRETRY_LOG_LEVEL", "LOUD")
    monkeypatch.setenv("SMARTRETRY_SANDBOX_PORT", "99999")
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    message = str(stopped.value.code)
    assert "SMARTRETRY_LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'" in message
    assert "SMARTRETRY_SANDBOX_PORT: Input should be less than or equal to 65535" in message
    assert "SMARTRETRY_DATABASE_URL is no database URL this service can use" in message
    assert "SMARTRETRY_MAX_AUTOMATIC_ATTEMPTS: Input should be greater than 0" in message
    assert "SMARTRETRY_LOG_FORMAT: Input should be 'text' or 'json'" in message


def test_an_attempts_lease_shorter_than_its_call_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The call raised (for slow images) and the lease left as it was: a call still under way would be taken
    # for interrupted, and the post published a second time.
    monkeypatch.setenv("SMARTRETRY_ATTEMPT_TIMEOUT_SECONDS", "300")
    with pytest.raises(SystemExit) as stopped:
        load_settings()
    assert "SMARTRETRY_ATTEMPT_LEASE_SECONDS (150) must be longer than SMARTRETRY_ATTEMPT_TIMEOUT_SECONDS (300)" \
        in str(stopped.value.code)
    monkeypatch.setenv("SMARTRETRY_ATTEMPT_LEASE_SECONDS", "330")
    assert load_settings().attempt_lease_seconds == 330


@pytest.mark.parametrize(("given", "level"), [("debug", "DEBUG"), ("warn", "WARNING"), ("Fatal", "CRITICAL"),
                                               ("20", "INFO"), ("", "INFO")])
def test_a_log_level_is_taken_in_any_case_and_by_pythons_aliases(monkeypatch: pytest.MonkeyPatch, given: str,
                                                                  level: str) -> None:
    monkeypatch.setenv("SMARTRETRY_LOG_LEVEL", given)
    assert load_settings().log_level == level


def test_an_attempt_timeout_that_leaves_instagram_little_processing_time_is_warned_of_at_start() -> None:
    short = short_processing_warning(ContainerPolling.within(40.0))
    assert short is not None
    assert short.startswith("SMARTRETRY_ATTEMPT_TIMEOUT_SECONDS leaves Instagram 10s to process an image")
    assert short_processing_warning(ContainerPolling.within(120.0)) is None


def test_the_readme_names_every_setting_and_no_setting_that_does_not_exist() -> None:
    # An operator configures the service from the README's table: a setting missing there cannot be found, and a
    # name there that the service does not read is ignored without a word (unknown variables are).
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    settings = {"SMARTRETRY_" + name.upper() for name in Settings.model_fields}
    assert not {name for name in settings if f"`{name}`" not in readme}
    # Read outside the settings: where Kafka's jars are cached (streams/broker.py), the tests' PostgreSQL server.
    elsewhere = {"SMARTRETRY_CACHE_DIR", "SMARTRETRY_TEST_POSTGRES_URL"}
    assert set(re.findall(r"SMARTRETRY_[A-Z_]*[A-Z]", readme)) - settings - elsewhere == set()


def test_the_services_own_keys_are_scrubbed_and_refused_in_content_like_a_token() -> None:
    from publishers.redact import known_secrets, scrub, secret_field
    from schemas.commands import PostContent

    Settings(api_key=OWN_KEY, secret_key=OWN_SECRET)  # type: ignore[arg-type]
    assert scrub(f"keys {OWN_KEY} and {OWN_SECRET}") == "keys [redacted] and [redacted]"
    assert secret_field(PostContent(caption=f"our key is {OWN_KEY}"), known_secrets()) == "caption"
    # The development default is printed in the README: it stays readable.
    assert DEV_API_KEY in scrub(f"the default {DEV_API_KEY}")


@pytest.mark.parametrize(("host", "local"), [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
                                             ("0.0.0.0", False), ("::", False), ("10.0.0.5", False)])
def test_an_api_on_a_loopback_address_serves_this_machine_only(host: str, local: bool) -> None:
    assert serves_this_machine_only(Settings(api_host=host)) is local  # type: ignore[call-arg]
