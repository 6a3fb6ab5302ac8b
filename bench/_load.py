"""What the benchmarks load the ledger with, and how they read the result: generated usage for a
ledger in the benchmark's own process (`Plan`), a real `ledger serve` with its private Redis
(`served_ledger`) and usage published to its stream at a fixed rate (`publish`), and
percentiles of the latencies measured."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import redis

from schemas.commands import AddSeat, BuyPack, OpenSubscription
from schemas.usage import UsageEvent
from services.redis_server import EmbeddedRedis, free_loopback_port

MODELS: Final = ("qwen3.6-plus", "glm-5", "MiniMax-M2.5", "deepseek-v3.2")

# --- A ledger in this process ---------------------------------------------------------------

START: Final = datetime(2026, 5, 1, tzinfo=UTC)
BATCH_STEP: Final = timedelta(milliseconds=50)
"""How far the clock moves between two batches of generated usage."""


@dataclass(frozen=True)
class Plan:
    """Subscriptions of premium seats with a pack each, and random usage on them (UUID event
    ids, heavy-tailed token counts): the same seed gives the same events."""

    subscriptions: int
    seats_per_subscription: int
    seat_id: str = "sub-{sub}-seat-{seat}"
    """The seat ids, from the subscription's number and the seat's."""

    def setup(self) -> list[OpenSubscription | AddSeat | BuyPack]:
        commands: list[OpenSubscription | AddSeat | BuyPack] = []
        for sub in range(self.subscriptions):
            commands.append(OpenSubscription(f"sub-{sub}"))
            commands += [
                AddSeat(f"sub-{sub}", self.seat_id.format(sub=sub, seat=seat), "premium")
                for seat in range(self.seats_per_subscription)
            ]
            commands.append(BuyPack(f"sub-{sub}", f"sub-{sub}-pack"))
        return commands

    def usage_batches(
        self, events: int, batch: int, rng: random.Random
    ) -> Iterator[tuple[datetime, list[UsageEvent]]]:
        """`events` usage events in batches of `batch`, each with the instant it happens at."""
        now = START
        for first in range(0, events, batch):
            now += BATCH_STEP
            items = []
            for _ in range(min(batch, events - first)):
                sub = rng.randrange(self.subscriptions)
                items.append(
                    UsageEvent(
                        event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                        subscription_id=f"sub-{sub}",
                        seat_id=self.seat_id.format(
                            sub=sub, seat=rng.randrange(self.seats_per_subscription)
                        ),
                        model=rng.choice(MODELS),
                        occurred_at=now,
                        input_tokens=int(rng.paretovariate(1.2) * 2_000),
                        cached_tokens=int(rng.paretovariate(1.5) * 10_000),
                        output_tokens=int(rng.paretovariate(1.3) * 300),
                        tool_calls=rng.choice((0, 0, 1)),
                        thinking=rng.random() < 0.3,
                    )
                )
            yield now, items


# --- A real `ledger serve` ------------------------------------------------------------------

SUBSCRIPTIONS: Final = 100
SEATS: Final = 10
"""Premium seats per subscription of the served ledger, each subscription with pack `p-1`."""
ADMIN_TOKEN: Final = "bench-admin-token"
LEDGER: Final = (sys.executable, "-m", "services.cli")
PUBLISH_TICK_S: Final = 0.01
READY_TIMEOUT_S: Final = 60
STOP_TIMEOUT_S: Final = 30


@dataclass(frozen=True)
class Served:
    port: int
    redis_url: str
    pid: int = 0
    """`ledger serve`'s process id (its children are the API process, the projector...)."""
    redis_pid: int = 0
    log: Path | None = None
    """Where `ledger serve` writes its log."""

    def api_pid(self) -> int:
        """The API process's id, as `ledger serve` logged it once listening."""
        assert self.log is not None, "a served ledger has a log"
        for line in self.log.read_text().splitlines():
            found = re.search(r"\bpid\W+(\d+)", line) if "api.listening" in line else None
            if found is not None:
                return int(found.group(1))
        raise SystemExit(f"no api.listening line in {self.log}")


def setup_jsonl() -> str:
    """The served ledger's subscriptions, seats and packs, as `ledger backfill -` reads them."""
    lines: list[dict[str, str]] = []
    for sub in range(SUBSCRIPTIONS):
        lines.append({"type": "subscription.open", "subscription_id": f"sub-{sub}"})
        for seat in range(SEATS):
            lines.append(
                {
                    "type": "seat.add",
                    "subscription_id": f"sub-{sub}",
                    "seat_id": f"sub-{sub}-seat-{seat}",
                    "tier": "premium",
                }
            )
        lines.append({"type": "pack.buy", "subscription_id": f"sub-{sub}", "pack_id": "p-1"})
    return "".join(json.dumps(line) + "\n" for line in lines)


@contextmanager
def served_ledger(folder: Path, setup: str, **env: str) -> Iterator[Served]:
    """`ledger serve` on a data dir in `folder`, with its private Redis, set up from the JSON
    lines `setup` (by `ledger backfill -`), ready to answer; `env`: more `LEDGER_` settings.
    Stopped (SIGTERM) when the block ends; its log is `folder/serve.log`."""
    embedded = EmbeddedRedis(folder / "redis")
    embedded.start()
    try:
        port = free_loopback_port()
        variables = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        variables.update(
            LEDGER_DATA_DIR=str(folder / "data"),
            LEDGER_REDIS_URL=embedded.url,
            LEDGER_PORT=str(port),
            LEDGER_ADMIN_TOKEN=ADMIN_TOKEN,
            **env,
        )
        subprocess.run(
            [*LEDGER, "backfill", "-"], input=setup, text=True, env=variables, check=True
        )
        with (folder / "serve.log").open("wb") as log_file:
            serve = subprocess.Popen(
                [*LEDGER, "serve"], env=variables, stdout=log_file, stderr=log_file
            )
            try:
                wait_ready(port)
                redis_pid = embedded.process.pid if embedded.process else 0
                yield Served(port, embedded.url, serve.pid, redis_pid, folder / "serve.log")
            finally:
                serve.send_signal(signal.SIGTERM)
                serve.wait(STOP_TIMEOUT_S)
    finally:
        embedded.stop()


def wait_ready(port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"ledger serve not ready on port {port} within {timeout_s} s")


def publish(
    redis_url: str, stream: str, rate: float, seconds: float, done: Any, id_prefix: str = ""
) -> None:
    """Publish `rate` usage events per second on the served ledger's seats for `seconds`, in a
    tick every 10 ms (open loop: a slow tick is made up by the next); `done.value` is set to
    how many were published (a `multiprocessing.Value`: this runs in a process of its own).
    Event ids are `bench-<id_prefix><n>`: publishers with different prefixes never repeat one
    another's ids (a repeat would be a duplicate, not a charge)."""
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(3)
    started = time.perf_counter()
    sent = 0
    now = datetime.now(UTC).isoformat()
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(elapsed * rate)
        pipe = client.pipeline(transaction=False)
        for i in range(sent, due):
            sub = rng.randrange(SUBSCRIPTIONS)
            event = {
                "event_id": f"bench-{id_prefix}{i}",
                "subscription_id": f"sub-{sub}",
                "seat_id": f"sub-{sub}-seat-{rng.randrange(SEATS)}",
                "model": rng.choice(MODELS),
                "input_tokens": rng.randrange(100, 5_000),
                "cached_tokens": rng.randrange(0, 20_000),
                "output_tokens": rng.randrange(10, 1_000),
                "occurred_at": now,
            }
            pipe.xadd(stream, {"data": json.dumps(event)})
        pipe.execute()
        sent = due
        time.sleep(PUBLISH_TICK_S)
    done.value = sent


def http_json(port: int, method: str, path: str, body: object = None) -> Any:
    """One request to the served ledger as its admin; the JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


# --- Reading the result ---------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it (Linux: /proc's children lists)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += process_tree(int(child))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time these processes have used so far (gone ones count 0)."""
    total_ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total_ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return total_ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
