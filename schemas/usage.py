"""The v1 usage event a gateway publishes onto the usage stream (SPEC §3), with its bounds."""

from datetime import datetime
from typing import Annotated

import msgspec

from schemas.limits import (
    MAX_ID_CHARS,
    MAX_IMAGES_PER_REQUEST,
    MAX_MODEL_CHARS,
    MAX_TOKENS_PER_COMPONENT,
    MAX_TOOL_CALLS_PER_REQUEST,
)

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODEL_CHARS)]
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_PER_COMPONENT)]
ToolCallCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOOL_CALLS_PER_REQUEST)]
ImageCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_IMAGES_PER_REQUEST)]
UtcInstant = Annotated[datetime, msgspec.Meta(tz=True)]


class UsageEvent(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """One served model request, as a gateway reports it. `event_id` is the idempotency key."""

    event_id: Id
    subscription_id: Id
    seat_id: Id
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
