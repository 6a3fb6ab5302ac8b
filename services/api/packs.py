"""The pack resource: the subscription's packs, and buying one (admins)."""

from __future__ import annotations

from litestar import Response, get, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from projections.balances import pack_balances
from schemas.commands import BuyPack
from schemas.events import PackPurchased
from services.api.bodies import AsOf, BuyPackBody, IdempotencyKey, PathId, pack_id_for
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.document import OptionalBodyOperation
from services.api.guards import ADMINS, SUBSCRIPTION_READERS, requires
from services.api.problems import again
from services.api.reads import Reads
from services.api.views import PackList, PackView, pack_view
from services.api.writes import Writes, actor_of, refused
from services.auth.tokens import Principal


class PackController(V1Controller):
    path = "/subscriptions/{sub:str}/packs"

    @get(
        "/",
        summary="Every pack of the subscription",
        guards=[requires(SUBSCRIPTION_READERS)],
    )
    async def get_packs(self, reads: Injected[Reads], sub: PathId, as_of: AsOf = None) -> PackList:
        async with reads.subscription(sub, as_of) as (balances, now):
            return PackList([pack_view(pack, now) for pack in pack_balances(balances, sub)])

    @post(
        "/",
        summary="Buy a shared quota pack (201; 200 when this pack id was bought already)",
        guards=[requires(ADMINS)],
        operation_class=OptionalBodyOperation,
        responses={HTTP_200_OK: again(PackView, "This pack id was bought already")},
    )
    async def post_pack(
        self,
        reads: Injected[Reads],
        writes: Injected[Writes],
        principal: Injected[Principal],
        sub: PathId,
        data: JSONBody[BuyPackBody | None] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[PackView]:
        pack_id = (data.pack_id if data is not None else None) or pack_id_for(sub, idempotency_key)
        reason = None if data is None else data.reason
        outcome = await writes.execute(BuyPack(sub, pack_id, actor_of(principal), reason))
        if outcome.status == "rejected":
            raise refused(outcome, sub)
        bought = any(isinstance(record.event(), PackPurchased) for record in outcome.records)
        return Response(
            pack_view(writes.pack(sub, pack_id), reads.now()),
            status_code=HTTP_201_CREATED if bought else HTTP_200_OK,
        )
