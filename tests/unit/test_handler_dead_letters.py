"""An undecodable command's dead letter is written even when the broker refuses it for a while."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.store import make_engine
from publishers import redact
from schemas.commands import PostContent, PublishRequested
from schemas.envelope import encode, undecodable
from smartretry.credentials import CredentialStore
from streams.handler import CommandHandler, HandlerConfig, _PartitionProgress, _token_in, _token_in_fields
from streams.kafka import DONE_METADATA_LIMIT, DONE_OFFSETS_LIMIT, done_metadata, done_offsets
from streams.topics import Topics


class Message:
    """The parts of a consumed Kafka message a dead letter reads."""

    def topic(self) -> str:
        return "smartretry.commands"

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 41

    def key(self) -> bytes:
        return b"post-1"

    def value(self) -> bytes:
        return b"\x00\xff{not json"


class NoTokens:
    """A credential store holding no token."""

    def stored_tokens(self) -> frozenset[str]:
        return frozenset()


class FlakyProducer:
    """Refuses the first sends, as a broker that is away for a moment does."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[str, str, bytes]] = []

    async def send(self, topic: str, key: str, value: bytes) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("KafkaError{code=_MSG_TIMED_OUT}")
        self.sent.append((topic, key, value))


async def test_a_dead_letter_the_broker_refuses_is_sent_again_until_it_is_written() -> None:
    topics = Topics()
    handler = CommandHandler(bootstrap="127.0.0.1:1", topics=topics, projection=None,  # type: ignore[arg-type]
                             credentials=NoTokens(), publishers={},  # type: ignore[arg-type]
                             config=HandlerConfig(backoff_base_seconds=0.001, backoff_cap_seconds=0.01))
    producer = FlakyProducer(failures=3)
    handler.producer = producer  # type: ignore[assignment]

    await handler._dead_letter_until_sent(Message(), undecodable(ValueError("x")))

    (sent,) = producer.sent
    assert sent[0] == topics.dead_letters
    letter = json.loads(sent[2])
    assert (letter["partition"], letter["offset"], letter["key"]) == (3, 41, "post-1")
    assert "could not be decoded" in letter["reason"]


class CarryingToken(Message):
    def __init__(self, token: str) -> None:
        self.token = token

    def value(self) -> bytes:
        return f"garbage {self.token}".encode()


async def test_a_token_stored_after_the_handler_started_is_scrubbed_from_its_dead_letters(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = CredentialStore(make_engine(f"sqlite:///{tmp_path}/tokens.db"), "a-secret-key-of-our-own-4567")
    credentials.create_schema()
    handler = CommandHandler(bootstrap="127.0.0.1:1", topics=Topics(), projection=None,  # type: ignore[arg-type]
                             credentials=credentials, publishers={})  # type: ignore[arg-type]
    producer = FlakyProducer(failures=0)
    handler.producer = producer  # type: ignore[assignment]
    # Stored by another process (the API) meanwhile: this one has never seen it.
    token = "stored-later-token-" + uuid.uuid4().hex[:12]
    CredentialStore(credentials._engine, "a-secret-key-of-our-own-4567").set_token("later", token, "1", None)
    monkeypatch.setattr(redact, "_known", OrderedDict())
    monkeypatch.setattr(redact, "_longest_first", ())

    await handler._dead_letter_until_sent(CarryingToken(token), undecodable(ValueError("x")))

    (sent,) = producer.sent
    letter = json.loads(sent[2])
    assert token not in sent[2].decode()
    assert letter["value_scrubbed"] is True
    assert base64.b64decode(letter["value_b64"]) == b"garbage [redacted]"


class Fetched(Message):
    """A consumed message of partition 3 at a given offset."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None


class GatedProducer:
    """Takes the first send once `first` is opened and the others once `rest` is, as a slow broker would."""

    def __init__(self) -> None:
        self.first, self.rest = asyncio.Event(), asyncio.Event()
        self.calls = 0
        self.sent: list[bytes] = []

    async def send(self, topic: str, key: str, value: bytes) -> None:
        self.calls += 1
        await (self.first if self.calls == 1 else self.rest).wait()
        self.sent.append(value)


class CommitLog:
    """The consumer's commits, as the broker would receive them."""

    def __init__(self) -> None:
        self.commits: list[tuple[int, int]] = []
        self.metadata: list[str | None] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits += [(tp.partition, tp.offset) for tp in offsets]
        self.metadata += [tp.metadata for tp in offsets]


def gated_handler() -> tuple[CommandHandler, GatedProducer, CommitLog]:
    handler = CommandHandler(bootstrap="127.0.0.1:1", topics=Topics(), projection=None,  # type: ignore[arg-type]
                             credentials=NoTokens(), publishers={})  # type: ignore[arg-type]
    producer, consumer = GatedProducer(), CommitLog()
    handler.producer = producer  # type: ignore[assignment]
    handler._consumer = consumer  # type: ignore[assignment]
    return handler, producer, consumer


async def settle(until: Callable[[], bool] = lambda: True, timeout: float = 10.0) -> None:
    """Lets the handler's tasks run until `until()` holds (a dead letter reads the stored tokens in a thread, which
    a loaded machine answers late), then a few rounds more for anything that would follow wrongly."""
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_command_fetched_just_after_its_partition_moved_is_left_to_its_new_handler() -> None:
    handler, producer, consumer = gated_handler()
    handler._assign([3])
    handler._dispatch(Fetched(41))  # type: ignore[arg-type]
    handler._revoke([3])
    handler._dispatch(Fetched(42))  # type: ignore[arg-type]
    assert handler._in_flight == 1  # only the first is being handled here
    producer.first.set()
    await settle(lambda: len(producer.sent) == 1)
    assert len(producer.sent) == 1
    # Finished after the move: its offset is the new owner's to commit, who may not have handled it yet.
    assert consumer.commits == []


async def test_a_command_finished_after_its_partition_moved_and_came_back_commits_nothing() -> None:
    handler, producer, consumer = gated_handler()
    handler._assign([3])
    handler._dispatch(Fetched(41))  # type: ignore[arg-type]
    handler._revoke([3])
    handler._assign([3])
    handler._dispatch(Fetched(41))  # type: ignore[arg-type]  # read again from the committed offset
    handler._dispatch(Fetched(42))  # type: ignore[arg-type]
    producer.first.set()
    await settle(lambda: len(producer.sent) == 1)
    # The first 41 finished while the one fetched again is still running: nothing is past it yet.
    assert len(producer.sent) == 1 and consumer.commits == []
    producer.rest.set()
    await settle(lambda: (3, 43) in consumer.commits)
    assert consumer.commits[-1] == (3, 43)
    assert handler._in_flight == 0


async def test_a_pages_token_the_handler_fetched_is_refused_in_commands_as_a_stored_one_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A Page's token is fetched by the handler from the Graph API and never stored: a command carrying it (in its
    # content or ids, straight from Kafka) must be refused as the API refuses it, not published for anyone to read.
    monkeypatch.setattr(redact, "_known", OrderedDict())
    monkeypatch.setattr(redact, "_longest_first", ())
    page_token = "page-token-fetched-" + uuid.uuid4().hex[:12]
    redact.register_secret(page_token)
    handler = CommandHandler(bootstrap="127.0.0.1:1", topics=Topics(), projection=None,  # type: ignore[arg-type]
                             credentials=NoTokens(), publishers={})  # type: ignore[arg-type]
    command = PublishRequested(command_id=page_token, post_id="post-1", requested_at=datetime.now(UTC),
                               publish_target="facebook", content=PostContent(caption=f"look: {page_token}"),
                               account="acme")

    tokens = await handler._stored_tokens()

    assert _token_in_fields(command, tokens) is not None
    assert _token_in(command.content, tokens) is not None


class Publish(Fetched):
    """A valid command of partition 3 at a given offset."""

    def value(self) -> bytes:
        return encode(PublishRequested(command_id=f"cmd-{self._offset}", post_id=f"post-{self._offset}",
                                       publish_target="facebook", account="acme", requested_at=datetime.now(UTC),
                                       content=PostContent(caption="Autumn sale")))


async def test_a_revoked_partitions_commands_that_only_wait_give_up_their_places_uncommitted() -> None:
    # A rate limit's hour-long wait: were they kept, the partition's redelivered commands would queue behind them and
    # count twice against the handler's capacity.
    handler, _producer, _consumer = gated_handler()
    started: list[str] = []

    async def wait_out_a_rate_limit(command: PublishRequested, *_args: object) -> None:
        started.append(command.command_id)
        await handler._sleep(3600)

    handler.handle = wait_out_a_rate_limit  # type: ignore[assignment]
    handler._assign([3])
    handler._dispatch(Publish(41))  # type: ignore[arg-type]
    handler._dispatch(Publish(42))  # type: ignore[arg-type]
    await settle(lambda: handler._parked == 2)
    assert handler._in_flight == 2

    handler._revoke([3])
    await settle(lambda: handler._in_flight == 0, timeout=2)

    assert handler._in_flight == 0 and handler._parked == 0
    # Back here, they are taken up again at once.
    handler._assign([3])
    handler._dispatch(Publish(41))  # type: ignore[arg-type]
    await settle(lambda: len(started) == 3)
    assert started == ["cmd-41", "cmd-42", "cmd-41"]


async def test_partitions_assigned_while_fetching_is_paused_for_capacity_have_the_loop_set_the_pause_anew() -> None:
    handler, _producer, _consumer = gated_handler()
    handler._fetch_paused = True  # at capacity: every assigned partition paused

    handler._assign([3])  # starts unpaused, as a consumer assigns it

    assert handler._fetch_paused is None, "the loop pauses (or resumes) every assigned partition anew"


def test_the_commands_finished_past_a_commit_are_named_in_its_metadata_and_read_back() -> None:
    assert done_metadata(100, []) == ""
    assert done_metadata(100, [101, 102, 103, 107, 109, 110]) == "done:1-3,7,9-10"
    assert done_offsets(100, "done:1-3,7,9-10") == {101, 102, 103, 107, 109, 110}
    # Anything else is no such list: nothing is skipped.
    for other in (None, "", "a note of another tool", "done:0", "done:3-1", "done:x", "done:1,,2"):
        assert done_offsets(100, other) == set()
    assert done_offsets(-1001, "done:1") == set()  # no commit
    # A list past the broker's limit keeps what fits: the rest are handled again.
    many = done_metadata(0, list(range(2, 40_000, 2)))
    assert len(many) <= DONE_METADATA_LIMIT and done_offsets(0, many) <= set(range(2, 40_000, 2))
    # However many a range names, so many are read at most.
    assert done_offsets(0, "done:1-999999999") == set(range(1, DONE_OFFSETS_LIMIT + 1))


async def committed_behind_a_wait(done: str = "") -> tuple[tuple[int, int], str | None]:
    """A handler assigned partition 3, committed at 41 with `done` as the commit's metadata: command 41 waits an hour
    (a rate limit), 42 cannot be read and is dead-lettered. Its last commit, and that commit's metadata."""
    handler, producer, consumer = gated_handler()

    async def wait_out_a_rate_limit(command: PublishRequested, *_args: object) -> None:
        await handler._sleep(3600)

    handler.handle = wait_out_a_rate_limit  # type: ignore[assignment]
    handler._assign([3], {3: done_offsets(41, done)})
    handler._dispatch(Publish(41))  # type: ignore[arg-type]
    handler._dispatch(Fetched(42))  # type: ignore[arg-type]
    producer.first.set()
    await settle(lambda: len(producer.sent) == 1 and consumer.commits != [])
    handler._revoke([3])
    return consumer.commits[-1], consumer.metadata[-1]


async def test_a_command_held_back_by_a_wait_commits_the_ones_finished_after_it_in_the_metadata() -> None:
    # The commit stays at the waiting command; the dead letter's command is named finished past it.
    assert await committed_behind_a_wait() == ((3, 41), "done:1")


async def three_finished_behind_a_wait(handler: CommandHandler, producer: GatedProducer, consumer: CommitLog) -> None:
    """Command 41 of partition 3 waits an hour (a rate limit); 42 to 44 cannot be read and are dead-lettered after it:
    the commit naming 42 goes at once, the others gather."""

    async def wait_out_a_rate_limit(command: PublishRequested, *_args: object) -> None:
        await handler._sleep(3600)

    handler.handle = wait_out_a_rate_limit  # type: ignore[assignment]
    handler._assign([3], {3: set()})
    handler._dispatch(Publish(41))  # type: ignore[arg-type]
    for offset in (42, 43, 44):
        handler._dispatch(Fetched(offset))  # type: ignore[arg-type]
    producer.first.set()
    await settle(lambda: consumer.commits != [])
    producer.rest.set()
    await settle(lambda: len(producer.sent) == 3)


async def test_commits_that_only_name_more_commands_finished_are_gathered_and_sent_when_the_partition_goes() -> None:
    # A burst finishing behind a waiting command: not a commit per command (a fifth of the handler's throughput),
    # but the first at once and those after it together, sent at the latest when the partition is given up.
    handler, producer, consumer = gated_handler()

    await three_finished_behind_a_wait(handler, producer, consumer)

    assert (consumer.commits, consumer.metadata) == ([(3, 41)], ["done:1"])  # the others still gathering
    handler._revoke([3])
    assert (consumer.commits, consumer.metadata) == ([(3, 41), (3, 41)], ["done:1", "done:1-3"])


async def test_commands_the_previous_handler_finished_past_its_commit_are_skipped() -> None:
    handler, producer, consumer = gated_handler()
    started: list[str] = []

    async def handled(command: PublishRequested, *_args: object) -> None:
        started.append(command.command_id)

    handler.handle = handled  # type: ignore[assignment]
    # Committed at 41 with 42 (a dead letter) and 43 named finished.
    handler._assign([3], {3: done_offsets(41, "done:1-2")})
    handler._dispatch(Publish(41))  # type: ignore[arg-type]
    handler._dispatch(Fetched(42))  # type: ignore[arg-type]
    handler._dispatch(Publish(43))  # type: ignore[arg-type]
    handler._dispatch(Publish(44))  # type: ignore[arg-type]
    producer.first.set()
    producer.rest.set()
    await settle(lambda: (3, 45) in consumer.commits)

    assert started == ["cmd-41", "cmd-44"]
    assert producer.sent == []  # not set aside a second time
    assert consumer.commits[-1] == (3, 45)


async def test_a_commit_keeps_naming_what_the_previous_handler_finished_until_it_is_reached() -> None:
    # 43 and 44 named finished; this handler has fetched only up to 42 so far. A restart now must skip them still.
    assert await committed_behind_a_wait("done:2-3") == ((3, 41), "done:1-3")


async def test_commands_the_previous_handler_finished_next_to_be_read_are_committed_past() -> None:
    # Committed at 41 naming 45 finished. This handler finishes 41 to 44 before 45 is fetched: its commit goes past 45
    # too, so a restart before 45 is read does not handle it again.
    handler, _producer, consumer = gated_handler()

    async def handled(command: PublishRequested, *_args: object) -> None:
        pass

    handler.handle = handled  # type: ignore[assignment]
    handler._assign([3], {3: done_offsets(41, "done:4")})
    for offset in (41, 42, 43, 44):
        handler._dispatch(Publish(offset))  # type: ignore[arg-type]
    await settle(lambda: bool(consumer.commits) and consumer.commits[-1][1] >= 45)

    assert consumer.commits[-1] == (3, 46) and consumer.metadata[-1] == ""
    handler._dispatch(Publish(45))  # type: ignore[arg-type]  # fetched after all: still skipped
    handler._dispatch(Publish(46))  # type: ignore[arg-type]
    await settle(lambda: consumer.commits[-1] == (3, 47))
    assert consumer.commits[-1] == (3, 47)


class SortingProgress:
    """The commit point as a sort of every offset in progress gives it (the handler's first way, kept as the rule)."""

    def __init__(self) -> None:
        self.pending: dict[int, bool] = {}
        self.committed: int | None = None

    def add(self, offset: int) -> None:
        self.pending[offset] = False

    def finish(self, offset: int) -> int | None:
        if offset not in self.pending:
            return None
        self.pending[offset] = True
        for pending_offset in sorted(self.pending):
            if not self.pending[pending_offset]:
                break
            del self.pending[pending_offset]
            self.committed = pending_offset + 1
        return min(self.pending) if self.pending else self.committed

    def point(self) -> tuple[int, str] | None:
        commit_to = min(self.pending) if self.pending else self.committed
        if commit_to is None:
            return None
        return commit_to, done_metadata(commit_to, sorted(o for o, done in self.pending.items() if done))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_commit_point_and_its_metadata_follow_the_rule_whatever_order_commands_finish_in(
        data: st.DataObject) -> None:
    progress, rule = _PartitionProgress(), SortingProgress()
    offset, unfinished = data.draw(st.integers(0, 1000)), []
    for _ in range(data.draw(st.integers(1, 60))):
        if not unfinished or data.draw(st.booleans()):
            offset += data.draw(st.integers(1, 3))  # gaps: transaction markers
            progress.add(offset)
            rule.add(offset)
            unfinished.append(offset)
        else:
            done = unfinished.pop(data.draw(st.integers(0, len(unfinished) - 1)))
            assert progress.finish(done) == rule.finish(done)
        assert progress.point() == rule.point()


async def test_commits_gathering_for_revoked_partitions_are_sent_inside_the_rebalance() -> None:
    # Sent by the loop after the rebalance callback returned, the commit could reach a group that has moved on; and
    # none of the loop's may follow it, or a later commit could land before it.
    handler, producer, consumer = gated_handler()
    handler._loop = asyncio.get_running_loop()
    handler._loop_thread = threading.get_ident()
    sent_from: list[tuple[bool, bool]] = []  # (from the consuming thread, the partition still held)
    recorded = consumer.commit

    def commit(*, offsets: list[TopicPartition], asynchronous: bool) -> None:
        sent_from.append((threading.get_ident() != handler._loop_thread, 3 in handler._progress))
        recorded(offsets=offsets, asynchronous=asynchronous)

    consumer.commit = commit  # type: ignore[method-assign]
    await three_finished_behind_a_wait(handler, producer, consumer)
    assert consumer.metadata == ["done:1"]  # the others still gathering

    # The rebalance callback, in the consuming thread (inside `consume`).
    await asyncio.to_thread(handler._on_revoke, consumer, [TopicPartition(handler.topics.commands, 3)])  # type: ignore[arg-type]

    assert (consumer.commits[1:], consumer.metadata[1:]) == ([(3, 41)], ["done:1-3"])
    assert sent_from[1:] == [(True, True)]
    await settle(lambda: 3 not in handler._progress)
    assert len(consumer.commits) == 2


async def test_a_partition_handed_over_to_a_rebalance_commits_nothing_more_from_the_loop() -> None:
    # Its commits went from inside the rebalance; one the loop sent after them could land first, and be overwritten.
    handler, producer, consumer = gated_handler()
    await three_finished_behind_a_wait(handler, producer, consumer)
    assert handler._hand_over([3]) == {3: (41, "done:1-3")}
    handler._commit(3, 45)  # a command finishing before the loop hears of the move
    await settle()
    assert consumer.commits == [(3, 41)]  # only the one sent before the hand-over
