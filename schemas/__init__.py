"""The service's contracts: commands, post events, the insights document and the API shapes."""

from schemas.api import PostSummary, PublishResponse, RetryInfo
from schemas.commands import (
    Command,
    ForceRepublishRequested,
    PostContent,
    PublishRequested,
    ResolveAttemptRequested,
    RetryRequested,
)
from schemas.common import ErrorKind, Platform, PublishTarget, platforms_of
from schemas.envelope import DecodeError, Envelope, decode_command, decode_event, encode
from schemas.events import (
    AttemptOutcomeUnknown,
    CommandDecided,
    ContainerCreated,
    Event,
    LegacyInsightsImported,
    PlatformError,
    PlatformResult,
    PostSubmitted,
    PublishAttempted,
)
from schemas.insights import Insights, PostInsights, PublishResult

__all__ = [
    "AttemptOutcomeUnknown", "Command", "CommandDecided", "ContainerCreated", "DecodeError", "Envelope", "ErrorKind",
    "Event", "ForceRepublishRequested", "Insights", "LegacyInsightsImported", "Platform",
    "PlatformError", "PlatformResult", "PostContent", "PostInsights", "PostSubmitted", "PostSummary",
    "PublishAttempted", "PublishRequested", "PublishResponse", "PublishResult", "PublishTarget",
    "ResolveAttemptRequested", "RetryInfo", "RetryRequested", "decode_command", "decode_event", "encode",
    "platforms_of",
]
