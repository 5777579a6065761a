"""Replay: rebuild the projection from offset 0 of the post events and compare it with the live one."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from sqlalchemy.exc import DBAPIError

from projections.fold import apply_valid
from projections.imported import without_secrets
from projections.state import PostState
from projections.store import Offsets, ProjectionStore, database_said, digest_of, make_engine, same_database
from schemas.envelope import decode_event
from schemas.events import Event, LegacyInsightsImported
from streams.broker import die_with_parent
from streams.gc_tuning import disable_gc, folding_gc
from streams.kafka import client_config
from streams.topics import Topics, misplaced

# Records decoded and folded at a time: one copy and one document per post per batch.
BATCH = 50_000
# Post states a replay keeps in memory before writing the least recently touched out (about 10 kB
# each). Writing out as it goes also spreads the store's writes over the replay: replay workers share
# one SQLite writer, and writing everything at the end had them wait for each other.
MEMORY_STATES = 20_000

Progress = Callable[[int, int], None]


class ReplayError(RuntimeError):
    """The post events could not be read up to the live projection's offsets."""


@dataclass
class ReplayReport:
    live_digest: str
    replay_digest: str
    # Posts whose replayed state differs from the live one, or that only one side has.
    differing: list[str] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)
    events: int = 0
    posts: int = 0
    seconds: float = 0.0
    # Events on the broker, when the replay began, past the live projection's offsets (a projector behind, or
    # stopped): left out of both sides. None: the broker did not say.
    behind: int | None = None

    @property
    def identical(self) -> bool:
        return self.live_digest == self.replay_digest and not self.differing


# Seconds a replay goes on reading nothing before it gives up (a broker that went away).
STALL_TIMEOUT = 300.0
# Seconds past that a worker may be silent (its last batch written) before the replay gives up on it.
WORKER_SILENCE_MARGIN = 30.0
# Records asked of the broker at a time.
FETCH = 10_000


def replay(bootstrap: str, topics: Topics, live_store: ProjectionStore, scratch_store: ProjectionStore,
           progress: Progress | None = None, stall_timeout: float = STALL_TIMEOUT, workers: int | None = None,
           memory_states: int = MEMORY_STATES, secrets: Collection[str] = ()) -> ReplayReport:
    """Folds the post events into `scratch_store` (emptied first) up to the live store's offsets.

    The live offsets and states are read in one transaction first, so the live processor can keep
    running: the replay stops exactly where that snapshot was taken. Partitions are independent (a
    post's events are all on one), so `workers` processes (default: one per core) each read and fold
    a share of them; a scratch store in memory is folded in this process alone. At most
    `memory_states` post states are kept in memory at once, over all workers. `secrets` (the stored account
    tokens) are taken out of imported documents before they are folded, as the live processor does. A replay
    ends with `ReplayError` once it has read nothing for `stall_timeout` seconds; however long the topic, it is
    read to the end while events keep coming.
    """
    try:
        same = same_database(live_store.engine, scratch_store.engine)
    except DBAPIError as exc:
        raise ValueError(f"could not tell whether the scratch store "
                         f"({scratch_store.engine.url.render_as_string(hide_password=True)}) is the live projection's "
                         f"database ({database_said(exc)}): give replay a scratch store it can reach") from None
    if same:
        # The replay empties its scratch store first: the live projection would be gone, and decided from meanwhile.
        raise ValueError(f"the scratch store is the live projection's database "
                         f"({scratch_store.engine.url.render_as_string(hide_password=True)}): give replay another one")
    started = time.monotonic()
    # The log's ends before the live offsets: what a running projector applies in between is never counted as left out.
    ends = _end_offsets(bootstrap, topics.post_events)
    with contextlib.ExitStack() as snapshot:
        offsets, read_fingerprints = snapshot.enter_context(live_store.fingerprint_snapshot())
        targets = {partition: offset for (topic, partition), offset in offsets.items()
                   if topic == topics.post_events and offset >= 0}
        behind = None if ends is None else sum(max(0, end - targets.get(partition, -1) - 1)
                                               for partition, end in ends.items())
        live: list[dict[str, bytes]] = []
        live_digest: list[str] = []

        def read_live_prints() -> None:
            live.append(read_fingerprints())
            snapshot.close()  # the live store's read transaction ends here, not after the fold
            live_digest.append(digest_of(live[0]))

        if not targets and (waiting := _events_on_broker(bootstrap, topics.post_events)):
            # Nothing applied is nothing to compare: said, rather than a replay of nothing found identical.
            raise ReplayError(f"the live projection ({live_store.engine.url.render_as_string(hide_password=True)}) "
                              f"has applied none of the {waiting} events on {topics.post_events}: is it the "
                              "service's database (SMARTRETRY_DATABASE_URL), and is the projector running?")
        scratch_store.create_schema()
        scratch_store.reset()
        # Imports on another partition than their post's were dead-lettered by the live processor: skipped here too.
        partitions = live_store.recorded_partitions(topics.post_events)
        shares = _shares(bootstrap, topics.post_events, targets, _worker_count(workers, scratch_store))
        if len(shares) <= 1:
            read_live_prints()
            events, replay_prints = _fold_here(bootstrap, topics.post_events, targets, scratch_store, progress,
                                               stall_timeout, memory_states, secrets=tuple(secrets),
                                               partitions=partitions)
        else:
            # The live fingerprints are read, and their digest taken, while the workers run.
            url = scratch_store.engine.url.render_as_string(hide_password=False)
            events, replay_prints = _fold_in_processes(
                bootstrap, topics.post_events, shares, url, progress, stall_timeout,
                max(1, memory_states // len(shares)),
                meanwhile=read_live_prints, secrets=tuple(secrets), partitions=partitions)
    live_prints = live[0]
    differing = sorted(post_id for post_id in live_prints.keys() | replay_prints.keys()
                       if live_prints.get(post_id) != replay_prints.get(post_id))
    return ReplayReport(live_digest=live_digest[0], replay_digest=digest_of(replay_prints),
                        differing=differing, offsets=targets, events=events, posts=len(replay_prints),
                        seconds=time.monotonic() - started, behind=behind)


def _events_on_broker(bootstrap: str, topic: str) -> int:
    """How many events `topic` holds (0 when it does not exist yet); a broker away raises `KafkaException`."""
    return sum(max(0, high - low) for low, high in (_watermarks(bootstrap, topic) or {}).values())


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int] | None:
    """Each partition's end offset (the next to be written); None when the broker does not say."""
    try:
        watermarks = _watermarks(bootstrap, topic)
    except KafkaException:
        return None
    return None if watermarks is None else {partition: high for partition, (_low, high) in watermarks.items()}


def _watermarks(bootstrap: str, topic: str) -> dict[int, tuple[int, int]] | None:
    """Each partition's first and end offsets; None when the topic does not exist (yet). A broker away raises
    `KafkaException`."""
    consumer = Consumer(client_config(bootstrap, **{"group.id": f"replay-{uuid.uuid4().hex[:8]}",
                                                   "enable.auto.commit": False}))
    try:
        described = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if described is None or described.error is not None:
            return None
        return {partition: consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                for partition in described.partitions}
    finally:
        consumer.poll(0)  # its log lines, to the log
        consumer.close()


def _worker_count(workers: int | None, scratch_store: ProjectionStore) -> int:
    database = scratch_store.engine.url.database
    if scratch_store.engine.dialect.name == "sqlite" and database in (None, "", ":memory:"):
        return 1  # another process could not see this store
    return max(1, workers if workers is not None else os.cpu_count() or 1)


def _shares(bootstrap: str, topic: str, targets: dict[int, int], workers: int) -> list[dict[int, int]]:
    """`targets` split into at most `workers` shares of about equal event counts (largest partitions first)."""
    if workers <= 1 or len(targets) <= 1:
        return [targets] if targets else []
    consumer = Consumer(client_config(bootstrap, **{"group.id": f"replay-{uuid.uuid4().hex[:8]}",
                                                   "enable.auto.commit": False}))
    try:
        sizes = {p: max(0, offset - consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] + 1)
                 for p, offset in targets.items()}
    finally:
        consumer.poll(0)  # its log lines, to the log
        consumer.close()
    shares: list[dict[int, int]] = [{} for _ in range(min(workers, len(targets)))]
    loads = [0] * len(shares)
    for partition in sorted(sizes, key=lambda p: -sizes[p]):
        lightest = loads.index(min(loads))
        shares[lightest][partition] = targets[partition]
        loads[lightest] += sizes[partition]
    return [share for share in shares if share]


def _fold_here(bootstrap: str, topic: str, targets: dict[int, int], store: ProjectionStore,
               progress: Progress | None, stall: float, limit: int,
               keep: list[object] | None = None, secrets: tuple[str, ...] = (),
               partitions: int | None = None) -> tuple[int, dict[str, bytes]]:
    with folding_gc():
        return _read_and_fold(bootstrap, topic, targets, store, progress, stall, limit, keep, secrets, partitions)


def _fold_in_processes(bootstrap: str, topic: str, shares: list[dict[int, int]], scratch_url: str,
                       progress: Progress | None, stall: float, limit: int,
                       meanwhile: Callable[[], None] | None = None, secrets: tuple[str, ...] = (),
                       partitions: int | None = None) -> tuple[int, dict[str, bytes]]:
    """Each share folded by a process of its own into the scratch store; their events and fingerprints, summed.

    `meanwhile` runs here once the processes are started.
    """
    # Spawned, not forked: a fork would copy librdkafka's threads' locks in whatever state they are.
    context = multiprocessing.get_context("spawn")
    messages: Any = context.Queue()
    processes = [context.Process(target=_worker, name=f"replay-{n}", daemon=True,
                                 args=(n, bootstrap, topic, share, scratch_url, stall, limit,
                                       messages, secrets, partitions))
                 for n, share in enumerate(shares)]
    for process in processes:
        process.start()
    done = [0] * len(shares)
    totals = [0] * len(shares)
    finished: dict[int, tuple[int, dict[str, bytes]]] = {}
    quiet_dead: set[int] = set()
    # Workers report after every batch they fold; one that reads nothing says so itself after `stall`. Silent well past
    # that, one is stuck where it cannot (a store that never answers): the replay says so rather than wait for ever.
    heard_at = time.monotonic()
    try:
        if meanwhile is not None:
            meanwhile()
        while len(finished) < len(shares):
            try:
                message = messages.get(timeout=0.5)
            except queue.Empty:
                # A worker's last message is in the pipe before it exits: one found dead on two quiet
                # turns in a row died without reporting.
                dead = {n for n, process in enumerate(processes) if n not in finished and not process.is_alive()}
                if dead & quiet_dead:
                    n = min(dead & quiet_dead)
                    raise ReplayError(f"replay worker {n} exited with {processes[n].exitcode} "
                                      "before it finished") from None
                quiet_dead = dead
                if time.monotonic() - heard_at > stall + WORKER_SILENCE_MARGIN:
                    raise ReplayError(f"the replay workers have said nothing for {time.monotonic() - heard_at:.0f}s "
                                      "(a store that does not answer?)") from None
                continue
            heard_at = time.monotonic()
            kind, n = message[0], message[1]
            if kind == "error":
                raise ReplayError(message[2])
            if kind == "progress":
                done[n], totals[n] = message[2], message[3]
                if progress:
                    progress(sum(done), sum(totals))
            elif kind == "done":
                finished[n] = (message[2], message[3])
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(10)
        messages.close()
    prints: dict[str, bytes] = {}
    for _events, share_prints in finished.values():
        prints.update(share_prints)
    return sum(events for events, _ in finished.values()), prints


def _worker(n: int, bootstrap: str, topic: str, targets: dict[int, int], scratch_url: str, stall: float,
            limit: int, messages: Any, secrets: tuple[str, ...] = (), partitions: int | None = None) -> None:
    """A replay process: folds its partitions into the scratch store and reports back through `messages`."""
    die_with_parent()
    # The worker folds and exits: the collector would only walk its states and events again and again.
    disable_gc()
    store = ProjectionStore(make_engine(scratch_url))
    folded: list[object] = []
    try:
        result = _fold_here(bootstrap, topic, targets, store,
                            lambda done, total: messages.put(("progress", n, done, total)),
                            stall, limit, keep=folded, secrets=secrets, partitions=partitions)
        messages.put(("done", n, *result))
    except Exception as exc:  # reported to the parent, which raises it as the replay's error
        messages.put(("error", n, str(exc) if isinstance(exc, ReplayError) else f"{type(exc).__name__}: {exc}"))
    finally:
        store.engine.dispose()
    # The last message is in the pipe once the queue's thread is joined. Exiting at once then skips
    # freeing the post states one by one (a few tenths of a second the parent would wait for).
    messages.close()
    messages.join_thread()
    os._exit(0)


class _MemoryFold:
    """Folds the replayed events in memory and writes each post once, at the end.

    The live processor stores every post after each batch; a replay has no reader waiting, so it
    keeps the states in memory and stores each post's final state in one transaction with the
    offsets. Past `limit` posts in memory, the posts touched longest ago are written out (a post's
    events come close together, so those are most likely complete) and read back if their post has
    more events: memory stays bounded on any topic, and few posts are written twice.
    """

    def __init__(self, store: ProjectionStore, limit: int = MEMORY_STATES, secrets: tuple[str, ...] = (),
                 partitions: int | None = None) -> None:
        self.store = store
        self.limit = limit
        self.secrets = secrets
        self.partitions = partitions
        self.states: OrderedDict[str, PostState] = OrderedDict()
        self.prints: dict[str, bytes] = {}
        # Posts written out: only these can be in the store (a replay starts on an empty one).
        self.written: set[str] = set()

    def fold(self, values: list[bytes | None], partitions: list[int]) -> None:
        """Folds `values`, the records of the partitions `partitions` names, one for one."""
        by_post: dict[str, list[Event]] = {}
        for value, partition in zip(values, partitions, strict=True):
            try:
                event = decode_event(value)
            except Exception:  # whatever the live processor dead-lettered (`undecodable`)
                continue  # a dead letter of the live processor: not part of the projection
            if type(event) is LegacyInsightsImported:
                if misplaced(event, partition, self.partitions) is not None:
                    continue  # dead-lettered by the live processor
                event = without_secrets(event, self.secrets)
            by_post.setdefault(event.post_id, []).append(event)
        states = self.states
        if self.written:
            states.update(self.store.load([p for p in by_post if p not in states and p in self.written]))
        for post_id, events in by_post.items():
            # What the fold refuses the live processor sent to the dead letters: skipped here too.
            state, _refused = apply_valid(states.get(post_id), events)
            if state is not None:
                states[post_id] = state
                states.move_to_end(post_id)
        if len(states) > self.limit:
            # Down to three quarters of the limit, so the next spill is a while away.
            evicted = [states.popitem(last=False)[1] for _ in range(len(states) - self.limit * 3 // 4)]
            self.prints.update(self.store.write_states(evicted, {}))
            self.written.update(state.post_id for state in evicted)

    def finish(self, offsets: Offsets) -> dict[str, bytes]:
        self.prints.update(self.store.write_states(self.states.values(), offsets))
        return self.prints


def _read_and_fold(bootstrap: str, topic: str, targets: dict[int, int], store: ProjectionStore,
                   progress: Progress | None, stall: float, limit: int,
                   keep: list[object] | None = None, secrets: tuple[str, ...] = (),
                   partitions: int | None = None) -> tuple[int, dict[str, bytes]]:
    """Records read, and the fingerprint of each post stored. The fold's states go to `keep` when given."""
    if not targets:
        return 0, {}
    consumer = Consumer({
        **client_config(bootstrap),
        # Partitions are assigned by hand and no offset is ever committed: the replay is invisible to
        # the live processor's consumer group.
        "group.id": f"replay-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # The same events the live processor folds: those of committed transactions.
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "queued.min.messages": 200_000,
    })
    folder = _MemoryFold(store, limit, secrets, partitions)
    if keep is not None:
        keep.append(folder)
    # A batch's posts are all in memory at once: no more of them than the limit allows.
    batch = max(1, min(BATCH, limit))
    try:
        low = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in targets}
        total = sum(max(0, targets[p] - low[p] + 1) for p in targets)
        consumer.assign([TopicPartition(topic, p, low[p]) for p in targets])
        pending: list[bytes | None] = []
        # The partition of each pending record.
        pending_partitions: list[int] = []
        remaining = set(targets)
        done = 0
        if progress:
            progress(0, total)
        read_at = time.monotonic()
        while remaining:
            if time.monotonic() - read_at > stall:
                raise ReplayError(f"nothing read from {topic} for {stall:.0f}s (is the broker up?); not read to the "
                                  f"end: partitions {sorted(remaining)}")
            fetched = consumer.consume(num_messages=FETCH, timeout=0.5)
            for message in fetched:
                partition = message.partition()
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF and partition in remaining:
                        raise ReplayError(f"{topic}[{partition}] ends before the live offset {targets[partition]}")
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise ReplayError(f"reading {topic}: {error}")
                    continue
                offset = message.offset() or 0
                if partition not in remaining or offset > targets[partition]:
                    continue
                pending.append(message.value())
                pending_partitions.append(partition)
                if offset >= targets[partition]:
                    remaining.discard(partition)
            while len(pending) >= batch or (pending and not remaining):
                # Partitions are independent (a post's events are on one), so one batch mixes them.
                folder.fold(pending[:batch], pending_partitions[:batch])
                done += min(batch, len(pending))
                del pending[:batch]
                del pending_partitions[:batch]
                if progress:
                    progress(done, total)
            # Pause finished partitions so their newer events are not fetched for nothing.
            finished = [TopicPartition(topic, p) for p in targets if p not in remaining]
            if finished:
                consumer.pause(finished)
            if any(message.error() is None for message in fetched):
                read_at = time.monotonic()  # after folding what it read: a slow fold is no stall
        return done, folder.finish({(topic, p): offset for p, offset in targets.items()})
    finally:
        consumer.close()
