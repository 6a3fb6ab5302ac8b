"""LEDGER_CLOCK=manual: `ledger clock` moves the clock of a running `ledger serve`, which then
appends the cycle starts and pack expiries that fell due (docs/rules.md, "Time")."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import redis

from ledger.clock import SharedManualClock
from ledger.log import us_from_datetime
from services.redis_server import free_loopback_port

LEDGER = (sys.executable, "-m", "services.cli")
WAIT_S = 20.0
START = "2026-01-31T09:00:00Z"


T0_US = 1_800_000_000_000_000  # 2027-01-15


def test_a_shared_manual_clock_moves_forward_only_and_is_seen_by_another_instance(tmp_path):
    path = tmp_path / "manual-clock"
    writer, reader = SharedManualClock(path, T0_US), SharedManualClock(path, T0_US)
    assert reader.now_us() == T0_US
    writer.advance(500)
    assert reader.now_us() == T0_US + 500
    with pytest.raises(ValueError):
        writer.set(T0_US + 200)
    assert reader.now_us() == T0_US + 500


def test_two_moves_within_one_file_timestamp_tick_are_both_seen(tmp_path):
    path = tmp_path / "manual-clock"
    writer, reader = SharedManualClock(path, T0_US), SharedManualClock(path, T0_US)
    writer.set(T0_US + 1)
    assert reader.now_us() == T0_US + 1
    stamp = path.stat().st_mtime_ns
    writer.set(T0_US + 2)
    os.utime(path, ns=(stamp, stamp))  # as a coarse file timestamp would leave it
    assert reader.now_us() == T0_US + 2


def _advance_many(path: Path, times: int) -> None:
    clock = SharedManualClock(path, T0_US)
    for _ in range(times):
        clock.advance(1)


def test_two_processes_advancing_at_once_lose_no_move(tmp_path):
    path = tmp_path / "manual-clock"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_advance_many, args=(path, 300)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert SharedManualClock(path, T0_US).now_us() == T0_US + 600


def test_a_move_outside_the_bounds_is_refused_and_leaves_the_clock_as_it_was(tmp_path):
    path = tmp_path / "manual-clock"
    clock = SharedManualClock(path, T0_US)
    clock.set(T0_US + 5)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        clock.set(us_from_datetime(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)))
    assert path.read_bytes() == before
    assert clock.now_us() == T0_US + 5


@pytest.fixture
def env(tmp_path: Path, redis_url: str, stream_name: str) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    values.update(
        LEDGER_DATA_DIR=str(tmp_path / "data"),
        LEDGER_REDIS_URL=redis_url,
        LEDGER_USAGE_STREAM=stream_name,
        LEDGER_CLOCK="manual",
        LEDGER_CLOCK_START=START,
        LEDGER_PORT=str(free_loopback_port()),
    )
    return values


def ledger(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [*LEDGER, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def overview(env: dict[str, str]) -> dict:
    [line] = ledger(env, "replay", "--json").splitlines()
    return json.loads(line)


def eventually(check, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_moving_the_manual_clock_a_month_resets_seat_quotas_and_expires_packs(
    env, tmp_path, redis_sync: redis.Redis, stream_name: str
):
    setup = [
        {"type": "subscription.open", "subscription_id": "team-1"},
        {"type": "seat.add", "subscription_id": "team-1", "seat_id": "alice", "tier": "standard"},
        {"type": "pack.buy", "subscription_id": "team-1", "pack_id": "p1"},
    ]
    ledger(env, "backfill", "-", stdin="".join(json.dumps(c) + "\n" for c in setup))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen([*LEDGER, "serve"], env=env, stdout=log, stderr=log)
    try:
        usage = {
            "event_id": "e1",
            "subscription_id": "team-1",
            "seat_id": "alice",
            "model": "qwen3.6-plus",
            "input_tokens": 130_000_000 // 3,  # 8,666.67 credits
            "occurred_at": START,
        }
        redis_sync.xadd(stream_name, {"data": msgspec.json.encode(usage)})
        eventually(lambda: overview(env)["quota_used_ucr"] > 0, "the charge")
        assert overview(env)["cycle"] == 0

        assert ledger(env, "clock", "advance", "29d").strip() == "2026-03-01T09:00:00Z"
        eventually(lambda: overview(env)["cycle"] == 1, "the cycle start")
        view = overview(env)
        [seat] = view["seats"]
        assert (seat["used_ucr"], seat["remaining_ucr"]) == (0, 25_000_000_000)
        [pack] = view["packs"]
        assert (pack["status"], pack["expired_ucr"]) == ("expired", 625_000_000_000)
    finally:
        serve.terminate()
        assert serve.wait(timeout=30) == 0, log_path.read_text()[-3000:]
    assert ledger(env, "audit", "verify").startswith("ok:")


def test_the_clock_command_refuses_the_system_clock_with_one_line(env):
    env = {**env, "LEDGER_CLOCK": "system"}
    done = subprocess.run([*LEDGER, "clock", "show"], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("ledger: ") and "\n" not in done.stderr.strip()


def test_ledger_clock_refuses_a_time_past_the_bounds_in_one_line_and_keeps_the_file(tmp_path):
    values = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    values.update(LEDGER_DATA_DIR=str(tmp_path), LEDGER_CLOCK="manual", LEDGER_CLOCK_START=START)
    moved = subprocess.run(
        [*LEDGER, "clock", "set", "2026-02-01T00:00:00Z"], env=values, capture_output=True
    )
    assert moved.returncode == 0, moved.stderr
    before = (tmp_path / "manual-clock").read_bytes()

    refused = subprocess.run(
        [*LEDGER, "clock", "set", "9999-12-31T23:59:59Z"],
        env=values,
        capture_output=True,
        text=True,
    )

    assert refused.returncode == 2
    assert refused.stderr.startswith("ledger: ") and len(refused.stderr.splitlines()) == 1
    assert (tmp_path / "manual-clock").read_bytes() == before


def test_ledger_clock_show_on_a_damaged_clock_file_says_so_in_one_line(tmp_path):
    values = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    values.update(LEDGER_DATA_DIR=str(tmp_path), LEDGER_CLOCK="manual", LEDGER_CLOCK_START=START)
    (tmp_path / "manual-clock").write_text("not a time\n")

    shown = subprocess.run([*LEDGER, "clock", "show"], env=values, capture_output=True, text=True)

    assert shown.returncode == 3
    assert "holds no time" in shown.stderr and len(shown.stderr.splitlines()) == 1
