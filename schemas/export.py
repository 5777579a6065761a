"""Writes the JSON Schema of every message on the topics, and of the API's answer: schemas/json/ (`make schemas`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.api import PublishResponse
from schemas.commands import COMMAND_TYPES
from schemas.deadletters import DeadLetter, DeadLetterRequeued
from schemas.events import EVENT_TYPES
from schemas.insights import InsightsMessage, PostInsights

OUT = Path(__file__).with_name("json")


def exported() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every contract other services read or write."""
    models: dict[str, type[BaseModel]] = {
        **{f"commands/{name}": model for name, model in COMMAND_TYPES.items()},
        **{f"events/{name}": model for name, model in EVENT_TYPES.items()},
        "insights/PostInsights": PostInsights,
        "insights/InsightsMessage": InsightsMessage,
        "deadletters/DeadLetter": DeadLetter,
        "deadletters/DeadLetterRequeued": DeadLetterRequeued,
        "api/PublishResponse": PublishResponse,
    }
    schemas = {name: model.model_json_schema(mode="serialization", by_alias=True) for name, model in models.items()}
    for name, schema in schemas.items():
        if name.startswith(("commands/", "events/")):
            # The models default it (code builds each type by its class), but on the wire a message without its
            # `type` is refused: it says which message it is.
            schema["required"] = ["type", *[field for field in schema.get("required", []) if field != "type"]]
    return {f"{name}.schema.json": schema for name, schema in schemas.items()}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    for name, schema in exported().items():
        path = OUT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(schema))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
