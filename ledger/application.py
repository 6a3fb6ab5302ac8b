"""The write path: decide a batch of commands against the in-memory state and append every
resulting event in one transaction, at one recorded instant taken from the injected clock.

A `Ledger` keeps its state folded from the log at start and in step with every append. Several
ledgers (processes) may write one log: each append carries the position its batch was decided
on (`expected_position`), and when another writer appended in between the store refuses it
(`ConcurrentAppend`); the ledger then undoes its speculative state, catches up and decides
once more holding the append lock, where no other writer can come first. An append under
a partition lease carries its `Fence`; a lost lease (`LeaseLost`) undoes the batch and is
raised to the caller. Any other failed append folds the state again from the log, so memory
never holds a decision the log does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import msgspec

from ledger.clock import Clock
from ledger.decider import decide
from ledger.errors import ConcurrentAppend, InsufficientCredits, Rejected, Undecidable
from ledger.idempotency import UsageKey, payload_digest, usage_key
from ledger.leases import Fence
from ledger.log import EventStore, StoredRecord, charge_on_record, recorded_instant
from ledger.rate_card import RateCard
from ledger.snapshots import SnapshotStore, decode_state, newest_valid
from ledger.state import (
    LedgerState,
    SubscriptionState,
    copy_subscription,
    evolve,
    initial_state,
    revert_charge,
)
from schemas.commands import AdvanceClock, ChargeUsage, Command, ReverseCharge
from schemas.events import LogEvent, UsageCharged
from schemas.usage import UsageEvent

OutcomeStatus = Literal["applied", "duplicate", "rejected"]
_Decided = tuple[OutcomeStatus, list[LogEvent], int, Rejected | None]
"""One command's status, events, credits charged, and refusal."""


class Outcome(msgspec.Struct, frozen=True):
    """What became of one command: its events and their positions, or why it was refused."""

    status: OutcomeStatus
    records: tuple[StoredRecord, ...] = ()
    reason: str | None = None
    detail: str | None = None
    charged_ucr: int = 0
    """What this command charged (its `usage.charged` event), so a caller counting credits
    need not decode the records again."""
    available_ucr: int | None = None
    """With `insufficient_credits`: what was available."""


class Ledger:
    def __init__(
        self,
        store: EventStore,
        rate_card: RateCard,
        clock: Clock,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        """The writer over `store`, its state folded from the newest valid of `snapshots` (when
        given) and the records after it, or from the whole log."""
        self.store = store
        self.rate_card = rate_card
        self.clock = clock
        self.state: LedgerState = initial_state()
        self.position = 0
        self.recorded_at_us = 0
        """The recorded time of the record at `position`."""
        self.concurrent_appends = 0
        """Appends refused because another writer appended first (each was decided again)."""
        if snapshots is not None:
            start = newest_valid(snapshots, store, lambda found: decode_state(found.state))
            if start is not None:
                self.state, self.position = start.value, start.position
                self.recorded_at_us = start.recorded_at_us
        self.catch_up()

    def catch_up(self) -> int:
        """Fold whatever the log holds beyond our position (all of it at start)."""
        for record in self.store.read(after=self.position):
            evolve(self.state, record.event())
            self.position = record.position
            self.recorded_at_us = record.recorded_at_us
        return self.position

    def charge(self, usages: Sequence[UsageEvent], fence: Fence | None = None) -> list[Outcome]:
        commands = [ChargeUsage(usage, payload_digest(usage)) for usage in usages]
        return self.execute(commands, fence=fence)

    def tick(self, fence: Fence | None = None) -> Outcome:
        """Append the cycle starts and pack expiries that fell due by the clock's now."""
        return self.execute([AdvanceClock()], fence=fence)[0]

    def execute(self, commands: Sequence[Command], *, fence: Fence | None = None) -> list[Outcome]:
        """Decide `commands` on the state at the head and append the events in one
        transaction; decide again on a newer head when another writer appended first."""
        try:
            return self._execute_once(commands, fence)
        except ConcurrentAppend:
            self.concurrent_appends += 1
        # Holding the append lock, so it cannot be refused again. Left optimistic, the writer
        # that lost would keep losing to the one that just won, which needs no catch-up before
        # its next decision (measured: two busy workers fell to a tenth of one).
        with self.store.exclusive():
            return self._execute_once(commands, fence)

    def _execute_once(self, commands: Sequence[Command], fence: Fence | None) -> list[Outcome]:
        if self.store.head().position != self.position:
            self.catch_up()
        at_us = max(self.clock.now_us(), self.recorded_at_us)
        at = recorded_instant(at_us)
        charged = self._prior_charges(commands)
        commands = self._with_charges_on_record(commands)
        undo = _Undo(self.state)
        try:
            decided, batch = self._decide(commands, at, charged, undo)
        except BaseException:  # `evolve` refused an event `decide` made: a bug; start afresh
            self._refold()
            raise
        try:
            records = self.store.append(batch, at_us, expected_position=self.position, fence=fence)
        except BaseException:
            # Nothing was written, so the state goes back to `position` exactly. (Should a
            # commit have happened after all, the next call finds the head moved and folds it.)
            undo.restore()
            raise
        if records:
            self.position = records[-1].position
            self.recorded_at_us = at_us
        return self._outcomes(decided, records)

    def _decide(
        self,
        commands: Sequence[Command],
        at: datetime,
        charged: dict[UsageKey, str],
        undo: _Undo,
    ) -> tuple[list[_Decided], list[LogEvent]]:
        """Decide each command on the state its predecessors in the batch left, folding its
        events at once; a command the rules refuse (or that cannot be decided) is refused
        alone, and the batch goes on."""
        decided: list[_Decided] = []
        batch: list[LogEvent] = []
        for command in commands:
            if isinstance(command, ChargeUsage):
                prior = charged.get(usage_key(command.usage))
                if prior is not None:
                    command = msgspec.structs.replace(command, prior_digest=prior)
            try:
                events = decide(self.state, command, at, self.rate_card)
            except Rejected as refusal:
                decided.append(("rejected", [], 0, refusal))
                continue
            except Exception as error:  # `decide` is pure: nothing to undo for this command
                decided.append(("rejected", [], 0, Undecidable(f"{type(error).__name__}: {error}")))
                continue
            charged_ucr = 0
            for event in events:
                undo.save(event)
                evolve(self.state, event)
                if type(event) is UsageCharged:
                    charged[(event.subscription_id, event.event_id)] = event.payload_digest
                    charged_ucr += event.credits_ucr
            duplicate = isinstance(command, ChargeUsage) and not events
            decided.append(("duplicate" if duplicate else "applied", events, charged_ucr, None))
            batch.extend(events)
        return decided, batch

    def _prior_charges(self, commands: Sequence[Command]) -> dict[UsageKey, str]:
        keys = [usage_key(c.usage) for c in commands if isinstance(c, ChargeUsage)]
        if not keys:
            return {}
        return {key: prior.payload_digest for key, prior in self.store.prior_charges(keys).items()}

    def _with_charges_on_record(self, commands: Sequence[Command]) -> Sequence[Command]:
        """Reversals carry the charge they reverse, as the log holds it (the decider reads no
        store)."""
        keys = [(c.subscription_id, c.event_id) for c in commands if isinstance(c, ReverseCharge)]
        if not keys:
            return commands
        priors = self.store.prior_charges(keys)
        found = {key: charge_on_record(self.store, prior.position) for key, prior in priors.items()}
        return [
            msgspec.structs.replace(c, on_record=found.get((c.subscription_id, c.event_id)))
            if isinstance(c, ReverseCharge)
            else c
            for c in commands
        ]

    def _refold(self) -> None:
        self.state, self.position, self.recorded_at_us = initial_state(), 0, 0
        self.catch_up()

    @staticmethod
    def _outcomes(decided: list[_Decided], records: list[StoredRecord]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        offset = 0
        for status, events, charged_ucr, refusal in decided:
            if refusal is not None:
                available = (
                    refusal.available_ucr if isinstance(refusal, InsufficientCredits) else None
                )
                outcomes.append(
                    Outcome(
                        "rejected",
                        reason=refusal.reason,
                        detail=refusal.detail,
                        available_ucr=available,
                    )
                )
                continue
            end = offset + len(events)
            outcomes.append(Outcome(status, tuple(records[offset:end]), charged_ucr=charged_ucr))
            offset = end
        return outcomes


class _Undo:
    """What a batch's speculative `evolve` calls changed, to put back when its append is refused.

    A charge only moves credits, so it is undone by moving them back (`revert_charge`): the fast
    path copies nothing. Before any other event first touches a subscription, a copy of it is
    kept (None: it did not exist); the charges folded into it before that copy are reverted on
    the copy.
    """

    def __init__(self, state: LedgerState) -> None:
        self._state = state
        self._saved: dict[str, SubscriptionState | None] = {}
        self._charges: list[UsageCharged] = []

    def save(self, event: LogEvent) -> None:
        subscription_id = event.subscription_id
        if type(event) is UsageCharged:
            if subscription_id not in self._saved:
                self._charges.append(event)
            return
        if subscription_id not in self._saved:
            current = self._state.subscriptions.get(subscription_id)
            self._saved[subscription_id] = None if current is None else copy_subscription(current)

    def restore(self) -> None:
        subscriptions = self._state.subscriptions
        for subscription_id, saved in self._saved.items():
            if saved is None:
                subscriptions.pop(subscription_id, None)
            else:
                subscriptions[subscription_id] = saved
        for charge in reversed(self._charges):
            revert_charge(subscriptions[charge.subscription_id], charge)
