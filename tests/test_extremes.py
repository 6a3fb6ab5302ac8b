"""Extreme but accepted values never brick the ledger: whatever passes the bounds (instants at
the edges of the accepted range, with any offset; ids of the longest length and every allowed
character; the largest counts) is appended, and after a restart every projection folds the log
to the same balances, and the writer to the same state."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.idempotency import payload_digest
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from projections.balances import dump
from projections.live import LiveBalances
from projections.replay import balances_as_of
from projections.runner import ProjectionRunner
from projections.stores.sqlite import SqliteReadModelStore
from schemas.commands import AddSeat, BuyPack, ChangeTier, ChargeUsage, Command, OpenSubscription
from schemas.limits import (
    MAX_ID_CHARS,
    MAX_IMAGES_PER_REQUEST,
    MAX_INSTANT,
    MAX_TOKENS_PER_COMPONENT,
    MAX_TOOL_CALLS_PER_REQUEST,
    MIN_INSTANT,
)
from schemas.usage import UsageEvent

RATE_CARD = load_rate_card()
ID_CHARS = string.ascii_letters + string.digits + "._-:@"
DAY = timedelta(days=1)

ids = st.text(ID_CHARS, min_size=1, max_size=MAX_ID_CHARS)
longest_ids = st.text(ID_CHARS, min_size=MAX_ID_CHARS, max_size=MAX_ID_CHARS)
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
instants = st.datetimes(
    min_value=MIN_INSTANT.replace(tzinfo=None), max_value=MAX_INSTANT.replace(tzinfo=None)
).map(lambda naive: naive.replace(tzinfo=UTC))


@st.composite
def edge_instants(draw: st.DrawFn) -> datetime:
    """An accepted instant, often right at a bound, written with any offset."""
    instant = draw(st.one_of(st.sampled_from([MIN_INSTANT, MAX_INSTANT]), instants))
    return instant.astimezone(draw(offsets))


@st.composite
def histories(draw: st.DrawFn) -> tuple[datetime, list[tuple[datetime, list[Command]]]]:
    start = draw(st.sampled_from([MIN_INSTANT, MAX_INSTANT - 40 * DAY]) | instants)
    start = min(start, MAX_INSTANT - 40 * DAY)
    subscription = draw(longest_ids)
    seats = draw(st.lists(ids, min_size=1, max_size=3, unique=True))
    anchor = draw(st.sampled_from([MIN_INSTANT, start]))
    steps: list[tuple[datetime, list[Command]]] = [
        (
            start,
            [
                OpenSubscription(subscription, anchor.astimezone(draw(offsets))),
                *(AddSeat(subscription, seat, "standard") for seat in seats),
                BuyPack(subscription, draw(longest_ids)),
            ],
        )
    ]
    now = start
    for serial in range(draw(st.integers(1, 6))):
        now = min(now + draw(st.sampled_from([timedelta(0), DAY, 31 * DAY])), MAX_INSTANT)
        event = UsageEvent(
            event_id=f"{serial}-{draw(ids)}"[:MAX_ID_CHARS],
            subscription_id=subscription,
            seat_id=draw(st.sampled_from(seats)),
            model=draw(st.sampled_from(["qwen3.6-plus", "wan2.7-image-pro"])),
            occurred_at=draw(edge_instants()),
            input_tokens=draw(st.sampled_from([0, MAX_TOKENS_PER_COMPONENT])),
            cached_tokens=draw(st.sampled_from([0, MAX_TOKENS_PER_COMPONENT])),
            output_tokens=draw(st.sampled_from([0, MAX_TOKENS_PER_COMPONENT])),
            tool_calls=draw(st.sampled_from([0, MAX_TOOL_CALLS_PER_REQUEST])),
            images=draw(st.sampled_from([0, MAX_IMAGES_PER_REQUEST])),
            thinking=draw(st.booleans()),
            request_id=draw(st.none() | longest_ids),
        )
        steps.append((now, [ChargeUsage(event, payload_digest(event))]))
        if draw(st.booleans()):
            steps.append((now, [ChangeTier(subscription, seats[0], "premium")]))
    steps.append((MAX_INSTANT, []))  # the clock at the very last accepted instant
    return start, steps


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(history=histories())
def test_extreme_accepted_values_fold_alike_everywhere_after_a_restart(
    tmp_path_factory, history
) -> None:
    start, steps = history
    folder: Path = tmp_path_factory.mktemp("extremes")
    clock = ManualClock(us_from_datetime(start))
    store = SqliteEventStore(folder / "log.sqlite3")
    writer = Ledger(store, RATE_CARD, clock)
    for at, commands in steps:
        clock.set(max(clock.now_us(), us_from_datetime(at)))
        writer.tick()
        for outcome in writer.execute(commands):
            assert outcome.status != "rejected", (outcome.reason, outcome.detail)
    head = store.head().position
    store.close()

    restarted = SqliteEventStore(folder / "log.sqlite3")
    again = Ledger(restarted, RATE_CARD, clock)
    assert (again.position, repr(again.state)) == (head, repr(writer.state))
    read_store = SqliteReadModelStore(folder / "rm.sqlite3", restarted)
    runner = ProjectionRunner(restarted, read_store)
    runner.catch_up()
    loaded, position = read_store.snapshot()
    live = LiveBalances(restarted, loaded, position)
    live.catch_up()
    replayed = dump(balances_as_of(restarted, head))
    assert dump(runner.balances) == dump(read_store.load_balances()) == replayed
    assert dump(live.balances) == replayed
    read_store.close()
    restarted.close()
