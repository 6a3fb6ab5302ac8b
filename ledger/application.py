"""The write path: decide a batch of commands against the in-memory state and append every
resulting event in one transaction, at one recorded instant taken from the injected clock.

One `Ledger` is the single writer of its log. Its state is folded from the log at start and
kept in step with every append; when an append fails, the state is folded again from the log,
so memory never holds a decision the log does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from ledger.clock import Clock
from ledger.decider import decide
from ledger.errors import Rejected
from ledger.idempotency import UsageKey, payload_digest, usage_key
from ledger.log import EventStore, StoredRecord, datetime_from_us
from ledger.rate_card import RateCard
from ledger.state import LedgerState, evolve, initial_state
from schemas.commands import AdvanceClock, ChargeUsage, Command
from schemas.events import LogEvent, UsageCharged
from schemas.usage import UsageEvent

OutcomeStatus = Literal["applied", "duplicate", "rejected"]


class Outcome(msgspec.Struct, frozen=True):
    """What became of one command: its events and their positions, or why it was refused."""

    status: OutcomeStatus
    records: tuple[StoredRecord, ...] = ()
    reason: str | None = None
    detail: str | None = None


class Ledger:
    def __init__(self, store: EventStore, rate_card: RateCard, clock: Clock) -> None:
        self.store = store
        self.rate_card = rate_card
        self.clock = clock
        self.state: LedgerState = initial_state()
        self.position = 0
        self.catch_up()

    def catch_up(self) -> int:
        """Fold whatever the log holds beyond our position (all of it at start)."""
        for record in self.store.read(after=self.position):
            evolve(self.state, record.event())
            self.position = record.position
        return self.position

    def charge(self, usages: Sequence[UsageEvent]) -> list[Outcome]:
        return self.execute([ChargeUsage(usage, payload_digest(usage)) for usage in usages])

    def tick(self) -> Outcome:
        """Append the cycle starts and pack expiries that fell due by the clock's now."""
        return self.execute([AdvanceClock()])[0]

    def execute(self, commands: Sequence[Command]) -> list[Outcome]:
        head = self.store.head()
        if head.position != self.position:
            self.catch_up()
        at_us = max(self.clock.now_us(), head.recorded_at_us)
        at = datetime_from_us(at_us)
        charged = self._prior_charges(commands)
        decided: list[tuple[OutcomeStatus, list[LogEvent], Rejected | None]] = []
        batch: list[LogEvent] = []
        try:
            for command in commands:
                if isinstance(command, ChargeUsage):
                    prior = charged.get(usage_key(command.usage))
                    if prior is not None:
                        command = msgspec.structs.replace(command, prior_digest=prior)
                try:
                    events = decide(self.state, command, at, self.rate_card)
                except Rejected as refusal:
                    decided.append(("rejected", [], refusal))
                    continue
                for event in events:
                    evolve(self.state, event)
                    if isinstance(event, UsageCharged):
                        charged[(event.subscription_id, event.event_id)] = event.payload_digest
                duplicate = isinstance(command, ChargeUsage) and not events
                decided.append(("duplicate" if duplicate else "applied", events, None))
                batch.extend(events)
            records = self.store.append(batch, at_us)
        except BaseException:
            self._refold()
            raise
        if records:
            self.position = records[-1].position
        return self._outcomes(decided, records)

    def _prior_charges(self, commands: Sequence[Command]) -> dict[UsageKey, str]:
        keys = [usage_key(c.usage) for c in commands if isinstance(c, ChargeUsage)]
        if not keys:
            return {}
        return {key: prior.payload_digest for key, prior in self.store.prior_charges(keys).items()}

    def _refold(self) -> None:
        self.state, self.position = initial_state(), 0
        self.catch_up()

    @staticmethod
    def _outcomes(
        decided: list[tuple[OutcomeStatus, list[LogEvent], Rejected | None]],
        records: list[StoredRecord],
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        offset = 0
        for status, events, refusal in decided:
            if refusal is not None:
                outcomes.append(Outcome("rejected", reason=refusal.reason, detail=refusal.detail))
                continue
            outcomes.append(Outcome(status, tuple(records[offset : offset + len(events)])))
            offset += len(events)
        return outcomes
