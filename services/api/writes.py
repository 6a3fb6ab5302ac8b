"""The admin writes' way to the ledger: a command goes to the single writer, which answers once
the live balances have folded it, so the state a write answers with includes that write."""

from __future__ import annotations

from ledger.application import Outcome
from ledger.errors import UnknownSubscription
from projections.balances import pack_balance, seat_balance
from projections.live import BalanceSource
from schemas.commands import Command
from schemas.read_models import PackBalance
from services.api.problems import REJECTION_PROBLEMS, Problem, no_subscription
from services.api.views import OverviewView, SeatView, overview_view, seat_view
from services.writer import Writer


class Writes:
    """Commands through `writer`; what they left in `live`, the balances it catches up."""

    def __init__(self, writer: Writer, live: BalanceSource) -> None:
        self.writer = writer
        self.live = live

    async def execute(self, command: Command) -> Outcome:
        [outcome] = await self.writer.execute([command])
        if outcome.records:
            assert self.live.position >= outcome.records[-1].position, "the writer caught up"
        return outcome

    def seat(self, sub: str, seat_id: str) -> SeatView:
        with self.live.reading() as balances:
            return seat_view(seat_balance(balances.seats[(sub, seat_id)]), balances)

    def overview(self, sub: str) -> OverviewView | None:
        with self.live.reading() as balances:
            return overview_view(balances, sub) if sub in balances.subscriptions else None

    def pack(self, sub: str, pack_id: str) -> PackBalance:
        with self.live.reading() as balances:
            return pack_balance(balances.packs[(sub, pack_id)])


def refused(outcome: Outcome, sub: str) -> Problem:
    """The problem a command the ledger rejected answers with."""
    assert outcome.status == "rejected" and outcome.reason is not None
    if outcome.reason == UnknownSubscription.reason:
        return no_subscription(sub)
    detail = outcome.detail or outcome.reason
    return Problem(REJECTION_PROBLEMS[outcome.reason], detail, reason=outcome.reason)
