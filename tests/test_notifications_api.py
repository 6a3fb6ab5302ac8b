"""The feed and the notification settings over HTTP (in process): the feed pages with `after`
and `limit`, answers as of a point of the log, and is for the subscription's readers; the
settings are read by readers and set by admins only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.clock import ManualClock
from ledger.stores.sqlite import SqliteEventStore
from projections.stores.notifications_sqlite import SqliteNotificationStore
from services.notifier.deriving import Notifier
from tests.support.api_app import Api, expect_problem, open_api

FEED = "/v1/subscriptions/team-1/notifications"
SETTINGS = "/v1/subscriptions/team-1/notification-settings"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The API tests' ledger (alice overflowed into two packs), its notifications derived."""
    notices = SqliteNotificationStore(tmp_path / "notifications.sqlite3")
    with open_api(tmp_path, notices=notices) as api:
        events = SqliteEventStore(tmp_path / "ledger.sqlite3")
        notifier = Notifier(events, notices, ManualClock(0))
        while (step := notifier.step()) and step[0]:
            pass
        events.close()
        yield api
    notices.close()


def _types(items: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [
        (n["type"], n["data"].get("threshold_percent", n["data"].get("pack_id"))) for n in items
    ]


def test_the_feed_lists_a_subscriptions_notifications_oldest_first_in_pages(api: Api) -> None:
    everything = api.get(FEED).json()
    assert _types(everything["items"]) == [
        ("seat.threshold_reached", 50),
        ("seat.threshold_reached", 80),
        ("seat.threshold_reached", 100),
        ("pack.exhausted", "p1"),
    ]
    first = api.get(FEED, limit=2).json()
    assert first["items"] == everything["items"][:2]
    rest = api.get(FEED, after=first["next_cursor"]).json()
    assert rest["items"] == everything["items"][2:]
    assert api.get(FEED, after=rest["next_cursor"]).json() == {"items": [], "next_cursor": None}
    other = api.get("/v1/subscriptions/team-2/notifications").json()["items"]
    assert {n["subscription_id"] for n in other} == {"team-2"}
    assert "seat.suspended" in [n["type"] for n in other]


def test_the_feed_as_of_a_position_shows_what_was_derived_by_then(api: Api) -> None:
    items = api.get(FEED).json()["items"]
    before_pack = items[-1]["position"] - 1
    assert api.get(FEED, as_of=f"position:{before_pack}").json()["items"] == [
        n for n in items if n["position"] <= before_pack
    ]
    expect_problem(api.get(FEED, as_of="position:999999"), 404, "not-found")


def test_the_feed_is_for_the_subscriptions_readers(api: Api) -> None:
    _, viewer = api.token("viewer", ["team-1"])
    _, gateway = api.token("gateway", ["team-1"])
    assert api.get(FEED, token=viewer).status_code == 200
    expect_problem(api.get(FEED, token=gateway), 403, "forbidden")
    expect_problem(
        api.get("/v1/subscriptions/team-2/notifications", token=viewer), 404, "not-found"
    )
    expect_problem(api.get("/v1/subscriptions/nobody/notifications"), 404, "not-found")


def test_admins_set_the_thresholds_and_the_low_credits_amount_readers_read_them(api: Api) -> None:
    defaults = {"thresholds_percent": [50, 80, 100], "credits_low": None, "position": None}
    assert api.get(SETTINGS).json() == defaults
    body = {"thresholds_percent": [90, 75, 90.0], "credits_low": "1000.5", "reason": "ops ask"}
    put = api.client.put(
        SETTINGS, json=body, headers={"Authorization": "Bearer lt_test-admin-token"}
    )
    assert put.status_code == 200
    expected = {"thresholds_percent": [75, 90], "credits_low": "1000.50"}
    assert put.json() == {**expected, "position": put.json()["position"]}
    _, viewer = api.token("viewer", ["team-1"])
    assert api.get(SETTINGS, token=viewer).json() == put.json()
    # A write to the log like any admin write: the history names who asked and why.
    [change] = [
        item
        for item in api.get("/v1/subscriptions/team-1/history?limit=1000").json()["items"]
        if item["type"] == "notification.settings_changed"
    ]
    assert change["position"] == put.json()["position"]
    assert change["actor"]["role"] == "admin" and change["reason"] == "ops ask"
    assert change["event"]["thresholds_percent"] == [75, 90]
    # The settings in force again: nothing recorded, the same answer.
    again = api.client.put(
        SETTINGS, json=body, headers={"Authorization": "Bearer lt_test-admin-token"}
    )
    assert again.status_code == 200 and again.json() == put.json()
    refused = api.client.put(SETTINGS, json=body, headers={"Authorization": f"Bearer {viewer}"})
    expect_problem(refused, 403, "forbidden")
    for bad in ({"thresholds_percent": [0]}, {"thresholds_percent": [50.5]}, {"credits_low": "1"}):
        answer = api.client.put(
            SETTINGS, json=bad, headers={"Authorization": "Bearer lt_test-admin-token"}
        )
        expect_problem(answer, 400, "invalid-body")
