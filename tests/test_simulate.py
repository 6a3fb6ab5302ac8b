"""`ledger simulate`: setup in a real SQLite ledger, publishing onto a real Redis stream."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import msgspec
import pytest
import redis
from click.testing import CliRunner

from ledger.rate_card import load_rate_card
from schemas.commands import AddSeat, BuyPack, Command, OpenSubscription
from schemas.usage import UsageEvent
from services.bootstrap import bootstrap
from services.config import Settings
from services.ingest.dead_letters import DeadLetter
from services.ingest.processor import IngestProcessor
from services.simulate import (
    UNDECODABLE_KINDS,
    Plan,
    TokenBucket,
    chunk_size,
    make_plan,
    run_simulation,
    simulate,
)

DECODER = msgspec.json.Decoder(UsageEvent)
MODELS = set(load_rate_card().versions[-1].models)


def stream_entries(client: redis.Redis, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream)  # type: ignore[assignment]
    return [(entry_id.decode(), fields) for entry_id, fields in entries]


def try_decode(data: bytes) -> UsageEvent | None:
    try:
        return DECODER.decode(data)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None


class ListSink:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def write(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)


# -- pacing (a fake clock: exact and instant) ---------------------------------------------------


class FakeTime:
    def __init__(self, oversleep_s: float = 0.0) -> None:
        self.now = 100.0
        self.oversleep_s = oversleep_s

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self.oversleep_s


def test_token_bucket_starts_empty_and_paces_at_the_rate() -> None:
    fake = FakeTime()
    bucket = TokenBucket(1_000, 40, clock=fake.clock, sleep=fake.sleep)
    for _ in range(10):
        bucket.acquire(20)
    assert fake.now - 100.0 == pytest.approx(0.2)


def test_token_bucket_credits_oversleep_so_the_rate_does_not_drift() -> None:
    fake = FakeTime(oversleep_s=0.003)  # every sleep 3 ms too long
    bucket = TokenBucket(1_000, 40, clock=fake.clock, sleep=fake.sleep)
    for _ in range(100):
        bucket.acquire(20)
    # 2,000 tokens at 1,000/s: 2 s. Sleep-per-chunk would take 100 x 23 ms = 2.3 s.
    assert 2.0 <= fake.now - 100.0 < 2.02


def test_chunk_size_follows_the_rate() -> None:
    assert chunk_size(0) == 1_000
    assert chunk_size(1) == 1
    assert chunk_size(1_000) == 20
    assert chunk_size(10_000_000) == 1_000


# -- the plan ------------------------------------------------------------------------------------


def test_plain_seat_ids_are_seat_n_within_each_subscription() -> None:
    plan = make_plan(2, 3, seed=5, prefix="p")
    assert [(s.subscription_id, s.seat_id) for s in plan.seats] == [
        (sub, f"seat-{n}") for sub in ("p-sub-0", "p-sub-1") for n in range(3)
    ]
    assert plan.packs == (("p-sub-0", "p-sub-0-pack-1"), ("p-sub-1", "p-sub-1-pack-1"))


def test_prefixed_seat_ids_carry_their_subscription_id() -> None:
    plan = make_plan(2, 2, seed=5, prefix="p", seat_ids="prefixed")
    assert [s.seat_id for s in plan.seats] == [
        "p-sub-0-seat-0",
        "p-sub-0-seat-1",
        "p-sub-1-seat-0",
        "p-sub-1-seat-1",
    ]


def test_the_plan_is_set_up_by_the_admin_api_writes_in_order() -> None:
    plan = make_plan(1, 2, seed=5, prefix="p")
    tiers = [seat.tier for seat in plan.seats]
    assert list(plan.requests()) == [
        ("/v1/subscriptions", {"subscription_id": "p-sub-0"}),
        ("/v1/subscriptions/p-sub-0/seats", {"seat_id": "seat-0", "tier": tiers[0]}),
        ("/v1/subscriptions/p-sub-0/seats", {"seat_id": "seat-1", "tier": tiers[1]}),
        ("/v1/subscriptions/p-sub-0/packs", {"pack_id": "p-sub-0-pack-1"}),
    ]


# -- publishing (real Redis) --------------------------------------------------------------------


def test_publishes_events_duplicates_and_bad_entries(
    redis_url: str, stream_name: str, redis_sync: redis.Redis
) -> None:
    summary = run_simulation(
        redis_url,
        stream_name,
        events=500,
        subscriptions=3,
        seats_per_subscription=4,
        duplicate_ratio=0.02,
        bad_ratio=0.03,
        seed=11,
    )
    assert (summary["valid_unique"], summary["duplicates"], summary["bad"]) == (500, 10, 15)
    assert summary["published"] == 525
    assert sum(summary["bad_by_kind"].values()) == 15

    entries = stream_entries(redis_sync, stream_name)
    assert len(entries) == 525
    plan = make_plan(3, 4, seed=11)
    seats = {(s.subscription_id, s.seat_id) for s in plan.seats}
    ids: Counter[str] = Counter()
    first_seen: dict[str, bytes] = {}
    undecodable = decodable_bad = 0
    for _, fields in entries:
        assert set(fields) == {b"data"}
        event = try_decode(fields[b"data"])
        if event is None:
            undecodable += 1
            continue
        if event.model not in MODELS or (event.subscription_id, event.seat_id) not in seats:
            decodable_bad += 1  # unknown model or seat: valid JSON, refused by the ledger
            continue
        ids[event.event_id] += 1
        # a duplicate is the earlier event unchanged, byte for byte
        assert first_seen.setdefault(event.event_id, fields[b"data"]) == fields[b"data"]
        assert event.event_id.startswith(f"sim-11-{summary['run_id']}-")
        assert event.images == 0 or event.model.startswith(("qwen-image", "wan"))
        assert 1 <= event.images <= 4 or event.images == 0
    assert len(ids) == 500
    assert sum(ids.values()) - len(ids) == 10
    kinds = summary["bad_by_kind"]
    assert undecodable == sum(n for kind, n in kinds.items() if kind in UNDECODABLE_KINDS)
    assert undecodable + decodable_bad == 15


def test_same_seed_same_workload_new_event_ids(
    redis_url: str, stream_name: str, redis_sync: redis.Redis
) -> None:
    def run(stream: str) -> list[dict[str, Any]]:
        run_simulation(redis_url, stream, events=50, bad_ratio=0, seed=3, subscriptions=2)
        rows = []
        for _, fields in stream_entries(redis_sync, stream):
            row = json.loads(fields[b"data"])
            for volatile in ("event_id", "request_id", "occurred_at"):
                row.pop(volatile)
            rows.append(row)
        return rows

    assert run(f"{stream_name}.a") == run(f"{stream_name}.b")


def test_rate_limits_publishing(redis_url: str, stream_name: str, redis_sync: redis.Redis) -> None:
    started = time.monotonic()
    summary = run_simulation(
        redis_url, stream_name, events=200, rate=1_000, duplicate_ratio=0, bad_ratio=0, seed=1
    )
    elapsed = time.monotonic() - started
    assert summary["published"] == 200
    assert elapsed >= 0.18
    assert summary["seconds"] >= 0.18
    assert redis_sync.xlen(stream_name) == 200


def set_up_in(settings: Settings, plan: Plan) -> None:
    """What the command's setup does through the API, straight into a ledger with no serve."""
    commands: list[Command] = [OpenSubscription(sub) for sub in plan.subscriptions]
    commands += [AddSeat(s.subscription_id, s.seat_id, s.tier) for s in plan.seats]
    commands += [BuyPack(sub, pack) for sub, pack in plan.packs]
    parts = bootstrap(settings)
    try:
        outcomes = parts.ledger().execute(commands)
    finally:
        parts.close()
    assert all(outcome.status == "applied" for outcome in outcomes)


def test_ingest_charges_every_valid_event_of_a_set_up_plan(
    redis_url: str, stream_name: str, redis_sync: redis.Redis, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    options: dict[str, Any] = {"subscriptions": 2, "seats_per_subscription": 3, "seed": 21}
    set_up_in(settings, make_plan(**options, prefix="sim"))
    summary = run_simulation(
        redis_url, stream_name, events=300, duplicate_ratio=0.05, bad_ratio=0.05, **options
    )
    parts = bootstrap(settings)
    try:
        sink = ListSink()
        processor = IngestProcessor(parts.ledger(), None, sink)
        result = processor.process(stream_entries(redis_sync, stream_name))
    finally:
        parts.close()
    assert (result.applied, result.duplicates, len(sink.letters)) == (300, 15, 15)
    reasons = Counter(letter.reason for letter in sink.letters)
    kinds = summary["bad_by_kind"]
    assert reasons["unknown_model"] == kinds.get("unknown_model", 0)
    assert reasons["unknown_seat"] == kinds.get("unknown_seat", 0)
    assert reasons["invalid_json"] == kinds.get("invalid_json", 0)
    invalid = ("not_an_object", "wrong_type", "negative_count", "absurd_count")
    assert reasons["invalid_event"] == sum(kinds.get(kind, 0) for kind in invalid)


# -- the click command ----------------------------------------------------------------------------


def cli_with(settings: Settings) -> click.Group:
    @click.group()
    @click.pass_context
    def root(ctx: click.Context) -> None:
        ctx.obj = settings

    root.add_command(simulate)
    return root


def test_command_without_setup_publishes_and_prints_a_json_summary(
    redis_url: str, stream_name: str, redis_sync: redis.Redis, tmp_path: Path
) -> None:
    root = cli_with(Settings(data_dir=tmp_path, redis_url=redis_url))
    args = ["simulate", "--stream", stream_name, "--events", "100", "--seed", "4", "--no-setup"]
    result = CliRunner().invoke(root, [*args, "--subscriptions", "2", "--bad-ratio", "0.02"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["published"] == 100 + 1 + 2
    assert summary["setup"] is None
    assert "setup:" not in result.stderr
    assert redis_sync.xlen(stream_name) == 103
    assert not (tmp_path / "ledger.sqlite3").exists()


def test_command_with_an_unreachable_redis_exits_4_before_any_setup(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0")
    result = CliRunner().invoke(cli_with(settings), ["simulate", "--events", "5"])
    assert result.exit_code == 4
    assert result.stderr.startswith("ledger: Redis: ")
    assert result.stderr.strip().count("\n") == 0
    assert "setup:" not in result.stderr
