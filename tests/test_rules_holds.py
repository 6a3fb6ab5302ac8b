"""Holds, one rule per test: credits reserved for a seat before serving, settled by the usage
event that names them, released, extended, expiring, and shrinking with what they took from."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ledger.catalog import PACK_CREDITS_UCR, SEAT_QUOTA_UCR
from ledger.errors import (
    DuplicateConflict,
    HoldNotActive,
    InsufficientCredits,
    SeatIsRemoved,
    SeatIsSuspended,
    UnknownHold,
)
from ledger.state import LedgerState
from schemas.commands import (
    AdvanceClock,
    ExtendHold,
    PlaceHold,
    ReleaseHold,
    RemoveSeat,
    VoidPack,
)
from schemas.events import (
    Allocation,
    HoldExpired,
    HoldExtended,
    HoldPlaced,
    HoldReleased,
    HoldSettled,
    HoldShrunk,
    PackExpired,
    PackVoided,
    SeatRemoved,
    UsageCharged,
)
from tests.rules_dsl import (
    ANCHOR,
    CREDIT,
    SUB,
    at,
    charge,
    costing,
    costing_with_hold,
    given,
    opened,
    pack_bought,
    play,
    seat_added,
    types,
    when,
)

STANDARD = SEAT_QUOTA_UCR["standard"]
NOW = at("2026-02-02")


def team(*, pack: bool = False) -> LedgerState:
    """Seats alice and bob (standard: 25,000 credits each), and a pack bought now if asked."""
    events = [*opened(), seat_added("alice"), seat_added("bob")]
    if pack:
        events.append(pack_bought("p1", NOW))
    return given(*events)


def hold(hold_id: str, credits: int, seat: str = "alice", ttl_s: int = 600) -> PlaceHold:
    return PlaceHold(SUB, seat, hold_id, credits * CREDIT, ttl_s)


def charged(events: list) -> UsageCharged:
    return next(e for e in events if isinstance(e, UsageCharged))


# --- placing --------------------------------------------------------------------------------


def test_a_hold_takes_the_seat_first_then_packs_and_expires_after_its_ttl():
    state = team(pack=True)
    [placed] = when(state, hold("h1", 30_000, ttl_s=90), NOW)
    assert placed == HoldPlaced(
        SUB,
        "alice",
        "h1",
        30_000 * CREDIT,
        (Allocation("seat", "alice", STANDARD), Allocation("pack", "p1", 5_000 * CREDIT)),
        90,
        NOW,
        NOW + timedelta(seconds=90),
    )


def test_a_hold_asking_more_than_is_available_is_refused_with_what_is_available():
    state = team()
    play(state, hold("h1", 20_000), NOW)
    with pytest.raises(InsufficientCredits) as refused:
        when(state, hold("h2", 6_000), NOW)
    assert refused.value.available_ucr == 5_000 * CREDIT


def test_held_credits_are_spent_by_nothing_else():
    state = team()
    play(state, hold("h1", 24_000), NOW)
    events = play(state, charge(costing(2_000, "e1", "alice")), NOW)
    assert charged(events).allocation == (
        Allocation("seat", "alice", 1_000 * CREDIT),
        Allocation("uncovered", "", 1_000 * CREDIT),
    )
    assert "seat.suspended" in types(events)


def test_two_seats_sharing_the_last_pack_cannot_hold_it_twice():
    state = given(*opened(), seat_added("alice"), seat_added("bob"), pack_bought("p1", NOW))
    play(state, hold("a", 25_000 + 600_000, "alice"), NOW)
    with pytest.raises(InsufficientCredits) as refused:
        when(state, hold("b", 25_000 + 25_001, "bob"), NOW)
    assert refused.value.available_ucr == (25_000 + 25_000) * CREDIT


def test_the_same_hold_again_is_answered_as_it_is_and_another_body_is_a_conflict():
    state = team()
    play(state, hold("h1", 100), NOW)
    assert when(state, hold("h1", 100), NOW) == []
    with pytest.raises(DuplicateConflict):
        when(state, hold("h1", 101), NOW)
    with pytest.raises(DuplicateConflict):
        when(state, hold("h1", 100, seat="bob"), NOW)


def test_a_suspended_seat_gets_no_hold():
    state = team()
    play(state, charge(costing(26_000, "e1", "alice")), NOW)
    with pytest.raises(SeatIsSuspended):
        when(state, hold("h1", 1), NOW)


def test_a_removed_seat_gets_no_hold():
    state = team()
    play(state, RemoveSeat(SUB, "alice"), NOW)
    with pytest.raises(SeatIsRemoved):
        when(state, hold("h1", 1), NOW)


# --- settling -------------------------------------------------------------------------------


@pytest.mark.parametrize(("spent", "uncovered"), [(500, 0), (1_000, 0), (1_200, 0), (25_500, 500)])
def test_usage_naming_an_active_hold_settles_it_and_is_charged_in_deduction_order(spent, uncovered):
    state = team()
    play(state, hold("h1", 1_000), NOW)
    play(state, hold("other", 24_000, "alice"), NOW)  # the rest of alice's quota, held
    events = play(state, charge(costing_with_hold(spent, "e1", "alice", "h1")), NOW)
    assert types(events)[:2] == ["hold.settled", "usage.charged"]
    assert events[0] == HoldSettled(SUB, "alice", "h1", "e1", 1_000 * CREDIT, NOW)
    usage = charged(events)
    assert (usage.hold_id, usage.hold_status) == ("h1", "settled")
    assert usage.allocation[0] == Allocation("seat", "alice", min(spent, 1_000) * CREDIT)
    assert usage.uncovered_ucr() == max(0, spent - 1_000) * CREDIT
    assert state.subscriptions[SUB].holds["h1"].status == "settled"
    assert state.subscriptions[SUB].seats["alice"].held_ucr == 24_000 * CREDIT


def test_a_hold_settles_once_and_usage_naming_it_again_is_charged_as_any_other():
    state = team()
    play(state, hold("h1", 1_000), NOW)
    play(state, charge(costing_with_hold(100, "e1", "alice", "h1")), NOW)
    events = play(state, charge(costing_with_hold(100, "e2", "alice", "h1")), NOW)
    assert types(events) == ["usage.charged"]
    assert charged(events).hold_status == "not_active"


def test_usage_after_the_hold_expired_is_charged_as_any_other_and_says_so():
    state = team()
    play(state, hold("h1", 1_000, ttl_s=60), NOW)
    later = NOW + timedelta(seconds=61)
    events = play(state, charge(costing_with_hold(100, "e1", "alice", "h1")), later)
    assert types(events) == ["hold.expired", "usage.charged"]
    assert events[0] == HoldExpired(SUB, "alice", "h1", 1_000 * CREDIT, NOW + timedelta(seconds=60))
    assert charged(events).hold_status == "not_active"


def test_usage_after_the_hold_was_released_is_charged_as_any_other():
    state = team()
    play(state, hold("h1", 1_000), NOW)
    assert play(state, ReleaseHold(SUB, "alice", "h1"), NOW) == [
        HoldReleased(SUB, "alice", "h1", 1_000 * CREDIT, NOW)
    ]
    events = play(state, charge(costing_with_hold(100, "e1", "alice", "h1")), NOW)
    assert charged(events).hold_status == "not_active"
    assert state.subscriptions[SUB].seats["alice"].held_ucr == 0


def test_usage_of_another_seat_does_not_settle_a_hold():
    state = team()
    play(state, hold("h1", 1_000), NOW)
    events = play(state, charge(costing_with_hold(100, "e1", "bob", "h1")), NOW)
    assert charged(events).hold_status == "not_active"
    assert state.subscriptions[SUB].holds["h1"].status == "active"


# --- extending, releasing, expiring ---------------------------------------------------------


def test_an_active_hold_is_extended_from_now():
    state = team()
    play(state, hold("h1", 10, ttl_s=60), NOW)
    later = NOW + timedelta(seconds=50)
    assert when(state, ExtendHold(SUB, "alice", "h1", 120), later) == [
        HoldExtended(SUB, "alice", "h1", 120, later, later + timedelta(seconds=120))
    ]


def test_an_ended_hold_cannot_be_extended_and_releasing_it_again_changes_nothing():
    state = team()
    play(state, hold("h1", 10), NOW)
    play(state, ReleaseHold(SUB, "alice", "h1"), NOW)
    with pytest.raises(HoldNotActive):
        when(state, ExtendHold(SUB, "alice", "h1", 60), NOW)
    assert when(state, ReleaseHold(SUB, "alice", "h1"), NOW) == []


def test_a_hold_of_another_seat_is_no_hold_of_this_one():
    state = team()
    play(state, hold("h1", 10), NOW)
    with pytest.raises(UnknownHold):
        when(state, ReleaseHold(SUB, "bob", "h1"), NOW)


def test_the_clock_expires_holds_past_their_time():
    state = team()
    play(state, hold("h1", 10, ttl_s=1), NOW)
    events = play(state, AdvanceClock(), NOW + timedelta(seconds=1))
    assert types(events) == ["hold.expired"]


def test_removing_a_seat_releases_its_holds_first():
    state = team()
    play(state, hold("h1", 10), NOW)
    events = play(state, RemoveSeat(SUB, "alice"), NOW)
    assert events == [
        HoldReleased(SUB, "alice", "h1", 10 * CREDIT, NOW, reason="seat_removed"),
        SeatRemoved(SUB, "alice", STANDARD),
    ]


# --- shrinking with what the hold took from ---------------------------------------------------


def test_a_pack_that_expires_while_held_takes_its_part_of_the_hold_with_it():
    state = given(*opened(), seat_added("alice"), pack_bought("p1", at("2026-02-01T10:00")))
    expiry = at("2026-03-01T10:00")
    play(state, hold("h1", 26_000, ttl_s=3_600), expiry - timedelta(minutes=1))
    events = play(state, AdvanceClock(), expiry)
    assert events[:2] == [
        HoldShrunk(SUB, "alice", "h1", "pack", "p1", 1_000 * CREDIT, expiry),
        PackExpired(SUB, "p1", expiry, PACK_CREDITS_UCR),
    ]
    assert state.subscriptions[SUB].holds["h1"].credits_ucr == STANDARD


def test_a_void_of_a_held_pack_shrinks_the_hold_by_its_part():
    state = team(pack=True)
    play(state, hold("h1", 26_000), NOW)
    events = play(state, VoidPack(SUB, "p1", "refunded"), NOW)
    assert events == [
        HoldShrunk(SUB, "alice", "h1", "pack", "p1", 1_000 * CREDIT, NOW),
        PackVoided(SUB, "p1", PACK_CREDITS_UCR, None, "refunded"),
    ]


def test_a_hold_across_a_cycle_start_keeps_its_seat_part_in_the_new_quota():
    state = team()
    cycle_end = ANCHOR.replace(month=2, day=28)
    play(state, hold("h1", 1_000, ttl_s=3_600), cycle_end - timedelta(minutes=30))
    events = play(state, AdvanceClock(), cycle_end)
    assert "hold.shrunk" not in types(events)
    alice = state.subscriptions[SUB].seats["alice"]
    assert (alice.used_ucr, alice.held_ucr) == (0, 1_000 * CREDIT)
    settled = play(state, charge(costing_with_hold(800, "e1", "alice", "h1")), cycle_end)
    assert charged(settled).allocation == (Allocation("seat", "alice", 800 * CREDIT),)
