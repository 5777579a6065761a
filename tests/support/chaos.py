"""The chaos run: posts through the whole service while faults, kills and a broker restart hit it.

Shared by `make chaos` (bench/chaos.py: 1,000 posts, its own broker, restarted once) and the short
version in `make test` (tests/e2e/test_chaos.py). The judge of duplicates is the sandbox Graph API:
every post's caption embeds its post id, so each post created on Facebook or Instagram is attributed
to the post it came from, and a second creation for the same post and platform is a duplicate.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from sqlalchemy import select

from projections.resume import command_settled
from projections.state import PostState
from projections.store import ProjectionStore, make_engine, posts
from publishers.sandbox import DEMO_ACCOUNT_ID, DEMO_IG_USER_ID, DEMO_PAGE_ID, DEMO_USER_TOKEN, SandboxControl
from schemas.commands import PostContent, PublishRequested, RetryRequested
from schemas.common import PublishTarget
from schemas.deadletters import DeadLetter
from schemas.envelope import encode
from schemas.ids import new_id
from streams.broker import LocalBroker
from streams.kafka import consumer, producer
from streams.replay import replay
from tests.support.service import MAX_AUTOMATIC_ATTEMPTS, Service, ServiceProcess

FINAL = ("posted", "failed")
CAPTION_ID = re.compile(r"^Chaos post (\S+):")

# Messages no consumer can use; each must come out as exactly one dead letter (per source offset).
BAD_COMMANDS: list[bytes] = [
    b"\x00\x01 not json at all",
    b"[1, 2, 3]",
    b'{"type": "DeletePostRequested", "schema_version": 1, "command_id": "c1", "post_id": "p1"}',
    b'{"type": "RetryRequested", "schema_version": 99, "command_id": "c2", "post_id": "p2", '
    b'"requested_at": "2025-11-17T10:10:13.151Z"}',
    b'{"type": "PublishRequested", "schema_version": 1, "command_id": "c3"}',
]
BAD_EVENTS: list[bytes] = [b"{ this is not an event"]

Log = Callable[[str], None]


@dataclass
class ChaosPlan:
    """What the run does; every random choice comes from one RNG seeded with `seed`."""

    posts: int = 1000
    seed: int = field(default_factory=lambda: random.SystemRandom().randrange(1, 2**31))
    # Seconds over which the first publishes are sent; the faults fall inside this window.
    publish_seconds: float = 90.0
    # Share of posts whose image URL has a space: Facebook refuses it until the user fixes it.
    broken_image_share: float = 0.15
    # Share of posts sent to one platform only (the rest go to both).
    single_platform_share: float = 0.1
    handler_kills: int = 3
    projector_kills: int = 2
    token_revocations: int = 1
    instagram_transient_bursts: int = 4
    rate_limit_bursts: int = 3
    # Minutes in the rate-limit usage header: the handler must wait at least this long.
    rate_limit_regain_minutes: int = 1
    broker_restart: bool = True
    # User retries of each failed post before it counts as not posted.
    retry_rounds: int = 6
    # Seconds a round waits for the commands it sent to finish.
    round_timeout: float = 240.0
    # The whole run's bound, start to verdict: the user's retries stop early to keep it.
    deadline_seconds: float = 540.0
    # Kept back from the deadline for the verdict (replay and reading the dead letters).
    verdict_seconds: float = 60.0


@dataclass
class ChaosSummary:
    seed: int
    posts: int
    posted: int
    failed: int
    duplicates: int
    lost: int
    projection_equals_replay: bool
    dead_letters_expected: int
    dead_letters_seen: int
    retries_sent: int
    seconds: float
    faults: dict[str, int] = field(default_factory=dict)
    # Process exits nobody asked for (restarted by the run's supervisor, like systemd would).
    unexpected_exits: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.duplicates == 0 and self.lost == 0 and self.posted == self.posts
                and self.projection_equals_replay and self.dead_letters_seen == self.dead_letters_expected)

    def json_line(self) -> str:
        data = asdict(self)
        data["problems"] = self.problems[:50]
        data["ok"] = self.ok
        return json.dumps(data, sort_keys=False)


def chaos_content(post_id: str, broken: bool) -> PostContent:
    """The caption names the post, so the sandbox's posts can be attributed to it."""
    image = "https://cdn.example.com/chaos sale.jpg" if broken else "https://cdn.example.com/chaos-sale.jpg"
    return PostContent(caption=f"Chaos post {post_id}: autumn sale starts today", image_url=image)


class ChaosRun:
    """Drives one chaos run against a started `Service`.

    Threads: the calling thread sends the posts and later drives the user's retries; one chaos thread
    owns the sandbox's faults, the credential store and the processes (kills, restarts, the broker).
    """

    def __init__(self, plan: ChaosPlan, service: Service, work_dir: Path, *, broker: LocalBroker | None = None,
                 log: Log = print) -> None:
        if plan.broker_restart and broker is None:
            raise ValueError("a broker restart needs the LocalBroker the run owns")
        self.plan = plan
        self.service = service
        self.sandbox: SandboxControl = service.sandbox
        self.work_dir = work_dir
        self.broker = broker
        self.log = log
        self.rng = random.Random(plan.seed)
        self.faults: Counter[str] = Counter()
        self.unexpected_exits: Counter[str] = Counter()
        self.problems: list[str] = []
        self.content: dict[str, PostContent] = {}
        self.target: dict[str, PublishTarget] = {}
        # The last command sent per post: the post is settled when that command is finished.
        self.last_command: dict[str, str] = {}
        self.retries_sent = 0
        self.token = DEMO_USER_TOKEN
        # Long enough to ride out the broker restart; quiet, since refused connections are expected then.
        self._producer = producer(service.bootstrap, **{"message.timeout.ms": 600_000, "log_level": 0})
        self._delivery_errors: list[str] = []
        self._chaos_done = threading.Event()
        self._finished = threading.Event()
        self._lock = threading.Lock()  # around the processes: the supervisor and the chaos actions

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> ChaosSummary:
        started = time.monotonic()
        self.log(f"chaos seed {self.plan.seed}: {self.plan.posts} posts over {self.plan.publish_seconds:.0f}s")
        self.sandbox.set_publish_limit(10_000_000)
        timeline = self._timeline()
        chaos = threading.Thread(target=self._chaos, args=(timeline, started), name="chaos", daemon=True)
        chaos.start()
        try:
            self._send_posts(started)
            self._chaos_done.wait()
            self._flush()
            self._settle(started + self.plan.deadline_seconds - self.plan.verdict_seconds)
            return self._summarise(started)
        finally:
            self._finished.set()
            chaos.join()

    def _timeline(self) -> list[tuple[float, str]]:
        plan, rng = self.plan, self.rng
        window = plan.publish_seconds

        def at() -> float:
            return rng.uniform(0.1 * window, 0.9 * window)

        actions = (["kill handler"] * plan.handler_kills + ["kill projector"] * plan.projector_kills
                   + ["revoke token"] * plan.token_revocations
                   + ["instagram transient"] * plan.instagram_transient_bursts
                   + ["rate limit"] * plan.rate_limit_bursts
                   + ["bad command"] * len(BAD_COMMANDS) + ["bad event"] * len(BAD_EVENTS))
        timeline = [(at(), action) for action in actions]
        if plan.broker_restart:
            timeline.append((0.5 * window, "restart broker"))
        return sorted(timeline)

    def _send_posts(self, started: float) -> None:
        plan, rng = self.plan, self.rng
        for n in range(plan.posts):
            due = started + plan.publish_seconds * n / max(1, plan.posts)
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            post_id = new_id()
            broken = rng.random() < plan.broken_image_share
            target: PublishTarget = "both"
            if rng.random() < plan.single_platform_share:
                target = rng.choice(["facebook", "instagram"])
            content = chaos_content(post_id, broken)
            command = PublishRequested(command_id=new_id(), post_id=post_id, publish_target=target, content=content,
                                       account=DEMO_ACCOUNT_ID, requested_at=datetime.now(UTC))
            self.content[post_id], self.target[post_id] = content, target
            self.last_command[post_id] = command.command_id
            self._produce(self.service.topics.commands, post_id.encode(), encode(command))
        self.log(f"{plan.posts} posts sent in {time.monotonic() - started:.1f}s")

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                self._delivery_errors.append(str(err))

        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def _flush(self) -> None:
        # The producer retries through the broker's restart; a message it gave up on is a lost post.
        remaining = self._producer.flush(120)
        if remaining or self._delivery_errors:
            self.problems.append(f"commands not delivered: {remaining} pending, errors {self._delivery_errors[:3]}")

    # --- chaos -----------------------------------------------------------------------------------

    def _chaos(self, timeline: list[tuple[float, str]], started: float) -> None:
        try:
            for offset, action in timeline:
                while time.monotonic() < started + offset:
                    self._supervise()
                    time.sleep(0.2)
                self.log(f"t={time.monotonic() - started:6.1f}s  {action}")
                try:
                    self._act(action)
                except Exception as exc:  # reported in the summary; the other faults still happen
                    self.problems.append(f"chaos action {action!r} failed: {exc!r}")
                    self.log(f"chaos action {action!r} failed: {exc!r}")
                self.faults[action] += 1
        finally:
            self._supervise()
            self._chaos_done.set()
        # The broker's JVM dies with the thread that started it (PR_SET_PDEATHSIG is per thread), so
        # the thread that restarted it lives, supervising, until the run is over.
        while not self._finished.wait(0.5):
            self._supervise()

    def _act(self, action: str) -> None:
        rng, sandbox = self.rng, self.sandbox
        if action == "kill handler":
            self._kill_and_restart(self.service.handler)
        elif action == "kill projector":
            self._kill_and_restart(self.service.projector)
        elif action == "revoke token":
            # Posts published meanwhile fail with `auth`; the user re-authenticates, then retries them.
            sandbox.revoke(self.token)
            time.sleep(rng.uniform(1.0, 3.0))
            self.token = f"chaos-renewed-token-{new_id()}"
            sandbox.register_account(DEMO_PAGE_ID, DEMO_IG_USER_ID, self.token)
            self._reauthenticate()
        elif action == "instagram transient":
            endpoint = rng.choice(["media", "media_publish", "container_status"])
            kind = rng.choice(["code 2", "is_transient", "http 500"])
            times = rng.randint(1, 6)
            if kind == "code 2":
                sandbox.fail_next("instagram", endpoint, code=2, http_status=500, times=times)
            elif kind == "is_transient":
                sandbox.fail_next("instagram", endpoint, code=1, http_status=400, is_transient=True, times=times)
            else:
                sandbox.fail_next("instagram", endpoint, code=-1, http_status=500, times=times,
                                  message="Internal server error")
        elif action == "rate limit":
            platform = rng.choice(["facebook", "instagram"])
            endpoint = "photos" if platform == "facebook" else "media"
            code = rng.choice([4, 32]) if platform == "facebook" else 4
            sandbox.fail_next(platform, endpoint, code=code, http_status=400, times=rng.randint(1, 3),
                              regain_access_minutes=self.plan.rate_limit_regain_minutes)
        elif action == "bad command":
            value = BAD_COMMANDS[self.faults["bad command"]]
            self._produce(self.service.topics.commands, b"chaos-bad-command", value)
        elif action == "bad event":
            value = BAD_EVENTS[self.faults["bad event"]]
            self._produce(self.service.topics.post_events, b"chaos-bad-event", value)
        elif action == "restart broker":
            assert self.broker is not None
            down = time.monotonic()
            self.broker.restart()
            self.log(f"broker back after {time.monotonic() - down:.1f}s")
        else:
            raise ValueError(action)

    def _reauthenticate(self, attempts: int = 120) -> None:
        """Stores the renewed token; a user whose save failed saves again."""
        for attempt in range(attempts):
            try:
                self.service.stores.credentials.set_token(DEMO_ACCOUNT_ID, self.token, DEMO_PAGE_ID,
                                                          DEMO_IG_USER_ID)
                return
            except Exception as exc:
                # SQLite in WAL mode: set_token reads, then writes, in a deferred transaction; when the
                # projector commits in between, the write fails at once with "database is locked".
                self.problems.append(f"storing the renewed token failed (try {attempt + 1}): {exc!r}")
                self.log(f"storing the renewed token failed: {exc!r}")
                time.sleep(0.5)
        raise RuntimeError("the renewed token could not be stored")

    def _kill_and_restart(self, process: ServiceProcess) -> None:
        with self._lock:
            process.kill()
        time.sleep(self.rng.uniform(0.2, 2.0))
        with self._lock:
            process.start()

    def _supervise(self) -> None:
        """Restarts a process that exited on its own, and counts it: the run must not stall on one."""
        with self._lock:
            for process in (self.service.projector, self.service.handler):
                if process.process is not None and process.process.poll() is not None:
                    self.unexpected_exits[process.name] += 1
                    self.log(f"{process.name} exited by itself ({process.process.returncode}); restarting it")
                    process.start()

    # --- the user's retries ---------------------------------------------------------------------------

    def _settle(self, deadline: float) -> None:
        """Like a user: wait for every post's last command, retry the failed ones (fixing the image)."""
        for round_number in range(self.plan.retry_rounds + 1):
            unsettled = self._wait_settled(min(self.plan.round_timeout, deadline - time.monotonic()))
            failed = self._failed_posts()
            self.log(f"round {round_number}: {len(failed)} failed, {len(unsettled)} not settled")
            if not failed or round_number == self.plan.retry_rounds or time.monotonic() >= deadline:
                return
            for state in failed:
                if state.post_id in unsettled:
                    continue
                content = None
                if " " in (self.content[state.post_id].image_url or ""):
                    content = chaos_content(state.post_id, broken=False)
                    self.content[state.post_id] = content
                command = RetryRequested(command_id=new_id(), post_id=state.post_id, content=content,
                                         requested_at=datetime.now(UTC))
                self.last_command[state.post_id] = command.command_id
                self._produce(self.service.topics.commands, state.post_id.encode(), encode(command))
                self.retries_sent += 1
            self._flush()

    def _statuses(self) -> dict[str, str]:
        with self.service.stores.engine.connect() as conn:
            return {str(post_id): str(status) for post_id, status in conn.execute(
                select(posts.c.post_id, posts.c.status))}

    def _wait_settled(self, timeout: float) -> set[str]:
        """Waits until every post's last command is finished; returns the posts still unsettled."""
        deadline = time.monotonic() + timeout
        unsettled: set[str] = set(self.last_command)
        while True:
            self._supervise()
            statuses = self._statuses()
            candidates = [p for p in unsettled if statuses.get(p) != "posted"]
            still = set()
            for post_id in candidates:
                state = self.service.stores.projection.get(post_id)
                if state is None or not command_finished(state, self.last_command[post_id]):
                    still.add(post_id)
            unsettled = still
            if not unsettled or time.monotonic() > deadline:
                return unsettled
            # Parsing hundreds of states is CPU the service's processes need more: poll less often then.
            time.sleep(max(1.0, len(unsettled) / 100))

    def _failed_posts(self) -> list[PostState]:
        statuses = self._statuses()
        found = []
        for post_id in self.last_command:
            if statuses.get(post_id) == "failed":
                state = self.service.stores.projection.get(post_id)
                if state is not None:
                    found.append(state)
        return found

    # --- the verdict ------------------------------------------------------------------------------

    def _summarise(self, started: float) -> ChaosSummary:
        projection = self.service.stores.projection
        self._wait_projection_current()
        states = {post_id: projection.get(post_id) for post_id in self.last_command}
        duplicates, lost, problems = verdict(self.sandbox.posts(), states, self.target)
        self.problems += problems
        scratch = ProjectionStore(make_engine(f"sqlite:///{self.work_dir / 'replay.db'}"))
        report = replay(self.service.bootstrap, self.service.topics, projection, scratch)
        scratch.engine.dispose()
        if not report.identical:
            self.problems.append(f"replay differs for {len(report.differing)} posts: {report.differing[:5]}")
        seen = dead_letter_sources(self.service.bootstrap, self.service.topics.dead_letters)
        expected = self.faults["bad command"] + self.faults["bad event"]
        final = [s for s in states.values() if s is not None]
        return ChaosSummary(
            seed=self.plan.seed, posts=len(self.last_command),
            posted=sum(1 for s in final if s.status == "posted"),
            failed=sum(1 for s in final if s.status == "failed"),
            duplicates=duplicates, lost=lost, projection_equals_replay=report.identical,
            dead_letters_expected=expected, dead_letters_seen=len(seen), retries_sent=self.retries_sent,
            seconds=round(time.monotonic() - started, 1), faults=dict(self.faults),
            unexpected_exits=dict(self.unexpected_exits), problems=self.problems,
        )

    def _wait_projection_current(self, timeout: float = 120.0) -> None:
        """The projector has applied every event written: the verdict reads a complete projection."""
        events = self.service.topics.post_events
        probe = consumer(self.service.bootstrap, f"{self.service.topics.prefix}chaos-probe")
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    ends = {p: probe.get_watermark_offsets(TopicPartition(events, p), timeout=10)[1]
                            for p in range(self.service.topics.partitions)}
                except KafkaException as exc:
                    self.log(f"end offsets not read yet: {exc}")
                    time.sleep(1.0)
                    continue
                applied = self.service.stores.projection.applied_offsets(events)
                if all(end == 0 or applied.get(p, -1) >= end - 1 for p, end in ends.items()):
                    return
                self._supervise()
                time.sleep(0.5)
            self.problems.append("the projection did not catch up with the post events")
        finally:
            probe.close()


def command_finished(state: PostState, command_id: str) -> bool:
    """The command is decided and every platform it chose has a final result (automatic retries done)."""
    return command_settled(state, command_id, MAX_AUTOMATIC_ATTEMPTS)


def verdict(created: list[dict[str, Any]], states: dict[str, PostState | None],
            targets: dict[str, PublishTarget]) -> tuple[int, int, list[str]]:
    """(duplicates, lost, problems) from the sandbox's created posts and the projection's final states.

    Duplicate: a second post created on a platform for the same post. Lost: a post not in a final
    state, a targeted platform without a result, or a post the platform created that the projection
    does not show as that platform's result.
    """
    problems: list[str] = []
    by_post: dict[tuple[str, str], list[str]] = {}
    for item in created:
        caption = item.get("message") if item["platform"] == "facebook" else item.get("caption")
        match = CAPTION_ID.match(caption or "")
        if match is None or match.group(1) not in states:
            problems.append(f"{item['platform']} post {item['id']} belongs to no post of the run")
            continue
        by_post.setdefault((match.group(1), item["platform"]), []).append(str(item["id"]))
    duplicates = 0
    for (post_id, platform), ids in sorted(by_post.items()):
        if len(ids) > 1:
            duplicates += len(ids) - 1
            problems.append(f"duplicate: post {post_id} created {len(ids)} times on {platform}: {ids}")
    lost = 0
    for post_id, state in states.items():
        if state is None or state.status not in FINAL:
            lost += 1
            problems.append(f"lost: post {post_id} is {state.status if state else 'not in the projection'}")
            continue
        results = {r["platform"]: r for r in state.document.to_document()["insights"]["publish_results"]}
        for platform in state.targeted:
            made = by_post.get((post_id, platform), [])
            result = results.get(platform)
            if result is None:
                lost += 1
                problems.append(f"lost: post {post_id} has no {platform} result")
            elif made and not (result["success"] and result.get("postId") in made):
                lost += 1
                problems.append(f"lost: {platform} created {made} for post {post_id}, the projection says {result}")
            elif result["success"] and not made:
                lost += 1
                problems.append(f"lost: post {post_id} says {platform} succeeded but the platform has no post")
        sent = targets.get(post_id)
        if state.targeted != (("facebook", "instagram") if sent == "both" else (sent,)):
            problems.append(f"post {post_id} targets {state.targeted}, sent {sent}")
    return duplicates, lost, problems


def dead_letter_sources(bootstrap: str, topic: str, timeout: float = 30.0) -> set[tuple[str, int | None, int | None]]:
    """Distinct (source topic, partition, offset) of the dead letters: a redelivered bad message after a
    crash may be dead-lettered twice, but it is one bad message."""
    reader = consumer(bootstrap, f"chaos-dlq-{new_id()}", **{"enable.partition.eof": True})
    sources: set[tuple[str, int | None, int | None]] = set()
    try:
        _low, high = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        if high == 0:
            return sources
        reader.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout
        read_to = -1
        while read_to < high - 1 and time.monotonic() < deadline:
            for message in reader.consume(num_messages=500, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"reading {topic}: {error}")
                    continue
                read_to = max(read_to, message.offset() or 0)
                letter = DeadLetter.model_validate_json(message.value() or b"")
                sources.add((letter.source_topic, letter.partition, letter.offset))
    finally:
        reader.close()
    return sources
