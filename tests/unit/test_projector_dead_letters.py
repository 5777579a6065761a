"""The projector's dead letters never keep a stored token, one stored after the projector started included."""

from __future__ import annotations

import base64
import json
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from projections.store import ProjectionStore, make_engine
from publishers import redact
from smartretry.credentials import CredentialStore
from streams.projector import InsightsProjector
from streams.topics import Topics

SECRET_KEY = "a-secret-key-of-our-own-4567"


class Producer:
    """Takes every message at once, as a broker that is there does."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def produce(self, topic: str, key: bytes | None, value: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, value))
        on_delivery(None, None)

    def flush(self, _timeout: float) -> int:
        return 0


def test_a_token_stored_after_the_projector_started_is_scrubbed_from_its_dead_letters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/projection.db"))
    store.create_schema()
    credentials = CredentialStore(store.engine, SECRET_KEY)
    credentials.create_schema()
    topics, producer = Topics(prefix="scrub."), Producer()
    projector = InsightsProjector(store, topics, producer, credentials.stored_tokens)  # type: ignore[arg-type]
    # Stored by another process (the API) meanwhile: this one has never seen it.
    token = "stored-later-token-" + uuid.uuid4().hex[:12]
    CredentialStore(store.engine, SECRET_KEY).set_token("later", token, "1", None)
    monkeypatch.setattr(redact, "_known", OrderedDict())
    monkeypatch.setattr(redact, "_longest_first", ())

    outcome = projector.project(0, [(0, b"post-1", f'{{"type": "PostSubmitted", "caption": "{token}"'.encode())])

    assert outcome.dead_letters == 1
    [(topic, value)] = producer.sent
    assert topic == topics.dead_letters and token not in value.decode()
    letter = json.loads(value)
    assert letter["value_scrubbed"] is True and "[redacted]" in base64.b64decode(letter["value_b64"]).decode()
    assert store.applied_offsets(topics.post_events) == {0: 0}  # and the projector went on past it
