"""Re-rating: what every charge recorded in a window would have cost under another rate card,
and the corrections that make the books say so (`ledger rerate`).

Each charge is priced again from its recorded usage under the card's version in force at the
instant it was recorded, component by component as any charge is. The difference against
what was charged becomes, with `--apply`:
- an overcharge: a reversal of that much of the charge (back to the sources it came from, last
  taken first, as any reversal);
- an undercharge: a seat adjustment taking that much from the charge's seat in the current
  cycle. A reversal cannot add to a charge, and a new charge would need usage the gateway
  never sent; an adjustment is a correction of the seat's credits with its own id and reason,
  refused (and reported) when the seat has less left than it takes.
Each correction's id is derived from the charge and the card version (`rerate-` and 32 hex
digits), and its reason is `rerate:<card version>`: a second `--apply` finds them made and
writes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

import msgspec

from ledger.application import Ledger
from ledger.errors import RateCardError
from ledger.log import EventStore, datetime_from_us, us_from_datetime
from ledger.money import format_credits
from ledger.pricing import price
from ledger.rate_card import RateCard
from schemas.commands import AdjustSeat, ReverseCharge
from schemas.events import Actor, UsageCharged

RERATE_ID_PREFIX: Final = "rerate-"
RERATE_ID_HEX_CHARS: Final = 32
RERATE_REASON_PREFIX: Final = "rerate:"
APPLY_BATCH_COMMANDS: Final = 1_000
RERATE_ACTOR: Final = Actor("cli:ledger-rerate", "admin")
"""Who a re-rating's corrections name: the command line, acting as an admin."""

Correction = ReverseCharge | AdjustSeat


class RerateLine(msgspec.Struct, frozen=True):
    """One charge of the window, priced again."""

    subscription_id: str
    seat_id: str
    event_id: str
    recorded_at: datetime
    card_version: str
    charged_ucr: int
    rerated_ucr: int

    @property
    def difference_ucr(self) -> int:
        """Positive: the charge was too low; negative: too high."""
        return self.rerated_ucr - self.charged_ucr


class SeatDifference(msgspec.Struct, frozen=True):
    subscription_id: str
    seat_id: str
    charges: int
    charged_ucr: int
    rerated_ucr: int

    @property
    def difference_ucr(self) -> int:
        return self.rerated_ucr - self.charged_ucr


class Applied(msgspec.Struct, frozen=True):
    written: int
    """Corrections appended by this run."""
    already: int
    """Corrections an earlier run made (retries: nothing appended)."""
    refused: list[tuple[RerateLine, str]]
    """Corrections the ledger refused, each with its reason."""


def rerated(card: RateCard, charge: UsageCharged, recorded_at: datetime) -> RerateLine:
    """The charge priced under the card version in force when it was recorded."""
    version = card.in_force(recorded_at)
    rates = None if version is None else version.models.get(charge.model)
    if version is None or rates is None:
        raise RateCardError(
            f"charge {charge.event_id!r} of {charge.subscription_id!r}: model {charge.model!r}"
            " is not on the rate card in force when it was recorded"
        )
    return RerateLine(
        charge.subscription_id,
        charge.seat_id,
        charge.event_id,
        recorded_at,
        version.version,
        charge.credits_ucr,
        price(charge.usage, rates.coefficients).total_ucr(),
    )


def rerate_lines(
    store: EventStore, card: RateCard, start: datetime, end: datetime
) -> list[RerateLine]:
    """Every charge recorded in [start, end), priced again under `card`."""
    lines: list[RerateLine] = []
    after = store.position_at(us_from_datetime(start) - 1)
    until = store.position_at(us_from_datetime(end) - 1)
    if until <= after:
        return lines
    for record in store.read(after=after, until=until):
        event = record.event()
        if isinstance(event, UsageCharged):
            lines.append(rerated(card, event, datetime_from_us(record.recorded_at_us)))
    return lines


def by_seat(lines: Iterable[RerateLine]) -> list[SeatDifference]:
    """The lines summed per seat, by subscription then seat."""
    sums: dict[tuple[str, str], list[int]] = {}
    for line in lines:
        total = sums.setdefault((line.subscription_id, line.seat_id), [0, 0, 0])
        total[0] += 1
        total[1] += line.charged_ucr
        total[2] += line.rerated_ucr
    return [SeatDifference(sub, seat, *sums[(sub, seat)]) for sub, seat in sorted(sums)]


def correction_id(line: RerateLine) -> str:
    """The same for the same charge and card version, whatever run makes it."""
    material = f"{line.subscription_id}\x00{line.event_id}\x00{line.card_version}".encode()
    return RERATE_ID_PREFIX + hashlib.sha256(material).hexdigest()[:RERATE_ID_HEX_CHARS]


def correction(line: RerateLine) -> Correction | None:
    """What puts this charge right: None when it was priced right."""
    difference = line.difference_ucr
    reason = RERATE_REASON_PREFIX + line.card_version
    if difference < 0:
        return ReverseCharge(
            line.subscription_id,
            line.event_id,
            correction_id(line),
            reason,
            -difference,
            RERATE_ACTOR,
        )
    if difference > 0:
        return AdjustSeat(
            line.subscription_id,
            line.seat_id,
            correction_id(line),
            -difference,
            reason,
            RERATE_ACTOR,
        )
    return None


def apply(ledger: Ledger, lines: Sequence[RerateLine]) -> Applied:
    """Make the corrections of `lines` through the ledger's rules, a batch at a time."""
    pending = [(line, c) for line in lines if (c := correction(line)) is not None]
    written = already = 0
    refused: list[tuple[RerateLine, str]] = []
    for start in range(0, len(pending), APPLY_BATCH_COMMANDS):
        batch = pending[start : start + APPLY_BATCH_COMMANDS]
        outcomes = ledger.execute([command for _, command in batch])
        for (line, _), outcome in zip(batch, outcomes, strict=True):
            if outcome.status == "rejected":
                refused.append((line, outcome.detail or outcome.reason or "refused"))
            elif outcome.records:
                written += 1
            else:
                already += 1
    return Applied(written, already, refused)


def table(lines: Sequence[RerateLine]) -> list[str]:
    """The differences per seat and in total, as aligned text rows (credits, exact)."""
    seats = by_seat(lines)
    rows = [("subscription", "seat", "charges", "charged", "rerated", "difference")]
    rows += [
        (
            s.subscription_id,
            s.seat_id,
            str(s.charges),
            format_credits(s.charged_ucr),
            format_credits(s.rerated_ucr),
            format_credits(s.difference_ucr),
        )
        for s in seats
    ]
    charged = sum(line.charged_ucr for line in lines)
    rerated_ucr = sum(line.rerated_ucr for line in lines)
    rows.append(
        (
            "total",
            "",
            str(len(lines)),
            format_credits(charged),
            format_credits(rerated_ucr),
            format_credits(rerated_ucr - charged),
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
