"""Holds against a real `ledger serve` (SQLite and PostgreSQL): concurrent gateways over HTTP
never hold more than a seat can spend, and usage published with `hold_id` on the stream
settles the hold in the same append.

Each race sends 50 hold requests at once from 50 threads for what covers exactly 10 of them:
10 are granted, 40 refused with `available` 0, and walking the log in order, what active holds
hold never exceeds what could be spent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import pytest

from tests.conftest import unique_postgres_schema
from tests.service_support import (
    HttpClient,
    Response,
    Service,
    eventually,
    start_service,
)

RACERS: Final = 50
GRANTED: Final = 10
STANDARD_QUOTA_UCR: Final = 25_000_000_000
PACK_UCR: Final = 625_000_000_000
MAX_CHARGE_UCR: Final = 71_000_000_000
"""What `publish_max` charges (every token count at its bound)."""
SMALL = {"input_tokens": 8_349, "cached_tokens": 40_794, "output_tokens": 573}
SMALL_CREDITS: Final = "3.18"
BACKENDS: Final = ("sqlite", "postgres")


def _on_postgres(url: str, schema: str) -> dict[str, str]:
    return {"LEDGER_DATABASE_URL": url, "LEDGER_DATABASE_SCHEMA": schema}


@pytest.fixture(scope="module", params=BACKENDS)
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Service]:
    """One `ledger serve` per backend for the tests that leave the clock alone: each opens a
    subscription of its own and reads only that subscription's events from the shared log."""
    work_dir = tmp_path_factory.mktemp(f"holds-{request.param}")
    if request.param == "sqlite":
        yield from start_service(work_dir, redis_url)
        return
    url = request.getfixturevalue("postgres_url")
    with unique_postgres_schema(url) as schema:
        yield from start_service(work_dir, redis_url, env_overrides=_on_postgres(url, schema))


@pytest.fixture(params=BACKENDS)
def own_service(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> Iterator[Service]:
    """A `ledger serve` of its own, for a test that moves the ledger clock."""
    overrides: dict[str, str] = {}
    if request.param == "postgres":
        overrides = _on_postgres(
            request.getfixturevalue("postgres_url"), request.getfixturevalue("postgres_schema")
        )
    yield from start_service(tmp_path, redis_url, env_overrides=overrides)


def holds_path(sub: str, seat: str) -> str:
    return f"/v1/subscriptions/{sub}/seats/{seat}/holds"


def place(
    api: HttpClient, sub: str, seat: str, hold_id: str, credits: str, **body: Any
) -> Response:
    return api.request(
        "POST", holds_path(sub, seat), {"hold_id": hold_id, "credits": credits, **body}
    )


def race(requests: list[tuple[HttpClient, str, str, str, str]]) -> list[Response]:
    """Every (api, sub, seat, hold id, credits) placed at once, one thread each."""
    start = threading.Barrier(len(requests))

    def one(request: tuple[HttpClient, str, str, str, str]) -> Response:
        start.wait()
        return place(*request)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(one, requests))


def log_events(api: HttpClient) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = api.get("/v1/log", after=after, limit=1000).body
        events += [record["event"] for record in page["items"]]
        if page["next_after"] is None:
            return events
        after = page["next_after"]


def most_ever_held(events: list[dict[str, Any]], sub: str) -> int:
    """The largest sum of active holds of `sub` at any position of the log."""
    held: dict[str, int] = {}
    most = 0
    for event in events:
        if event.get("subscription_id") != sub:
            continue
        kind = event["type"]
        if kind == "hold.placed":
            held[event["hold_id"]] = event["credits_ucr"]
        elif kind in ("hold.released", "hold.expired", "hold.settled"):
            del held[event["hold_id"]]
        elif kind == "hold.shrunk":
            held[event["hold_id"]] -= event["by_ucr"]
        most = max(most, sum(held.values()))
    return most


def check_race_answers(answers: list[Response]) -> None:
    """Exactly `GRANTED` granted; every other refused for want of credits, with none left."""
    granted = [a for a in answers if a.status == 201]
    refused = [a for a in answers if a.status != 201]
    assert len(granted) == GRANTED, [a.body for a in answers if a.status not in (201, 409)]
    assert {a.status for a in refused} == {409}
    assert {a.body["type"].rsplit("/", 1)[1] for a in refused} == {"insufficient-credits"}
    assert {a.body["available"] for a in refused} == {"0.00"}


def check_race(service: Service, answers: list[Response], sub: str, could_spend_ucr: int) -> None:
    check_race_answers(answers)
    events = log_events(service.api)
    placed = [e for e in events if e["type"] == "hold.placed" and e["subscription_id"] == sub]
    assert len(placed) == GRANTED
    assert most_ever_held(events, sub) == could_spend_ucr


def gateway_of(service: Service, sub: str) -> HttpClient:
    created = service.ok("POST", "/v1/tokens", {"role": "gateway", "subscription_ids": [sub]})
    return service.api.with_token(created["token"])


def test_fifty_concurrent_holds_for_ten_holds_worth_grant_exactly_ten(service: Service) -> None:
    service.open("race", {"alice": "standard"})
    gateway = gateway_of(service, "race")
    answers = race([(gateway, "race", "alice", f"h{n}", "2500") for n in range(RACERS)])
    check_race(service, answers, "race", STANDARD_QUOTA_UCR)
    seat = service.api.get("/v1/subscriptions/race/seats/alice").body
    assert (seat["held"], seat["available"], seat["used"]) == ("25000.00", "0.00", "0.00")


def test_two_seats_racing_for_the_last_pack_grant_exactly_ten_holds(service: Service) -> None:
    service.open("pair", {"alice": "standard", "bob": "standard"}, packs=("p1",))
    service.publish_max("pair", "alice")
    service.publish_max("pair", "bob")
    pack_left_ucr = PACK_UCR - 2 * (MAX_CHARGE_UCR - STANDARD_QUOTA_UCR)  # 533000 credits
    eventually(
        lambda: service.api.get("/v1/subscriptions/pair/billing").body["available"],
        lambda available: available == "533000.00",
        "both seats' quotas spent and the pack drawn on",
    )
    gateway = gateway_of(service, "pair")
    answers = race(
        [(gateway, "pair", ("alice", "bob")[n % 2], f"h{n}", "53300") for n in range(RACERS)]
    )
    check_race(service, answers, "pair", pack_left_ucr)
    [pack] = service.api.get("/v1/subscriptions/pair/packs").body["items"]
    assert pack["remaining"] == "533000.00"
    billing = service.api.get("/v1/subscriptions/pair/billing").body
    assert (billing["held"], billing["available"]) == ("533000.00", "0.00")


def publish_with_hold(service: Service, sub: str, seat: str, event_id: str, hold: str) -> None:
    service.publish_event(
        {
            "event_id": event_id,
            "subscription_id": sub,
            "seat_id": seat,
            "model": "qwen3.6-plus",
            "occurred_at": "2026-03-01T09:00:00Z",
            "hold_id": hold,
            **SMALL,
        }
    )


def charged(service: Service, event_id: str) -> dict[str, Any]:
    """The `usage.charged` event of `event_id`, once the log has it (there is one)."""
    found = eventually(
        lambda: [
            e
            for e in log_events(service.api)
            if e["type"] == "usage.charged" and e["event_id"] == event_id
        ],
        bool,
        f"the charge of {event_id}",
    )
    assert len(found) == 1
    return found[0]


def hold_of(service: Service, sub: str, seat: str, hold: str) -> dict[str, Any]:
    reply = service.api.get(f"{holds_path(sub, seat)}/{hold}")
    assert reply.status == 200, reply.body
    return reply.body  # type: ignore[no-any-return]


def move_clock(service: Service, now: str) -> None:
    service.ok("POST", "/v1/clock", {"now": now})


@pytest.mark.parametrize(
    ("sub", "held", "left"),
    [
        ("settle-below", "10", "0.00"),
        ("settle-equal", SMALL_CREDITS, "0.00"),
        ("settle-above", "1", "0.00"),
    ],
)
def test_usage_naming_a_hold_settles_it_below_equal_or_above_what_it_held(
    service: Service, sub: str, held: str, left: str
) -> None:
    service.open(sub, {"alice": "standard"})
    assert place(service.api, sub, "alice", "h1", held).status == 201
    publish_with_hold(service, sub, "alice", f"{sub}-e1", "h1")
    charge = charged(service, f"{sub}-e1")
    assert (charge["hold_id"], charge["hold_status"]) == ("h1", "settled")
    assert charge["credits_ucr"] == 3_180_000
    assert charge["allocation"] == [{"source": "seat", "id": "alice", "credits_ucr": 3_180_000}]
    # The log has the charge before the API's live balances have folded it.
    hold = eventually(
        lambda: hold_of(service, sub, "alice", "h1"),
        lambda hold: hold["status"] != "active",
        "the API folding the settlement",
    )
    assert (hold["status"], hold["settled_by"]) == ("settled", f"{sub}-e1")
    seat = service.api.get(f"/v1/subscriptions/{sub}/seats/alice").body
    assert (seat["used"], seat["held"], seat["available"]) == (SMALL_CREDITS, left, "24996.82")
    kinds = [e["type"] for e in log_events(service.api) if e.get("subscription_id") == sub]
    assert kinds[-2:] == ["hold.settled", "usage.charged"]


def test_usage_after_the_hold_expired_or_was_released_is_charged_and_says_not_active(
    own_service: Service,
) -> None:
    service = own_service
    service.open("late", {"alice": "standard"})
    assert place(service.api, "late", "alice", "short", "5", ttl_s=1).status == 201
    assert place(service.api, "late", "alice", "freed", "5").status == 201
    assert service.api.request("DELETE", f"{holds_path('late', 'alice')}/freed").status == 200
    move_clock(service, "2026-03-01T09:00:05Z")
    eventually(
        lambda: hold_of(service, "late", "alice", "short")["status"],
        lambda status: status == "expired",
        "the ticker expiring the hold",
    )
    publish_with_hold(service, "late", "alice", "e-short", "short")
    publish_with_hold(service, "late", "alice", "e-freed", "freed")
    for event_id in ("e-short", "e-freed"):
        assert charged(service, event_id)["hold_status"] == "not_active"
    # The log has the charges before the API's live balances have folded them.
    seat = eventually(
        lambda: service.api.get("/v1/subscriptions/late/seats/alice").body,
        lambda seat: seat["used"] == "6.36",
        "the seat's balances folding both charges",
    )
    assert seat["held"] == "0.00"
    events = log_events(service.api)
    assert [e["type"] for e in events if e["type"].startswith("hold.")] == [
        "hold.placed",
        "hold.placed",
        "hold.released",
        "hold.expired",
    ]


def test_a_hold_across_a_cycle_start_keeps_its_seat_part_and_loses_its_expired_pack_part(
    own_service: Service,
) -> None:
    service = own_service
    service.open("cycle", {"alice": "standard", "bob": "standard"}, packs=("p1",))
    service.publish_max("cycle", "alice")  # alice's quota spent: her holds take from p1
    eventually(
        lambda: service.api.get("/v1/subscriptions/cycle/seats/alice").body["available"],
        lambda available: available == "579000.00",
        "alice's quota spent",
    )
    move_clock(service, "2026-04-01T08:30:00Z")
    on_pack = place(service.api, "cycle", "alice", "on-pack", "1000", ttl_s=3600)
    on_seat = place(service.api, "cycle", "bob", "on-seat", "100", ttl_s=3600)
    assert on_pack.body["allocation"] == [{"source": "pack", "id": "p1", "credits": "1000.00"}]
    assert on_seat.body["allocation"] == [{"source": "seat", "id": "bob", "credits": "100.00"}]
    move_clock(service, "2026-04-01T09:00:01Z")  # the cycle ends and p1 expires
    eventually(
        lambda: hold_of(service, "cycle", "alice", "on-pack")["credits"],
        lambda left: left == "0.00",
        "the expired pack's part leaving the hold",
    )
    [shrunk] = [e for e in log_events(service.api) if e["type"] == "hold.shrunk"]
    assert (shrunk["hold_id"], shrunk["source"], shrunk["by_ucr"]) == ("on-pack", "pack", 10**9)
    bob = service.api.get("/v1/subscriptions/cycle/seats/bob").body
    assert (bob["used"], bob["held"], bob["available"]) == ("0.00", "100.00", "24900.00")
    publish_with_hold(service, "cycle", "alice", "e-alice", "on-pack")
    publish_with_hold(service, "cycle", "bob", "e-bob", "on-seat")
    for event_id, seat in (("e-alice", "alice"), ("e-bob", "bob")):
        charge = charged(service, event_id)
        assert charge["hold_status"] == "settled"
        assert charge["allocation"] == [{"source": "seat", "id": seat, "credits_ucr": 3_180_000}]


def test_a_repeated_hold_is_the_same_hold_and_a_suspended_seat_gets_none(
    service: Service,
) -> None:
    service.open("dup", {"alice": "standard", "carol": "standard"})
    first = place(service.api, "dup", "alice", "h1", "5")
    again = place(service.api, "dup", "alice", "h1", "5")
    assert (first.status, again.status, again.body) == (201, 200, first.body)
    assert place(service.api, "dup", "alice", "h1", "6").status == 409
    service.publish_max("dup", "carol")  # uncovered: carol is suspended
    eventually(
        lambda: service.api.get("/v1/subscriptions/dup/seats/carol").body["status"],
        lambda status: status == "suspended",
        "carol suspended",
    )
    refused = place(service.api, "dup", "carol", "h2", "1")
    assert (refused.status, refused.body["reason"]) == (409, "seat_suspended")
