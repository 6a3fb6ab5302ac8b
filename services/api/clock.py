"""The ledger clock resource: its now (any token), and moving a manual clock forward (admins),
which appends the cycle starts and pack expiries that fall due."""

from __future__ import annotations

from typing import Final

from litestar import get, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from ledger.clock import Clock, ManualClock, SharedManualClock
from ledger.log import EventStore, us_from_datetime
from schemas.commands import AdvanceClock
from schemas.events import CycleStarted, PackExpired
from schemas.instants import instant_text
from services.api.bodies import ClockBody
from services.api.controller import V1Controller
from services.api.dependencies import Injected
from services.api.guards import ADMINS, EVERY_ROLE, requires
from services.api.problems import Problem
from services.api.reads import Reads
from services.api.views import ClockAdvanced, ClockView, clock_advanced
from services.api.writes import Writes

MANUAL_CLOCKS: Final = (ManualClock, SharedManualClock)
"""The clocks `POST /v1/clock` may move."""


class ClockController(V1Controller):
    path = "/clock"

    @get(
        "/",
        summary="The ledger clock's now, and whether it is manual",
        guards=[requires(EVERY_ROLE)],
    )
    async def get_clock(self, reads: Injected[Reads], clock: Injected[Clock]) -> ClockView:
        return ClockView(reads.now(), isinstance(clock, MANUAL_CLOCKS))

    @post(
        "/",
        status_code=HTTP_200_OK,
        summary="Move a manual clock forward, then append the cycle starts and expiries due",
        guards=[requires(ADMINS)],
    )
    async def post_clock(
        self,
        reads: Injected[Reads],
        clock: Injected[Clock],
        events: Injected[EventStore],
        writes: Injected[Writes],
        data: JSONBody[ClockBody],
    ) -> ClockAdvanced:
        if not isinstance(clock, MANUAL_CLOCKS):
            raise Problem(
                "clock-not-manual",
                "the ledger runs on the system clock; only LEDGER_CLOCK=manual may be moved",
            )
        before = reads.now()
        # The ticker of `ledger serve` may append what fell due before this request's own tick:
        # everything after this position is what the move made due, whoever appended it.
        position_before = events.head().position
        try:
            clock.set(us_from_datetime(data.now_at()))
        except ValueError:
            raise Problem(
                "clock-backwards",
                f"now: {data.now} is before the ledger clock's {instant_text(before)}:"
                f" send an instant at or after {instant_text(before)}",
                parameter="now",
            ) from None
        await writes.execute(AdvanceClock())
        appended = [
            event
            for record in events.read(after=position_before)
            if isinstance(event := record.event(), CycleStarted | PackExpired)
        ]
        return clock_advanced(reads.now(), appended)
