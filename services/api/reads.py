"""Where the API's reads answer from: the live balances, the balances replayed as of a point of
the log (`as_of`), and the read model tables of usage rows the projector writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Final, TypeVar

from ledger.clock import Clock
from ledger.log import EPOCH, EventStore, StoredRecord, datetime_from_us
from ledger.snapshots import SnapshotStore
from projections.balances import Balances
from projections.history import HistoryPage, HistoryQuery
from projections.live import BalanceSource
from projections.read_store import ReadModelReader
from projections.replay import (
    POSITION_PREFIX,
    AsOfBeyondHead,
    InvalidAsOf,
    resolve_as_of,
)
from projections.snapshots import SubscriptionHistory
from projections.usage import UsageQuery
from schemas.instants import instant_from_text
from schemas.read_models import UsagePage
from services.api.problems import RETRY_SOON, Problem, no_subscription
from services.as_of import AsOfBusy, AsOfPool

T = TypeVar("T")

USAGE_FRESHNESS_WAIT_S: Final = 2.0
"""Longest a usage page waits for the projector to fold what the live balances already show."""
USAGE_FRESHNESS_POLL_S: Final = 0.005


def parse_instant(text: str | None, parameter: str) -> datetime | None:
    """The instant a query parameter names, or a 400 problem that names the parameter."""
    if text is None:
        return None
    try:
        return instant_from_text(text)
    except ValueError as error:
        raise Problem("invalid-parameter", f"{parameter}: {error}", parameter=parameter) from None


def record_at(events: EventStore, position: int) -> StoredRecord | None:
    """The record at `position` of the log (None at position 0, before the first)."""
    records = list(events.read(after=position - 1, until=position)) if position else []
    return records[0] if records else None


class Reads:
    """The balances a read answers from, and the ledger clock's now.

    Current reads answer from the live balances in memory, on the caller's thread; reads of
    the past (`as_of`) touch the log, so they run on `past`, a bounded pool (503 past it).
    """

    def __init__(
        self,
        events: EventStore,
        live: BalanceSource,
        clock: Clock,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.events = events
        self.live = live
        self.clock = clock
        self.past = AsOfPool()
        self.history = SubscriptionHistory(events, snapshots)

    def now(self) -> datetime:
        return datetime_from_us(self.clock.now_us())

    async def position_of(self, as_of: str) -> int:
        """The log position `as_of` stands for, or a 400 problem (404 past the log's head)."""
        return await self._in_pool(lambda: self._position_of(as_of))

    def _position_of(self, as_of: str) -> int:
        try:
            return resolve_as_of(self.events, as_of)
        except InvalidAsOf as error:
            slug = "not-found" if isinstance(error, AsOfBeyondHead) else "invalid-parameter"
            detail = "as_of: " + str(error).removeprefix("as_of ")
            raise Problem(slug, detail, parameter="as_of") from None

    @asynccontextmanager
    async def subscription(
        self, sub: str, as_of: str | None
    ) -> AsyncIterator[tuple[Balances, datetime]]:
        """The balances holding subscription `sub` and the instant a read answers as of, or a
        404 problem when the subscription is not in them. Without `as_of`, the live balances,
        held still (no fold on the writer thread) until the `with` block ends; with it, that
        subscription's balances folded from its own records up to that point of the log."""
        if as_of is None:
            with self.live.reading() as balances:
                if sub not in balances.subscriptions:
                    raise no_subscription(sub)
                yield balances, self.now()
            return
        balances, instant = await self._in_pool(lambda: self._subscription_as_of(sub, as_of))
        if sub not in balances.subscriptions:
            raise no_subscription(sub)
        yield balances, instant

    def _subscription_as_of(self, sub: str, as_of: str) -> tuple[Balances, datetime]:
        position = self._position_of(as_of)
        instant = None if as_of.startswith(POSITION_PREFIX) else parse_instant(as_of, "as_of")
        if instant is None:
            record = record_at(self.events, position)
            instant = EPOCH if record is None else record.recorded_at
        return self.history.balances(sub, position), instant

    async def _in_pool(self, work: Callable[[], T]) -> T:
        try:
            return await self.past.run(work)
        except AsOfBusy:
            raise Problem(
                "as-of-busy", f"too many reads of the past at once: {RETRY_SOON}"
            ) from None


class UsageReader:
    """The API's own read-only reader of the read model tables (the projector writes them)."""

    def __init__(self, reader: ReadModelReader) -> None:
        self._reader = reader

    def page(self, query: UsageQuery) -> UsagePage:
        return self._reader.page(query)

    def history(self, query: HistoryQuery) -> HistoryPage:
        return self._reader.history(query)

    def admin_record(self, subscription_id: str, type_: str, key: str) -> StoredRecord | None:
        """The record of the admin write of this type about `key`, if the tables hold it."""
        return self._reader.admin_record(subscription_id, type_, key)

    def latest_admin_record(
        self, subscription_id: str, type_: str, until: int | None = None
    ) -> StoredRecord | None:
        """The record of the subscription's latest admin write of this type, if any."""
        return self._reader.latest_admin_record(subscription_id, type_, until)

    def checkpoint(self) -> int:
        """The log position the read model tables hold (0 before the first batch)."""
        return self._reader.checkpoint()

    async def caught_up(self, position: int) -> bool:
        """Wait (at most `USAGE_FRESHNESS_WAIT_S`) until the tables hold `position`, so a usage
        page shows a charge the balances already show; False when they still lag."""
        deadline = time.monotonic() + USAGE_FRESHNESS_WAIT_S
        while self.checkpoint() < position:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(USAGE_FRESHNESS_POLL_S)
        return True

    def close(self) -> None:
        self._reader.close()
