"""The audit catches a log altered with its hash chain recomputed, and it does so under
`python -O` too: every check it makes is an explicit comparison, never an `assert`.

Each case rewrites one record as an attacker with write access would (a new event, every
later hash recomputed so the chain holds), then runs `ledger audit verify` in a Python started
with `-O`, which must exit 1 naming exactly that record's position.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import reduce
from pathlib import Path

import msgspec
import pytest

from ledger.application import Ledger
from ledger.catalog import PACK_CREDITS_UCR, SEAT_QUOTA_UCR
from ledger.clock import ManualClock
from ledger.cycles import add_months, cycle_bounds
from ledger.errors import LogInconsistent
from ledger.idempotency import payload_digest
from ledger.log import EVENT_DECODER, EVENT_ENCODER, GENESIS_HASH, record_hash, us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.state import evolve, initial_state
from ledger.stores.sqlite import SqliteEventStore
from schemas.commands import (
    AddSeat,
    BuyPack,
    ChangeTier,
    ChargeUsage,
    OpenSubscription,
    SetNotificationSettings,
)
from schemas.events import (
    Allocation,
    Coefficients,
    Components,
    CycleStarted,
    LogEvent,
    NotificationSettingsChanged,
    PackExpired,
    PackPurchased,
    SeatAdded,
    SeatQuotaGranted,
    SeatTierChanged,
    SubscriptionOpened,
    UsageCharged,
)
from schemas.usage import Usage, UsageEvent

START = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
LEDGER_OPTIMIZED = (sys.executable, "-O", "-m", "services.cli")


def usage(event_id: str, seat: str, output_tokens: int) -> ChargeUsage:
    event = UsageEvent(event_id, "team", seat, "qwen3.6-plus", START, output_tokens=output_tokens)
    return ChargeUsage(event, payload_digest(event))


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log with seats, a charge from a seat, one spanning seat and a pack, a tier change,
    a pack expiry and a new cycle."""
    data_dir = tmp_path_factory.mktemp("history")
    clock = ManualClock(us_from_datetime(START))
    store = SqliteEventStore(data_dir / "ledger.sqlite3")
    ledger = Ledger(store, load_rate_card(), clock)
    ledger.execute([OpenSubscription("team"), AddSeat("team", "alice", "standard")])
    ledger.execute([AddSeat("team", "bob", "standard"), BuyPack("team", "p1")])
    ledger.execute([SetNotificationSettings("team", (90, 50), 1_000_000)])
    ledger.execute([usage("small", "alice", 1_000_000)])  # 1,200 credits from the seat
    ledger.execute([usage("big", "bob", 25_000_000)])  # 30,000: seat, then the pack
    ledger.execute([ChangeTier("team", "alice", "advanced")])
    clock.advance(int(timedelta(days=40).total_seconds()) * 1_000_000)
    ledger.tick()
    store.close()
    return data_dir / "ledger.sqlite3"


def events_of(path: Path) -> list[LogEvent]:
    with sqlite3.connect(path) as db:
        return [
            EVENT_DECODER.decode(d) for (d,) in db.execute("SELECT data FROM log ORDER BY position")
        ]


def tampered_copy(history: Path, tmp_path: Path, position: int, event: LogEvent) -> Path:
    """A copy of the log with the record at `position` holding `event`, chain recomputed."""
    copy = tmp_path / "data" / "ledger.sqlite3"
    copy.parent.mkdir()
    with sqlite3.connect(history) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as db:
        rows = db.execute("SELECT position, recorded_at_us, data FROM log ORDER BY position")
        prev = GENESIS_HASH
        for row_position, recorded_at_us, data in rows.fetchall():
            if row_position == position:
                data = EVENT_ENCODER.encode(event)
            digest = record_hash(prev, row_position, recorded_at_us, data)
            db.execute(
                "UPDATE log SET data = ?, prev_hash = ?, hash = ? WHERE position = ?",
                (data, prev, digest, row_position),
            )
            prev = digest
    return copy


def position_of(events: list[LogEvent], wanted: Callable[[LogEvent], bool]) -> int:
    return next(i for i, event in enumerate(events, start=1) if wanted(event))


def is_charge(event_id: str) -> Callable[[LogEvent], bool]:
    return lambda e: isinstance(e, UsageCharged) and e.event_id == event_id


def overdrawn_seat(events: list[LogEvent]) -> tuple[int, LogEvent]:
    position = position_of(events, is_charge("big"))
    charge = events[position - 1]
    assert isinstance(charge, UsageCharged)
    parts = (Allocation("seat", "bob", charge.credits_ucr),)  # all of it from a smaller seat
    return position, msgspec.structs.replace(charge, allocation=parts)


def seat_share_moved_to_the_pack(events: list[LogEvent]) -> tuple[int, LogEvent]:
    position = position_of(events, is_charge("big"))
    charge = events[position - 1]
    assert isinstance(charge, UsageCharged)
    pack_id = charge.allocation[-1].id
    parts = (Allocation("pack", pack_id, charge.credits_ucr),)  # the seat's share too
    return position, msgspec.structs.replace(charge, allocation=parts)


def seat_added_twice(events: list[LogEvent]) -> tuple[int, LogEvent]:
    position = position_of(events, lambda e: isinstance(e, SeatAdded) and e.seat_id == "bob")
    first = events[position_of(events, lambda e: isinstance(e, SeatAdded)) - 1]
    return position, first


def cycle_backwards(events: list[LogEvent]) -> tuple[int, LogEvent]:
    position = position_of(events, lambda e: isinstance(e, CycleStarted) and e.cycle == 1)
    event = events[position - 1]
    assert isinstance(event, CycleStarted)
    return position, msgspec.structs.replace(event, cycle=-1)


def priced_otherwise(events: list[LogEvent]) -> tuple[int, LogEvent]:
    position = position_of(events, is_charge("small"))
    charge = events[position - 1]
    assert isinstance(charge, UsageCharged)
    cheaper = Coefficients(
        **{**msgspec.structs.asdict(charge.coefficients), "output_ucr_per_1k": 1}
    )
    return position, msgspec.structs.replace(charge, coefficients=cheaper)


def quota_not_the_tiers(events: list[LogEvent]) -> tuple[int, LogEvent]:
    position = position_of(events, lambda e: isinstance(e, SeatTierChanged))
    event = events[position - 1]
    assert isinstance(event, SeatTierChanged)
    return position, msgspec.structs.replace(event, quota_ucr=event.quota_ucr * 10)


def expired_less_than_left(events: list[LogEvent]) -> tuple[int, LogEvent]:
    position = position_of(events, lambda e: isinstance(e, PackExpired))
    event = events[position - 1]
    assert isinstance(event, PackExpired)
    return position, msgspec.structs.replace(event, expired_ucr=0)


def pack_smaller_than_the_catalogs(events: list[LogEvent]) -> tuple[int, LogEvent]:
    position = position_of(events, lambda e: isinstance(e, PackPurchased))
    event = events[position - 1]
    assert isinstance(event, PackPurchased)
    return position, msgspec.structs.replace(event, credits_ucr=1)


def lapsed_less_than_left(events: list[LogEvent]) -> tuple[int, LogEvent]:
    position = position_of(events, lambda e: isinstance(e, SeatQuotaGranted))
    event = events[position - 1]
    assert isinstance(event, SeatQuotaGranted)
    return position, msgspec.structs.replace(event, lapsed_ucr=0)


def settings_out_of_order(events: list[LogEvent]) -> tuple[int, LogEvent]:
    position = position_of(events, lambda e: isinstance(e, NotificationSettingsChanged))
    event = events[position - 1]
    assert isinstance(event, NotificationSettingsChanged)
    return position, msgspec.structs.replace(event, thresholds_percent=(90, 50, 0))


TAMPERS = [
    overdrawn_seat,
    seat_share_moved_to_the_pack,
    seat_added_twice,
    cycle_backwards,
    priced_otherwise,
    quota_not_the_tiers,
    expired_less_than_left,
    lapsed_less_than_left,
    pack_smaller_than_the_catalogs,
    settings_out_of_order,
]


def test_the_untouched_history_passes_the_audit_under_python_o(history: Path) -> None:
    done = subprocess.run(
        [*LEDGER_OPTIMIZED, "--data-dir", str(history.parent), "audit", "verify"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: ")


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda t: t.__name__)
def test_a_rewritten_record_fails_the_audit_at_its_position_under_python_o(
    history: Path, tmp_path: Path, tamper: Callable[[list[LogEvent]], tuple[int, LogEvent]]
) -> None:
    position, forged = tamper(events_of(history))
    copy = tampered_copy(history, tmp_path, position, forged)

    done = subprocess.run(
        [*LEDGER_OPTIMIZED, "--data-dir", str(copy.parent), "audit", "verify"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"audit failed at position {position}:" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_folding_an_event_that_overdraws_a_pack_is_refused_before_anything_changes() -> None:
    events = events_of_a_small_history()
    state = reduce(evolve, events, initial_state())
    charge = UsageCharged(
        "team", "alice", "x", "d", START, "qwen3.6-plus", "text", Usage(), "v", Coefficients(),
        Components(), PACK_CREDITS_UCR + 1, (Allocation("pack", "p1", PACK_CREDITS_UCR + 1),),
    )  # fmt: skip
    before = repr(state)
    with pytest.raises(LogInconsistent, match="overdraws pack"):
        evolve(state, charge)
    assert repr(state) == before


def events_of_a_small_history() -> list[LogEvent]:
    start, end = cycle_bounds(START, 0)
    return [
        SubscriptionOpened("team", START),
        CycleStarted("team", 0, start, end),
        SeatAdded("team", "alice", "standard", SEAT_QUOTA_UCR["standard"], 0),
        PackPurchased("team", "p1", PACK_CREDITS_UCR, START, add_months(START, 1)),
    ]
