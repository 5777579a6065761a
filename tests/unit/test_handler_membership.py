"""A handler whose consumer stays out of its group ends, rather than poll on handed nothing."""

from __future__ import annotations

import asyncio

import pytest

from streams.handler import CommandHandler, HandlerConfig, HandlerOutOfGroup
from streams.topics import Topics


class IdleProducer:
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_a_handler_never_let_into_its_group_ends_to_be_started_again() -> None:
    # No broker answers here: the consumer never becomes a member, as one stuck out of its group after a
    # broker outage. It polls on and is handed no command; ended, `smartretry run` starts it again.
    handler = CommandHandler(bootstrap="127.0.0.1:1", topics=Topics(), projection=None,  # type: ignore[arg-type]
                             credentials=None, publishers={},  # type: ignore[arg-type]
                             config=HandlerConfig(membership_limit_seconds=1.0))
    handler.producer = IdleProducer()  # type: ignore[assignment]
    with pytest.raises(HandlerOutOfGroup, match="has not been a member of consumer group smartretry-command-handler "
                                                "for 1s, so it is handed no commands"):
        await asyncio.wait_for(handler.run(asyncio.Event()), 30)
