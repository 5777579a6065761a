"""Producer and consumer configurations, each line saying what delivery guarantee it buys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

# librdkafka's own lines (a broker away: "Connect to ... failed" at every reconnect) go to this logger, not straight
# to stderr: formatted like the service's (one JSON object per line on request), scrubbed, and held back when they
# repeat, like any library's. A client hands them over when it is polled (a consumer's poll, a producer's poll or
# flush, `admin_client` after its calls).
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


# What librdkafka says of a broker it cannot reach: news while the process runs, expected once it stops.
_BROKER_AWAY = re.compile(r"Connect to .* failed|brokers are down|Disconnected|Connection refused|"
                          r"ApiVersionRequest failed|Timed out \d+ in-flight")
# A plain flag, not a `threading.Event`: `stopping` is called from signal handlers, and an Event's lock taken by a
# second signal while the first one's `set` holds it would never be released.
_stopping = False


def stopping() -> None:
    """Marks this process as stopping (its SIGINT or SIGTERM, or the projector's end): from then on librdkafka's lines
    of a broker it cannot reach are debug lines. Stopped while the broker is away, its clients say so until they are
    closed, and `smartretry run`'s Ctrl-C would end in errors that ask nothing of anyone. What a client could not
    deliver is still said."""
    global _stopping
    _stopping = True


class _LibrdkafkaWords(logging.Filter):
    """librdkafka's lines in what they mean here: a broker that does not answer in time is not one older than Kafka
    0.10 (its own guess), a broker still loading its coordinator after a start is waited for, not a warning, and a
    broker away while this process stops is no news (`stopping`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _stopping and record.levelno > logging.DEBUG and _BROKER_AWAY.search(message):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return LIBRDKAFKA_LOG.isEnabledFor(logging.DEBUG)
        if "probably due to broker version < 0.10" in message:
            record.msg = message.split("probably due to", 1)[0].rstrip(" :(") + \
                ": the broker did not answer in time (stopped, frozen or overloaded?)"
            record.args = ()
        elif "Coordinator load in progress: retrying" in message:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return LIBRDKAFKA_LOG.isEnabledFor(logging.DEBUG)
        return True


LIBRDKAFKA_LOG.addFilter(_LibrdkafkaWords())


def client_config(bootstrap: str, **settings: Any) -> dict[str, Any]:
    """A client's configuration: the broker, the log above, then `settings`."""
    return {"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG, **settings}


@contextlib.contextmanager
def admin_client(bootstrap: str) -> Iterator[AdminClient]:
    """An admin client whose log lines are handed to the log once the block ends, however it ends."""
    admin = AdminClient(client_config(bootstrap))
    try:
        yield admin
    finally:
        admin.poll(0)


def producer(bootstrap: str, **overrides: Any) -> Producer:
    config: dict[str, Any] = {
        **client_config(bootstrap),
        # Broker-side dedupe of retried sends and per-partition order: no duplicate or reordered events.
        "enable.idempotence": True,
        # A send is done only when every in-sync replica has it.
        "acks": "all",
        "linger.ms": 2,
        # murmur2 is the Java client's partitioner: a post's commands and events get the same
        # partition number whichever client produced them.
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
        **overrides,
    }
    return Producer(config)


def consumer(bootstrap: str, group_id: str, **overrides: Any) -> Consumer:
    config: dict[str, Any] = {
        **client_config(bootstrap),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        # Offsets are stored by hand after a message is fully handled: at-least-once, never at-most-once.
        "enable.auto.offset.store": False,
        "enable.auto.commit": False,
        # Only events of committed transactions.
        "isolation.level": "read_committed",
        **overrides,
    }
    return Consumer(config)


_M32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of a key (`org.apache.kafka.common.utils.Utils.murmur2`), as an unsigned 32-bit int."""
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & _M32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & _M32
        k ^= k >> 24
        k = (k * m) & _M32
        h = ((h * m) & _M32) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * m) & _M32
    h ^= h >> 13
    h = (h * m) & _M32
    h ^= h >> 15
    return h


def partition_for(key: str, partitions: int) -> int:
    """The partition a keyed message goes to with the Java client's partitioner (and `murmur2_random`, ours)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def deliver(p: Producer, topic: str, key: str, value: bytes, timeout: float = 30.0) -> tuple[int, int]:
    """Produces one message and waits until the broker has it (raises on failure): its (partition, offset)."""
    errors: list[Any] = []
    placed: list[tuple[int, int]] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err:
            errors.append(err)
        else:
            placed.append((msg.partition(), msg.offset()))

    p.produce(topic, key=key.encode(), value=value, on_delivery=on_delivery)
    remaining = p.flush(timeout)
    if remaining or errors or not placed:
        raise RuntimeError(f"delivery to {topic} failed: {errors or 'timed out'}")
    return placed[0]


class AsyncProducer:
    """An idempotent producer whose `send` completes when the broker has the message.

    Delivery reports are served by a thread of its own, so an event loop never blocks on librdkafka.
    """

    def __init__(self, bootstrap: str, **overrides: Any) -> None:
        # Every send is awaited by a caller (the platform is called only once its attempt is durable), so
        # lingering would only add latency; under load, batches still form behind in-flight requests.
        self._producer = producer(bootstrap, **{"linger.ms": 0, **overrides})
        self._stopped = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="producer-poll", daemon=True)

    async def start(self) -> None:
        self._poller.start()

    @property
    def started(self) -> bool:
        return self._poller.is_alive()

    def _poll(self) -> None:
        while not self._stopped.is_set():
            self._producer.poll(0.05)

    async def send(self, topic: str, key: str, value: bytes) -> None:
        await self.enqueue(topic, key, value)

    def enqueue(self, topic: str, key: str, value: bytes) -> asyncio.Future[None]:
        """Hands the message to the producer now; the returned future completes when the broker has it.

        A caller can hand over several messages and then wait once for all of them, instead of one broker
        round trip each; they reach the partition in the order they were handed over.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(err: Any) -> None:
            if done.done():
                return
            if err is not None:
                done.set_exception(RuntimeError(f"delivery to {topic} failed: {err}"))
            else:
                done.set_result(None)

        def on_delivery(err: Any, _msg: Any) -> None:
            loop.call_soon_threadsafe(settle, err)

        while True:
            try:
                self._producer.produce(topic, key=key.encode(), value=value, on_delivery=on_delivery)
                return done
            except BufferError:
                # The local queue is full (100,000 messages unacknowledged). Waiting here, not in a task,
                # keeps the messages of one post in the order they were sent; deliveries go on meanwhile.
                time.sleep(0.005)

    async def close(self, timeout: float = 10.0) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, timeout)
        self._stopped.set()
        if self._poller.is_alive():
            self._poller.join()


# The commit's metadata naming the commands past the committed offset that are finished (`_PartitionProgress`): at
# most this many characters, under the broker's `offset.metadata.max.bytes` (4096 by default). Those left out are
# handled again after a restart, as they would be without it.
DONE_METADATA_LIMIT = 3900
DONE_PREFIX = "done:"
# Offsets read from one commit's metadata at most (its ranges could name any number): those past it are handled again.
DONE_OFFSETS_LIMIT = 100_000


def done_metadata(commit_to: int, done: Sequence[int]) -> str:
    """The offsets in `done` (sorted, each past `commit_to`) as a commit's metadata: "done:" and ranges of their
    distances from `commit_to` ("done:1-3,7"); empty when there are none. Cut to `DONE_METADATA_LIMIT`."""
    if not done:
        return ""
    ranges: list[str] = []
    start = previous = done[0]
    for offset in [*done[1:], None]:
        if offset is not None and offset == previous + 1:
            previous = offset
            continue
        first, last = start - commit_to, previous - commit_to
        ranges.append(str(first) if first == last else f"{first}-{last}")
        if offset is not None:
            start = previous = offset
    said = DONE_PREFIX
    for part in ranges:
        longer = said + ("," if said != DONE_PREFIX else "") + part
        if len(longer) > DONE_METADATA_LIMIT:
            break
        said = longer
    return said if said != DONE_PREFIX else ""


def done_offsets(committed: int, metadata: str | None) -> set[int]:
    """The offsets a commit's metadata names finished (`done_metadata`); none for any other metadata."""
    if committed < 0 or not metadata or not metadata.startswith(DONE_PREFIX):
        return set()
    offsets: set[int] = set()
    try:
        for part in metadata.removeprefix(DONE_PREFIX).split(","):
            first, _, last = part.partition("-")
            low, high = int(first), int(last or first)
            if low < 1 or high < low:
                return set()
            high = min(high, low + DONE_OFFSETS_LIMIT - len(offsets) - 1)
            offsets.update(range(committed + low, committed + high + 1))
            if len(offsets) >= DONE_OFFSETS_LIMIT:
                break
    except ValueError:
        return set()
    return offsets
