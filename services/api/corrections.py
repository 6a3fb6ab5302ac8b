"""Corrections (admins): seat adjustments, grants, reversals of a charge, voids of a pack or a
grant; and a subscription's history of admin writes, with who asked and why.

A correction answers with the log's record of it: 201 when this request made it; 200 with the
same answer when the same id came with the same body before (the retry is a no-op), 409 when
it came with another body. A void of what was voided already answers with that void.
"""

from __future__ import annotations

from typing import Annotated, Final

from litestar import Response, get, post
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from ledger.errors import DuplicateConflict
from projections.history import DEFAULT_HISTORY_ROWS, MAX_HISTORY_ROWS, HistoryQuery
from schemas.commands import AdjustSeat, GrantCredits, ReverseCharge, VoidGrant, VoidPack
from services.api.admin_views import (
    AdminActionView,
    GrantList,
    HistoryPageView,
    admin_action_view,
    grant_views,
)
from services.api.audit import MAX_AFTER_POSITION
from services.api.bodies import (
    AdjustmentBody,
    AsOf,
    GrantBody,
    PathId,
    ReversalBody,
    VoidBody,
)
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.guards import ADMINS, SUBSCRIPTION_READERS, requires
from services.api.problems import Problem, again, no_subscription
from services.api.reads import Reads, UsageReader
from services.api.writes import Writes, actor_of, refused
from services.auth.tokens import Principal


async def _corrected(
    writes: Writes,
    usage: UsageReader,
    command: AdjustSeat | GrantCredits | ReverseCharge | VoidPack | VoidGrant,
    recorded_as: tuple[str, str],
    reason: str | None,
) -> Response[AdminActionView]:
    """Execute `command`; answer with the record of the correction (type, id) it made, or with
    the one an earlier request made (`reason`, when given, must be the same as its)."""
    sub = command.subscription_id
    outcome = await writes.execute(command)
    if outcome.status == "rejected":
        raise refused(outcome, sub)
    type_, key = recorded_as
    for record in outcome.records:
        if record.event().__struct_config__.tag == type_:
            return Response(admin_action_view(record), status_code=HTTP_201_CREATED)
    if not await usage.caught_up(writes.live.position):
        raise Problem("store-unavailable", "the history is not caught up yet: retry in a second")
    earlier = usage.admin_record(sub, type_, key)
    if earlier is None:
        raise Problem("store-unavailable", "the history is not caught up yet: retry in a second")
    view = admin_action_view(earlier)
    if reason is not None and view.reason != reason:
        raise Problem(
            "duplicate-conflict",
            f"{key!r} was used before with another reason",
            reason=DuplicateConflict.reason,
        )
    return Response(view, status_code=HTTP_200_OK)


_AGAIN: Final = {HTTP_200_OK: again(AdminActionView, "Made before with this body: the same answer")}


class CorrectionController(V1Controller):
    path = "/subscriptions/{sub:str}"

    @post(
        "/seats/{seat:str}/adjustments",
        summary="Add credits to (or take them from) a seat's quota this cycle",
        guards=[requires(ADMINS)],
        responses=_AGAIN,
    )
    async def post_adjustment(
        self,
        writes: Injected[Writes],
        usage: Injected[UsageReader],
        principal: Injected[Principal],
        sub: PathId,
        seat: PathId,
        data: JSONBody[AdjustmentBody],
    ) -> Response[AdminActionView]:
        command = AdjustSeat(
            sub, seat, data.adjustment_id, data.credits_ucr(), data.reason, actor_of(principal)
        )
        return await _corrected(
            writes, usage, command, ("seat.adjusted", data.adjustment_id), data.reason
        )

    @get(
        "/grants",
        summary="Every grant of the subscription, soonest expiring first",
        guards=[requires(SUBSCRIPTION_READERS)],
    )
    async def get_grants(
        self, reads: Injected[Reads], sub: PathId, as_of: AsOf = None
    ) -> GrantList:
        async with reads.subscription(sub, as_of) as (balances, now):
            return grant_views(balances, sub, now)

    @post(
        "/grants",
        summary="Grant shared credits with their own expiry",
        guards=[requires(ADMINS)],
        responses=_AGAIN,
    )
    async def post_grant(
        self,
        writes: Injected[Writes],
        usage: Injected[UsageReader],
        principal: Injected[Principal],
        sub: PathId,
        data: JSONBody[GrantBody],
    ) -> Response[AdminActionView]:
        command = GrantCredits(
            sub,
            data.grant_id,
            data.credits_ucr(),
            data.expires_at_instant(),
            data.reason,
            actor_of(principal),
        )
        return await _corrected(
            writes, usage, command, ("grant.issued", data.grant_id), data.reason
        )

    @post(
        "/charges/{event_id:str}/reversals",
        summary="Reverse a charge, all that is left of it or part",
        guards=[requires(ADMINS)],
        responses=_AGAIN,
    )
    async def post_reversal(
        self,
        writes: Injected[Writes],
        usage: Injected[UsageReader],
        principal: Injected[Principal],
        sub: PathId,
        event_id: PathId,
        data: JSONBody[ReversalBody],
    ) -> Response[AdminActionView]:
        command = ReverseCharge(
            sub,
            event_id,
            data.reversal_id,
            data.reason,
            data.credits_ucr(),
            actor_of(principal),
        )
        return await _corrected(
            writes, usage, command, ("usage.reversed", data.reversal_id), data.reason
        )

    @post(
        "/packs/{pack:str}/void",
        summary="Void a pack: what it has left is removed",
        guards=[requires(ADMINS)],
        responses=_AGAIN,
    )
    async def post_pack_void(
        self,
        writes: Injected[Writes],
        usage: Injected[UsageReader],
        principal: Injected[Principal],
        sub: PathId,
        pack: PathId,
        data: JSONBody[VoidBody],
    ) -> Response[AdminActionView]:
        command = VoidPack(sub, pack, data.reason, actor_of(principal))
        return await _corrected(writes, usage, command, ("pack.voided", pack), None)

    @post(
        "/grants/{grant:str}/void",
        summary="Void a grant: what it has left is removed",
        guards=[requires(ADMINS)],
        responses=_AGAIN,
    )
    async def post_grant_void(
        self,
        writes: Injected[Writes],
        usage: Injected[UsageReader],
        principal: Injected[Principal],
        sub: PathId,
        grant: PathId,
        data: JSONBody[VoidBody],
    ) -> Response[AdminActionView]:
        command = VoidGrant(sub, grant, data.reason, actor_of(principal))
        return await _corrected(writes, usage, command, ("grant.voided", grant), None)


class HistoryController(V1Controller):
    path = "/subscriptions/{sub:str}/history"

    @get(
        "/",
        summary="Admin writes of the subscription, oldest first, with who asked and why",
        guards=[requires(SUBSCRIPTION_READERS)],
    )
    async def get_history(
        self,
        reads: Injected[Reads],
        usage: Injected[UsageReader],
        sub: PathId,
        after: Annotated[int, QueryParameter(ge=0, le=MAX_AFTER_POSITION)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_HISTORY_ROWS)] = DEFAULT_HISTORY_ROWS,
        as_of: AsOf = None,
    ) -> HistoryPageView:
        with reads.live.reading() as balances:
            if sub not in balances.subscriptions:
                raise no_subscription(sub)
        live = reads.live.position
        position = live if as_of is None else await reads.position_of(as_of)
        await usage.caught_up(live)
        page = usage.history(HistoryQuery(sub, after, position, limit))
        return HistoryPageView([admin_action_view(r) for r in page.items], page.next_after)
