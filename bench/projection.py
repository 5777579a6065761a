"""The projection's figures: raw consume + decode, its parts (faust's consumer, the fold), the projector into
SQLite, and replay."""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, TopicPartition

from bench import BenchContext, Figure, register
from projections.fold import fold
from projections.store import ProjectionStore, make_engine
from schemas.commands import PostContent
from schemas.common import ErrorKind
from schemas.envelope import decode_event, encode
from schemas.events import (
    CommandDecided,
    ContainerCreated,
    Event,
    PlatformError,
    PlatformResult,
    PostSubmitted,
    PublishAttempted,
)
from streams.kafka import producer
from streams.replay import replay
from streams.topics import Topics, ensure_topics

PLACEHOLDER = "BENCHPOST0000000000"
# Posts whose histories are in progress at once: events of different posts interleave on a
# partition as they do live, while each post's own events stay in order and close together.
IN_FLIGHT = 2000
FACEBOOK_ERROR = "Facebook photo upload failed: 400 - Missing or invalid image file"


def post_history(post_id: str, at: datetime) -> list[Event]:
    """Ten events: the seed's first attempt (Facebook fails, Instagram succeeds) and a Facebook retry."""
    content = PostContent(caption="Autumn sale starts today", image_url="https://cdn.example.com/autumn-sale.jpg")
    later = at + timedelta(minutes=5)
    return [
        PostSubmitted(event_id=f"{post_id}:submitted", post_id=post_id, occurred_at=at, command_id=f"{post_id}-c1",
                      publish_target="both", content=content, account="acme"),
        CommandDecided(event_id=f"{post_id}:c1", post_id=post_id, occurred_at=at, command_id=f"{post_id}-c1",
                       command_type="PublishRequested", platforms=("facebook", "instagram")),
        PublishAttempted(event_id=f"{post_id}:a1", post_id=post_id, occurred_at=at, platform="facebook",
                         attempt_id=f"{post_id}-a1", attempt_number=1, command_id=f"{post_id}-c1"),
        PublishAttempted(event_id=f"{post_id}:a2", post_id=post_id, occurred_at=at, platform="instagram",
                         attempt_id=f"{post_id}-a2", attempt_number=1, command_id=f"{post_id}-c1"),
        ContainerCreated(event_id=f"{post_id}:a2:container", post_id=post_id, occurred_at=at, platform="instagram",
                         attempt_id=f"{post_id}-a2", container_id="17889455560051444"),
        PlatformResult(event_id=f"{post_id}:a1:result", post_id=post_id, occurred_at=at, platform="facebook",
                       attempt_id=f"{post_id}-a1", success=False,
                       error=PlatformError(kind=ErrorKind.INVALID_MEDIA, http_status=400,
                                           message=FACEBOOK_ERROR)),
        PlatformResult(event_id=f"{post_id}:a2:result", post_id=post_id, occurred_at=at, platform="instagram",
                       attempt_id=f"{post_id}-a2", success=True, platform_post_id="18107758234627017",
                       permalink="https://www.instagram.com/p/DRJ1nlKDgY9/"),
        CommandDecided(event_id=f"{post_id}:c2", post_id=post_id, occurred_at=later, command_id=f"{post_id}-c2",
                       command_type="RetryRequested", platforms=("facebook",), is_retry=True),
        PublishAttempted(event_id=f"{post_id}:a3", post_id=post_id, occurred_at=later, platform="facebook",
                         attempt_id=f"{post_id}-a3", attempt_number=2, command_id=f"{post_id}-c2", is_retry=True),
        PlatformResult(event_id=f"{post_id}:a3:result", post_id=post_id, occurred_at=later, platform="facebook",
                       attempt_id=f"{post_id}-a3", success=True, platform_post_id="747917475065823_122104567890123"),
    ]


def event_stream(events: int, posts: int, seed: int = 7) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of `events` events over `posts` posts, interleaved as posts publish concurrently."""
    at = datetime(2025, 11, 17, 10, 10, 13, 151000, tzinfo=UTC)
    # Encoded once with a placeholder id, then the id swapped in: writing 1M events stays fast.
    templates = [encode(e) for e in post_history(PLACEHOLDER, at)]
    per_post = max(1, min(len(templates), -(-events // posts)))
    rng = random.Random(seed)
    next_post, written = 0, 0
    active: list[list[int]] = []  # [post number, next event index]
    while written < events:
        while len(active) < IN_FLIGHT and next_post < posts:
            active.append([next_post, 0])
            next_post += 1
        if not active:
            break
        slot = rng.randrange(len(active))
        post, index = active[slot]
        post_id = f"post-{post:07d}"
        yield post_id.encode(), templates[index].replace(PLACEHOLDER.encode(), post_id.encode())
        written += 1
        if index + 1 >= per_post:
            active[slot] = active[-1]
            active.pop()
        else:
            active[slot][1] = index + 1


def write_events(context: BenchContext, topics: Topics) -> float:
    p = producer(context.bootstrap,
                 **{"linger.ms": 20, "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000})
    started = time.monotonic()
    for key, value in event_stream(context.events, context.posts):
        while True:
            try:
                p.produce(topics.post_events, key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(120) == 0
    return context.events / (time.monotonic() - started)


def raw_consume(context: BenchContext, topics: Topics) -> float:
    c = Consumer({"bootstrap.servers": context.bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024 * 1024,
                  "max.partition.fetch.bytes": 8 * 1024 * 1024, "queued.min.messages": 200_000})
    c.assign([TopicPartition(topics.post_events, p, 0) for p in range(topics.partitions)])
    seen = 0
    started = time.monotonic()
    while seen < context.events:
        for message in c.consume(10_000, timeout=1.0):
            if message.error() is None:
                decode_event(message.value())
                seen += 1
    elapsed = time.monotonic() - started
    c.close()
    return seen / elapsed


def fold_only(context: BenchContext) -> float:
    """events/s of the pure fold alone (`projections.fold.fold`), on events decoded beforehand, in memory."""
    count = min(context.events, 200_000)
    posts = max(1, count * context.posts // context.events)
    events = [decode_event(value) for _key, value in event_stream(count, posts)]
    # With the cyclic collector off, as the projector and the replay workers run.
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        fold(events)
        return count / (time.perf_counter() - started)
    finally:
        gc.enable()


def _projector_env(context: BenchContext, topics: Topics, database_url: str) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": context.bootstrap, "SMARTRETRY_TOPIC_PREFIX": topics.prefix,
            "SMARTRETRY_DATABASE_URL": database_url, "TMPDIR": context.workdir, "SMARTRETRY_LOG_LEVEL": "WARNING"}


def faust_decode_only(context: BenchContext, topics: Topics) -> float:
    """events/s of the projector's faust app decoding its fetches and doing nothing else (`bench.faust_floor`)."""
    env = _projector_env(context, topics, f"sqlite:///{context.workdir}/unused.db")
    done = subprocess.run([sys.executable, "-m", "bench.faust_floor", str(context.events)], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"bench.faust_floor exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return float(done.stdout.split()[-1])


def run_projector(context: BenchContext, topics: Topics, database_url: str) -> tuple[float, float]:
    """The real processor (`python -m streams.projector`) in its own process: events/s and peak RSS (MB)."""
    env = _projector_env(context, topics, database_url)
    process = subprocess.Popen([sys.executable, "-m", "streams.projector"], env=env, stdin=subprocess.DEVNULL)
    store = ProjectionStore(make_engine(database_url))
    peak_kb = 0
    first: tuple[float, int] | None = None
    try:
        while True:
            with open(f"/proc/{process.pid}/status") as status:
                peak_kb = max(peak_kb, *(int(line.split()[1]) for line in status if line.startswith("VmHWM")))
            try:
                done = sum(o + 1 for o in store.applied_offsets(topics.post_events).values())
            except Exception:  # the schema is not created yet
                done = 0
            now = time.monotonic()
            if done and first is None:
                # Measured from the first stored batch: faust's start-up (group join) is not folding.
                first = (now, done)
            if done >= context.events:
                break
            if process.poll() is not None:
                raise RuntimeError(f"the projector exited with {process.returncode}")
            time.sleep(0.02)
    finally:
        process.terminate()
        process.wait(30)
        store.engine.dispose()
    assert first is not None
    rate = (context.events - first[1]) / max(1e-9, now - first[0]) if context.events > first[1] else float("nan")
    return rate, peak_kb / 1024


@register("projection")
def projection(context: BenchContext) -> list[Figure]:
    topics = Topics(prefix=f"bench{uuid.uuid4().hex[:8]}.")
    ensure_topics(context.bootstrap, topics.specs())
    produced = write_events(context, topics)
    raw = raw_consume(context, topics)
    ceiling = faust_decode_only(context, topics)
    folded = fold_only(context)
    live_url = f"sqlite:///{context.workdir}/live.db"
    projected, rss = run_projector(context, topics, live_url)
    live = ProjectionStore(make_engine(live_url))
    report = replay(context.bootstrap, topics, live, ProjectionStore(make_engine(f"sqlite:///{context.workdir}/replay.db")))
    live.engine.dispose()
    millions = context.events / 1_000_000
    return [
        Figure("produce_events_per_s", produced, "events/s", note="writing the bench's events (not a target)"),
        Figure("raw_consume_events_per_s", raw, "events/s", note="confluent-kafka consume + decode_event"),
        Figure("faust_decode_only_events_per_s", ceiling, "events/s", note=(
            "the projector's faust app decoding each fetch and nothing else (no fold, store or insights): "
            "the most a projector on faust's consumer reaches here")),
        Figure("fold_only_events_per_s", folded, "events/s", note=(
            "projections.fold.fold over up to 200,000 events decoded beforehand, each post's events folded "
            "together: the fold's own speed, no Kafka, decoding or store")),
        Figure("projector_events_per_s", projected, "events/s", ">= 100000 and >= 0.5 x raw",
               projected >= 100_000 and projected >= 0.5 * raw, note="faust projector into SQLite, insights published"),
        Figure("projector_peak_rss_mb", rss, "MB", "<= 300", rss <= 300),
        Figure("replay_1m_seconds", report.seconds / millions if millions else report.seconds, "s per 1M events",
               "<= 15", report.seconds / millions <= 15 if millions else None,
               note=f"{report.events} events replayed in {report.seconds:.1f}s; identical={report.identical}"),
    ]
