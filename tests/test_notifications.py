"""Notifications: derived from the log once per crossing, with ids from the log, published on
the Redis stream and listed in the subscription's feed; deriving again adds nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from projections.notifications import NotificationDeriver
from projections.stores.notifications_sqlite import SqliteNotificationStore
from schemas.commands import (
    AddSeat,
    BuyPack,
    OpenSubscription,
    PlaceHold,
    SetNotificationSettings,
)
from schemas.usage import UsageEvent
from services.notifier.deriving import Notifier
from tests.service_support import START, Service, eventually, start_service
from tests.support.webhook_receiver import Receiver

ANCHOR = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
NEXT_CYCLE = "2026-04-01T09:00:00Z"
# qwen3.6-plus: 0.2 credits per 1K input tokens, 1.2 per 1K output tokens; a standard seat
# holds 25,000 credits a cycle.
TO_52_PERCENT = {"input_tokens": 5_000_000, "output_tokens": 10_000_000}  # 13,000 credits
TO_80_PERCENT = {"input_tokens": 5_000_000, "output_tokens": 5_000_000}  # 7,000 credits
TO_100_PERCENT = {"input_tokens": 25_000_000}  # 5,000 credits
BEYOND = {"input_tokens": 5_000_000}  # 1,000 credits, uncovered
EXPECTED = [
    ("seat.threshold_reached", 50),
    ("seat.threshold_reached", 80),
    ("seat.threshold_reached", 100),
    ("seat.suspended", None),
    ("seat.resumed", None),
    ("pack.expiring", None),
    ("seat.threshold_reached", 50),
]
"""A seat through 50, 80 and 100 %, suspended, resumed by a pack, into its next cycle (where
the pack's last expiry warning is due) and past 50 % again."""


def _summary(notifications: list[dict[str, Any]]) -> list[tuple[str, int | None]]:
    return [(n["type"], n["data"].get("threshold_percent")) for n in notifications]


def _usage(event_id: str, at: datetime, counts: dict[str, int]) -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        subscription_id="team",
        seat_id="alice",
        model="qwen3.6-plus",
        occurred_at=at,
        **counts,  # type: ignore[arg-type]
    )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[Ledger, SqliteEventStore, ManualClock]]:
    store = SqliteEventStore(tmp_path / "ledger.sqlite3")
    clock = ManualClock(us_from_datetime(ANCHOR))
    yield Ledger(store, load_rate_card(), clock), store, clock
    store.close()


def _drive(
    ledger: Ledger, clock: ManualClock, settings: SetNotificationSettings | None = None
) -> None:
    opening = [OpenSubscription("team", ANCHOR), AddSeat("team", "alice", "standard")]
    for outcome in ledger.execute([*opening, *([settings] if settings else [])]):
        assert outcome.status == "applied"
    for n, counts in enumerate((TO_52_PERCENT, TO_80_PERCENT, TO_100_PERCENT, BEYOND)):
        clock.advance(1_000_000)
        [outcome] = ledger.charge([_usage(f"e{n}", ANCHOR, counts)])
        assert outcome.status == "applied"
    clock.advance(1_000_000)
    [bought] = ledger.execute([BuyPack("team", "p1")])
    assert bought.status == "applied"
    clock.set(us_from_datetime(datetime(2026, 4, 1, 9, 0, tzinfo=UTC)))
    ledger.tick()
    clock.advance(1_000_000)
    [outcome] = ledger.charge([_usage("next", ANCHOR, TO_52_PERCENT)])
    assert outcome.status == "applied"


def test_a_seat_notifies_each_threshold_once_then_suspension_resume_and_the_next_cycle(
    ledger: tuple[Ledger, SqliteEventStore, ManualClock],
) -> None:
    book, store, clock = ledger
    _drive(book, clock)
    deriver = NotificationDeriver()
    fired = deriver.fold(store.read())
    assert [(n.type, n.data.get("threshold_percent")) for n in fired] == EXPECTED
    assert len({n.notification_id for n in fired}) == len(fired)


def test_deriving_from_position_0_again_gives_the_same_ids_and_stores_none_again(
    ledger: tuple[Ledger, SqliteEventStore, ManualClock], tmp_path: Path
) -> None:
    book, store, clock = ledger
    _drive(book, clock)
    notices = SqliteNotificationStore(tmp_path / "notifications.sqlite3")
    notifier = Notifier(store, notices, clock)
    while (step := notifier.step()) and step[0]:
        pass
    first = notices.notifications()
    assert [(n.type, n.data.get("threshold_percent")) for n in first] == EXPECTED
    assert notifier.rebuild() == 0
    assert notices.notifications() == first
    notices.close()


def test_admin_thresholds_and_low_credits_fire_once_per_crossing_and_on_recovery(
    ledger: tuple[Ledger, SqliteEventStore, ManualClock],
) -> None:
    book, store, clock = ledger
    _drive(book, clock, SetNotificationSettings("team", (90,), credits_low_ucr=20_000_000_000))
    deriver = NotificationDeriver()
    fired = [
        (n.type, n.data.get("threshold_percent"), n.data.get("state"))
        for n in deriver.fold(store.read())
    ]
    assert fired == [
        ("subscription.credits_low", None, "low"),  # 12,000 of 25,000 left
        ("seat.threshold_reached", 90, None),
        ("seat.suspended", None, None),
        ("subscription.credits_low", None, "recovered"),  # the pack's 625,000
        ("seat.resumed", None, None),
        ("pack.expiring", None, None),
    ]


def test_settings_are_in_the_log_so_a_rebuild_anywhere_derives_the_same_notifications(
    ledger: tuple[Ledger, SqliteEventStore, ManualClock], tmp_path: Path
) -> None:
    """Settings changed mid-cycle: a notifier deriving the same log into an empty store, and a
    rebuild from position 0, find exactly the notifications (ids included) the first derived."""
    book, store, clock = ledger
    for outcome in book.execute(
        [OpenSubscription("team", ANCHOR), AddSeat("team", "alice", "standard")]
    ):
        assert outcome.status == "applied"
    clock.advance(1_000_000)
    [outcome] = book.charge([_usage("e0", ANCHOR, TO_52_PERCENT)])  # 52 %: 50 fires
    # 40 % is passed already: it fires at the settings record itself; 60 % is ahead.
    [changed] = book.execute([SetNotificationSettings("team", (60, 40), 6_000_000_000)])
    assert changed.status == "applied"
    clock.advance(1_000_000)
    [outcome] = book.charge([_usage("e1", ANCHOR, TO_80_PERCENT)])  # 80 %: 60 fires
    first = SqliteNotificationStore(tmp_path / "first.sqlite3")
    notifier = Notifier(store, first, clock)
    while (step := notifier.step()) and step[0]:
        pass
    derived = first.notifications()
    assert [(n.type, n.data.get("threshold_percent")) for n in derived] == [
        ("seat.threshold_reached", 50),
        ("seat.threshold_reached", 40),
        ("seat.threshold_reached", 60),
        ("subscription.credits_low", None),  # 5,000 left: below 6,000
    ]
    elsewhere = SqliteNotificationStore(tmp_path / "elsewhere.sqlite3")
    other = Notifier(store, elsewhere, clock)
    while (step := other.step()) and step[0]:
        pass
    assert elsewhere.notifications() == derived
    assert notifier.rebuild() == 0
    assert first.notifications() == derived
    first.close()
    elsewhere.close()


# -- through `ledger serve`: the stream and the feed -------------------------------------------


def test_the_stream_and_the_feed_show_the_exact_sequence_of_a_seat_through_its_cycle(
    tmp_path: Path, redis_url: str
) -> None:
    stream = f"test.{uuid.uuid4().hex[:12]}.notifications"
    receiver = Receiver().start()
    env = {"LEDGER_NOTIFICATION_STREAM": stream, "LEDGER_WEBHOOK_ALLOW_PRIVATE": "1"}
    for service in start_service(tmp_path, redis_url, env_overrides=env):
        try:
            _through_a_cycle(service, stream, receiver)
        finally:
            service.redis.delete(stream)
            receiver.stop()


def _through_a_cycle(service: Service, stream: str, receiver: Receiver) -> None:
    service.open("team", {"alice": "standard"})
    hook = service.ok("POST", "/v1/subscriptions/team/webhooks", {"url": receiver.url})

    def on_stream() -> list[dict[str, Any]]:
        return [json.loads(fields[b"data"]) for _, fields in service.redis.xrange(stream)]

    def feed() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after = None
        while True:
            page = service.ok(
                "GET", "/v1/subscriptions/team/notifications", params={"after": after}
            )
            items += page["items"]
            if not page["items"]:
                return items
            after = page["next_cursor"]

    for n, (counts, seen) in enumerate(
        ((TO_52_PERCENT, 1), (TO_80_PERCENT, 2), (TO_100_PERCENT, 3), (BEYOND, 4))
    ):
        service.publish("team", "alice", f"e{n}", **counts)
        eventually(on_stream, lambda items, seen=seen: len(items) >= seen, f"{seen} notifications")
    service.ok("POST", "/v1/subscriptions/team/packs", {"pack_id": "p1"})
    eventually(on_stream, lambda items: len(items) >= 5, "the resume")
    service.ok("POST", "/v1/clock", {"now": NEXT_CYCLE})
    eventually(
        lambda: service.ok("GET", "/v1/subscriptions/team/seats/alice"),
        lambda seat: seat["cycle_start"] == NEXT_CYCLE,
        "the next cycle",
    )
    service.publish("team", "alice", "next", **TO_52_PERCENT)
    published = eventually(on_stream, lambda items: len(items) >= len(EXPECTED), "the next cycle")
    # The pack was bought at the anchor's instant: it expires as the next cycle starts.
    expected = [("pack.expired", None) if t == "pack.expiring" else (t, p) for t, p in EXPECTED]
    assert _summary(published) == expected
    listed = feed()
    assert [n["notification_id"] for n in listed] == [n["notification_id"] for n in published]
    assert _summary(listed) == expected
    assert {n["subscription_id"] for n in listed} == {"team"}
    assert listed[3]["data"]["event_id"] == "e3"
    assert listed[0]["occurred_at"] == START  # ledger time: the manual clock stood still
    receiver.wait_for(lambda got: len(got) >= len(expected))
    assert _summary(receiver.verified(hook["secret"])) == expected
    assert receiver.ids() == [n["notification_id"] for n in listed]
    _check_metrics(service, len(expected))


def _check_metrics(service: Service, delivered: int) -> None:
    """Notifications by type, deliveries by outcome and their lag, in one /metrics."""
    text = eventually(
        lambda: service.api.get("/metrics").body,
        lambda body: (
            f'ledger_webhook_deliveries_total{{outcome="delivered"}} {delivered}.0' in body
        ),
        "the deliveries counted",
    )
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['ledger_notifications_total{type="seat.threshold_reached"}'] == 4
    assert values['ledger_notifications_total{type="seat.suspended"}'] == 1
    assert values["ledger_webhook_delivery_lag_seconds_count"] == delivered


def test_a_pack_used_up_and_a_hold_left_to_expire_notify_once_each(
    ledger: tuple[Ledger, SqliteEventStore, ManualClock],
) -> None:
    book, store, clock = ledger
    setup = [
        OpenSubscription("team", ANCHOR),
        AddSeat("team", "alice", "standard"),
        AddSeat("team", "bob", "standard"),
        BuyPack("team", "p1"),
    ]
    assert {o.status for o in book.execute(setup)} == {"applied"}
    most = {"input_tokens": 50_000_000, "cached_tokens": 50_000_000, "output_tokens": 50_000_000}
    for n in range(10):  # 10 x 71,000: alice's 25,000, then all of p1's 625,000, then uncovered
        clock.advance(1_000_000)
        [outcome] = book.charge([_usage(f"big-{n}", ANCHOR, most)])
        assert outcome.status == "applied"
    [held] = book.execute([PlaceHold("team", "bob", "h1", 1_000_000_000, ttl_s=60)])
    assert held.status == "applied"
    clock.advance(61_000_000)
    book.tick()
    fired = NotificationDeriver().fold(store.read())
    kinds = [n.type for n in fired if n.type in ("pack.exhausted", "hold.expired")]
    assert kinds == ["pack.exhausted", "hold.expired"]
    exhausted, expired = (n for n in fired if n.type in kinds)
    assert exhausted.data == {"pack_id": "p1", "kind": "pack", "seat_id": "alice"}
    assert expired.data == {"seat_id": "bob", "hold_id": "h1", "released": "1000.00"}
