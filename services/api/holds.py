"""The hold resource: credits a gateway reserves for one seat before it serves a request
(gateways of the subscription and admins), read back by any role that sees the subscription.

Placing a hold id again with the same body answers the hold as it is (200); with another body
it is a conflict (409). A hold the seat cannot cover is refused with what is available."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from litestar import Response, delete, get, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from ledger.money import parse_credits
from projections.balances import HoldRow
from schemas.commands import ExtendHold, PlaceHold, ReleaseHold
from schemas.limits import DEFAULT_HOLD_TTL_S, MAX_HOLD_TTL_S, MIN_HOLD_TTL_S
from schemas.usage import PathId as BodyId
from services.api.bodies import AsOf, PathId
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.guards import HOLDERS, SEAT_READERS, requires
from services.api.problems import Problem, again
from services.api.reads import Reads
from services.api.views import HoldView, hold_view
from services.api.writes import Writes, actor_of, refused
from services.auth.tokens import Principal

HOLD_CREDITS_PATTERN: Final = (
    r"^([1-9][0-9]{0,8}(\.[0-9]{1,6})?"
    r"|0\.([1-9][0-9]{0,5}|0[1-9][0-9]{0,4}|00[1-9][0-9]{0,3}|000[1-9][0-9]{0,2}"
    r"|0000[1-9][0-9]?|00000[1-9]))$"
)
"""More than nothing and less than a billion credits, as a decimal string of at most 6
decimals ("2.50", "0.000001")."""

HoldCredits = Annotated[str, msgspec.Meta(pattern=HOLD_CREDITS_PATTERN, max_length=16)]
TtlSeconds = Annotated[float, msgspec.Meta(ge=MIN_HOLD_TTL_S, le=MAX_HOLD_TTL_S, multiple_of=1)]
"""Whole seconds. A number, not an integer: JSON Schema counts 60.0 as an integer, which a
strict integer field would refuse; `multiple_of` refuses 1.5 alike on both sides."""


class PlaceHoldBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hold_id: BodyId
    """The gateway's id for this hold (a retry sends the same one)."""
    credits: HoldCredits
    ttl_s: TtlSeconds = DEFAULT_HOLD_TTL_S
    """Seconds until the hold expires unless it is settled, released or extended first."""


class ExtendHoldBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ttl_s: TtlSeconds
    """The hold then expires this many seconds after the ledger clock's now."""


class HoldController(V1Controller):
    path = "/subscriptions/{sub:str}/seats/{seat:str}/holds"

    @post(
        "/",
        summary="Hold credits for a seat before serving (201; 200 when this hold exists already)",
        guards=[requires(HOLDERS)],
        responses={HTTP_200_OK: again(HoldView, "This hold id was placed already, so")},
    )
    async def post_hold(
        self,
        writes: Injected[Writes],
        principal: Injected[Principal],
        sub: PathId,
        seat: PathId,
        data: JSONBody[PlaceHoldBody],
    ) -> Response[HoldView]:
        command = PlaceHold(
            sub,
            seat,
            data.hold_id,
            parse_credits(data.credits),
            int(data.ttl_s),
            actor_of(principal),
        )
        outcome = await writes.execute(command)
        if outcome.status == "rejected":
            raise refused(outcome, sub)
        status = HTTP_201_CREATED if outcome.records else HTTP_200_OK
        return Response(_hold(writes, sub, seat, data.hold_id), status_code=status)

    @get("/{hold:str}", summary="One hold of a seat", guards=[requires(SEAT_READERS)])
    async def get_hold(
        self, reads: Injected[Reads], sub: PathId, seat: PathId, hold: PathId, as_of: AsOf = None
    ) -> HoldView:
        async with reads.subscription(sub, as_of) as (balances, now):
            return hold_view(_row(balances.holds.get((sub, hold)), sub, seat, hold), now)

    @delete(
        "/{hold:str}",
        status_code=HTTP_200_OK,
        summary="Release a hold (releasing an ended hold changes nothing)",
        guards=[requires(HOLDERS)],
    )
    async def delete_hold(
        self,
        writes: Injected[Writes],
        principal: Injected[Principal],
        sub: PathId,
        seat: PathId,
        hold: PathId,
    ) -> HoldView:
        outcome = await writes.execute(ReleaseHold(sub, seat, hold, actor_of(principal)))
        if outcome.status == "rejected":
            raise refused(outcome, sub)
        return _hold(writes, sub, seat, hold)

    @post(
        "/{hold:str}/extend",
        status_code=HTTP_200_OK,
        summary="Extend an active hold: it expires ttl_s after now",
        guards=[requires(HOLDERS)],
    )
    async def post_extend(
        self,
        writes: Injected[Writes],
        principal: Injected[Principal],
        sub: PathId,
        seat: PathId,
        hold: PathId,
        data: JSONBody[ExtendHoldBody],
    ) -> HoldView:
        outcome = await writes.execute(
            ExtendHold(sub, seat, hold, int(data.ttl_s), actor_of(principal))
        )
        if outcome.status == "rejected":
            raise refused(outcome, sub)
        return _hold(writes, sub, seat, hold)


def _row(row: HoldRow | None, sub: str, seat: str, hold: str) -> HoldRow:
    """The hold of this seat; another seat's hold is no hold of this one (404)."""
    if row is None or row.seat_id != seat:
        raise Problem("not-found", f"no hold {hold!r} for seat {seat!r} in subscription {sub!r}")
    return row


def _hold(writes: Writes, sub: str, seat: str, hold: str) -> HoldView:
    """The hold as the live balances hold it after a write."""
    with writes.live.reading() as balances:
        return hold_view(_row(balances.holds.get((sub, hold)), sub, seat, hold), writes.now())
