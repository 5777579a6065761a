"""The SQL store of the insights projection: one row per post and the applied offset per partition."""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    event,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import text as sql

from projections.fold import apply_all, apply_valid
from projections.state import PostState
from publishers.redact import scrub
from schemas.events import Event

metadata = MetaData()

# Where a page of the post list ended: its last post's update time and id.
ListPosition = tuple[datetime, str]

posts = Table(
    "posts",
    metadata,
    Column("post_id", String(128), primary_key=True),
    # PostState.model_dump_json(): the seed's insights document plus what the retry decision needs.
    Column("state", Text, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("updated_at", DateTime(timezone=True), nullable=True, index=True),
)

# The last offset of each post-events partition whose event is in `posts`; written in the same
# transaction as the posts, so a redelivered event is skipped and a restart resumes exactly here.
tracking = Table(
    "tracking",
    metadata,
    Column("topic", String(255), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("offset", BigInteger, nullable=False),
)

# The partition count of the post-events topic the projection is built from, recorded on first use: a post's events
# are all on one partition only while the count stays as it was (Kafka places a key by the count).
topic_layout = Table(
    "topic_layout",
    metadata,
    Column("topic", String(255), primary_key=True),
    Column("partitions", Integer, nullable=False),
)

# Rows per statement for IN lists and bulk upserts; SQLite allows 32766 bound variables.
CHUNK = 2000

# States kept in memory per partition between batches (least recently written dropped first): the
# posts being published, whose next events come in the next batches. About 10 kB each: 1,000 per
# partition took the bench's projector from 227 to 263 MB peak RSS, 500 cover its 2,000 posts in flight.
HOT_STATES = 500

Offsets = dict[tuple[str, int], int]


def database_said(exc: Exception) -> str:
    """What a failed database call says, for the log: the driver's error class and the first line of its message
    (scrubbed), never the statement or its values (what SQLAlchemy's own text adds)."""
    cause = getattr(exc, "orig", None) or exc
    return f"{type(cause).__name__}: {scrub((str(cause).strip().splitlines() or [''])[0])[:200]}"


def same_database(one: Engine, other: Engine) -> bool:
    """Whether two engines reach the same database: one SQLite file, or one database of one server.

    Told from the URLs first. Two PostgreSQL URLs that differ may still reach one database (a Unix socket and
    TCP, a host's other name): the server is then asked, when both engines can connect.
    """
    a, b = one.url, other.url
    if a.get_backend_name() != b.get_backend_name():
        return False
    if a.get_backend_name() == "sqlite":
        first, second = _sqlite_file(a), _sqlite_file(b)
        if first is None or second is None:
            return False  # each in-memory database is its own
        # One file under two names (a hard link) is one database too.
        return first == second or (first.exists() and second.exists() and first.samefile(second))
    if _server(a) == _server(b) and a.database == b.database:
        return True
    if a.get_backend_name() == "postgresql" and isinstance(one, Engine) and isinstance(other, Engine):
        return _one_postgres_database(one, other)
    return False


def _one_postgres_database(one: Engine, other: Engine) -> bool:
    """Whether `other` reaches `one`'s database: an advisory lock taken through `one` (a database's own) is then
    taken already for `other`. Nothing is written."""
    key = secrets.randbits(62)
    # Transaction locks: each ends with its connection's transaction, whatever happens.
    with one.connect() as holder:
        holder.execute(sql("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        with other.connect() as asker:
            free = bool(asker.execute(sql("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}).scalar())
    return not free


def _sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL opens (also as a `file:` URI, `?uri=true`); None for an in-memory database."""
    database = url.database or ""
    if str(url.query.get("uri", "")).lower() in ("true", "1") and database.startswith("file:"):
        parsed = urlsplit(database)
        modes = (url.query.get("mode"), *parse_qs(parsed.query).get("mode", []))
        if parsed.path in ("", ":memory:") or "memory" in modes:
            return None
        database = unquote(parsed.path)
    if database in ("", ":memory:"):
        return None
    return Path(database).resolve()


def missing_sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names when it does not exist yet (opening it would create it); else None."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or (file := _sqlite_file(parsed)) is None:
        return None
    return None if file.exists() else file


# Names of this machine's own server, as a database URL may give it.
_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1", "[::1]"})
# Servers' ports when a URL names none.
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def _server(url: URL) -> tuple[str, int | None]:
    host = (url.host or "").lower()
    return ("localhost" if host in _LOCAL_HOSTS else host,
            url.port or _DEFAULT_PORTS.get(url.get_backend_name()))


# Seconds a SQLite connection waits for another's write lock before its statement fails ("database is locked").
SQLITE_BUSY_TIMEOUT = 30.0


def make_engine(url: str) -> Engine:
    """An engine for `url`. SQLite: parent directory created, WAL, and real BEGINs so reads are consistent."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # Text as UTF-8 whatever the database's encoding: psycopg gives a SQL_ASCII database's (one created under
        # the C locale) as bytes otherwise, which nothing here reads.
        utf8 = {"client_encoding": "utf8"} if parsed.get_driver_name() in ("psycopg", "psycopg2") else {}
        return create_engine(url, pool_pre_ping=True, connect_args=utf8)
    if (file := _sqlite_file(parsed)) is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite only opens a transaction before a write; take over so a snapshot's reads share one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers (the API, replay's snapshot) never block the processor's writes, nor it them.
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode still never corrupts; a power cut may lose the last commits, which the
        # tracking offset then re-applies from Kafka.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


def _fingerprint(state_json: str) -> bytes:
    return hashlib.blake2b(state_json.encode(), digest_size=16).digest()


def digest_of(fingerprints: dict[str, bytes]) -> str:
    """One hex digest of a whole projection, from its per-post fingerprints (order-independent)."""
    total = hashlib.sha256()
    for post_id in sorted(fingerprints):
        total.update(post_id.encode() + b"\0" + fingerprints[post_id])
    return total.hexdigest()


class _HotStates:
    """The states a store wrote last for one partition, and the partition's offset they were written with.

    The projector is the only writer of its partitions and a post's events are all on one partition,
    so while the stored offset is still `offset`, these states are the stored ones: the next batch
    folds on them instead of reading and parsing them again. Any other offset means another writer
    went by, and they are dropped.
    """

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.states: OrderedDict[str, PostState] = OrderedDict()

    def keep(self, changed: Iterable[PostState], offset: int, limit: int) -> None:
        self.offset = offset
        states = self.states
        for state in changed:
            states[state.post_id] = state
            states.move_to_end(state.post_id)
        while len(states) > limit:
            states.popitem(last=False)

    def forget(self, changed: dict[str, PostState]) -> None:
        for post_id in changed:
            self.states.pop(post_id, None)


def _folded(state: PostState | None, records: Sequence[tuple[int, Event]],
            refused: list[tuple[int, Event, str]] | None) -> PostState | None:
    """One post's state after its records of a batch; what the fold refuses goes to `refused` (raised if None)."""
    events = [ev for _, ev in records]
    if refused is None:
        return apply_all(state, events)
    after, refusals = apply_valid(state, events)
    if refusals:
        offsets = {id(ev): offset for offset, ev in records}
        refused.extend((offsets[id(ev)], ev, f"the fold refused {ev.type}: {reason}") for ev, reason in refusals)
    return after


# Reads built once: the handler reads a post and the offsets for every command, and the projector's
# live batches of one or two events spent more time building statements than running them.
_STATE_OF = select(posts.c.state).where(posts.c.post_id == bindparam("post_id", type_=String))
_OFFSETS_OF = select(tracking.c.partition, tracking.c.offset).where(
    tracking.c.topic == bindparam("topic", type_=String))
_STATES_OF = select(posts.c.post_id, posts.c.state).where(
    posts.c.post_id.in_(bindparam("post_ids", expanding=True)))


@dataclass(frozen=True)
class _TrackingStatements:
    create: Any  # the partition's tracking row, if missing
    lock: Any  # its offset, locked for the transaction (PostgreSQL; SQLite's writer lock is the database's)
    advance: Any  # its offset moved on


class ProjectionStore:
    """Reads and writes the projection through any SQLAlchemy engine (SQLite and PostgreSQL tested)."""

    def __init__(self, engine: Engine, hot_states: int = HOT_STATES) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._hot_states = hot_states
        self._hot: dict[tuple[str, int], _HotStates] = {}
        self._post_upsert: Any = None
        self._tracking: _TrackingStatements | None = None

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    # Reads ---------------------------------------------------------------------------------

    def get(self, post_id: str) -> PostState | None:
        with self.engine.connect() as conn:
            return self._get(conn, post_id)

    def updated_since(self, since: datetime, *, caption: str = "", excluding: str | None = None) -> list[PostState]:
        """The posts updated at or after `since`, other than `excluding`, that may have `caption` somewhere (a
        coarse filter in SQL, on its longest word, which the stored JSON holds as it is whatever the blanks around
        it: for the caller to check).
        """
        query = select(posts.c.state).where(posts.c.updated_at >= since)
        fragment = max(re.split(r'["\\\x00-\x1f\s]', caption), key=len)[:100]
        if fragment:
            query = query.where(posts.c.state.contains(fragment, autoescape=True))
        if excluding is not None:
            query = query.where(posts.c.post_id != excluding)
        with self.engine.connect() as conn:
            return [PostState.model_validate_json(text) for (text,) in conn.execute(query)]

    def get_with_offsets(self, post_id: str, topic: str) -> tuple[dict[int, int], PostState | None]:
        """`applied_offsets(topic)` and `get(post_id)` in one transaction: the state is exactly that current."""
        with self._consistent() as conn:
            return self._applied_offsets(conn, topic), self._get(conn, post_id)

    def list_posts(self, status: str | None = None, limit: int = 50, offset: int = 0,
                   after: ListPosition | None = None) -> list[PostState]:
        """Posts, most recently updated first, optionally only those with `status`.

        `after` is the (update time, post id) of the last post of the page before: the list goes on from
        there, so posts updated meanwhile neither come twice nor push others into the next page (an
        updated post moves to the top of the list, where a new first page shows it).
        """
        query = select(posts.c.state).order_by(posts.c.updated_at.desc(), posts.c.post_id).limit(limit).offset(offset)
        if status is not None:
            query = query.where(posts.c.status == status)
        if after is not None:
            when, post_id = after
            query = query.where(or_(posts.c.updated_at < when,
                                    and_(posts.c.updated_at == when, posts.c.post_id > post_id)))
        with self.engine.connect() as conn:
            return [PostState.model_validate_json(text) for text in conn.execute(query).scalars()]

    def partitions_of(self, topic: str, partitions: int) -> int:
        """The partition count recorded for `topic`: `partitions`, recorded now, when none was yet. Kept through
        `reset`: the events already written keep the layout they were written with."""
        with self.engine.begin() as conn:
            # Written first, read only when already there: on SQLite a transaction that read first cannot take the
            # write lock once another process (the projector and the handler start together) wrote meanwhile, and
            # fails at once with "database is locked" instead of waiting its turn.
            try:
                with conn.begin_nested():
                    conn.execute(topic_layout.insert().values(topic=topic, partitions=partitions))
            except IntegrityError:
                # Recorded before (at an earlier start, or by another process a moment ago): that count is the one.
                return int(conn.execute(select(topic_layout.c.partitions).where(
                    topic_layout.c.topic == topic)).scalar_one())
            return partitions

    def recorded_partitions(self, topic: str) -> int | None:
        """The partition count recorded for `topic` (`partitions_of`), or None when none was yet."""
        with self.engine.connect() as conn:
            found = conn.execute(select(topic_layout.c.partitions).where(topic_layout.c.topic == topic)).scalar()
            return None if found is None else int(found)

    def applied_offsets(self, topic: str) -> dict[int, int]:
        """The last applied offset per partition of `topic`; a partition with none applied is absent."""
        with self.engine.connect() as conn:
            return self._applied_offsets(conn, topic)

    def snapshot(self) -> tuple[Offsets, dict[str, PostState]]:
        """Offsets and states read in one transaction: the states are exactly those offsets' fold."""
        with self._consistent() as conn:
            offsets = self._offsets(conn)
            states = {post_id: PostState.model_validate_json(text)
                      for post_id, text in conn.execute(select(posts.c.post_id, posts.c.state))}
        return offsets, states

    def snapshot_fingerprints(self) -> tuple[Offsets, dict[str, bytes]]:
        """Like `snapshot`, but a 16-byte fingerprint per post instead of its state: small for big stores."""
        with self.fingerprint_snapshot() as (offsets, read_fingerprints):
            return offsets, read_fingerprints()

    @contextlib.contextmanager
    def fingerprint_snapshot(self) -> Iterator[tuple[Offsets, Callable[[], dict[str, bytes]]]]:
        """`snapshot_fingerprints` in two steps: the offsets at once, the fingerprints when asked, of the
        same snapshot (one transaction, open while the block runs)."""
        with self._consistent() as conn:

            def read_fingerprints() -> dict[str, bytes]:
                return {post_id: _fingerprint(text) for post_id, text in self._stream_states(conn)}

            yield self._offsets(conn), read_fingerprints

    def fingerprints(self) -> dict[str, bytes]:
        return self.snapshot_fingerprints()[1]

    def digest(self) -> str:
        """A hex digest of every post's state: two stores with equal digests hold the same projection."""
        return digest_of(self.fingerprints())

    def count(self) -> int:
        with self.engine.connect() as conn:
            return len(conn.execute(select(posts.c.post_id)).all())

    # Writes --------------------------------------------------------------------------------

    def apply_batch(
        self,
        topic: str,
        partition: int,
        records: Sequence[tuple[int, Event]],
        through: int | None = None,
        rejects: list[tuple[int, Event, str]] | None = None,
        before_commit: Callable[[list[PostState]], None] | None = None,
        after_fold: Callable[[list[PostState], list[PostState]], None] | None = None,
    ) -> list[PostState]:
        """Folds `(offset, event)` records of one partition into the stored posts, in one transaction.

        Records at or below the tracked offset were applied before (a redelivery) and are skipped.
        `through` is the last offset handled, counting records that were no event (dead letters),
        so the tracked offset moves past them too. An event the fold refuses (`ValueError`) is skipped
        and added to `rejects` when given (for the dead letters), else raised. Returns the new state
        of every post changed. `before_commit(changed)` runs inside the transaction, after the last
        write: if it raises, nothing of the batch is stored (publish there what must not be lost).
        `after_fold(changed, shown)` runs as soon as the batch is folded, before the writes, with those of
        `changed` whose insights document changed (`shown`: an attempt recorded, a container made, change the post's
        state but not always its document): start slow work there (sending) that `before_commit` then waits for, and
        the writes overlap it.
        """
        last = max((offset for offset, _ in records), default=-1)
        if through is not None:
            last = max(last, through)
        if last < 0:
            return []
        # Taken out while the batch runs: put back only once the batch is committed.
        hot = self._hot.pop((topic, partition), None)
        with self.engine.begin() as conn:
            tracked = self._lock_tracking(conn, topic, partition)
            if hot is None or hot.offset != tracked:
                # Another processor wrote the partition since (a rebalance), or nothing is cached yet.
                hot = _HotStates(tracked)
            fresh = [(offset, ev) for offset, ev in records if offset > tracked]
            changed: dict[str, PostState] = {}
            shown: list[PostState] = []
            if fresh:
                by_post: dict[str, list[tuple[int, Event]]] = {}
                for record in fresh:
                    by_post.setdefault(record[1].post_id, []).append(record)
                states = {post_id: hot.states[post_id] for post_id in by_post if post_id in hot.states}
                states.update(self._load(conn, [post_id for post_id in by_post if post_id not in states]))
                refused: list[tuple[int, Event, str]] | None = [] if rejects is not None else None
                for post_id, post_records in by_post.items():
                    before = states.get(post_id)
                    after = _folded(before, post_records, refused)
                    if after is not None and after is not before:
                        changed[post_id] = after
                        if before is None or after.document != before.document:
                            shown.append(after)
                if rejects is not None and refused:
                    # In offset order, as they were read, not grouped by post.
                    rejects.extend(sorted(refused, key=lambda reject: reject[0]))
            if after_fold is not None:
                after_fold(list(changed.values()), shown)
            if changed:
                self._upsert_posts(conn, changed.values())
            if last > tracked:
                conn.execute(self._tracking_statements().advance,
                             {"t_topic": topic, "t_partition": partition, "t_offset": last})
            if before_commit is not None:
                before_commit(list(changed.values()))
        hot.keep(changed.values(), max(last, tracked), self._hot_states)
        for other in self._hot.values():
            # A post moved to another partition (more partitions, new key mapping): only one holds it.
            other.forget(changed)
        self._hot[(topic, partition)] = hot
        return list(changed.values())

    def load(self, post_ids: Iterable[str]) -> dict[str, PostState]:
        """The stored states of those of `post_ids` that have one."""
        with self.engine.connect() as conn:
            return self._load(conn, post_ids)

    def write_states(self, states: Iterable[PostState], offsets: Offsets) -> dict[str, bytes]:
        """Stores states folded elsewhere (a replay folds in memory) and the offsets they fold to, in one
        transaction. Returns the fingerprint of each state written, as `snapshot_fingerprints` reads it.
        """
        prints: dict[str, bytes] = {}
        self._hot.clear()  # written past apply_batch: what it kept may be stale now
        # Serialized before the transaction: SQLite has one writer at a time, and replay workers
        # writing their shares then wait only for each other's inserts, not for their JSON.
        rows = self._post_rows(states)
        with self.engine.begin() as conn:
            self._upsert_rows(conn, rows, prints)
            for (topic, partition), offset in offsets.items():
                statement = self._insert(tracking).values(topic=topic, partition=partition, offset=offset)
                conn.execute(statement.on_conflict_do_update(index_elements=["topic", "partition"],
                                                             set_={"offset": statement.excluded.offset}))
        return prints

    def reset(self) -> None:
        """Empties the projection (posts and offsets): for a scratch store before a replay."""
        self._hot.clear()
        with self.engine.begin() as conn:
            conn.execute(posts.delete())
            conn.execute(tracking.delete())

    # Internals -----------------------------------------------------------------------------

    def _consistent(self) -> Any:
        conn = self.engine.connect()
        if self._dialect == "postgresql":
            # Both reads of a snapshot see the same committed data, even while the processor writes.
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return _Transaction(conn)

    @staticmethod
    def _get(conn: Connection, post_id: str) -> PostState | None:
        text = conn.execute(_STATE_OF, {"post_id": post_id}).scalar_one_or_none()
        return None if text is None else PostState.model_validate_json(text)

    @staticmethod
    def _applied_offsets(conn: Connection, topic: str) -> dict[int, int]:
        rows = conn.execute(_OFFSETS_OF, {"topic": topic})
        return {int(partition): int(offset) for partition, offset in rows}

    @staticmethod
    def _offsets(conn: Connection) -> Offsets:
        rows = conn.execute(select(tracking.c.topic, tracking.c.partition, tracking.c.offset))
        return {(topic, int(partition)): int(offset) for topic, partition, offset in rows}

    @staticmethod
    def _stream_states(conn: Connection) -> Iterator[tuple[str, str]]:
        result = conn.execution_options(yield_per=CHUNK).execute(select(posts.c.post_id, posts.c.state))
        yield from ((post_id, text) for post_id, text in result)

    def _lock_tracking(self, conn: Connection, topic: str, partition: int) -> int:
        # Create the row if missing, then lock it: two processors handed the same partition during a
        # rebalance apply a batch one after the other, and the second skips what the first applied.
        statements = self._tracking_statements()
        where = {"t_topic": topic, "t_partition": partition}
        conn.execute(statements.create, where)
        return int(conn.execute(statements.lock, where).scalar_one())

    def _tracking_statements(self) -> _TrackingStatements:
        # Built once, like the reads above (these depend on the dialect).
        if self._tracking is None:
            topic, partition = bindparam("t_topic", type_=String), bindparam("t_partition", type_=Integer)
            lock = select(tracking.c.offset).where(tracking.c.topic == topic, tracking.c.partition == partition)
            if self._dialect == "postgresql":
                lock = lock.with_for_update()
            self._tracking = _TrackingStatements(
                create=self._insert(tracking).values(topic=topic, partition=partition, offset=-1)
                .on_conflict_do_nothing(index_elements=["topic", "partition"]),
                lock=lock,
                advance=tracking.update().where(tracking.c.topic == topic, tracking.c.partition == partition)
                .values(offset=bindparam("t_offset")),
            )
        return self._tracking

    def _load(self, conn: Connection, post_ids: Iterable[str]) -> dict[str, PostState]:
        ids = list(post_ids)
        states: dict[str, PostState] = {}
        for start in range(0, len(ids), CHUNK):
            rows = conn.execute(_STATES_OF, {"post_ids": ids[start:start + CHUNK]})
            for post_id, text in rows:
                states[post_id] = PostState.model_validate_json(text)
        return states

    def _upsert_posts(self, conn: Connection, states: Iterable[PostState]) -> None:
        self._upsert_rows(conn, self._post_rows(states))

    @staticmethod
    def _post_rows(states: Iterable[PostState]) -> list[dict[str, Any]]:
        return [{"post_id": state.post_id, "state": state.model_dump_json(), "status": state.status,
                 "updated_at": state.updated_at} for state in states]

    def _upsert_rows(self, conn: Connection, rows: list[dict[str, Any]],
                     prints: dict[str, bytes] | None = None) -> None:
        statement = self._post_upsert
        if statement is None:
            # Built once: constructing it (its `excluded` columns) cost a twentieth of a batch.
            insert = self._insert(posts)
            statement = self._post_upsert = insert.on_conflict_do_update(
                index_elements=["post_id"],
                set_={"state": insert.excluded.state, "status": insert.excluded.status,
                      "updated_at": insert.excluded.updated_at},
            )
        for start in range(0, len(rows), CHUNK):
            self._write_rows(conn, statement, rows[start:start + CHUNK], prints)

    @staticmethod
    def _write_rows(conn: Connection, statement: Any, rows: list[dict[str, Any]],
                    prints: dict[str, bytes] | None) -> None:
        if prints is not None:
            prints.update((row["post_id"], _fingerprint(row["state"])) for row in rows)
        conn.execute(statement, rows)

    def _insert(self, table: Table) -> Any:
        return upsertable_insert(self._dialect, table)


def upsertable_insert(dialect: str, table: Table) -> Any:
    """An INSERT into `table` in the database's own dialect (`dialect`: the engine's), which can be made an upsert
    (`on_conflict_do_update`)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for {dialect}: use SQLite or PostgreSQL")


class _Transaction:
    """A connection with one open transaction, closed (rolled back: it only reads) on exit."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __enter__(self) -> Connection:
        self.conn.begin()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()
