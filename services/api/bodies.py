"""What a request carries: the bodies of the admin writes (the fields of schemas/commands.py,
with the subscription from the path), the query and path parameters the resources share, and
the id of a pack bought without one."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from litestar.params import HeaderParameter, PathParameter, QueryParameter

from ledger.money import parse_credits
from projections.replay import MAX_AS_OF_CHARS, POSITION_PREFIX
from schemas.commands import Reason, Tier
from schemas.instants import instant_from_text
from schemas.limits import (
    ID_PATTERN,
    INSTANT_PATTERN,
    MAX_ADMIN_CREDITS_UCR,
    MAX_ID_CHARS,
    MAX_INSTANT_CHARS,
    MAX_REASON_CHARS,
)
from schemas.usage import PathId as BodyId
from services.auth.tokens import MAX_SCOPE_SUBSCRIPTIONS, Role

MAX_IDEMPOTENCY_KEY_CHARS: Final = 255
PACK_ID_PREFIX: Final = "pack-"
PACK_ID_HEX_CHARS: Final = 32
"""128 bits: a generated pack id is `pack-` and 32 hex digits (37 of MAX_ID_CHARS)."""
POSITION_PATTERN: Final = rf"^{POSITION_PREFIX}[0-9]+$"

_ID_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_CHARS,
    "pattern": ID_PATTERN,
}
_INSTANT_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "format": "date-time",
    "pattern": INSTANT_PATTERN,
    "maxLength": MAX_INSTANT_CHARS,
}
InstantText = Annotated[
    str,
    msgspec.Meta(
        pattern=INSTANT_PATTERN,
        max_length=MAX_INSTANT_CHARS,
        # Litestar reads `extra` into the field's OpenAPI schema.
        extra_json_schema={"extra": {"format": "date-time"}},
    ),
]
"""An instant in a request body: RFC 3339 text within the bounds (INSTANT_PATTERN), never a
number (a JSON number would otherwise be read as seconds since 1970)."""

AsOf = Annotated[
    str | None,
    QueryParameter(
        description="position:N or an RFC 3339 instant: answer from the log as of that point",
        max_length=MAX_AS_OF_CHARS,
        schema_extra={"oneOf": [{"type": "string", "pattern": POSITION_PATTERN}, _INSTANT_SCHEMA]},
    ),
]


def instant_query(name: str | None = None) -> Any:
    """A query parameter holding an instant: the same text as an InstantText."""
    return QueryParameter(
        name=name, max_length=MAX_INSTANT_CHARS, schema_extra={"oneOf": None, **_INSTANT_SCHEMA}
    )


PathId = Annotated[str, PathParameter(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
IdQuery = Annotated[
    str | None,
    QueryParameter(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN),
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_CHARS,
        description="Without a pack_id, a retry with the same key buys nothing more",
    ),
]


def at_instant(text: str, field: str) -> datetime:
    """The instant of a body field validated as InstantText; a calendar day that does not
    exist (February 30) raises ValueError naming the field, as msgspec names a field."""
    try:
        return instant_from_text(text)
    except ValueError as error:
        raise ValueError(f"{error} - at `$.{field}`") from None


def _ids(max_items: int) -> msgspec.Meta:
    """1 to `max_items` ids; Litestar does not document an item's own constraints itself."""
    return msgspec.Meta(
        min_length=1, max_length=max_items, extra_json_schema={"extra": {"items": _ID_SCHEMA}}
    )


class _TokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="role"):
    def token_role(self) -> Role:
        role: Role = self.__struct_config__.tag  # type: ignore[assignment]
        return role

    def scope(self) -> list[str] | None:
        return None


class AdminTokenRequest(_TokenRequest, frozen=True, tag="admin"):
    """An admin token sees every subscription: it names none."""

    subscription_ids: None = None


class AuditorTokenRequest(_TokenRequest, frozen=True, tag="auditor"):
    """An auditor token sees every subscription: it names none."""

    subscription_ids: None = None


class GatewayTokenRequest(_TokenRequest, frozen=True, tag="gateway"):
    subscription_ids: Annotated[list[BodyId], _ids(MAX_SCOPE_SUBSCRIPTIONS)]

    def scope(self) -> list[str] | None:
        return self.subscription_ids


class ViewerTokenRequest(_TokenRequest, frozen=True, tag="viewer"):
    subscription_ids: Annotated[list[BodyId], _ids(1)]

    def scope(self) -> list[str] | None:
        return self.subscription_ids


TokenRequest = AdminTokenRequest | AuditorTokenRequest | GatewayTokenRequest | ViewerTokenRequest
"""A new token's role, and the subscriptions it sees: a gateway names 1 to
MAX_SCOPE_SUBSCRIPTIONS, a viewer exactly one; admins and auditors see all."""


class OpenSubscriptionBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    subscription_id: BodyId
    anchor: InstantText | None = None
    """The billing anchor; the ledger clock's now when absent."""
    reason: Reason | None = None

    def __post_init__(self) -> None:
        self.anchor_at()

    def anchor_at(self) -> datetime | None:
        return None if self.anchor is None else at_instant(self.anchor, "anchor")


class AddSeatBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    seat_id: BodyId
    tier: Tier
    reason: Reason | None = None


class ChangeTierBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tier: Tier
    reason: Reason | None = None


class BuyPackBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pack_id: BodyId | None = None
    """Generated when absent: derived from the Idempotency-Key header when one is sent."""
    reason: Reason | None = None


class ClockBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    now: InstantText

    def __post_init__(self) -> None:
        self.now_at()

    def now_at(self) -> datetime:
        return at_instant(self.now, "now")


def pack_id_for(subscription_id: str, idempotency_key: str | None) -> str:
    """The id of a pack bought without one: the same for every retry with the same key (so
    the decider's "a pack id bought already buys nothing" makes the retry a no-op), random
    without a key."""
    if idempotency_key is None:
        return PACK_ID_PREFIX + secrets.token_hex(PACK_ID_HEX_CHARS // 2)
    material = f"{subscription_id}\x00{idempotency_key}".encode()
    return PACK_ID_PREFIX + hashlib.sha256(material).hexdigest()[:PACK_ID_HEX_CHARS]


# -- corrections ------------------------------------------------------------------------------

MAX_CREDITS_TEXT_CHARS: Final = 20
"""A sign, 12 integer digits, a point and 6 decimals."""
_ABOVE_ZERO: Final = (
    r"(0\.([1-9][0-9]{0,5}|0[1-9][0-9]{0,4}|00[1-9][0-9]{0,3}|000[1-9][0-9]{0,2}|0000[1-9][0-9]?"
    r"|00000[1-9])|[1-9][0-9]{0,8}(\.[0-9]{1,6})?|1000000000(\.0{1,6})?)$"
)
"""0.000001 to 1000000000 as text, at most 6 decimals: exactly what `credits_of` accepts, so
that a request the document allows is never refused for its amount."""
AdminCredits = Annotated[
    str, msgspec.Meta(pattern="^" + _ABOVE_ZERO, max_length=MAX_CREDITS_TEXT_CHARS)
]
"""Credits an admin gives (or gives back): a decimal string above 0, at most 1,000,000,000."""
SignedAdminCredits = Annotated[
    str, msgspec.Meta(pattern="^-?" + _ABOVE_ZERO, max_length=MAX_CREDITS_TEXT_CHARS)
]
"""Credits added (positive) to or taken (negative) from a seat: not 0, at most 1,000,000,000
either way."""
ReasonQuery = Annotated[
    str | None,
    QueryParameter(
        min_length=1, max_length=MAX_REASON_CHARS, description="Why (kept in the log for good)"
    ),
]


def credits_of(text: str, field: str, *, signed: bool = False) -> int:
    """The micro-credits of a body's credits field, not 0 and within the admin bound; a
    ValueError naming the field otherwise (msgspec names a field so)."""
    amount_ucr = parse_credits(text)
    if amount_ucr == 0 or abs(amount_ucr) > MAX_ADMIN_CREDITS_UCR:
        bound = "-1000000000..1000000000, not 0" if signed else "0.000001..1000000000"
        raise ValueError(f"credits must be within {bound} - at `$.{field}`")
    return amount_ucr


class AdjustmentBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    adjustment_id: BodyId
    credits: SignedAdminCredits
    """Added to the seat's quota this cycle; negative: taken from what it has left."""
    reason: Reason

    def __post_init__(self) -> None:
        self.credits_ucr()

    def credits_ucr(self) -> int:
        return credits_of(self.credits, "credits", signed=True)


class GrantBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    grant_id: BodyId
    credits: AdminCredits
    expires_at: InstantText
    reason: Reason

    def __post_init__(self) -> None:
        self.credits_ucr()
        self.expires_at_instant()

    def credits_ucr(self) -> int:
        return credits_of(self.credits, "credits")

    def expires_at_instant(self) -> datetime:
        return at_instant(self.expires_at, "expires_at")


class ReversalBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reversal_id: BodyId
    reason: Reason
    credits: AdminCredits | None = None
    """All that is left of the charge when absent."""

    def __post_init__(self) -> None:
        self.credits_ucr()

    def credits_ucr(self) -> int | None:
        return None if self.credits is None else credits_of(self.credits, "credits")


class VoidBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Reason
