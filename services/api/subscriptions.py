"""The subscription resource: opening one (admins), and its overview and billing summary."""

from __future__ import annotations

from urllib.parse import quote

from litestar import Response, get, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from ledger.application import Outcome
from ledger.errors import SubscriptionExists
from schemas.commands import OpenSubscription
from schemas.instants import instant_text
from services.api.bodies import AsOf, OpenSubscriptionBody, PathId
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.guards import ADMINS, SUBSCRIPTION_READERS, requires
from services.api.problems import Problem, again
from services.api.reads import Reads
from services.api.views import BillingView, OverviewView, billing_view, overview_view
from services.api.writes import Writes, actor_of, refused
from services.auth.tokens import Principal


class SubscriptionController(V1Controller):
    path = "/subscriptions"

    @get(
        "/{sub:str}/overview",
        summary="A subscription at a glance",
        guards=[requires(SUBSCRIPTION_READERS)],
    )
    async def get_overview(
        self, reads: Injected[Reads], sub: PathId, as_of: AsOf = None
    ) -> OverviewView:
        async with reads.subscription(sub, as_of) as (balances, now):
            return overview_view(balances, sub, now)

    @get(
        "/{sub:str}/billing",
        summary="Credits, balance, next expiration",
        guards=[requires(SUBSCRIPTION_READERS)],
    )
    async def get_billing(
        self, reads: Injected[Reads], sub: PathId, as_of: AsOf = None
    ) -> BillingView:
        async with reads.subscription(sub, as_of) as (balances, now):
            return billing_view(balances, sub, now)

    @post(
        "/",
        summary="Open a subscription (201; 200 when it exists already with this anchor)",
        guards=[requires(ADMINS)],
        responses={HTTP_200_OK: again(OverviewView, "The subscription existed already")},
    )
    async def post_subscription(
        self,
        writes: Injected[Writes],
        principal: Injected[Principal],
        data: JSONBody[OpenSubscriptionBody],
    ) -> Response[OverviewView]:
        sub = data.subscription_id
        command = OpenSubscription(sub, data.anchor_at(), actor_of(principal), data.reason)
        outcome = await writes.execute(command)
        created = outcome.status != "rejected"
        if not created:
            _check_opened_already(writes, data, outcome)
        view = writes.overview(sub)
        assert view is not None, "an opened subscription is in the balances"
        return Response(
            view,
            status_code=HTTP_201_CREATED if created else HTTP_200_OK,
            headers={"Location": f"/v1/subscriptions/{quote(sub, safe=':@')}/overview"},
        )


def _check_opened_already(writes: Writes, data: OpenSubscriptionBody, outcome: Outcome) -> None:
    """A refused open is a repeat (200) when the subscription exists with the anchor asked for
    (or none was asked for); else the refusal's problem."""
    sub = data.subscription_id
    with writes.live.reading() as balances:
        existing = balances.subscriptions.get(sub)
        anchor = None if existing is None else existing.anchor
    if outcome.reason != SubscriptionExists.reason or anchor is None:
        raise refused(outcome, sub)
    asked = data.anchor_at()
    if asked is not None and asked != anchor:
        raise Problem(
            "subscription-exists",
            f"subscription {sub!r} exists with anchor {instant_text(anchor)}",
            reason=outcome.reason,
        )
