"""The admin writes' way to the ledger: a command goes to the single writer, which answers once
the live balances have folded it, so the state a write answers with includes that write."""

from __future__ import annotations

from datetime import datetime

from ledger.application import Outcome
from ledger.clock import Clock
from ledger.errors import UnknownSubscription
from ledger.log import datetime_from_us
from ledger.money import format_credits
from projections.balances import pack_balance, seat_balance
from projections.live import BalanceSource
from schemas.commands import Command
from schemas.events import Actor
from schemas.read_models import PackBalance
from services.api.problems import REJECTION_PROBLEMS, Problem, no_subscription
from services.api.views import OverviewView, SeatView, overview_view, seat_view
from services.auth.tokens import Principal
from services.writer import Writer


class Writes:
    """Commands through `writer`; what they left in `live`, the balances it catches up, read
    at the ledger clock's now (what is available depends on which packs are valid)."""

    def __init__(self, writer: Writer, live: BalanceSource, clock: Clock) -> None:
        self.writer = writer
        self.live = live
        self.clock = clock

    async def execute(self, command: Command) -> Outcome:
        [outcome] = await self.writer.execute([command])
        if outcome.records:
            assert self.live.position >= outcome.records[-1].position, "the writer caught up"
        return outcome

    def now(self) -> datetime:
        return datetime_from_us(self.clock.now_us())

    def seat(self, sub: str, seat_id: str) -> SeatView:
        with self.live.reading() as balances:
            row = balances.seats[(sub, seat_id)]
            return seat_view(seat_balance(row), balances, self.now())

    def overview(self, sub: str) -> OverviewView | None:
        with self.live.reading() as balances:
            if sub not in balances.subscriptions:
                return None
            return overview_view(balances, sub, self.now())

    def pack(self, sub: str, pack_id: str) -> PackBalance:
        with self.live.reading() as balances:
            return pack_balance(balances.packs[(sub, pack_id)])


def actor_of(principal: Principal) -> Actor:
    """Who asks for an admin write, as the log records it: the token's id and role."""
    return Actor(principal.token_id, principal.role)


def refused(outcome: Outcome, sub: str) -> Problem:
    """The problem a command the ledger rejected answers with."""
    assert outcome.status == "rejected" and outcome.reason is not None
    if outcome.reason == UnknownSubscription.reason:
        return no_subscription(sub)
    detail = outcome.detail or outcome.reason
    extra = (
        {}
        if outcome.available_ucr is None
        else {"available": format_credits(outcome.available_ucr)}
    )
    return Problem(REJECTION_PROBLEMS[outcome.reason], detail, reason=outcome.reason, **extra)
