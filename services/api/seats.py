"""The seat resource: a seat's balance and the gateway's pre-check (any role that sees the
subscription), and adding, re-tiering and removing seats (admins)."""

from __future__ import annotations

import msgspec
from litestar import Response, delete, get, patch, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from ledger.application import Outcome
from ledger.errors import SeatExists, SeatIsRemoved
from projections.balances import seat_balance
from schemas.commands import AddSeat, ChangeTier, RemoveSeat
from services.api.bodies import AddSeatBody, AsOf, ChangeTierBody, PathId, ReasonQuery
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.guards import ADMINS, SEAT_READERS, requires
from services.api.problems import Problem, again
from services.api.reads import Reads
from services.api.views import AuthorizationView, SeatView, authorization, seat_view
from services.api.writes import Writes, actor_of, refused
from services.auth.tokens import Principal


class SeatController(V1Controller):
    path = "/subscriptions/{sub:str}/seats"

    @get("/{seat:str}", summary="One seat's balance and status", guards=[requires(SEAT_READERS)])
    async def get_seat(
        self, reads: Injected[Reads], sub: PathId, seat: PathId, as_of: AsOf = None
    ) -> SeatView:
        async with reads.subscription(sub, as_of) as (balances, now):
            row = balances.seats.get((sub, seat))
            if row is None:
                raise Problem("not-found", f"no seat {seat!r} in subscription {sub!r}")
            return seat_view(seat_balance(row), balances, now)

    @get(
        "/{seat:str}/authorization",
        summary="Gateway pre-check: may this seat spend now?",
        guards=[requires(SEAT_READERS)],
    )
    async def get_authorization(
        self, reads: Injected[Reads], sub: PathId, seat: PathId, as_of: AsOf = None
    ) -> AuthorizationView:
        async with reads.subscription(sub, as_of) as (balances, now):
            return authorization(balances, sub, seat, now)

    @post(
        "/",
        summary="Add a seat (201; 200 when it exists already with this tier)",
        guards=[requires(ADMINS)],
        responses={HTTP_200_OK: again(SeatView, "The seat existed already with this tier")},
    )
    async def post_seat(
        self,
        writes: Injected[Writes],
        principal: Injected[Principal],
        sub: PathId,
        data: JSONBody[AddSeatBody],
    ) -> Response[SeatView]:
        command = AddSeat(sub, data.seat_id, data.tier, actor_of(principal), data.reason)
        outcome = await writes.execute(command)
        if outcome.status == "rejected":
            _check_added_already(writes, sub, data, outcome)
            return Response(writes.seat(sub, data.seat_id), status_code=HTTP_200_OK)
        return Response(writes.seat(sub, data.seat_id), status_code=HTTP_201_CREATED)

    @patch(
        "/{seat:str}",
        summary="Change a seat's tier (an upgrade now, a downgrade at the next cycle start)",
        guards=[requires(ADMINS)],
    )
    async def patch_seat(
        self,
        writes: Injected[Writes],
        principal: Injected[Principal],
        sub: PathId,
        seat: PathId,
        data: JSONBody[ChangeTierBody],
    ) -> SeatView:
        command = ChangeTier(sub, seat, data.tier, actor_of(principal), data.reason)
        outcome = await writes.execute(command)
        if outcome.status == "rejected":
            raise refused(outcome, sub)
        return writes.seat(sub, seat)

    @delete(
        "/{seat:str}",
        status_code=HTTP_200_OK,
        summary="Remove a seat (its history stays; removing it again changes nothing)",
        guards=[requires(ADMINS)],
    )
    async def delete_seat(
        self,
        writes: Injected[Writes],
        principal: Injected[Principal],
        sub: PathId,
        seat: PathId,
        reason: ReasonQuery = None,
    ) -> SeatView:
        outcome = await writes.execute(RemoveSeat(sub, seat, actor_of(principal), reason))
        if outcome.status == "rejected":
            raise refused(outcome, sub)
        return writes.seat(sub, seat)


def _check_added_already(writes: Writes, sub: str, data: AddSeatBody, outcome: Outcome) -> None:
    """A refused add is a repeat (200) when the seat exists, not removed, with this tier; else
    the refusal's problem."""
    with writes.live.reading() as balances:
        row = balances.seats.get((sub, data.seat_id))
        row = None if row is None else msgspec.structs.replace(row)  # a copy to keep
    if outcome.reason != SeatExists.reason or row is None:
        raise refused(outcome, sub)
    if row.status == "removed":
        raise Problem(
            "seat-removed", f"seat {data.seat_id!r} was removed", reason=SeatIsRemoved.reason
        )
    if row.tier != data.tier:
        raise Problem(
            "seat-exists",
            f"seat {data.seat_id!r} exists with tier {row.tier!r}: change it with PATCH",
            reason=outcome.reason,
        )
