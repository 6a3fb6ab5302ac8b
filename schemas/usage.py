"""The v1 usage event a gateway publishes onto the usage stream, with its bounds."""

from datetime import datetime
from typing import Annotated

import msgspec

from schemas.instants import bounded_utc
from schemas.limits import (
    ID_PATTERN,
    MAX_ID_CHARS,
    MAX_IMAGES_PER_REQUEST,
    MAX_MODEL_CHARS,
    MAX_TOKENS_PER_COMPONENT,
    MAX_TOOL_CALLS_PER_REQUEST,
)

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
"""Free text of 1 to 128 characters: ids that never appear in a path (request, api key...)."""
PathId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
"""An id that may appear in a URL path: 1 to 128 of `A-Z a-z 0-9 . _ - : @`."""
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODEL_CHARS)]
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_PER_COMPONENT)]
ToolCallCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOOL_CALLS_PER_REQUEST)]
ImageCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_IMAGES_PER_REQUEST)]
UtcInstant = Annotated[datetime, msgspec.Meta(tz=True)]


class UsageEvent(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """One served model request, as a gateway reports it. `event_id` is the idempotency key."""

    event_id: PathId
    subscription_id: PathId
    seat_id: PathId
    model: ModelName
    occurred_at: UtcInstant
    input_tokens: TokenCount = 0
    cached_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    tool_calls: ToolCallCount = 0
    images: ImageCount = 0
    thinking: bool = False
    request_id: Id | None = None
    api_key_id: Id | None = None
    gateway: Id | None = None
    hold_id: PathId | None = None
    """The hold this request was served under: its charge settles that hold."""

    def __post_init__(self) -> None:
        bounded_utc(self.occurred_at, "occurred_at")  # a ValueError: the event is invalid


class Usage(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """The counts a charge was priced from, as recorded on the charge."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    images: int = 0
    thinking: bool = False


def usage_of(event: UsageEvent) -> Usage:
    return Usage(
        input_tokens=event.input_tokens,
        cached_tokens=event.cached_tokens,
        output_tokens=event.output_tokens,
        tool_calls=event.tool_calls,
        images=event.images,
        thinking=event.thinking,
    )
