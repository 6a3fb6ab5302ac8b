"""Corrections, one rule per test: adjustments, grants, reversals and voids are new events that
put mistakes right without editing the log, each with who asked and why."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from ledger.catalog import PACK_CREDITS_UCR, SEAT_QUOTA_UCR
from ledger.errors import (
    DuplicateConflict,
    InsufficientCredits,
    InvalidCommand,
    UnknownCharge,
    UnknownPack,
)
from ledger.state import LedgerState
from schemas.commands import (
    AdjustSeat,
    AdvanceClock,
    BuyPack,
    ChargeOnRecord,
    GrantCredits,
    PlaceHold,
    ReverseCharge,
    SetNotificationSettings,
    VoidGrant,
    VoidPack,
)
from schemas.events import (
    Actor,
    Allocation,
    ChargeReversed,
    CreditsGranted,
    GrantExpired,
    NotificationSettingsChanged,
    PackVoided,
    ReversalPart,
    SeatAdjusted,
    SeatResumed,
    UsageCharged,
)
from tests.rules_dsl import (
    CREDIT,
    SUB,
    at,
    charge,
    costing,
    given,
    opened,
    play,
    seat_added,
    types,
    when,
)

STANDARD = SEAT_QUOTA_UCR["standard"]
NOW = at("2026-02-02")
ADMIN = Actor("tok-1", "admin")


def team() -> LedgerState:
    return given(*opened(), seat_added("alice"), seat_added("bob"))


def charged(state: LedgerState, credits: int, event_id: str, when_: datetime) -> ChargeOnRecord:
    events = play(state, charge(costing(credits, event_id, "alice")), when_)
    usage = next(e for e in events if isinstance(e, UsageCharged))
    return ChargeOnRecord(usage, when_)


def reverse(
    on_record: ChargeOnRecord, reversal_id: str, credits: int | None = None
) -> ReverseCharge:
    amount = None if credits is None else credits * CREDIT
    return ReverseCharge(
        SUB, on_record.charge.event_id, reversal_id, "mispriced", amount, ADMIN, on_record
    )


# --- adjustments ------------------------------------------------------------------------------


def test_an_adjustment_adds_to_the_seats_quota_this_cycle_with_who_and_why():
    state = team()
    command = AdjustSeat(SUB, "alice", "adj-1", 500 * CREDIT, "goodwill", ADMIN)
    assert play(state, command, NOW) == [
        SeatAdjusted(SUB, "alice", "adj-1", 500 * CREDIT, 0, ADMIN, "goodwill")
    ]
    assert state.subscriptions[SUB].seats["alice"].remaining_ucr == STANDARD + 500 * CREDIT


def test_an_adjustment_taking_more_than_remains_is_refused():
    state = team()
    play(state, charge(costing(24_000, "e1", "alice")), NOW)
    play(state, PlaceHold(SUB, "alice", "h1", 500 * CREDIT), NOW)
    with pytest.raises(InsufficientCredits) as refused:
        when(state, AdjustSeat(SUB, "alice", "adj-1", -501 * CREDIT, "clawback"), NOW)
    assert refused.value.available_ucr == 500 * CREDIT
    assert when(state, AdjustSeat(SUB, "alice", "adj-1", -500 * CREDIT, "clawback"), NOW)


def test_an_adjustment_again_is_a_no_op_and_another_body_is_a_conflict():
    state = team()
    play(state, AdjustSeat(SUB, "alice", "adj-1", CREDIT, "goodwill"), NOW)
    assert when(state, AdjustSeat(SUB, "alice", "adj-1", CREDIT, "goodwill"), NOW) == []
    with pytest.raises(DuplicateConflict):
        when(state, AdjustSeat(SUB, "alice", "adj-1", 2 * CREDIT, "goodwill"), NOW)


def test_a_suspended_seat_given_credit_resumes():
    state = team()
    play(state, charge(costing(26_000, "e1", "alice")), NOW)
    events = play(state, AdjustSeat(SUB, "alice", "adj-1", 10 * CREDIT, "sorry"), NOW)
    assert types(events) == ["seat.adjusted", "seat.resumed"]


# --- grants -----------------------------------------------------------------------------------


def test_a_grant_is_valid_from_now_and_resumes_suspended_seats():
    state = team()
    play(state, charge(costing(26_000, "e1", "alice")), NOW)
    expires = NOW + timedelta(days=10)
    command = GrantCredits(SUB, "g1", 1_000 * CREDIT, expires, "outage", ADMIN)
    assert play(state, command, NOW) == [
        CreditsGranted(SUB, "g1", 1_000 * CREDIT, NOW, expires, ADMIN, "outage"),
        SeatResumed(SUB, "alice", "credits_granted"),
    ]


def test_grants_are_spent_beside_packs_soonest_expiring_first_and_expire_with_what_is_left():
    state = team()
    play(state, BuyPack(SUB, "p1"), NOW)  # expires a month from now
    play(state, GrantCredits(SUB, "g1", 100 * CREDIT, NOW + timedelta(days=3), "promo"), NOW)
    events = play(state, charge(costing(STANDARD // CREDIT + 150, "e1", "alice")), NOW)
    usage = next(e for e in events if isinstance(e, UsageCharged))
    assert usage.allocation == (
        Allocation("seat", "alice", STANDARD),
        Allocation("grant", "g1", 100 * CREDIT),
        Allocation("pack", "p1", 50 * CREDIT),
    )
    play(state, GrantCredits(SUB, "g2", 7 * CREDIT, NOW + timedelta(days=4), "promo"), NOW)
    expired = play(state, AdvanceClock(), NOW + timedelta(days=4))
    assert expired == [
        GrantExpired(SUB, "g1", NOW + timedelta(days=3), 0),
        GrantExpired(SUB, "g2", NOW + timedelta(days=4), 7 * CREDIT),
    ]


def test_a_grant_that_would_expire_before_it_starts_is_refused():
    with pytest.raises(InvalidCommand):
        when(team(), GrantCredits(SUB, "g1", CREDIT, NOW, "oops"), NOW)


# --- reversals --------------------------------------------------------------------------------


def test_a_reversal_gives_back_last_taken_first_and_to_an_expired_pack_expires_at_once():
    """A charge that spanned the seat and two packs, one of which expired since."""
    state = given(*opened(anchor=at("2026-01-05T09:00")), seat_added("alice"))
    play(state, BuyPack(SUB, "early"), at("2026-01-10"))  # expires 2026-02-10, in cycle 1
    play(state, AdvanceClock(), at("2026-02-06"))  # cycle 1: 2026-02-05 .. 2026-03-05
    play(state, charge(costing(20_000, "fill", "alice")), at("2026-02-06"))
    play(state, BuyPack(SUB, "late"), at("2026-02-06"))
    big = charged(state, 5_000 + PACK_CREDITS_UCR // CREDIT + 1_000, "big", at("2026-02-07"))
    assert [(p.source, p.id) for p in big.charge.allocation] == [
        ("seat", "alice"),
        ("pack", "early"),
        ("pack", "late"),
    ]
    play(state, AdvanceClock(), at("2026-02-11"))  # the early pack expires
    events = play(state, reverse(big, "r1"), at("2026-02-11"))
    assert events[0] == ChargeReversed(
        SUB,
        "alice",
        "big",
        "r1",
        big.charge.credits_ucr,
        (
            ReversalPart("pack", "late", 1_000 * CREDIT, "returned"),
            ReversalPart("pack", "early", PACK_CREDITS_UCR, "expired"),
            ReversalPart("seat", "alice", 5_000 * CREDIT, "returned"),
        ),
        "qwen3.6-plus",
        1,
        ADMIN,
        "mispriced",
    )
    sub = state.subscriptions[SUB]
    assert sub.live_packs["late"].remaining_ucr == PACK_CREDITS_UCR
    assert sub.seats["alice"].used_ucr == 20_000 * CREDIT


def test_partial_reversals_add_up_to_the_charge_and_one_more_is_refused():
    state = team()
    on_record = charged(state, 1_000, "e1", NOW)
    for n, credits in enumerate((300, 300, 400)):
        play(state, reverse(on_record, f"r{n}", credits), NOW)
    assert state.subscriptions[SUB].reversed_ucr["e1"] == 1_000 * CREDIT
    with pytest.raises(InvalidCommand):
        when(state, reverse(on_record, "r9", 1), NOW)
    with pytest.raises(InvalidCommand):
        when(state, reverse(on_record, "r10"), NOW)


def test_an_uncovered_part_is_cleared_and_the_suspended_seat_resumes():
    state = team()
    on_record = charged(state, 26_000, "e1", NOW)
    events = play(state, reverse(on_record, "r1", 1_500), NOW)
    assert events[0].parts == (  # type: ignore[attr-defined]
        ReversalPart("uncovered", "", 1_000 * CREDIT, "cleared"),
        ReversalPart("seat", "alice", 500 * CREDIT, "returned"),
    )
    assert types(events) == ["usage.reversed", "seat.resumed"]


def test_a_reversal_of_a_charge_of_an_earlier_cycle_gives_its_seat_part_back_expired():
    state = team()
    on_record = charged(state, 100, "e1", NOW)
    play(state, AdvanceClock(), at("2026-03-01"))  # a new cycle
    [reversed_] = play(state, reverse(on_record, "r1"), at("2026-03-01"))
    assert reversed_.parts == (  # type: ignore[attr-defined]
        ReversalPart("seat", "alice", 100 * CREDIT, "expired"),
    )


def test_a_reversal_again_is_a_no_op_and_another_body_is_a_conflict():
    state = team()
    on_record = charged(state, 100, "e1", NOW)
    play(state, reverse(on_record, "r1", 10), NOW)
    assert when(state, reverse(on_record, "r1", 10), NOW) == []
    with pytest.raises(DuplicateConflict):
        when(state, reverse(on_record, "r1", 11), NOW)


def test_a_reversal_of_all_that_is_left_again_is_a_no_op():
    state = team()
    on_record = charged(state, 100, "e1", NOW)
    play(state, reverse(on_record, "r1", None), NOW)
    assert when(state, reverse(on_record, "r1", None), NOW) == []


def test_reversing_a_charge_the_log_does_not_hold_is_refused():
    with pytest.raises(UnknownCharge):
        when(team(), ReverseCharge(SUB, "nope", "r1", "why"), NOW)


# --- voids ----------------------------------------------------------------------------------


def test_a_void_removes_what_is_left_and_again_changes_nothing():
    state = team()
    play(state, BuyPack(SUB, "p1"), NOW)
    assert play(state, VoidPack(SUB, "p1", "refunded", ADMIN), NOW) == [
        PackVoided(SUB, "p1", PACK_CREDITS_UCR, ADMIN, "refunded")
    ]
    assert when(state, VoidPack(SUB, "p1", "refunded"), NOW) == []


def test_a_void_of_an_expired_or_unknown_pack_is_refused():
    state = team()
    play(state, BuyPack(SUB, "p1"), NOW)
    play(state, AdvanceClock(), at("2026-03-03"))
    with pytest.raises(InvalidCommand):
        when(state, VoidPack(SUB, "p1", "late"), at("2026-03-03"))
    with pytest.raises(UnknownPack):
        when(state, VoidPack(SUB, "p9", "typo"), NOW)


def test_a_voided_grant_is_spent_no_more():
    state = team()
    play(state, GrantCredits(SUB, "g1", 100 * CREDIT, NOW + timedelta(days=3), "promo"), NOW)
    play(state, VoidGrant(SUB, "g1", "given by mistake"), NOW)
    events = play(state, charge(costing(STANDARD // CREDIT + 1, "e1", "alice")), NOW)
    usage = next(e for e in events if isinstance(e, UsageCharged))
    assert usage.allocation[-1] == Allocation("uncovered", "", CREDIT)


# -- notification settings: an admin write that moves no credits --------------------------------


def test_notification_settings_are_recorded_sorted_and_the_same_again_records_nothing():
    state = team()
    asked = SetNotificationSettings(SUB, (90, 25, 90), 5 * CREDIT, ADMIN, "ops")
    assert play(state, asked, NOW) == [
        NotificationSettingsChanged(SUB, (25, 90), 5 * CREDIT, ADMIN, "ops")
    ]
    assert when(state, SetNotificationSettings(SUB, (25, 90), 5 * CREDIT), NOW) == []
    assert when(state, SetNotificationSettings(SUB, (25, 90), None), NOW) != []


@pytest.mark.parametrize(
    ("thresholds", "low"),
    [((0,), None), ((1_001,), None), (tuple(range(1, 12)), None), ((50,), -1)],
)
def test_notification_settings_that_cannot_be_in_force_are_refused(thresholds, low):
    with pytest.raises(InvalidCommand):
        when(team(), SetNotificationSettings(SUB, thresholds, low), NOW)
