"""An undecodable command's dead letter is written even when the broker refuses it for a while."""

from __future__ import annotations

import json

from schemas.envelope import undecodable
from streams.handler import CommandHandler, HandlerConfig
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
                             credentials=None, publishers={},  # type: ignore[arg-type]
                             config=HandlerConfig(backoff_base_seconds=0.001, backoff_cap_seconds=0.01))
    producer = FlakyProducer(failures=3)
    handler.producer = producer  # type: ignore[assignment]

    await handler._dead_letter_until_sent(Message(), undecodable(ValueError("x")))

    (sent,) = producer.sent
    assert sent[0] == topics.dead_letters
    letter = json.loads(sent[2])
    assert (letter["partition"], letter["offset"], letter["key"]) == (3, 41, "post-1")
    assert "could not be decoded" in letter["reason"]
