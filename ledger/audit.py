"""Audit: verify that the log was not altered and that every event follows from the rules.

One pass over the log checks, record by record: positions run 1, 2, 3… without a gap; each
`prev_hash` is the previous record's hash and each hash is recomputed from the record's bytes;
recorded times never go back; the bytes decode as a log event; every `usage.charged` re-prices
to the same components and credits under the rate card version it names, with an allocation
that is what the deduction order gives on the state folded so far (after the hold it settles
was released); every other event carries what the rules give on that state (a tier's quota,
what was left when a seat was removed, a pack or grant expired or a cycle ended, a cycle's
bounds, a hold's allocation and expiry, a reversal's parts); and folding the event neither
overdraws a seat, pack or grant, nor holds more than is there, nor adds anything twice, nor
moves a cycle backwards. At every cycle start and at the head, each subscription's credits
must balance: granted = remaining + used + expired + voided (ledger/conservation.py).

Every check is an explicit comparison that names the position: none is an `assert`, so the
audit is the same under `python -O`. A charge, nearly every record, is checked and folded on
its decoded stored form (ledger/records.py's `decode_stored`), which validates as fully as the
event and costs a fraction of building it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from ledger.chain import link_problem
from ledger.conservation import Books
from ledger.deduction import allocate
from ledger.errors import LogInconsistent
from ledger.event_rules import event_problem
from ledger.log import GENESIS_HASH, StoredRecord, datetime_from_us
from ledger.pricing import price
from ledger.rate_card import ModelRates, RateCard
from ledger.records import decode_stored, event_of, stored_types, stored_values
from ledger.state import LedgerState, SubscriptionState, evolve, fold_charge, initial_state
from schemas.commands import ChargeOnRecord
from schemas.events import (
    ADMIN_EVENTS,
    CORRECTION_EVENTS,
    ChargeReversed,
    CycleStarted,
    LogEvent,
    UsageCharged,
)

AUDIT_PROGRESS_EVERY_RECORDS = 10_000

ChargeLookup = Callable[[str, str], ChargeOnRecord | None]
"""(subscription_id, event_id) -> the charge as the log holds it, for re-deriving reversals."""


class AuditFailure(msgspec.Struct, frozen=True):
    position: int
    reason: str


class AuditReport(msgspec.Struct, frozen=True):
    records: int
    head_hash: str
    failure: AuditFailure | None = None
    admin_writes: int = 0
    """Records of admin writes checked (each names who asked, when the log recorded it)."""
    corrections: int = 0
    """Of which corrections: adjustments, grants, reversals, voids."""

    @property
    def ok(self) -> bool:
        return self.failure is None


def verify(
    records: Iterable[StoredRecord],
    rate_card: RateCard,
    on_progress: Callable[[int], None] | None = None,
    charges: ChargeLookup | None = None,
    on_admin_write: Callable[[int, LogEvent], None] | None = None,
) -> AuditReport:
    """Check every record in order; stop at the first that is wrong.

    `charges` finds a reversed charge in the store; without it the audit keeps every charge it
    has seen in memory (fine for short logs). `on_admin_write` is told of each admin write
    (corrections included) once it has been checked, with its position."""
    auditor = _Auditor(rate_card, charges, on_admin_write)
    checked, prev_hash, prev_time = 0, GENESIS_HASH, 0
    for record in records:
        problem = auditor.problem(record, checked + 1, prev_hash, prev_time)
        if problem is not None:
            failure = AuditFailure(min(record.position, checked + 1), problem)
            return AuditReport(checked, prev_hash.hex(), failure, *auditor.admin_counts)
        checked, prev_hash, prev_time = record.position, record.hash, record.recorded_at_us
        if on_progress is not None and checked % AUDIT_PROGRESS_EVERY_RECORDS == 0:
            on_progress(checked)
    problem = auditor.books.problem(auditor.state)
    at_head = None if problem is None else AuditFailure(checked, problem)
    return AuditReport(checked, prev_hash.hex(), at_head, *auditor.admin_counts)


def _who_asked(event: object) -> str:
    """Who asked for an admin write and why, for the audit's failure message."""
    actor = getattr(event, "actor", None)
    if actor is None:
        return ""
    reason = getattr(event, "reason", None)
    return f" (asked by token {actor.token_id} ({actor.role}), reason: {reason!r})"


class _Auditor:
    """The state folded so far, and what re-deriving the next record needs."""

    def __init__(
        self,
        rate_card: RateCard,
        charges: ChargeLookup | None,
        on_admin_write: Callable[[int, LogEvent], None] | None = None,
    ) -> None:
        self._on_admin_write = on_admin_write
        self.state: LedgerState = initial_state()
        self.books = Books()
        self.rate_card = rate_card
        self._lookup = charges
        self._seen: dict[tuple[str, str], ChargeOnRecord] = {}
        self.admin_counts = [0, 0]
        """Admin writes, and corrections among them, checked so far."""
        self._rates: dict[tuple[str, str], Rates | str] = {}
        self._at_us, self._at = 0, datetime_from_us(0)
        self._charge_types = stored_types(UsageCharged)

    def problem(
        self, record: StoredRecord, expected_position: int, prev_hash: bytes, prev_time_us: int
    ) -> str | None:
        """What is wrong with this record, if anything; folds it when it is sound."""
        problem = link_problem(record, expected_position, prev_hash, prev_time_us)
        if problem is not None:
            return problem
        try:
            stored = decode_stored(record.data)
        except msgspec.DecodeError as error:
            return f"not a log event: {error}"
        at = self._instant(record.recorded_at_us)
        if type(stored) in self._charge_types:
            # Nearly every record: checked and folded on its stored form, never built as an event.
            return self._charge_problem(stored, at)
        return self._event_problem(event_of(stored), record.position, at)

    def _charge_problem(self, charge: UsageCharged, at: datetime) -> str | None:
        rates = self._rates_of(charge.rate_card_version, charge.model)
        if isinstance(rates, str):
            return rates
        problem = charge_problem(self.state, charge, at, rates)
        if problem is not None:
            return problem
        if self._lookup is None:
            key = (charge.subscription_id, charge.event_id)
            self._seen[key] = ChargeOnRecord(event_of(charge), at)  # type: ignore[arg-type]
        self.books.fold_charge(charge)
        try:
            fold_charge(self.state.subscriptions[charge.subscription_id], charge)
        except LogInconsistent as error:
            return f"event does not follow from the log before it: {error}"
        return None

    def _event_problem(self, event: LogEvent, position: int, at: datetime) -> str | None:
        if isinstance(event, CycleStarted):
            problem = self.books.problem(self.state, event.subscription_id)
            problem = problem or event_problem(self.state, event, at)
        else:
            problem = event_problem(self.state, event, at, self._charge_of(event))
        if problem is not None:
            return problem + _who_asked(event)
        self.books.fold(self.state, event)
        try:
            evolve(self.state, event)
        except LogInconsistent as error:
            return f"event does not follow from the log before it: {error}{_who_asked(event)}"
        if isinstance(event, ADMIN_EVENTS):
            self.admin_counts[0] += 1
            self.admin_counts[1] += isinstance(event, CORRECTION_EVENTS)
            if self._on_admin_write is not None:
                self._on_admin_write(position, event)
        return None

    def _instant(self, recorded_at_us: int) -> datetime:
        """The recorded time as an instant; records of one append share it, so it is built
        once per run of equal times."""
        if recorded_at_us != self._at_us:
            self._at_us, self._at = recorded_at_us, datetime_from_us(recorded_at_us)
        return self._at

    def _rates_of(self, version: str, model: str) -> Rates | str:
        """The rates a charge names, or why there are none; looked up once per pair."""
        found = self._rates.get((version, model))
        if found is None:
            found = self._rates[(version, model)] = rates_named(self.rate_card, version, model)
        return found

    def _charge_of(self, event: object) -> ChargeOnRecord | None:
        if not isinstance(event, ChargeReversed):
            return None
        key = (event.subscription_id, event.event_id)
        return self._seen.get(key) if self._lookup is None else self._lookup(*key)


class Rates(NamedTuple):
    """A model's rates on a rate card version, with its coefficients in stored order."""

    model_rates: ModelRates
    coefficient_values: tuple[Any, ...]


def rates_named(rate_card: RateCard, version_name: str, model: str) -> Rates | str:
    """The rates a charge names (its rate card version and model), or why there are none."""
    version = rate_card.version(version_name)
    if version is None:
        return f"charge names rate card version {version_name!r}, which is unknown"
    rates = version.models.get(model)
    if rates is None:
        return f"model {model!r} is not on rate card {version.version}"
    return Rates(rates, stored_values(rates.coefficients))


def charge_problem(
    state: LedgerState, charge: UsageCharged, at: datetime, rates: Rates
) -> str | None:
    """Why this charge, recorded at `at`, does not follow from its rates and the state before
    it, if it doesn't. `charge` is the event or its stored mirror (ledger/records.py): only its
    fields are read, and re-derived values are compared with them field by field."""
    model_rates = rates.model_rates
    if (
        rates.coefficient_values != stored_values(charge.coefficients)
        or model_rates.product != charge.product
    ):
        return "coefficients differ from the rate card version the charge names"
    components = price(charge.usage, model_rates.coefficients)
    if stored_values(components) != stored_values(charge.components):
        return "components do not re-price to the recorded ones"
    if components.total_ucr() != charge.credits_ucr:
        return "credits are not the sum of the components"
    sub = state.subscriptions.get(charge.subscription_id)
    seat = sub.seats.get(charge.seat_id) if sub is not None else None
    if sub is None or seat is None:
        return "charge names a subscription or seat the log does not hold"
    if charge.hold_id is None and charge.hold_status is not None:
        return "the charge does not say truly whether it settled its hold"
    if charge.hold_id is not None and _hold_status_problem(sub, charge):
        return "the charge does not say truly whether it settled its hold"
    expected = allocate(sub, seat, charge.credits_ucr, at)
    recorded = charge.allocation
    if len(expected) != len(recorded) or any(
        stored_values(mine) != stored_values(theirs)
        for mine, theirs in zip(expected, recorded, strict=True)
    ):
        return "allocation differs from the deduction order"
    return None


def _hold_status_problem(sub: SubscriptionState, charge: UsageCharged) -> bool:
    """Whether a charge served under a hold says otherwise than the log of that hold."""
    hold = sub.holds.get(charge.hold_id) if charge.hold_id is not None else None
    settled = hold is not None and hold.status == "settled" and hold.settled_by == charge.event_id
    active = hold is not None and hold.status == "active" and hold.seat_id == charge.seat_id
    expected_status = "settled" if settled else "not_active"
    return charge.hold_status != expected_status or (expected_status == "not_active" and active)
