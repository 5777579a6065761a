"""The projection store on SQLite and PostgreSQL: seed documents, exact resume, consistent snapshots."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from projections.fold import fold
from projections.store import ProjectionStore, make_engine
from schemas.commands import PostContent
from schemas.common import ErrorKind
from schemas.events import CommandDecided, Event, PlatformError, PlatformResult, PostSubmitted, PublishAttempted
from tests.support.seed import IMAGE_ERROR
from tests.support.seed import INSIGHTS_AFTER_FAILED_ATTEMPT as AFTER_FAILED_ATTEMPT
from tests.support.seed import INSIGHTS_AFTER_SUCCESSFUL_RETRY as AFTER_SUCCESSFUL_RETRY

pytestmark = pytest.mark.integration

POST_ID = "01KA8MNE2DT1E31F8Z3TJHF96E"
FIRST = datetime(2025, 11, 17, 10, 10, 13, 151000, tzinfo=UTC)
RETRY = datetime(2025, 11, 17, 10, 15, 30, 456000, tzinfo=UTC)
TOPIC = "smartretry.post-events"
FACEBOOK_ERROR = IMAGE_ERROR

# The seed's two documents, field for field.


def first_attempt(post_id: str = POST_ID, at: datetime = FIRST) -> list[Event]:
    """The seed's first attempt: Instagram succeeds, Facebook's image is refused."""
    before = at - timedelta(seconds=2)
    content = PostContent(caption="Autumn sale starts today", image_url="https://cdn.example.com/autumn sale.jpg")
    return [
        PostSubmitted(event_id=f"{post_id}:submitted", post_id=post_id, occurred_at=before, command_id="cmd-1",
                      publish_target="both", content=content, account="acme"),
        CommandDecided(event_id=f"{post_id}:cmd-1", post_id=post_id, occurred_at=before, command_id="cmd-1",
                       command_type="PublishRequested", platforms=("facebook", "instagram")),
        PublishAttempted(event_id=f"{post_id}:a1", post_id=post_id, occurred_at=before, platform="facebook",
                         attempt_id=f"{post_id}-a1", attempt_number=1, command_id="cmd-1", reason="first publish"),
        PublishAttempted(event_id=f"{post_id}:a2", post_id=post_id, occurred_at=before, platform="instagram",
                         attempt_id=f"{post_id}-a2", attempt_number=1, command_id="cmd-1", reason="first publish"),
        PlatformResult(event_id=f"{post_id}:a1:result", post_id=post_id, occurred_at=at, platform="facebook",
                       attempt_id=f"{post_id}-a1", success=False,
                       error=PlatformError(kind=ErrorKind.INVALID_MEDIA, code=324, http_status=400,
                                           message=FACEBOOK_ERROR)),
        PlatformResult(event_id=f"{post_id}:a2:result", post_id=post_id, occurred_at=at, platform="instagram",
                       attempt_id=f"{post_id}-a2", success=True, platform_post_id="18107758234627017",
                       permalink="https://www.instagram.com/p/DRJ1nlKDgY9/"),
    ]


def facebook_retry(post_id: str = POST_ID, at: datetime = RETRY) -> list[Event]:
    """The seed's smart retry: only Facebook is published again, and succeeds."""
    before = at - timedelta(seconds=1)
    return [
        CommandDecided(event_id=f"{post_id}:cmd-2", post_id=post_id, occurred_at=before, command_id="cmd-2",
                       command_type="RetryRequested", platforms=("facebook",), is_retry=True,
                       skipped={"instagram": "already published"}),
        PublishAttempted(event_id=f"{post_id}:a3", post_id=post_id, occurred_at=before, platform="facebook",
                         attempt_id=f"{post_id}-a3", attempt_number=2, command_id="cmd-2", is_retry=True,
                         reason="smart retry"),
        PlatformResult(event_id=f"{post_id}:a3:result", post_id=post_id, occurred_at=at, platform="facebook",
                       attempt_id=f"{post_id}-a3", success=True,
                       platform_post_id="747917475065823_122104567890123"),
    ]


class StoreContract:
    """What every backend of the projection store does; subclasses give the engine."""

    @pytest.fixture
    def engine(self) -> Iterator[Engine]:
        raise NotImplementedError

    @pytest.fixture
    def store(self, engine: Engine) -> ProjectionStore:
        store = ProjectionStore(engine)
        store.create_schema()
        return store

    def test_the_seed_example_gives_the_seed_documents(self, store: ProjectionStore) -> None:
        first = first_attempt()
        store.apply_batch(TOPIC, 0, list(enumerate(first)))
        stored = store.get(POST_ID)
        assert stored is not None and stored.status == "failed"
        assert stored.document.to_document() == AFTER_FAILED_ATTEMPT

        changed = store.apply_batch(TOPIC, 0, list(enumerate(facebook_retry(), start=len(first))))
        assert [s.post_id for s in changed] == [POST_ID]
        assert store.get(POST_ID).document.to_document() == AFTER_SUCCESSFUL_RETRY  # type: ignore[union-attr]
        assert store.applied_offsets(TOPIC) == {0: 8}

    def test_the_partition_count_is_recorded_once_and_kept_through_a_reset(self, store: ProjectionStore) -> None:
        assert store.partitions_of(TOPIC, 6) == 6
        assert store.partitions_of(TOPIC, 8) == 6  # what the projection was built with, not the count now
        store.reset()
        assert ProjectionStore(store.engine).partitions_of(TOPIC, 8) == 6
        assert store.partitions_of("other-events", 3) == 3

    def test_a_redelivered_batch_changes_nothing(self, store: ProjectionStore) -> None:
        records = list(enumerate(first_attempt() + facebook_retry()))
        store.apply_batch(TOPIC, 3, records[:5])
        digest = store.digest()
        # Kafka redelivers from an older offset after a crash: the overlap is skipped, the rest applied.
        assert store.apply_batch(TOPIC, 3, records[:5]) == []
        assert store.digest() == digest
        store.apply_batch(TOPIC, 3, records[2:])
        assert store.applied_offsets(TOPIC) == {3: 8}
        assert store.get(POST_ID).document.to_document() == AFTER_SUCCESSFUL_RETRY  # type: ignore[union-attr]

    def test_the_stored_projection_is_the_fold_of_the_events(self, store: ProjectionStore) -> None:
        events = [e for i in range(30) for e in first_attempt(f"post-{i:02d}", FIRST + timedelta(minutes=i))]
        events += [e for i in range(0, 30, 3) for e in facebook_retry(f"post-{i:02d}", RETRY + timedelta(minutes=i))]
        for start in range(0, len(events), 7):  # batches cut anywhere, even inside a post's history
            store.apply_batch(TOPIC, 1, [(o, e) for o, e in enumerate(events) if start <= o < start + 7])
        offsets, states = store.snapshot()
        assert offsets == {(TOPIC, 1): len(events) - 1}
        assert states == fold(events)

        posted = store.list_posts(status="posted")
        assert {s.post_id for s in posted} == {f"post-{i:02d}" for i in range(0, 30, 3)}
        latest = store.list_posts(limit=3)
        assert [s.post_id for s in latest] == ["post-27", "post-24", "post-29"]  # most recently updated first
        assert [s.post_id for s in store.list_posts(status="failed", limit=2, offset=1)] == ["post-28", "post-26"]

    def test_offsets_that_are_not_events_still_move_the_tracking_offset(self, store: ProjectionStore) -> None:
        store.apply_batch(TOPIC, 2, [(0, first_attempt()[0])], through=4)
        assert store.applied_offsets(TOPIC) == {2: 4}
        assert store.applied_offsets("another-topic") == {}

    def test_a_post_is_read_with_the_offsets_it_is_current_to(self, store: ProjectionStore) -> None:
        first = first_attempt()
        assert store.get_with_offsets(POST_ID, TOPIC) == ({}, None)
        store.apply_batch(TOPIC, 0, list(enumerate(first)))
        store.apply_batch(TOPIC, 5, [(0, first_attempt("post-other")[0])])
        applied, state = store.get_with_offsets(POST_ID, TOPIC)
        assert applied == {0: len(first) - 1, 5: 0}
        assert state is not None and state.document.to_document() == AFTER_FAILED_ATTEMPT

    def test_posts_updated_since_a_time_are_found_by_their_caption(self, store: ProjectionStore) -> None:
        # Captions the stored JSON writes with escapes (a quote, a new line), a LIKE wildcard and non-ASCII text.
        captions = {"p-quote": 'The "autumn" sale\nstarts today', "p-percent": "50% off_today", "p-accent": "Café ☕",
                    "p-plain": "Autumn sale starts today"}
        events: list[Event] = [
            PostSubmitted(event_id=f"{post_id}:s", post_id=post_id, occurred_at=FIRST, command_id=f"c-{post_id}",
                          publish_target="facebook", content=PostContent(caption=caption), account="acme")
            for post_id, caption in captions.items()]
        events.append(PostSubmitted(event_id="p-old:s", post_id="p-old", occurred_at=FIRST - timedelta(hours=1),
                                    command_id="c-old", publish_target="facebook",
                                    content=PostContent(caption="50% off_today"), account="acme"))
        store.apply_batch(TOPIC, 0, list(enumerate(events)))

        def found(caption: str, excluding: str | None = None) -> set[str]:
            since = FIRST - timedelta(minutes=5)
            return {s.post_id for s in store.updated_since(since, caption=caption, excluding=excluding)}

        for post_id, caption in captions.items():
            assert post_id in found(caption)
        assert found("50% off_today") == {"p-percent"}, "the older post is out of the window; % is no wildcard"
        assert found("Café ☕", excluding="p-accent") == set()
        assert found("Winter sale") == set()
        assert found("") == set(captions)
        # Blanks aside, as the platforms' look-ups match a post's text.
        assert "p-plain" in found("Autumn  sale\r\nstarts today")

    def test_equal_projections_have_equal_digests(self, store: ProjectionStore, engine: Engine) -> None:
        events = first_attempt() + facebook_retry()
        store.apply_batch(TOPIC, 0, list(enumerate(events)))
        other = ProjectionStore(make_engine("sqlite://"))
        other.create_schema()
        other.apply_batch(TOPIC, 0, list(enumerate(events[:-1])))
        assert other.digest() != store.digest()
        other.apply_batch(TOPIC, 0, [(len(events) - 1, events[-1])])
        assert other.digest() == store.digest()


    def test_paging_by_position_repeats_and_skips_nothing_while_posts_are_updated(
            self, store: ProjectionStore) -> None:
        # Five posts updated at the same moment (the order among them is their id) and five later ones.
        events = [e for i in range(5) for e in first_attempt(f"tie-{i}", FIRST)]
        events += [e for i in range(5) for e in first_attempt(f"late-{i}", FIRST + timedelta(minutes=1 + i))]
        store.apply_batch(TOPIC, 0, list(enumerate(events)))
        newest_first = [f"late-{i}" for i in reversed(range(5))] + [f"tie-{i}" for i in range(5)]
        assert [s.post_id for s in store.list_posts(limit=20)] == newest_first

        seen: list[str] = []
        page = store.list_posts(limit=3)
        while page:
            seen += [s.post_id for s in page]
            if len(seen) == 3:
                # Between two pages, a post not listed yet and one already listed are retried: they move to
                # the top. Paging by offset would now list the page's last post again.
                updates = facebook_retry("tie-3", RETRY) + facebook_retry("late-4", RETRY)
                store.apply_batch(TOPIC, 0, list(enumerate(updates, start=len(events))))
            last = page[-1]
            assert last.updated_at is not None
            page = store.list_posts(limit=3, after=(last.updated_at, last.post_id))
        assert len(seen) == len(set(seen))
        assert seen == [p for p in newest_first if p != "tie-3"]
        # The status filter pages the same way.
        failed = store.list_posts(status="failed", limit=2)
        assert [s.post_id for s in failed] == ["late-3", "late-2"]
        last = failed[-1]
        assert last.updated_at is not None
        assert [s.post_id for s in store.list_posts(status="failed", limit=10, after=(last.updated_at, last.post_id))
                ] == ["late-1", "late-0", "tie-0", "tie-1", "tie-2", "tie-4"]


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def engine(self, tmp_path: object) -> Iterator[Engine]:
        engine = make_engine(f"sqlite:///{tmp_path}/nested/dir/smartretry.db")
        yield engine
        engine.dispose()


def fresh_database(postgres_url: str, prefix: str, options: str = "") -> Iterator[Engine]:
    """An engine on a new database of the server (created with `options`), dropped afterwards."""
    admin = make_engine(postgres_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} {options}")
    engine = make_engine(postgres_url.rsplit("/", 1)[0] + f"/{name}")
    yield engine
    engine.dispose()
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name}")
    admin.dispose()


class TestPostgresSqlAsciiStore(StoreContract):
    """A database created under the C locale is SQL_ASCII: its text still reads back as text, not bytes."""

    @pytest.fixture
    def engine(self, postgres_url: str) -> Iterator[Engine]:
        yield from fresh_database(postgres_url, "ascii",
                                  "ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def engine(self, postgres_url: str) -> Iterator[Engine]:
        yield from fresh_database(postgres_url, "store")

    def test_a_replay_into_the_live_database_reached_through_its_socket_is_refused(
            self, engine: Engine, postgres_url: str) -> None:
        from sqlalchemy.engine import make_url

        from projections.store import same_database
        from streams.replay import replay
        from streams.topics import Topics
        from tests.unit.test_fold import History

        url = engine.url
        with engine.connect() as conn:
            sockets = str(conn.exec_driver_sql("SHOW unix_socket_directories").scalar()).split(",")[0].strip()
        # The live database under a URL no comparison of URLs can match to its own: the server's socket.
        through_socket = make_engine(f"postgresql+psycopg://{url.username}@/{url.database}?host={sockets}"
                                     f"&port={url.port}")
        another = make_engine(str(make_url(postgres_url).set(database="postgres")))
        nowhere = make_engine(str(make_url(postgres_url).set(host="127.0.0.1", port=1)))
        live = ProjectionStore(engine)
        live.create_schema()
        history = History("post-1")
        history.publish()
        live.apply_batch("post-events", 0, list(enumerate(history.events)))
        try:
            with pytest.raises(ValueError, match="the scratch store is the live projection's database"):
                replay("127.0.0.1:1", Topics(), live, ProjectionStore(through_socket))
            assert live.count() == 1  # nothing emptied
            assert same_database(engine, through_socket) and not same_database(engine, another)
            # A server that cannot be asked is no answer: refused, saying why.
            with pytest.raises(ValueError, match=r"could not tell whether the scratch store .* is the live projection's"
                                                 r" database \(OperationalError: .*give replay a scratch store it can "
                                                 r"reach"):
                replay("127.0.0.1:1", Topics(), live, ProjectionStore(nowhere))
            assert live.count() == 1
        finally:
            through_socket.dispose()
            another.dispose()
            nowhere.dispose()
