"""Which platforms a redelivered command still owes: the pure half of crash recovery."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from projections.state import AttemptState, PostState
from schemas.common import MAX_PLATFORM_WAIT_S, ErrorKind, Platform

# How late an automatic retry may be (a call's time) before the post, a command queued behind it and the metrics say
# it is overdue: the handler away, frozen or behind.
AUTOMATIC_RETRY_LATE = timedelta(seconds=30)


def attempts_by(state: PostState, command_id: str, platform: Platform) -> list[AttemptState]:
    """The command's attempts of `platform`, in order."""
    return [a for a in state.attempts_of(platform) if a.command_id == command_id]


def platforms_to_resume(state: PostState, command_id: str, max_attempts: int) -> tuple[Platform, ...]:
    """Platforms the command decided to publish whose work it did not finish before a crash.

    A platform is owed when the command made no attempt of it yet, or when its latest attempt by the
    command failed with an error the service retries itself and the automatic attempts are not used up;
    never once a command decided after it has attempted the platform (commands of a post run in order, so
    this one had finished with it: resumed, it could publish what that one published).
    """
    record = state.commands.get(command_id)
    if record is None:
        return ()
    decided = list(state.commands)
    later = set(decided[decided.index(command_id) + 1:])
    owed: list[Platform] = []
    for platform in record.platforms:
        if any(a.platform == platform and a.command_id in later for a in state.attempts.values()):
            continue
        mine = attempts_by(state, command_id, platform)
        if not mine:
            owed.append(platform)
            continue
        latest = mine[-1]
        if latest.success is False and latest.error_kind is not None and latest.error_kind.retried_automatically \
                and len(mine) < max_attempts:
            owed.append(platform)
    return tuple(owed)


def command_settled(state: PostState | None, command_id: str, max_attempts: int) -> bool:
    """True once every platform the command chose has a result that the handler will not retry by itself; for an
    operator's resolution, also once the command waiting on the attempt has recorded it (its own turn may come much
    later, behind that command's automatic retries)."""
    if state is not None and state.settled_by(command_id) is not None:
        return True
    if state is None or command_id not in state.commands:
        return False
    for platform in state.commands[command_id].platforms:
        mine = attempts_by(state, command_id, platform)
        if not mine or mine[-1].success is None:
            return False
    return not platforms_to_resume(state, command_id, max_attempts)


def resume_wait(state: PostState, command_id: str, platform: Platform, delay: float, now: datetime) -> float:
    """Seconds still to wait before the command's next attempt of `platform`, resumed after a restart.

    `delay` is the backoff the handler would have slept after its latest failed attempt; the platform's
    own wait hint (a rate limit's) counts when longer, both from when that attempt's result came in.
    """
    mine = attempts_by(state, command_id, platform)
    latest = mine[-1] if mine else None
    if latest is None or latest.success is not False or latest.finished_at is None:
        return 0.0
    due = latest.finished_at + timedelta(seconds=min(max(delay, latest.retry_after_s or 0.0), MAX_PLATFORM_WAIT_S))
    return max(0.0, (due - now).total_seconds())


def automatic_retries(state: PostState, max_attempts: int) -> dict[Platform, datetime | None]:
    """The platforms the latest command publishes again by itself (its attempt failed with an error the service
    retries, and attempts are left), each with when, where the platform's own wait says (else None: soon)."""
    command = state.latest_command()
    if command is None:
        return {}
    due: dict[Platform, datetime | None] = {}
    for platform in platforms_to_resume(state, command.command_id, max_attempts):
        mine = attempts_by(state, command.command_id, platform)
        if mine and mine[-1].success is False:
            latest = mine[-1]
            wait = min(latest.retry_after_s, MAX_PLATFORM_WAIT_S) if latest.retry_after_s is not None else None
            due[platform] = latest.finished_at + timedelta(seconds=wait) if wait and latest.finished_at else None
    return due


def automatic_retry_deadline(state: PostState, max_attempts: int, base_seconds: float,
                             cap_seconds: float) -> dict[Platform, datetime]:
    """For every automatic retry to come, the latest the handler makes it: the platform's own wait, or the ceiling of
    its backoff after the attempt's failure when that is later (capped exponential with full jitter; a rate limit
    without a wait waits from the cap). The handler's `backoff_delay` draws below it."""
    command = state.latest_command()
    if command is None:
        return {}
    deadline: dict[Platform, datetime] = {}
    for platform, at in automatic_retries(state, max_attempts).items():
        mine = attempts_by(state, command.command_id, platform)
        failed = mine[-1].finished_at if mine else None
        if failed is None:
            if at is not None:
                deadline[platform] = at
            continue
        ceiling = cap_seconds if mine[-1].error_kind is ErrorKind.RATE_LIMITED and at is None else \
            min(cap_seconds, base_seconds * 2 ** (len(mine) - 1))
        bound = failed + timedelta(seconds=ceiling)
        deadline[platform] = max(at, bound) if at is not None else bound
    return deadline


class AutomaticRetries(NamedTuple):
    """A failed post's retries the service makes by itself: `due` when, where the platform said (else None); `by` the
    latest the handler's own backoff makes those the platform gave no wait for; `overdue` those late past the latest
    the handler makes them by more than `AUTOMATIC_RETRY_LATE` (the handler away, frozen or behind)."""

    due: dict[Platform, datetime | None]
    by: dict[Platform, datetime]
    overdue: list[Platform]


def automatic_retry_times(state: PostState, max_attempts: int, now: datetime,
                          backoff: tuple[float, float]) -> AutomaticRetries:
    """The post's automatic retries at `now`, with the handler's `backoff` (first wait, longest wait, seconds)."""
    due = automatic_retries(state, max_attempts)
    deadline = automatic_retry_deadline(state, max_attempts, *backoff)
    return AutomaticRetries(due, {p: by for p, by in deadline.items() if due.get(p) is None},
                            [p for p, by in deadline.items() if now > by + AUTOMATIC_RETRY_LATE])
