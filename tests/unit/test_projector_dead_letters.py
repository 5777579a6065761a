"""The projector's dead letters and projection never keep a stored token, one stored after it started included."""

from __future__ import annotations

import base64
import itertools
import json
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from projections.fold import TAKEN_OUT, apply_all
from projections.imported import taken_out, without_secrets
from projections.store import ProjectionStore, make_engine
from publishers import redact
from schemas.commands import PostContent
from schemas.envelope import encode
from schemas.events import CommandDecided, LegacyInsightsImported
from smartretry.credentials import CredentialStore
from streams.projector import InsightsProjector
from streams.replay import _MemoryFold
from streams.topics import Topics

SECRET_KEY = "a-secret-key-of-our-own-4567"


class Producer:
    """Takes every message at once, as a broker that is there does."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.keys: list[bytes | None] = []

    def produce(self, topic: str, key: bytes | None, value: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, value))
        self.keys.append(key)
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
    assert producer.keys == [b"post-1"]  # keyed as the message was, as every topic is
    letter = json.loads(value)
    assert letter["value_scrubbed"] is True and "[redacted]" in base64.b64decode(letter["value_b64"]).decode()
    assert store.applied_offsets(topics.post_events) == {0: 0}  # and the projector went on past it


def imported_with(token: str, caption: str = "Autumn sale", post_id: str = "legacy-1") -> bytes:
    """An old-system document whose error text carries the account's token, as an old API error echoed it."""
    return encode(LegacyInsightsImported(
        event_id=f"imported-{post_id}", post_id=post_id, occurred_at=datetime(2025, 11, 17, 10, 10, tzinfo=UTC),
        publish_target="both", account="acme",
        content=PostContent(caption=caption, image_url="https://cdn.example.com/a.jpg"),
        document={"status": "failed", "error_message": f"facebook: Error validating access token {token}", "insights": {
            "publish_results": [{"platform": "facebook", "success": False,
                                 "error": f"Error validating access token {token}"},
                                {"platform": "instagram", "success": True, "postId": "18107758234627017"}]}}))


def projector_with_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
                          ) -> tuple[ProjectionStore, Producer, InsightsProjector]:
    store = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/projection.db"))
    store.create_schema()
    credentials = CredentialStore(store.engine, SECRET_KEY)
    credentials.create_schema()
    CredentialStore(store.engine, SECRET_KEY).set_token("acme", token, "1", None)
    monkeypatch.setattr(redact, "_known", OrderedDict())
    monkeypatch.setattr(redact, "_longest_first", ())
    producer = Producer()
    return store, producer, InsightsProjector(store, Topics(prefix="scrub."), producer, credentials.stored_tokens)


def test_a_stored_token_in_an_imported_document_reaches_neither_the_projection_nor_the_insights_topic(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not of Meta's shape, so only the stored tokens can tell it (the sandbox's tokens are like this).
    token = "stored-token-" + uuid.uuid4().hex[:12]
    store, producer, projector = projector_with_stored(tmp_path, monkeypatch, token)

    projector.project(0, [(0, b"legacy-1", imported_with(token))])

    [(topic, insights)] = producer.sent
    assert topic == "scrub.insights" and token not in insights.decode()
    state = store.get("legacy-1")
    assert state is not None and token not in state.model_dump_json()
    with store.engine.connect() as connection:
        assert not any(token in str(row) for row in connection.exec_driver_sql("SELECT * FROM posts"))
    # What the old system said is kept, with the token out of it.
    assert state.document.error_message == "facebook: Error validating access token [redacted]"
    assert state.needed_action == {"facebook": "re-authenticate Facebook"}


def test_an_imported_posts_content_loses_its_tokens_and_a_retry_must_correct_what_lost_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "stored-token-" + uuid.uuid4().hex[:12]
    store, _producer, projector = projector_with_stored(tmp_path, monkeypatch, token)

    outcome = projector.project(0, [(0, b"legacy-1", imported_with(token, caption=f"Autumn sale (debug {token})"))])

    # Imported all the same (a projection rebuilt after the token was stored keeps every post), token out.
    assert outcome.dead_letters == 0
    state = store.get("legacy-1")
    assert state is not None and state.content is not None
    assert state.content.caption == "Autumn sale (debug [redacted])" and token not in state.model_dump_json()
    # Published as it is, the post would say "[redacted]": a retry must correct the caption first.
    assert state.taken_out == ["caption"]
    assert taken_out(state, state.content, ("facebook",)) == (
        "content.caption had an access token taken out when the post was imported: send it again with "
        "content.caption corrected")
    corrected = state.content.model_copy(update={"caption": "Autumn sale"})
    assert taken_out(state, corrected, ("facebook",)) is None


def test_a_token_in_an_imported_address_leaves_an_address_the_post_can_still_be_read_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "stored-token-" + uuid.uuid4().hex[:12]
    store, _producer, projector = projector_with_stored(tmp_path, monkeypatch, token)
    imported = LegacyInsightsImported(
        event_id="imported-1", post_id="legacy-1", occurred_at=datetime(2025, 11, 17, 10, 10, tzinfo=UTC),
        publish_target="both", account="acme", document={"status": "failed"},
        content=PostContent(caption="Autumn sale", image_url="https://cdn.example.com/a.jpg",
                            link=f"https://api:{token}@shop.example.com/autumn"))

    projector.project(0, [(0, b"legacy-1", encode(imported))])
    projector.project(0, [(1, b"legacy-1", encode(imported.model_copy(update={"event_id": "imported-2"})))])

    # "[redacted]" is no host or user an address may have: read back, the post would fail its contract.
    state = store.get("legacy-1")
    assert state is not None and state.content is not None and state.taken_out == ["link"]
    assert state.content.link == "https://api:redacted@shop.example.com/autumn"
    assert store.applied_offsets("scrub.post-events") == {0: 1}
    # The link is Facebook's alone: a retry of Instagram only publishes none of it, and is not held up by it.
    assert taken_out(state, state.content, ("instagram",)) is None
    assert taken_out(state, state.content, ("facebook",)) is not None


def test_an_imported_caption_that_says_redacted_itself_lost_nothing_and_a_retry_may_publish_it() -> None:
    event = LegacyInsightsImported(
        event_id="imported-1", post_id="legacy-1", occurred_at=datetime(2025, 11, 17, 10, 10, tzinfo=UTC),
        publish_target="facebook", account="acme", document={"status": "failed"},
        content=PostContent(caption="Our [redacted] files: the story", image_url="https://cdn.example.com/a.jpg"))
    state = apply_all(None, [without_secrets(event, {"a-stored-token-0123456789"})])

    assert state is not None and state.taken_out == []
    assert taken_out(state, state.content, ("facebook",)) is None


def test_a_stored_token_short_as_a_word_takes_no_words_or_fields_out_of_an_import() -> None:
    document = {"status": "failed", "insights": {"publish_results": [
        {"platform": "facebook", "success": False, "error": "status: the summer photo failed"}]}}
    event = LegacyInsightsImported(event_id="e1", post_id="legacy-1", occurred_at=datetime(2025, 11, 17, tzinfo=UTC),
                                   publish_target="facebook", document=document)

    assert without_secrets(event, {"status", "summer"}) is event
    cleaned = without_secrets(event, {"a-stored-token-0123456789", "status"})
    assert cleaned is event  # nothing of it in the texts; keys are never touched


def test_replay_takes_the_stored_tokens_out_of_imported_documents_as_the_projector_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "stored-token-" + uuid.uuid4().hex[:12]
    live, _producer, projector = projector_with_stored(tmp_path, monkeypatch, token)
    imports = [imported_with(token), imported_with(token, caption=f"debug {token}", post_id="legacy-2")]
    projector.project(0, [(offset, b"key", value) for offset, value in enumerate(imports)])
    scratch = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/scratch.db"))
    scratch.create_schema()

    folder = _MemoryFold(scratch, secrets=(token,))
    folder.fold(list(imports), [0] * len(imports))
    replayed = folder.finish({})

    assert all(token not in state.model_dump_json() for state in folder.states.values())
    assert replayed == live.fingerprints()
    # Replayed before the token was stored, the same posts, with the token still in their texts: only texts
    # differ, never which posts there are (a rebuild loses none).
    earlier = _MemoryFold(ProjectionStore(make_engine(f"sqlite:///{tmp_path}/earlier.db")))
    earlier.store.create_schema()
    earlier.fold(list(imports), [0] * len(imports))
    assert earlier.states.keys() == folder.states.keys() == {"legacy-1", "legacy-2"}


def test_a_corrected_field_is_no_longer_held_against_later_retries_nor_is_upstreams_word_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "stored-token-" + uuid.uuid4().hex[:12]
    store, _producer, projector = projector_with_stored(tmp_path, monkeypatch, token)
    projector.project(0, [(0, b"legacy-1", imported_with(token, caption=f"Autumn sale (debug {token})"))])
    state = store.get("legacy-1")
    assert state is not None and state.content is not None
    # Corrected around what was taken out: still "[redacted]", still refused.
    assert taken_out(state, state.content.model_copy(update={"caption": "Big sale [redacted]"}), ("facebook",))

    # The retry corrects the caption; its publish fails again; the next retry resends the post as it is now.
    corrected = state.content.model_copy(update={"caption": "Autumn sale"})
    after = apply_all(state, [CommandDecided(
        event_id="decided-1", post_id="legacy-1", occurred_at=datetime(2025, 11, 17, 11, tzinfo=UTC),
        command_id="cmd-fix", command_type="RetryRequested", platforms=("facebook",), is_retry=True,
        content=corrected)])
    assert after is not None and after.taken_out == []
    assert taken_out(after, after.content, ("facebook",)) is None

    # A document that names fields of its own under the key lost nothing here: it is not taken at its word.
    document = {"status": "failed", TAKEN_OUT: ["caption"]}
    event = LegacyInsightsImported(event_id="imported-2", post_id="legacy-2", occurred_at=datetime(2025, 11, 17,
                                   tzinfo=UTC), publish_target="facebook", account="acme", document=document,
                                   content=PostContent(caption="Autumn sale", image_url="https://cdn.example.com/a.jpg"))
    imported = apply_all(None, [without_secrets(event, {token})])
    assert imported is not None and imported.taken_out == []


def test_an_import_on_another_partition_than_its_posts_is_dead_lettered_live_and_skipped_by_replay(
        tmp_path: Path) -> None:
    # Folded where it came, the live projection and a replay (whose workers read partitions apart) could fold a
    # post's events in another order: nothing would say so when it was written.
    from streams.kafka import partition_for

    store = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/projection.db"))
    store.create_schema()
    topics, producer = Topics(prefix="placed."), Producer()
    projector = InsightsProjector(store, topics, producer, partitions=6)  # type: ignore[arg-type]
    imports = {post: encode(LegacyInsightsImported(
        event_id=f"{post}:import", post_id=post, occurred_at=datetime(2025, 11, 17, tzinfo=UTC), publish_target="both",
        document={"status": "posted", "post_url": "https://www.facebook.com/7479_1"})) for post in ("post-a", "post-b")}
    right = partition_for("post-a", 6)
    wrong = (partition_for("post-b", 6) + 1) % 6
    projector.project(right, [(0, b"post-a", imports["post-a"])])
    outcome = projector.project(wrong, [(0, b"post-b", imports["post-b"])])

    assert store.get("post-a") is not None and store.get("post-b") is None
    assert outcome.dead_letters == 1
    letter = json.loads(next(value for topic, value in producer.sent if topic == topics.dead_letters))
    assert f"came on partition {wrong}, not on its post's, {partition_for('post-b', 6)}" in letter["reason"]
    assert base64.b64decode(letter["value_b64"]) == imports["post-b"]

    scratch = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/replay.db"))
    scratch.create_schema()
    folder = _MemoryFold(scratch, partitions=6)
    folder.fold([imports["post-a"], imports["post-b"]], [right, wrong])
    assert set(folder.states) == {"post-a"}


def test_the_insights_topic_gets_a_post_document_only_when_it_changed(tmp_path: Path) -> None:
    from tests.integration.test_store import facebook_retry, first_attempt

    store = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/projection.db"))
    store.create_schema()
    producer = Producer()
    projector = InsightsProjector(store, Topics(prefix="shown."), producer)  # type: ignore[arg-type]
    events = first_attempt() + facebook_retry()

    # A batch per event, as a live post's steps come: an attempt recorded beside one in flight, or Instagram's
    # container made, changes the post's state but not its document.
    for offset, event in enumerate(events):
        projector.project(0, [(offset, event.post_id.encode(), encode(event))])

    sent = [json.loads(value) for topic, value in producer.sent if topic == "shown.insights"]
    assert sent, "no insights sent"
    assert all(a != b for a, b in itertools.pairwise(sent)), sent  # no repeat of the document readers have
    assert len(sent) < len(events)
    state = store.get(sent[-1]["post_id"])
    assert state is not None and sent[-1] == json.loads(state.document.to_json(post_id=state.post_id))


def test_a_message_whose_post_id_holds_half_a_character_is_set_aside_and_the_projector_goes_on(
        tmp_path: Path) -> None:
    store = ProjectionStore(make_engine(f"sqlite:///{tmp_path}/projection.db"))
    store.create_schema()
    producer = Producer()
    projector = InsightsProjector(store, Topics(prefix="half."), producer)  # type: ignore[arg-type]

    outcome = projector.project(0, [(0, b"post-1", b'{"type": "PostSubmitted", "post_id": "p-\\ud83d"}')])

    assert outcome.dead_letters == 1
    [(topic, value)] = producer.sent
    assert topic == "half.dead-letters" and "half of a character" in json.loads(value)["reason"]
    assert store.applied_offsets("half.post-events") == {0: 0}
