"""The billing rules (docs/rules.md), one rule per test: given these log events, when this
command, then these events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from ledger.catalog import PACK_CREDITS_UCR, SEAT_QUOTA_UCR
from ledger.cycles import add_months, cycle_bounds, cycle_index
from ledger.decider import evolve
from ledger.errors import (
    DuplicateConflict,
    InvalidCommand,
    SeatExists,
    SeatIsRemoved,
    SubscriptionExists,
    UnknownModel,
    UnknownSeat,
    UnknownSubscription,
)
from ledger.idempotency import payload_digest
from schemas.commands import (
    AddSeat,
    AdvanceClock,
    BuyPack,
    ChangeTier,
    OpenSubscription,
    RemoveSeat,
)
from schemas.events import (
    Allocation,
    CycleStarted,
    PackExpired,
    PackPurchased,
    SeatAdded,
    SeatQuotaGranted,
    SeatRemoved,
    SeatResumed,
    SeatSuspended,
    SeatTierChanged,
    SubscriptionOpened,
    UsageCharged,
)
from tests.rules_dsl import (
    ANCHOR,
    CREDIT,
    SUB,
    at,
    charge,
    costing,
    given,
    opened,
    pack_bought,
    seat_added,
    types,
    usage,
    when,
)

STANDARD = SEAT_QUOTA_UCR["standard"]


# --- billing cycles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "months", "expected"),
    [
        ("2026-01-31T09:00", 1, "2026-02-28T09:00"),
        ("2028-01-31T09:00", 1, "2028-02-29T09:00"),
        ("2026-01-31T09:00", 2, "2026-03-31T09:00"),
        ("2026-03-31T09:00", 1, "2026-04-30T09:00"),
        ("2026-12-15T23:59", 1, "2027-01-15T23:59"),
    ],
)
def test_a_month_is_added_calendar_wise_clamped_to_the_last_day(anchor, months, expected):
    assert add_months(at(anchor), months) == at(expected)


def test_cycles_are_counted_from_the_anchor_not_from_the_previous_cycle():
    anchor = at("2026-01-31T09:00")
    assert cycle_bounds(anchor, 1) == (at("2026-02-28T09:00"), at("2026-03-31T09:00"))
    assert cycle_index(anchor, at("2026-03-31T08:59")) == 1
    assert cycle_index(anchor, at("2026-03-31T09:00")) == 2


def test_opening_a_subscription_starts_the_cycle_that_contains_now():
    events = when(given(), OpenSubscription(SUB, ANCHOR), at("2026-03-05"))
    assert events == [
        SubscriptionOpened(SUB, ANCHOR),
        CycleStarted(SUB, 1, at("2026-02-28T09:00"), at("2026-03-31T09:00")),
    ]


def test_an_anchor_defaults_to_the_ledger_clock_and_may_not_lie_in_the_future():
    now = at("2026-04-01")
    assert when(given(), OpenSubscription(SUB), now)[0] == SubscriptionOpened(SUB, now)
    with pytest.raises(InvalidCommand):
        when(given(), OpenSubscription(SUB, at("2026-04-02")), now)


def test_a_subscription_is_opened_once():
    with pytest.raises(SubscriptionExists):
        when(given(*opened()), OpenSubscription(SUB), at("2026-02-01"))


def test_the_jan_31_cycle_ends_on_feb_28_when_every_seat_gets_its_full_quota_again():
    state = given(*opened(), seat_added("s1"), seat_added("s2", "premium"))
    assert when(state, AdvanceClock(), at("2026-02-28T08:59")) == []
    events = when(state, AdvanceClock(), at("2026-02-28T09:00"))
    assert events == [
        CycleStarted(SUB, 1, at("2026-02-28T09:00"), at("2026-03-31T09:00")),
        SeatQuotaGranted(SUB, "s1", "standard", 1, STANDARD, STANDARD),
        SeatQuotaGranted(SUB, "s2", "premium", 1, SEAT_QUOTA_UCR["premium"], 250_000 * CREDIT),
    ]


def test_unused_seat_quota_lapses_at_cycle_end_and_does_not_roll_over():
    first = when(
        given(*opened(), seat_added("s1")), charge(costing(600, "e1", "s1")), at("2026-02-10")
    )
    state = given(*opened(), seat_added("s1"), *first)
    grant = when(state, AdvanceClock(), at("2026-03-01"))[1]
    assert grant == SeatQuotaGranted(SUB, "s1", "standard", 1, STANDARD, STANDARD - 600 * CREDIT)


def test_every_cycle_that_fell_due_is_recorded_after_a_long_pause():
    events = when(given(*opened(), seat_added("s1")), AdvanceClock(), at("2026-05-01"))
    starts = [e.cycle for e in events if isinstance(e, CycleStarted)]
    assert starts == [1, 2, 3]


# --- seats ----------------------------------------------------------------------------------


def test_a_seat_added_mid_cycle_gets_its_full_tier_quota_for_the_current_cycle():
    events = when(given(*opened()), AddSeat(SUB, "s1", "advanced"), at("2026-02-20"))
    assert events == [SeatAdded(SUB, "s1", "advanced", SEAT_QUOTA_UCR["advanced"], 0)]


def test_a_seat_id_is_added_once_within_its_subscription():
    state = given(*opened(), seat_added("s1"))
    with pytest.raises(SeatExists):
        when(state, AddSeat(SUB, "s1", "standard"), at("2026-02-01"))


def test_an_upgrade_is_immediate_and_remaining_is_the_new_quota_less_what_was_used():
    spent = when(
        given(*opened(), seat_added("s1")), charge(costing(6000, "e1", "s1")), at("2026-02-02")
    )
    state = given(*opened(), seat_added("s1"), *spent)
    events = when(state, ChangeTier(SUB, "s1", "advanced"), at("2026-02-03"))
    quota = SEAT_QUOTA_UCR["advanced"]
    assert events == [SeatTierChanged(SUB, "s1", "standard", "advanced", "immediate", quota)]
    after = given(*opened(), seat_added("s1"), *spent, *events)
    assert after.subscriptions[SUB].seats["s1"].remaining_ucr == quota - 6000 * CREDIT


def test_a_downgrade_takes_effect_at_the_next_cycle_start():
    state = given(*opened(), seat_added("s1", "premium"))
    change = when(state, ChangeTier(SUB, "s1", "standard"), at("2026-02-03"))
    premium = SEAT_QUOTA_UCR["premium"]
    assert change == [SeatTierChanged(SUB, "s1", "premium", "standard", "next_cycle", premium)]
    state = given(*opened(), seat_added("s1", "premium"), *change)
    assert state.subscriptions[SUB].seats["s1"].quota_ucr == premium
    grant = when(state, AdvanceClock(), at("2026-02-28T09:00"))[1]
    assert grant == SeatQuotaGranted(SUB, "s1", "standard", 1, STANDARD, premium)


def test_asking_for_the_tier_a_seat_already_has_records_nothing():
    state = given(*opened(), seat_added("s1", "advanced"))
    assert when(state, ChangeTier(SUB, "s1", "advanced"), at("2026-02-03")) == []


def test_a_removed_seat_forfeits_its_remaining_quota_and_gets_no_more_grants():
    state = given(*opened(), seat_added("s1"), seat_added("s2"))
    removal = when(state, RemoveSeat(SUB, "s1"), at("2026-02-03"))
    assert removal == [SeatRemoved(SUB, "s1", STANDARD)]
    state = given(*opened(), seat_added("s1"), seat_added("s2"), *removal)
    grants = [
        e for e in when(state, AdvanceClock(), at("2026-03-01")) if isinstance(e, SeatQuotaGranted)
    ]
    assert [g.seat_id for g in grants] == ["s2"]
    assert when(state, RemoveSeat(SUB, "s1"), at("2026-02-04")) == []


def test_a_removed_seat_can_no_longer_spend():
    state = given(*opened(), seat_added("s1"), SeatRemoved(SUB, "s1", STANDARD))
    with pytest.raises(SeatIsRemoved):
        when(state, charge(usage("e1", "s1", input_tokens=10)), at("2026-02-03"))
    with pytest.raises(SeatIsRemoved):
        when(state, ChangeTier(SUB, "s1", "premium"), at("2026-02-03"))


# --- pricing and deduction ------------------------------------------------------------------


def test_the_seed_example_charges_3_18_credits_from_the_seat():
    state = given(*opened(), seat_added("s1"))
    seed = usage("e1", "s1", input_tokens=8_349, cached_tokens=40_794, output_tokens=573)
    [charged] = when(state, charge(seed), at("2026-02-02"))
    assert isinstance(charged, UsageCharged)
    assert (charged.components.input_ucr, charged.components.cached_ucr) == (1_670_000, 820_000)
    assert charged.components.output_ucr == 690_000
    assert charged.credits_ucr == 3_180_000
    assert charged.allocation == (Allocation("seat", "s1", 3_180_000),)
    assert charged.rate_card_version == "2026-05-01"
    assert charged.coefficients.input_ucr_per_1k == 200_000


def test_seat_quota_first_then_packs_soonest_expiring_first():
    first_pack = pack_bought("p-late", at("2026-02-05"))
    second_pack = pack_bought("p-early", at("2026-02-01"))
    state = given(*opened(), seat_added("s1"), first_pack, second_pack)
    big = costing(25_000 + 625_000 + 600, "e1", "s1")
    [charged] = when(state, charge(big), at("2026-02-10"))
    assert isinstance(charged, UsageCharged)
    assert charged.allocation == (
        Allocation("seat", "s1", STANDARD),
        Allocation("pack", "p-early", PACK_CREDITS_UCR),
        Allocation("pack", "p-late", 600 * CREDIT),
    )


def test_packs_expiring_together_are_used_earlier_purchase_then_pack_id_first():
    instant = at("2026-02-05")
    state = given(
        *opened(), seat_added("s1"), pack_bought("p-b", instant), pack_bought("p-a", instant)
    )
    [charged] = when(state, charge(costing(25_000 + 6, "e1", "s1")), at("2026-02-10"))
    assert isinstance(charged, UsageCharged)
    assert charged.allocation[1] == Allocation("pack", "p-a", 6 * CREDIT)


def test_a_pack_is_not_used_at_or_after_its_expiry():
    state = given(*opened(), seat_added("s1"), pack_bought("p1", at("2026-02-01")))
    events = when(state, charge(costing(25_000 + 6, "e1", "s1")), at("2026-03-01T12:00"))
    charged = next(e for e in events if isinstance(e, UsageCharged))
    assert [p.source for p in charged.allocation] == ["seat", "uncovered"]
    assert PackExpired(SUB, "p1", at("2026-03-01T12:00"), PACK_CREDITS_UCR) in events


def test_what_no_credit_covers_is_uncovered_and_the_seat_is_suspended():
    state = given(*opened(), seat_added("s1"))
    events = when(state, charge(costing(25_002, "e1", "s1")), at("2026-02-10"))
    charged = events[0]
    assert isinstance(charged, UsageCharged)
    assert charged.allocation == (
        Allocation("seat", "s1", STANDARD),
        Allocation("uncovered", "", 2 * CREDIT),
    )
    assert events[1:] == [SeatSuspended(SUB, "s1", "credits_exhausted", "e1")]


def test_a_suspended_seat_is_still_charged_for_what_was_served_and_not_suspended_twice():
    state = given(*opened(), seat_added("s1"), SeatSuspended(SUB, "s1", "credits_exhausted", "e0"))
    events = when(state, charge(costing(6, "e1", "s1")), at("2026-02-10"))
    assert types(events) == ["usage.charged"]


def test_a_suspended_seat_resumes_when_a_pack_is_purchased():
    state = given(*opened(), seat_added("s1"), SeatSuspended(SUB, "s1", "credits_exhausted", "e0"))
    events = when(state, BuyPack(SUB, "p1"), at("2026-02-10"))
    assert events == [
        PackPurchased(SUB, "p1", PACK_CREDITS_UCR, at("2026-02-10"), at("2026-03-10")),
        SeatResumed(SUB, "s1", "pack_purchased"),
    ]


def test_a_suspended_seat_resumes_at_its_next_cycle_start():
    state = given(*opened(), seat_added("s1"), SeatSuspended(SUB, "s1", "credits_exhausted", "e0"))
    events = when(state, AdvanceClock(), at("2026-02-28T09:00"))
    assert events[-1] == SeatResumed(SUB, "s1", "cycle_started")


def test_an_upgrade_resumes_a_suspended_seat_since_it_adds_quota():
    state = given(*opened(), seat_added("s1"), SeatSuspended(SUB, "s1", "credits_exhausted", "e0"))
    events = when(state, ChangeTier(SUB, "s1", "premium"), at("2026-02-10"))
    assert events[-1] == SeatResumed(SUB, "s1", "tier_upgraded")


def test_at_a_packs_expiry_its_remaining_credits_expire_and_the_amount_is_recorded():
    spend = costing(25_000 + 1_200, "e1", "s1")
    base = [*opened(), seat_added("s1"), pack_bought("p1", at("2026-02-01"))]
    charged = when(given(*base), charge(spend), at("2026-02-02"))
    events = when(given(*base, *charged), AdvanceClock(), at("2026-03-01T12:00"))
    assert types(events) == [
        "subscription.cycle_started",  # Feb 28 09:00 comes first
        "seat.quota_granted",
        "pack.expired",
    ]
    assert events[-1] == PackExpired(
        SUB, "p1", at("2026-03-01T12:00"), PACK_CREDITS_UCR - 1_200 * CREDIT
    )


def test_a_pack_bought_again_under_the_same_id_buys_nothing():
    state = given(*opened(), pack_bought("p1", at("2026-02-01")))
    assert when(state, BuyPack(SUB, "p1"), at("2026-02-02")) == []


def test_an_image_model_charges_per_image():
    state = given(*opened(), seat_added("s1"))
    [charged] = when(
        state, charge(usage("e1", "s1", model="qwen-image-2.0", images=3)), at("2026-02-02")
    )
    assert isinstance(charged, UsageCharged)
    assert (charged.product, charged.credits_ucr) == ("image", 24 * CREDIT)


# --- idempotency ----------------------------------------------------------------------------


def test_the_same_event_delivered_twice_is_charged_once():
    event = usage("e1", "s1", input_tokens=100)
    assert (
        when(given(*opened(), seat_added("s1")), charge(event, prior=event), at("2026-02-02")) == []
    )


def test_the_same_event_id_with_a_different_payload_is_a_conflict():
    first = usage("e1", "s1", input_tokens=100)
    second = usage("e1", "s1", input_tokens=101)
    with pytest.raises(DuplicateConflict):
        when(given(*opened(), seat_added("s1")), charge(second, prior=first), at("2026-02-02"))


# --- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "error", "reason"),
    [
        (usage("e1", "s1", sub="nobody"), UnknownSubscription, "unknown_subscription"),
        (usage("e1", "ghost"), UnknownSeat, "unknown_seat"),
        (usage("e1", "s9"), UnknownSeat, "unknown_seat"),
        (usage("e1", "s1", model="gpt-99"), UnknownModel, "unknown_model"),
    ],
)
def test_usage_that_cannot_be_charged_is_rejected_with_a_typed_reason(event, error, reason):
    state = given(
        *opened(), seat_added("s1"), *opened(sub="team-9"), seat_added("s9", sub="team-9")
    )
    with pytest.raises(error) as refused:
        when(state, charge(event), at("2026-02-02"))
    assert refused.value.reason == reason


def test_an_anchor_given_with_an_offset_is_recorded_and_counted_in_utc():
    tokyo = timezone(timedelta(hours=9))
    anchor = datetime(2026, 1, 31, 0, 0, tzinfo=tokyo)  # 2026-01-30T15:00Z
    events = when(given(), OpenSubscription(SUB, anchor), at("2026-02-02"))
    utc = anchor.astimezone(UTC)
    assert events == [SubscriptionOpened(SUB, utc), CycleStarted(SUB, 0, *cycle_bounds(utc, 0))]
    assert str(events[0].anchor.tzinfo) == "UTC"


# --- seat ids are scoped to their subscription ------------------------------------------------


def test_two_subscriptions_may_each_have_a_seat_of_the_same_id():
    state = given(*opened(), seat_added("alice"), *opened(sub="team-9"))
    assert when(state, AddSeat("team-9", "alice", "premium"), at("2026-02-02")) == [
        SeatAdded("team-9", "alice", "premium", SEAT_QUOTA_UCR["premium"], 0)
    ]


def test_a_seat_of_another_subscription_is_refused_exactly_like_a_seat_that_exists_nowhere():
    """Nothing about one subscription's seats can be learned through another's."""
    state = given(*opened(), seat_added("alice"), *opened(sub="team-9"))
    answers = []
    for seat in ("alice", "nobody"):
        for command in (
            charge(usage("e1", seat, sub="team-9")),
            ChangeTier("team-9", seat, "premium"),
            RemoveSeat("team-9", seat),
        ):
            with pytest.raises(UnknownSeat) as refused:
                when(state, command, at("2026-02-02"))
            answers.append(refused.value.detail.replace(seat, "<seat>"))
    assert answers[:3] == answers[3:]


def test_the_same_seat_id_in_two_subscriptions_is_charged_as_two_seats():
    state = given(*opened(), *opened(sub="team-9"))
    commands = [AddSeat(sub, seat, "standard") for sub in (SUB, "team-9") for seat in "ab"]
    for command in commands:
        for fact in when(state, command, at("2026-02-01")):
            evolve(state, fact)
    for sub, seat, tokens in (("team-1", "a", 1), ("team-1", "b", 2), ("team-9", "a", 3)):
        for event in when(
            state,
            charge(usage(f"{sub}-{seat}", seat, sub=sub, input_tokens=tokens * 100_000)),
            at("2026-02-02"),
        ):
            evolve(state, event)
    used = {
        (sub_id, seat_id): seat.used_ucr
        for sub_id, sub in state.subscriptions.items()
        for seat_id, seat in sub.seats.items()
    }
    assert used == {
        ("team-1", "a"): 20 * CREDIT,
        ("team-1", "b"): 40 * CREDIT,
        ("team-9", "a"): 60 * CREDIT,
        ("team-9", "b"): 0,
    }


def test_a_model_is_unknown_before_any_rate_card_version_is_in_force():
    early = datetime(1999, 1, 1, tzinfo=UTC)
    state = given(*opened(anchor=early), seat_added("s1"))
    with pytest.raises(UnknownModel):
        when(state, charge(usage("e1", "s1")), early)


def test_decide_never_changes_the_state_it_is_given():
    state = given(*opened(), seat_added("s1"), pack_bought("p1", at("2026-02-01")))
    before = repr(state)
    when(state, charge(costing(30_000, "e1", "s1")), at("2026-04-01"))
    when(state, AdvanceClock(), at("2026-04-01"))
    assert repr(state) == before


# --- pricing arithmetic ---------------------------------------------------------------------


from hypothesis import given as for_all  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ledger.pricing import per_1k_component_ucr, per_unit_component_ucr, price  # noqa: E402
from schemas.events import Coefficients  # noqa: E402
from schemas.usage import Usage, UsageEvent  # noqa: E402

counts = st.integers(0, 50_000_000)
rates = st.integers(0, 10_000_000)


@for_all(
    counts,
    counts,
    counts,
    st.integers(0, 10_000),
    st.integers(0, 1_000),
    st.booleans(),
    rates,
    rates,
)
def test_each_component_is_rounded_half_up_to_a_hundredth_of_a_credit(
    input_tokens, cached, output, tools, images, thinking, rate, per_call
):
    c = Coefficients(rate, rate // 10, rate * 6, rate * 2, per_call, per_call * 100)
    usage = Usage(input_tokens, cached, output, tools, images, thinking)
    got = price(usage, c)
    assert got.input_ucr == per_1k_component_ucr(input_tokens, rate)
    assert got.cached_ucr == per_1k_component_ucr(cached, rate // 10)
    assert got.output_ucr == per_1k_component_ucr(output, rate * 6)
    assert got.thinking_ucr == (per_1k_component_ucr(output, rate * 2) if thinking else 0)
    assert got.tools_ucr == per_unit_component_ucr(tools, per_call)
    assert got.images_ucr == per_unit_component_ucr(images, per_call * 100)
    for part in (got.input_ucr, got.cached_ucr, got.output_ucr, got.tools_ucr, got.images_ucr):
        assert part % 10_000 == 0
    exact_input = input_tokens * rate / 1000  # µcr, as a float only to check the rounding
    assert abs(got.input_ucr - exact_input) <= 5_000 + 1e-6 * exact_input


def test_half_a_hundredth_rounds_up_and_just_under_rounds_down():
    assert per_1k_component_ucr(25, 200_000) == 10_000  # 0.005 credit -> 0.01
    assert per_1k_component_ucr(24, 200_000) == 0  # 0.0048 credit -> 0.00


def test_the_payload_digest_of_an_event_without_a_hold_is_what_earlier_releases_computed():
    """A usage event charged before events could name a hold, delivered again after, is still
    the same payload (a duplicate), not a conflict."""
    event = UsageEvent(
        "seed-1", "team-1", "alice", "qwen3.6-plus", datetime(2026, 2, 1, 10, tzinfo=UTC),
        input_tokens=8349, cached_tokens=40794, output_tokens=573, gateway="gw-1",
    )  # fmt: skip
    assert payload_digest(event) == "e15246a8ed42b0d5c8a09e93e6387bf7"  # as computed by 2507d4b
    held = msgspec.structs.replace(event, hold_id="h1")
    assert payload_digest(held) != payload_digest(event)
