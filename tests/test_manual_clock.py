"""LEDGER_CLOCK=manual: `ledger clock` moves the clock of a running `ledger serve`, which then
appends the cycle starts and pack expiries that fell due (SPEC §2 "Time")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import redis

from ledger.clock import SharedManualClock
from services.redis_server import free_loopback_port

LEDGER = (sys.executable, "-m", "services.cli")
WAIT_S = 20.0
START = "2026-01-31T09:00:00Z"


def test_a_shared_manual_clock_moves_forward_only_and_is_seen_by_another_instance(tmp_path):
    path = tmp_path / "manual-clock"
    writer, reader = SharedManualClock(path, 1_000), SharedManualClock(path, 1_000)
    assert reader.now_us() == 1_000
    writer.advance(500)
    assert reader.now_us() == 1_500
    with pytest.raises(ValueError):
        writer.set(1_200)
    assert reader.now_us() == 1_500


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
