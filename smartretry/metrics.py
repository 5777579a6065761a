"""Prometheus metrics, computed when scraped from the projection store and Kafka's offsets.

Counting from the projection (not from counters in one process) keeps the numbers right across
restarts and replicas: every attempt and result of every handler is in the store. A whole-store scan
is cached for a few seconds so frequent scrapes of a big store stay cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from projections.fold import may_have_gone_out, without_legacy_result
from projections.responses import NAME_THE_ACCOUNT, retries_used_up, token_stored_since_failure, under_way
from projections.resume import automatic_retry_times
from projections.state import PostState
from projections.store import database_said, posts
from publishers.redact import scrub
from schemas.common import NO_CREDENTIALS, PLATFORM_LABELS, PLATFORMS, not_connected
from smartretry.bootstrap import Stores
from smartretry.settings import Settings
from streams.kafka import client_config, consumer, done_offsets

log = logging.getLogger(__name__)

# How long one scan of the store serves scrapes.
SCAN_CACHE_SECONDS = 5.0
# Seconds a scrape waits for Kafka's offsets in all: past that (the broker away or frozen), the scrape
# answers with the store's figures and `smartretry_kafka_up 0`, within Prometheus' default 10 s timeout.
KAFKA_WAIT = 5.0


@dataclass
class StoreTally:
    """What the metrics count, read off every post's stored state."""

    posts_by_status: Tally[str] = field(default_factory=Tally)
    commands_by_type: Tally[str] = field(default_factory=Tally)
    attempts: Tally[tuple[str, str]] = field(default_factory=Tally)  # (platform, first|retry|forced)
    results: Tally[tuple[str, str, str]] = field(default_factory=Tally)  # (platform, outcome, error_kind)
    retries: Tally[str] = field(default_factory=Tally)
    awaiting_result: Tally[str] = field(default_factory=Tally)
    # When the oldest attempt still without a result started, per platform.
    oldest_awaiting: dict[str, datetime] = field(default_factory=dict)
    # Posts waiting for the user, by platform and what is needed ("re-authenticate Facebook").
    needing_action: Tally[tuple[str, str]] = field(default_factory=Tally)
    # Posts whose automatic retry of a platform is late (`projections.resume.AutomaticRetries.overdue`).
    automatic_retries_overdue: Tally[str] = field(default_factory=Tally)


def tally_states(rows: Iterator[tuple[str, str]], max_attempts: int, backoff: tuple[float, float],
                 now: datetime, token_times: dict[str, datetime] | None = None) -> StoreTally:
    """Counts from `(status, state JSON)` rows; plain JSON, not pydantic, so a big store scans fast (only a post
    with a failed attempt is read as a state: whether its automatic retries, `max_attempts`, are used up, or late at
    `now` with the handler's `backoff`, or whether its account stored a token since, `token_times` by account; and
    one publishing that asks for something: whether that platform is being published again)."""
    tally = StoreTally()
    for status, text in rows:
        tally.posts_by_status[status] += 1
        state: dict[str, Any] = json.loads(text)
        for command in state.get("commands", {}).values():
            tally.commands_by_type[command.get("command_type", "unknown")] += 1
        for attempt in state.get("attempts", {}).values():
            platform = attempt.get("platform", "unknown")
            kind = "forced" if attempt.get("forced") else "retry" if attempt.get("is_retry") else "first"
            tally.attempts[(platform, kind)] += 1
            if kind != "first":
                tally.retries[platform] += 1
            success = attempt.get("success")
            if success is None:
                tally.awaiting_result[platform] += 1
                started = _time(attempt.get("started_at"))
                oldest = tally.oldest_awaiting.get(platform)
                if started is not None and (oldest is None or started < oldest):
                    tally.oldest_awaiting[platform] = started
            elif success:
                tally.results[(platform, "success", "")] += 1
            else:
                tally.results[(platform, "failure", attempt.get("error_kind") or "unknown")] += 1
        actions = dict(state.get("needed_action") or {})
        failed = status != "posted" and any(a.get("success") is False for a in state.get("attempts", {}).values())
        if failed or (status == "publishing" and actions):
            # Whether its automatic retries are used up, as the API and the page tell (only a post with a failed
            # attempt is read as a state for it), and whether a platform asking for something is being published
            # again meanwhile. One that cannot be read is counted as it is stored.
            with contextlib.suppress(ValueError):
                post = PostState.model_validate(state)
                if failed:
                    actions = {**retries_used_up(post, max_attempts), **actions}
                    renewed = (token_times or {}).get(post.account or "")
                    if renewed is not None:
                        # As the API and the page say it, without the time in the label: the post needs a retry now.
                        actions.update({platform: f"retry {PLATFORM_LABELS[platform]}"
                                        for platform in token_stored_since_failure(post, renewed)})
                    tally.automatic_retries_overdue.update(
                        automatic_retry_times(post, max_attempts, now, backoff).overdue)
                # As the API and the page say it (`needed_actions`): a platform whose retry is under way needs nobody
                # until its result is in.
                publishing = under_way(post)
                actions = {platform: action for platform, action in actions.items() if platform not in publishing}
        if state.get("legacy") and status in ("failed", "publishing"):
            # An imported post: a platform nothing has published here waits for someone too (`needed_actions`), to
            # look first where the old system may have published it (also while another platform is published again).
            # Said without the post's id in the label.
            with contextlib.suppress(ValueError):
                post = PostState.model_validate(state)
                for platform in may_have_gone_out(post):
                    actions[platform] = f"check {PLATFORM_LABELS[platform]} for the post, then record or republish it"
                for platform in without_legacy_result(post) if status == "failed" else ():
                    actions.setdefault(platform, f"retry {PLATFORM_LABELS[platform]} to publish it"
                                       if post.account is not None else NAME_THE_ACCOUNT)
        for platform, action in actions.items():
            if action.startswith("re-authenticate ") and (failure := _latest_failure(state, platform)) is not None:
                # As the API and the page say it (`needed_actions`), without the account's name in the label.
                if failure.startswith(NO_CREDENTIALS):
                    action = "connect the account"
                elif failure.endswith(not_connected(platform)):
                    action = f"connect {PLATFORM_LABELS[platform]} to the account"
            tally.needing_action[(platform, action)] += 1
    return tally


def _latest_failure(state: dict[str, Any], platform: str) -> str | None:
    """The error of the platform's latest result when it failed (a failure without one: empty); else None."""
    results = ((state.get("document") or {}).get("insights") or {}).get("publish_results") or []
    latest = next((r for r in results if isinstance(r, dict) and r.get("platform") == platform), None)
    return str(latest.get("error") or "") if latest is not None and latest.get("success") is False else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class _ScrapeCollector(Collector):
    def __init__(self, owner: ServiceMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        return iter(self.owner.collect())


class ServiceMetrics:
    """The service's metrics on a registry of its own (one per app, so tests can build many apps)."""

    def __init__(self, settings: Settings, stores: Stores) -> None:
        self.settings = settings
        self.stores = stores
        self.registry = CollectorRegistry(auto_describe=False)
        self.commands_accepted = Counter(
            "smartretry_api_commands", "Commands this API process put on the commands topic", ["type"],
            registry=self.registry)
        self.registry.register(_ScrapeCollector(self))
        self._lock = threading.Lock()
        self._cached: tuple[float, StoreTally] | None = None
        self._offsets: Consumer | None = None
        self._admin: AdminClient | None = None
        self._database_up = True
        self._groups_read = True

    def render(self) -> tuple[bytes, str]:
        with self._lock:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        with self._lock:
            if self._offsets is not None:
                self._offsets.close()
                self._offsets = None
            self._admin = None

    def _forget_clients(self) -> None:
        """Drops the Kafka clients after a scrape they failed: the next scrape makes new ones. Clients that met the
        broker while it restarted kept failing after it was back (metrics read as down until the API restarted)."""
        offsets, self._offsets, self._admin = self._offsets, None, None
        if offsets is not None:
            with contextlib.suppress(Exception):
                offsets.close()

    def _tally(self) -> StoreTally:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < SCAN_CACHE_SECONDS:
            return self._cached[1]
        with self.stores.engine.connect() as conn:
            rows = conn.execution_options(yield_per=1000).execute(select(posts.c.status, posts.c.state))
            tally = tally_states(((status, text) for status, text in rows), self.settings.max_automatic_attempts,
                                 self.settings.backoff, datetime.now(UTC), self.stores.credentials.token_times())
        self._cached = (now, tally)
        return tally

    def _end_offsets(self, topic: str, deadline: float) -> dict[int, tuple[int, int]]:
        """(low, high) watermark per partition of `topic`, asked until `deadline` (monotonic time)."""
        assert self.settings.kafka_bootstrap_servers
        if self._offsets is None:
            self._offsets = consumer(self.settings.kafka_bootstrap_servers, f"{self.settings.topic_prefix}metrics")
        metadata = self._offsets.list_topics(topic, timeout=_left(deadline)).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return {}
        return {p: self._offsets.get_watermark_offsets(TopicPartition(topic, p), timeout=_left(deadline), cached=False)
                for p in metadata.partitions}

    def collect(self) -> list[Metric]:
        topics = self.settings.topics
        database = GaugeMetricFamily("smartretry_database_up", "1 when this scrape read the projection, 0 when the "
                                     "database did not answer (the posts' figures and the lag are then left out)")
        try:
            # Read at every scrape (the tally may be an earlier scrape's): the database answers now.
            applied = self.stores.projection.applied_offsets(topics.post_events)
            tally = self._tally()
        except (DBAPIError, SQLAlchemyTimeoutError) as exc:
            # A scrape while the database is away still says so, and reports what Kafka holds. Said in the log
            # when it goes away, not at every scrape.
            if self._database_up:
                log.warning("metrics: the projection cannot be read (%s); smartretry_database_up is 0 until it can",
                            database_said(exc))
            self._database_up = False
            database.add_metric([], 0)
            return [database, *self._kafka_families(topics.post_events, topics.commands, topics.dead_letters, None)]
        if not self._database_up:
            log.info("metrics: the projection can be read again")
        self._database_up = True
        database.add_metric([], 1)
        families: list[Metric] = [database]

        by_status = GaugeMetricFamily("smartretry_posts", "Posts in the projection by status", labels=["status"])
        for status in ("publishing", "posted", "failed"):
            by_status.add_metric([status], tally.posts_by_status.get(status, 0))
        families.append(by_status)

        commands = CounterMetricFamily("smartretry_commands_decided", "Commands decided by the handler, by type",
                                       labels=["type"])
        for kind, count in sorted(tally.commands_by_type.items()):
            commands.add_metric([kind], count)
        families.append(commands)

        attempts = CounterMetricFamily("smartretry_attempts", "Publish attempts by platform and kind "
                                       "(first publish, retry, forced republish)", labels=["platform", "kind"])
        for (platform, kind), count in sorted(tally.attempts.items()):
            attempts.add_metric([platform, kind], count)
        families.append(attempts)

        results = CounterMetricFamily("smartretry_results", "Platform results by platform, outcome and error kind",
                                      labels=["platform", "outcome", "error_kind"])
        for (platform, outcome, error_kind), count in sorted(tally.results.items()):
            results.add_metric([platform, outcome, error_kind], count)
        families.append(results)

        retries = CounterMetricFamily("smartretry_retries", "Retry and forced attempts by platform",
                                      labels=["platform"])
        for platform, count in sorted(tally.retries.items()):
            retries.add_metric([platform], count)
        families.append(retries)

        awaiting = GaugeMetricFamily("smartretry_attempts_awaiting_result", "Attempts with no result yet",
                                     labels=["platform"])
        for platform, count in sorted(tally.awaiting_result.items()):
            awaiting.add_metric([platform], count)
        families.append(awaiting)

        # An attempt older than the handler's lease (150 s by default) has outlived the call that made it: the
        # handler is asking the platform whether it went out, or waits for the user (below) to let it ask, or
        # for an operator to say what came of it (`smartretry resolve`).
        now = datetime.now(UTC)
        oldest = GaugeMetricFamily("smartretry_oldest_attempt_awaiting_result_seconds",
                                   "Age of the oldest attempt with no result yet, by platform", labels=["platform"])
        for platform, started in sorted(tally.oldest_awaiting.items()):
            oldest.add_metric([platform], max(0.0, (now - started).total_seconds()))
        families.append(oldest)

        needing = GaugeMetricFamily("smartretry_posts_needing_action",
                                    "Posts waiting for the user, by platform and what is needed",
                                    labels=["platform", "action"])
        for (platform, action), count in sorted(tally.needing_action.items()):
            needing.add_metric([platform, action], count)
        families.append(needing)

        # Late by more than half a minute past the latest the handler makes them: no handler is running, or it is frozen
        # or far behind. Counted at the scan (cached for a few seconds, like the figures above).
        overdue = GaugeMetricFamily("smartretry_automatic_retries_overdue",
                                    "Posts whose automatic retry of a platform is overdue (the handler away, frozen or "
                                    "behind)", labels=["platform"])
        for platform in PLATFORMS:
            overdue.add_metric([platform], tally.automatic_retries_overdue.get(platform, 0))
        families.append(overdue)

        families.extend(self._kafka_families(topics.post_events, topics.commands, topics.dead_letters, applied))
        return families

    def _kafka_families(self, events_topic: str, commands_topic: str, dead_letters_topic: str,
                        applied: dict[int, int] | None) -> list[Metric]:
        """Kafka's up gauge and topic sizes, and the projection's lag when `applied` (its offsets) was read."""
        if not self.settings.kafka_bootstrap_servers:
            return []
        up = GaugeMetricFamily("smartretry_kafka_up", "1 when this scrape read Kafka's offsets, 0 when the broker did "
                               f"not answer within {KAFKA_WAIT:g}s (lag and topic sizes are then left out)")
        deadline = time.monotonic() + KAFKA_WAIT
        try:
            events = self._end_offsets(events_topic, deadline)
            sizes = {name: self._end_offsets(name, deadline) for name in (commands_topic, dead_letters_topic)}
        except Exception:
            if self._offsets is not None:
                self._offsets.poll(0)  # never polled otherwise: its log lines are handed over here
            self._forget_clients()
            # A scrape while the broker is away still reports the store's numbers, and that Kafka is away.
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        if self._offsets is not None:
            self._offsets.poll(0)
        messages = GaugeMetricFamily("smartretry_topic_messages", "Messages retained on a topic",
                                     labels=["topic"])
        for name, offsets in sizes.items():
            messages.add_metric([name], sum(high - low for low, high in offsets.values()))
        families: list[Metric] = [up, messages,
                                  *self._consumer_families(commands_topic, sizes[commands_topic], deadline)]
        if applied is None:
            return families
        lag = GaugeMetricFamily("smartretry_projection_lag_events",
                                "Post events written but not yet applied to the projection, by partition",
                                labels=["partition"])
        for partition, (_low, high) in sorted(events.items()):
            lag.add_metric([str(partition)], max(0, high - 1 - applied.get(partition, -1)))
        return [*families, lag]

    def _consumer_families(self, commands_topic: str, commands: dict[int, tuple[int, int]],
                           deadline: float) -> list[Metric]:
        """Members of the projector's and the handler's consumer groups, and the commands the handler has not finished.

        `smartretry_consumer_groups_read` says whether the broker said them in time: a group it could not describe
        (its coordinator still loading after a restart, a timeout) is left out, never shown as 0 or as up.
        """
        assert self.settings.kafka_bootstrap_servers
        if self._admin is None:
            self._admin = AdminClient(client_config(self.settings.kafka_bootstrap_servers))
        groups = {"projector": self.settings.projector_group, "command-handler": self.settings.handler_group}
        members: dict[str, int] = {}
        committed: dict[int, int] | None = None
        finished_past: dict[int, set[int]] = {}
        problems: list[str] = []
        try:
            described = self._admin.describe_consumer_groups(list(groups.values()), request_timeout=_left(deadline))
            for name, group in groups.items():
                try:
                    members[name] = len(described[group].result(timeout=_left(deadline)).members)
                except Exception as exc:
                    problems.append(f"{group}: {scrub(str(exc))[:200]}")
            [listed] = self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(self.settings.handler_group)], request_timeout=_left(deadline)).values()
            committed = {}
            for tp in listed.result(timeout=_left(deadline)).topic_partitions:
                if tp.topic == commands_topic and tp.error is None:
                    committed[tp.partition] = tp.offset
                    # Finished past the committed offset, behind a command that waits (`streams.handler`).
                    finished_past[tp.partition] = done_offsets(tp.offset, tp.metadata)
        except Exception as exc:
            problems.append(f"{self.settings.handler_group}'s offsets: {scrub(str(exc))[:200]}")
        finally:
            self._admin.poll(0)  # its log lines handed over
        if problems:
            self._forget_clients()
        read = GaugeMetricFamily("smartretry_consumer_groups_read",
                                 "1 when this scrape read the consumer groups (members and the handler's offsets), 0 "
                                 "when the broker did not say them all in time (those missing are left out)")
        read.add_metric([], 0 if problems else 1)
        if problems and self._groups_read:
            log.warning("metrics: the consumer groups cannot be read (%s); smartretry_consumer_groups_read is 0 until "
                        "they can", "; ".join(problems))
        elif not problems and not self._groups_read:
            log.info("metrics: the consumer groups can be read again")
        self._groups_read = not problems
        families: list[Metric] = [read]
        if members:
            up = GaugeMetricFamily("smartretry_consumer_group_members",
                                   "Members of the projector's and the command handler's consumer groups: 0 when none "
                                   "is running (one stopped or frozen leaves its group at its session timeout)",
                                   labels=["consumer"])
            for name, count in members.items():
                up.add_metric([name], count)
            families.append(up)
        if committed is not None:
            unfinished = GaugeMetricFamily(
                "smartretry_commands_unfinished",
                "Commands past the handler's committed offset and not named finished in its metadata, by partition: "
                "not decided yet, or still publishing (a command holds its place while its automatic retries wait)",
                labels=["partition"])
            for partition, (low, high) in sorted(commands.items()):
                start = max(low, committed.get(partition, -1))
                finished = sum(1 for offset in finished_past.get(partition, ()) if start <= offset < high)
                unfinished.add_metric([str(partition)], max(0, high - start - finished))
            families.append(unfinished)
        return families


def _left(deadline: float) -> float:
    """Seconds until `deadline`; a call given none fails at once with a timeout, which ends the scrape's Kafka part."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"Kafka did not answer within {KAFKA_WAIT:g}s")
    return left
