"""Producer and consumer configurations, each line saying what delivery guarantee it buys."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer


def producer(bootstrap: str, **overrides: Any) -> Producer:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        # Broker-side dedupe of retried sends and per-partition order: no duplicate or reordered events.
        "enable.idempotence": True,
        # A send is done only when every in-sync replica has it.
        "acks": "all",
        "linger.ms": 2,
        "compression.type": "lz4",
        **overrides,
    }
    return Producer(config)


def consumer(bootstrap: str, group_id: str, **overrides: Any) -> Consumer:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
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


def deliver(p: Producer, topic: str, key: str, value: bytes, timeout: float = 30.0) -> None:
    """Produces one message and waits until the broker has it (raises on failure)."""
    errors: list[Any] = []
    p.produce(topic, key=key.encode(), value=value, on_delivery=lambda err, _msg: errors.append(err) if err else None)
    remaining = p.flush(timeout)
    if remaining or errors:
        raise RuntimeError(f"delivery to {topic} failed: {errors or 'timed out'}")
