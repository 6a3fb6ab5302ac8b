"""Fault tests with real processes: `ledger serve` killed with SIGKILL under load, and the Redis
server restarted under load. After each, an independent tally must match the ledger exactly:
every valid usage event charged once at the price the test computes itself, every invalid entry
dead-lettered once, nothing pending, and `ledger audit verify` passing.

The setup is written with `ledger backfill` before `ledger serve` starts; the workload is
published by the test's own publisher (`tests/crash_support.py`), which retries on connection
loss. The processes load a rate card written by the test (`LEDGER_RATE_CARD`), and reclaim
entries left on a dead consumer after `LEDGER_CLAIM_IDLE_MS` (short here, 30 s by default).
Set `CRASH_TEST_SEED` to replay one random schedule.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.redis_server import EmbeddedRedis
from tests.conftest import _missing_redis_binary, no_service
from tests.crash_support import (
    Publisher,
    ServeProcesses,
    batch_state,
    consumer_pending,
    expected_ucr,
    ledger_env,
    make_workload,
    run_ledger,
    setup_commands,
    verify_outcome,
    wait_drained,
    wait_for_batch_in_flight,
    wait_for_new_delivery,
    write_rate_card,
)

CLAIM_IDLE_MS = 500
"""Pending entries of a dead consumer are reclaimed after this (the default is 30 s)."""
DRAIN_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 30.0
PENDING_TRIGGER_S = 1.0
"""After its random delay, a kill waits up to this long for a batch in flight (XPENDING > 0)."""
REREAD_TIMEOUT_S = 10.0
"""Restart 2 waits up to this for the consumer to read again after restart 1."""
IN_BATCH_JITTER_S = 0.02
"""Then it waits a random time up to this, so it lands at any point of the batch's work."""


def _note(line: str) -> None:
    """Printed at once: pytest shows it with the failure, and with -s always."""
    print(line, flush=True)


def _seed() -> int:
    seed = int(os.environ.get("CRASH_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"CRASH_TEST_SEED={seed}")
    return seed


@pytest.fixture
def aof_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private Redis with the append-only file on (fsync per `appendfsync` param)."""
    missing = _missing_redis_binary()
    if missing is not None:
        no_service(f"no redis-server for a private Redis: {missing}")
    appendfsync = getattr(request, "param", "everysec")
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True, appendfsync=appendfsync)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _prepare(tmp_path: Path, redis_url: str, name: str) -> tuple[dict[str, str], str]:
    """A data dir with the setup backfilled, the test's rate card, and the processes' env."""
    stream = f"crash.{name}.{os.urandom(4).hex()}.usage"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rate_card = write_rate_card(tmp_path / "rate-card.toml")
    env = ledger_env(
        data_dir=data_dir,
        redis_url=redis_url,
        stream=stream,
        rate_card=rate_card,
        claim_idle_ms=CLAIM_IDLE_MS,
    )
    lines = setup_commands()
    result = run_ledger(env, "backfill", "-", stdin="".join(json.dumps(x) + "\n" for x in lines))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["applied"] == len(lines), summary
    return env, stream


def test_the_tally_reproduces_the_seed_example():
    """The test's own pricing gives the seed's worked example (3.18 credits)."""
    event = {"model": "t-alpha", "input_tokens": 8349, "cached_tokens": 40794, "output_tokens": 573}
    assert expected_ucr(event) == 3_180_000
    assert expected_ucr({"model": "i-gamma", "images": 1}) == 8_130_000
    assert expected_ucr({"model": "i-gamma", "images": 2}) == 16_250_000


@pytest.mark.slow
def test_sigkill_under_load_charges_every_valid_event_exactly_once(
    request: pytest.FixtureRequest, tmp_path: Path, aof_redis: EmbeddedRedis
):
    seed = _seed()
    rng = random.Random(seed)
    env, stream = _prepare(tmp_path, aof_redis.url, "kill")
    workload = make_workload(
        rng, valid=3_000, duplicates=150, conflicts=40, invalid=140, tag=f"k{seed}"
    )
    client = redis.Redis.from_url(aof_redis.url)
    request.addfinalizer(client.close)
    serve = ServeProcesses(env, tmp_path)
    publisher = Publisher(
        aof_redis.url, stream, workload.items, chunk=250, interval_s=0.8, atomic=True
    )
    database = Path(env["LEDGER_DATA_DIR"]) / "ledger.sqlite3"
    request.addfinalizer(publisher.stop_now.set)
    started = time.monotonic()
    with serve.logs_on_failure():
        serve.spawn()
        serve.wait_started()
        publisher.start()
        for n in range(1, 5):
            delay = rng.uniform(0.2, 1.5)
            time.sleep(delay)
            # Prefer killing with a batch in flight (delivered, not yet acknowledged).
            consumer = f"{socket.gethostname()}-{serve.current.process.pid}"
            waited = wait_for_batch_in_flight(client, stream, consumer, PENDING_TRIGGER_S)
            into_batch = rng.uniform(0.0, IN_BATCH_JITTER_S)
            time.sleep(into_batch)  # land anywhere in the batch: decode, append, dead letters, ack
            serve.kill()
            left = consumer_pending(client, stream, consumer)
            total = client.xpending(stream, "ledger")["pending"]
            state = batch_state(client, stream, consumer, workload, database) if left else "-"
            _note(
                f"kill {n}: {delay:.2f} s after start (+{waited:.3f} s waiting for a batch, "
                f"+{into_batch * 1000:.1f} ms into it), "
                f"{left} entries left pending on the killed consumer ({state}; "
                f"{total} pending in the group), {publisher.published} published",
            )
            serve.spawn()
            serve.wait_started()
        publisher.finish(PUBLISH_TIMEOUT_S)
        drain_s = wait_drained(client, stream, DRAIN_TIMEOUT_S, serve.current)
        assert serve.terminate() == 0
        verdict = verify_outcome(client, stream, workload, env)
        print(
            f"{verdict.summary()}; drained in {drain_s:.1f} s after publishing; "
            f"total {time.monotonic() - started:.1f} s"
        )
        assert not verdict.problems, "\n".join(verdict.problems)
        # Without a Redis fault every item was published exactly once.
        assert verdict.stream_entries == len(workload.items) == publisher.published
        counts = workload.counts()
        assert verdict.valid_ids == counts["valid"]
        assert verdict.invalid_entries == counts["invalid"]
        assert verdict.dead_letters == verdict.expected_dead_letters


@pytest.mark.slow
@pytest.mark.parametrize("aof_redis", ["always"], indirect=True)
def test_redis_restart_under_load_loses_and_duplicates_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, aof_redis: EmbeddedRedis
):
    seed = _seed()
    rng = random.Random(seed)
    env, stream = _prepare(tmp_path, aof_redis.url, "restart")
    workload = make_workload(
        rng, valid=3_000, duplicates=150, conflicts=40, invalid=140, tag=f"r{seed}"
    )
    client = redis.Redis.from_url(aof_redis.url, socket_connect_timeout=1.0, socket_timeout=2.0)
    request.addfinalizer(client.close)
    serve = ServeProcesses(env, tmp_path)
    publisher = Publisher(aof_redis.url, stream, workload.items, chunk=100, interval_s=0.2)
    request.addfinalizer(publisher.stop_now.set)
    started = time.monotonic()
    with serve.logs_on_failure():
        serve.spawn()
        serve.wait_started()
        consumer = f"{socket.gethostname()}-{serve.current.process.pid}"
        publisher.start()
        # Restart 1: at a random point, preferably with a batch in flight. Restart 2 (with an
        # outage of 0.5-1 s): as soon as the consumer is back at work after restart 1, on the
        # backlog that grew meanwhile (FastStream waits 5 s after a failed read).
        for n in (1, 2):
            delay = rng.uniform(0.5, 1.5) if n == 1 else 0.0
            time.sleep(delay)
            if n == 1:
                waited = wait_for_batch_in_flight(client, stream, consumer, PENDING_TRIGGER_S)
            else:
                waited = wait_for_new_delivery(client, stream, REREAD_TIMEOUT_S)
            in_flight = consumer_pending(client, stream, consumer)
            before = publisher.published
            down = time.monotonic()
            if n == 1:
                aof_redis.restart()
            else:  # the same, with an outage long enough for every client to notice
                aof_redis.stop()
                time.sleep(rng.uniform(0.5, 1.0))
                aof_redis.start()
            back = time.monotonic()
            left = consumer_pending(client, stream, consumer)
            _note(
                f"restart {n}: after {delay:.2f} + {waited:.2f} s, {in_flight} entries in flight "
                f"before, {left} pending on the live consumer after; Redis down "
                f"{back - down:.2f} s; {before} published before",
            )
            assert serve.current.process.poll() is None, "ledger serve died with Redis"
        publisher.finish(PUBLISH_TIMEOUT_S)
        drain_s = wait_drained(client, stream, DRAIN_TIMEOUT_S, serve.current)
        assert serve.current.process.poll() is None, "ledger serve died after the restarts"
        assert serve.terminate() == 0
        verdict = verify_outcome(client, stream, workload, env)
        print(
            f"{verdict.summary()}; publisher retries {publisher.retries}; drained in "
            f"{drain_s:.1f} s after publishing; total {time.monotonic() - started:.1f} s"
        )
        assert not verdict.problems, "\n".join(verdict.problems)
        counts = workload.counts()
        assert verdict.valid_ids == counts["valid"]
        assert verdict.invalid_entries >= counts["invalid"]  # a retried chunk may repeat some
        assert verdict.dead_letters == verdict.expected_dead_letters
