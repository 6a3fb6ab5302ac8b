"""What a request carries: the bodies of the admin writes (the fields of schemas/commands.py,
with the subscription from the path), the query and path parameters the resources share, and
the id of a pack bought without one."""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Final

import msgspec
from litestar.params import HeaderParameter, PathParameter, QueryParameter

from projections.replay import MAX_AS_OF_CHARS
from schemas.commands import Tier
from schemas.instants import bounded_utc
from schemas.limits import MAX_ID_CHARS
from schemas.usage import PathId as BodyId
from schemas.usage import UtcInstant
from services.auth.tokens import MAX_SCOPE_SUBSCRIPTIONS, Role

MAX_IDEMPOTENCY_KEY_CHARS: Final = 255
PACK_ID_PREFIX: Final = "pack-"
PACK_ID_HEX_CHARS: Final = 32
"""128 bits: a generated pack id is `pack-` and 32 hex digits (37 of MAX_ID_CHARS)."""

AsOf = Annotated[
    str | None,
    QueryParameter(
        description="RFC 3339 instant or position:N: answer from the log as of that point",
        max_length=MAX_AS_OF_CHARS,
    ),
]
PathId = Annotated[str, PathParameter(max_length=MAX_ID_CHARS)]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_CHARS,
        description="Without a pack_id, a retry with the same key buys nothing more",
    ),
]


class TokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Role
    subscription_ids: (
        Annotated[
            list[Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]],
            msgspec.Meta(max_length=MAX_SCOPE_SUBSCRIPTIONS),
        ]
        | None
    ) = None


class OpenSubscriptionBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    subscription_id: BodyId
    anchor: UtcInstant | None = None
    """The billing anchor; the ledger clock's now when absent."""

    def __post_init__(self) -> None:
        if self.anchor is not None:
            bounded_utc(self.anchor, "anchor")


class AddSeatBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seat_id: BodyId
    tier: Tier


class ChangeTierBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tier: Tier


class BuyPackBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pack_id: BodyId | None = None
    """Generated when absent: derived from the Idempotency-Key header when one is sent."""


class ClockBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    now: UtcInstant

    def __post_init__(self) -> None:
        bounded_utc(self.now, "now")


def pack_id_for(subscription_id: str, idempotency_key: str | None) -> str:
    """The id of a pack bought without one: the same for every retry with the same key (so
    the decider's "a pack id bought already buys nothing" makes the retry a no-op), random
    without a key."""
    if idempotency_key is None:
        return PACK_ID_PREFIX + secrets.token_hex(PACK_ID_HEX_CHARS // 2)
    material = f"{subscription_id}\x00{idempotency_key}".encode()
    return PACK_ID_PREFIX + hashlib.sha256(material).hexdigest()[:PACK_ID_HEX_CHARS]
