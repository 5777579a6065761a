"""Names shared by every contract: platforms, publish targets, error kinds, timestamps."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer

Platform = Literal["facebook", "instagram"]
PLATFORMS: tuple[Platform, ...] = ("facebook", "instagram")
PublishTarget = Literal["facebook", "instagram", "both"]

PLATFORM_LABELS: dict[str, str] = {"facebook": "Facebook", "instagram": "Instagram"}
# Where each platform's posts go, as the user knows it: what an account connects for it.
DESTINATIONS: dict[str, str] = {"facebook": "Page", "instagram": "Instagram account"}
# Meta's "Object with ID ... does not exist, cannot be loaded due to missing permissions" (code 100, subcode 33).
UNKNOWN_OBJECT_CODE, UNKNOWN_OBJECT_SUBCODE = 100, 33


def platforms_of(target: PublishTarget) -> tuple[Platform, ...]:
    """The platforms a `publish_target` names, in the seed's order (Facebook first)."""
    return PLATFORMS if target == "both" else (target,)


def target_of(platforms: tuple[Platform, ...] | list[Platform]) -> PublishTarget | None:
    """The inverse of `platforms_of`: None for no platform."""
    chosen = set(platforms)
    if chosen == set(PLATFORMS):
        return "both"
    if len(chosen) == 1:
        return next(iter(chosen))
    return None


# Meta's error code for "temporarily blocked for policy violations" (see publishers/errors.py).
POLICY_BLOCK_CODE = 368
# Instagram's code and subcode for "We restrict certain activity to protect our community": the account's
# publishing is blocked for a while, as with Facebook's 368 (see publishers/errors.py).
ACTIVITY_BLOCK = (4, 2207051)
# Instagram's "the account is inactive, checkpointed or restricted": cleared by signing in to Instagram and doing
# what it asks there, not by a new token or permission.
IG_RESTRICTED_SUBCODE = 2207050


def is_platform_block(code: int | None, subcode: int | None) -> bool:
    """Whether a platform error says Meta blocks the account's publishing for a while (waited out, not fixed)."""
    return code == POLICY_BLOCK_CODE or (code, subcode) == ACTIVITY_BLOCK
# How a failure for want of an account (none stored under the post's account name) begins: it asks for the account
# to be connected, not re-authenticated.
NO_CREDENTIALS = "no credentials for account"
# What an account stored without a platform's Page or Instagram account lacks (how the publishers' failure for it
# ends, and the API's refusal names it), and the account's field that holds its id (PUT /accounts/{name}/token).
NOT_CONNECTED: dict[str, str] = {"facebook": "Facebook Page", "instagram": "Instagram business account"}
ACCOUNT_ID_FIELDS: dict[str, str] = {"facebook": "page_id", "instagram": "ig_user_id"}


def not_connected(platform: str) -> str:
    return f"the account has no {NOT_CONNECTED[platform]} connected"


# The longest a platform's own wait is taken for (a day: Meta's daily limits): a larger one (a header saying
# 99999999999999999999 seconds) would be a date past the calendar's end.
MAX_PLATFORM_WAIT_S = 86_400.0

# How the post says why an attempt left without an answer to trust is looked up (the call's own reason first): the
# end of its look-up error's message, left out once the attempt is settled.
CHECKING = "; checking whether the post went out before publishing again"

# How an Instagram attempt held back by an earlier attempt's container begins its failure: Meta says that container
# does not exist and its media cannot tell whether it went out; an operator can settle that attempt (`resolve`).
EARLIER_CONTAINER_UNKNOWN = "Instagram publish not attempted: Meta says the container "

# How an attempt's history says an operator settled its container that way (`AttemptState.container_cleared_by`).
CONTAINER_CLEARED = "an operator found its container was not published"

# Words of a 202's note on a command queued behind the post's publish still under way (a container that takes its
# time): it runs within moments, so the CLI waits for its results as for any command's.
UNDER_WAY_NOTE = "under way (its result is not in yet)"


class ErrorKind(StrEnum):
    """What a platform error means for the user, and whether the service retries it on its own."""

    AUTH = "auth"  # token expired or revoked: re-authenticate
    PERMISSION = "permission"  # the token lacks a permission: re-authorize with it
    INVALID_MEDIA = "invalid_media"  # image rejected: fix the image
    INVALID_REQUEST = "invalid_request"  # anything else the platform refused: fix the post
    RATE_LIMITED = "rate_limited"  # retried automatically after the platform's wait hint
    TRANSIENT = "transient"  # 5xx, timeouts, is_transient: retried automatically

    @property
    def retried_automatically(self) -> bool:
        return self in (ErrorKind.RATE_LIMITED, ErrorKind.TRANSIENT)


# The years a message's times may be in (UTC): any clock this service runs on is within them, and times past them are
# a clock or a writer gone wrong, on which adding a lease or a day would leave the calendar.
EARLIEST_YEAR, LATEST_YEAR = 2000, 8999


def _utc(value: datetime) -> datetime:
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("timestamps must carry a time zone")
    # Millisecond precision, as on the wire: a decoded event equals the one that was encoded.
    # (The common case, already UTC and whole milliseconds, is checked first: this runs per timestamp.
    # It is kept with the zone object it came with: any zero-offset zone is UTC to comparisons,
    # hashing and formatting, and replacing pydantic's own cost a tenth of a replay.)
    if offset or value.microsecond % 1000:
        try:
            value = value.astimezone(UTC).replace(microsecond=value.microsecond // 1000 * 1000)
        except OverflowError:
            raise ValueError("timestamp out of range in UTC") from None
    # By its year (an attribute): comparing times of two zone objects costs a call of each one's.
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError("timestamps must be from 2000-01-01 up to 9000-01-01 (UTC)")
    return value


def format_timestamp(value: datetime) -> str:
    """`2025-11-17T10:10:13.151Z`: millisecond precision in UTC, as the seed writes times."""
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")[:23] + "Z"


Timestamp = Annotated[
    datetime,
    AfterValidator(_utc),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    # RFC 3339 with its zone ("2025-11-17T10:10:13.151Z"): one without a zone is refused.
    # The zone in a pattern as well: validators check `format` only when asked to (and some not even then).
    Field(json_schema_extra={"format": "date-time", "pattern": r"([Zz]|[+-]\d\d:\d\d)$"}),
]

# Times inside the service's own stored state (attempts, commands, a post's created and updated
# times): pydantic's native ISO format, microseconds and `Z`, parsed and written without a Python call
# per field. A state has about a dozen of them, and the projector writes a state per post per batch;
# `Timestamp`'s seed format cost more than half of that. Values come from events' `occurred_at`, so
# they are UTC with millisecond precision already.
StateTime = AwareDatetime

# Post ids travel as Kafka keys, URL path segments and database keys: no path characters.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
Identifier = Annotated[str, Field(pattern=ID_PATTERN.pattern, min_length=1, max_length=128)]


class Frozen(BaseModel):
    """Base of every contract: immutable, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
