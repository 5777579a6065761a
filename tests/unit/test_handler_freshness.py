"""The handler's freshness helpers: a shared end-offset query never answers a command that came after it began."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy.exc import OperationalError

from streams.handler import AppliedOffsets, PartitionEnds, StaleProjection


class SlowEnds:
    """A broker whose end-offset query waits until released; each query answers a higher end."""

    def __init__(self) -> None:
        self.queries = 0
        self.release = threading.Event()
        self.started = threading.Event()

    def query(self, _partition: int) -> int:
        self.queries += 1
        answer = self.queries * 100
        self.started.set()
        assert self.release.wait(5)
        return answer


async def test_commands_arriving_during_a_query_wait_for_the_next_one() -> None:
    broker = SlowEnds()
    ends = PartitionEnds(broker.query)
    first = asyncio.ensure_future(ends.end_of(0))
    await asyncio.to_thread(broker.started.wait, 5)
    # These arrive while the first query is under way: its answer may predate them.
    later = [asyncio.ensure_future(ends.end_of(0)) for _ in range(50)]
    await asyncio.sleep(0.01)
    broker.release.set()

    assert await first == 100
    assert await asyncio.gather(*later) == [200] * 50
    assert broker.queries == 2


async def test_partitions_are_asked_separately() -> None:
    asked: list[int] = []

    def query(partition: int) -> int:
        asked.append(partition)
        return partition + 10

    ends = PartitionEnds(query)

    assert await asyncio.gather(ends.end_of(0), ends.end_of(3)) == [10, 13]
    assert sorted(asked) == [0, 3]


async def test_a_failed_query_fails_its_waiters_and_the_next_query_runs() -> None:
    answers: list[int | Exception] = [RuntimeError("broker unreachable"), 7]

    def query(_partition: int) -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    ends = PartitionEnds(query)
    with pytest.raises(RuntimeError, match="unreachable"):
        await ends.end_of(1)

    assert await ends.end_of(1) == 7


async def test_an_offset_seen_applied_needs_no_new_read() -> None:
    reads: list[int] = []

    def read() -> dict[int, int]:
        reads.append(1)
        return {0: 41}

    applied = AppliedOffsets(read, "post-events")
    applied.saw({0: 41})

    await applied.wait(0, 41, timeout=1)
    assert reads == []
    await applied.wait(0, 41, timeout=1)
    assert reads == []


async def test_an_offset_never_applied_times_out_as_stale() -> None:
    applied = AppliedOffsets(lambda: {0: 3}, "post-events", interval=0.001)

    with pytest.raises(StaleProjection, match=r"post-events\[0\] has not applied offset 9"):
        await applied.wait(0, 9, timeout=0.05)
    await applied.wait(0, 3, timeout=1)


async def test_a_failed_read_of_the_applied_offsets_is_read_again_and_the_wait_goes_on() -> None:
    answers: list[dict[int, int] | Exception] = [OperationalError("SELECT", {}, Exception("database is locked")),
                                                 {0: 9}]

    def read() -> dict[int, int]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    applied = AppliedOffsets(read, "post-events", interval=0.001)

    await applied.wait(0, 9, timeout=5)


async def test_a_wait_that_times_out_while_the_store_cannot_be_read_names_the_store() -> None:
    def read() -> dict[int, int]:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    applied = AppliedOffsets(read, "post-events", interval=0.001)

    with pytest.raises(StaleProjection, match=r"its store could not be read \(Exception: database is locked\)"):
        await applied.wait(0, 9, timeout=0.2)
