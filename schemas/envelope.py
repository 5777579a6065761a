"""Wire format of commands and events: flat JSON objects with `type` and `schema_version`, and one decoder."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.commands import COMMAND_SCHEMA_VERSION, COMMAND_TYPES, Command
from schemas.events import EVENT_SCHEMA_VERSION, EVENT_TYPES, Event

# Anything larger is not a command or event of ours; refuse it before parsing.
MAX_MESSAGE_BYTES = 1_000_000

M = TypeVar("M", bound=BaseModel)

Envelope = dict[str, Any]

_command_adapter: TypeAdapter[Command] = TypeAdapter(Command)
_event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


class DecodeError(ValueError):
    """A message that is not a valid command or event; `reason` says what is wrong in one line."""

    def __init__(self, reason: str, type_name: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.type_name = type_name


def undecodable(exc: Exception) -> str:
    """The dead letter's reason for a message that failed to decode with `exc`."""
    return exc.reason if isinstance(exc, DecodeError) else f"could not be decoded: {type(exc).__name__}"


def encode(message: BaseModel) -> bytes:
    """The JSON bytes of a command or event, as they go on Kafka."""
    return message.model_dump_json(exclude_none=False).encode()


class _NotJsonValue(ValueError):
    pass


def _not_json(name: str) -> Any:
    """Python's reader takes NaN and Infinity; JSON has neither."""
    raise _NotJsonValue(f"{name} is not a JSON value")


def _object(raw: bytes | str | None, what: str) -> Envelope:
    if raw is None:
        raise DecodeError(f"empty {what}: the message has no value")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"{what} too large: {len(raw)} bytes, at most {MAX_MESSAGE_BYTES}")
    if not raw:
        raise DecodeError(f"empty {what}: the message's value has no bytes")
    try:
        # Read as UTF-8 (a byte order mark allowed), not as json.loads guesses bytes: it would take UTF-16 too.
        # Half a character written as bytes passes, as json.loads lets it, for the check below to say where it is.
        text = raw.decode("utf-8-sig", "surrogatepass") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as bad:
        assert isinstance(raw, bytes)
        raise DecodeError(f"not JSON: not UTF-8 text (byte {raw[bad.start]:#04x} at {bad.start}; "
                          "messages are JSON in UTF-8)") from None
    try:
        value = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    except _NotJsonValue as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    except RecursionError:
        raise DecodeError(f"{what} nested too deeply to be one of ours") from None
    except ValueError as exc:  # Python reads no integer of more than 4,300 digits
        if "integer string conversion" not in str(exc):
            raise
        raise DecodeError(f"{what} has a number too long to be one of ours (over 4,300 digits)") from None
    if not isinstance(value, dict):
        raise DecodeError(f"{what} must be a JSON object, got {type(value).__name__}")
    # Written as an escape (`\\ud83d`) or as bytes (json.loads lets surrogates through either way): looked for in what
    # was read, as only messages off the quick path (which refuses them) come here.
    where = _lone_surrogate(value)
    if where is not None:
        raise DecodeError(f"{what} has text that is not Unicode at {where}: half of a character (a lone "
                          "surrogate, as cutting an emoji in two leaves), which no JSON writer of ours can keep")
    return value


# Half a character: a surrogate, which UTF-8 cannot encode (a lone one is left where an emoji was cut in two).
HALF_CHARACTER = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> str | None:
    """Where in a parsed JSON value a string (or key) holds a surrogate left alone, as a dotted path, if anywhere."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, str):
            if HALF_CHARACTER.search(item):
                return path or "the message"
        elif isinstance(item, dict):
            for key, inner in item.items():
                if HALF_CHARACTER.search(key):
                    return f"{path}.(a key)" if path else "(a key)"
                pending.append((f"{path}.{key}" if path else key, inner))
        elif isinstance(item, list):
            pending.extend((f"{path}[{index}]", inner) for index, inner in enumerate(item))
    return None


def json_object(raw: bytes | str | None, what: str) -> Envelope:
    """`raw` read as a JSON object, or `DecodeError` saying in one line why it is none (`what` names it)."""
    return _object(raw, what)


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _fast(raw: bytes, adapter: TypeAdapter[Any]) -> Any:
    """The message when it is plainly valid, parsed and validated in one pass; else None.

    validate_json is about twice as fast as json.loads + validate_python, but its errors are not
    the envelope's. So it only decides the common case, a message it accepts (the models check the
    version as strictly as the envelope does); everything else takes the careful path, which says
    exactly what is wrong.
    """
    try:
        return adapter.validate_json(raw)
    except ValidationError:
        return None


def _decode(raw: bytes | str | None, what: str, types: dict[str, Any], version: int, adapter: TypeAdapter[Any]) -> Any:
    if isinstance(raw, bytes) and len(raw) <= MAX_MESSAGE_BYTES:
        message = _fast(raw, adapter)
        if message is not None:
            return message
    value = _object(raw, what)
    type_name = value.get("type")
    if not isinstance(type_name, str) or type_name not in types:
        known = ", ".join(sorted(types))
        raise DecodeError(f"unknown {what} type {type_name!r} (known: {known})")
    schema_version = value.get("schema_version", 1)
    if isinstance(schema_version, float) and schema_version.is_integer() and 1 <= schema_version <= version:
        # A JSON Schema validator takes 1.0 for an integer; the service reads its versions as written by its own.
        raise DecodeError(f"unsupported schema_version {schema_version!r} for {type_name}: write it as a whole "
                          f"number, {int(schema_version)}, without a decimal point", type_name)
    if not isinstance(schema_version, int) or isinstance(schema_version, bool) or not 1 <= schema_version <= version:
        raise DecodeError(
            f"unsupported schema_version {schema_version!r} for {type_name} (this service reads 1 to {version})",
            type_name,
        )
    # Older versions are upgraded here, one step at a time, before validation; version 1 is current.
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise DecodeError(f"invalid {type_name}: {_describe(exc)}", type_name) from None


def decode_command(raw: bytes | str | None) -> Command:
    """A typed command, or `DecodeError` naming what is wrong."""
    result: Command = _decode(raw, "command", COMMAND_TYPES, COMMAND_SCHEMA_VERSION, _command_adapter)
    return result


def decode_event(raw: bytes | str | None) -> Event:
    """A typed event, or `DecodeError` naming what is wrong."""
    result: Event = _decode(raw, "event", EVENT_TYPES, EVENT_SCHEMA_VERSION, _event_adapter)
    return result
