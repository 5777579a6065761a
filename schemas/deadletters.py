"""Messages on the dead-letter topic: what could not be handled, why, and the original bytes."""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import Field

from schemas.common import Frozen, Timestamp


class DeadLetter(Frozen):
    """A message a consumer could not use. `value_b64` keeps the original bytes so it can be requeued."""

    type: str = "DeadLetter"
    schema_version: int = 1
    reason: str = Field(max_length=4000)
    consumer: str
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    value_b64: str | None = None
    # True when a secret (a token pasted into a caption, say) was replaced by `[redacted]` in the bytes
    # kept: they are then not the original, and requeueing them would send `[redacted]` on.
    value_scrubbed: bool = False
    # The ids the message gives, where it is a JSON object that gives them (scrubbed like the rest): an upstream
    # service finds its refused command by `command_id`, an importer its event by `event_id`, without decoding
    # `value_b64` (which a message too large to keep has none of).
    post_id: str | None = Field(default=None, max_length=500)
    command_id: str | None = Field(default=None, max_length=500)
    event_id: str | None = Field(default=None, max_length=500)
    occurred_at: Timestamp

    def original_value(self) -> bytes | None:
        return base64.b64decode(self.value_b64) if self.value_b64 is not None else None


class DeadLetterRequeued(Frozen):
    """Written beside the dead letters when one is put back on its topic (`smartretry dlq requeue`): the listing
    then shows which were handled, and a second requeue is asked for explicitly."""

    type: Literal["DeadLetterRequeued"] = "DeadLetterRequeued"
    schema_version: int = 1
    # The dead letter's own offset on the dead-letter topic.
    dead_letter_offset: int
    # Where the original message went back to, and at which offset.
    source_topic: str
    partition: int
    offset: int
    requeued_at: Timestamp
