"""Benchmark (not a test): how soon a gateway reading the notification stream learns that a
seat is suspended, while usage is published at a fixed rate, against a real `ledger serve`.

    python bench/bench_notifications.py [--ingest-rate 10000] [--seconds 20] [--probes 10]

Background usage (`--ingest-rate` events/s, small charges on premium seats with packs: they
notify nothing) is published by a process of its own. Meanwhile, `--probes` times a second, a
probe charge exhausts a fresh standard seat that has no pack; the ledger suspends it and the
notifier publishes `seat.suspended` on `ledger.notifications`. The latency is from the probe's
XADD on the usage stream to the moment a reader blocked on the notification stream (XREAD
BLOCK, in this process) sees the notification naming the probe's event: what a gateway sees.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from _load import SEATS, SUBSCRIPTIONS, http_json, percentile, publish, served_ledger, setup_jsonl

STREAM = "bench.usage"
NOTIFICATIONS = "bench.notifications"
MAX_TOKENS = 50_000_000
"""A probe at every bound: 71,000 credits, past a standard seat's 25,000."""


def probe_setup(probes: int) -> str:
    lines = []
    for n in range(probes):
        lines.append({"type": "subscription.open", "subscription_id": f"probe-{n}"})
        lines.append(
            {
                "type": "seat.add",
                "subscription_id": f"probe-{n}",
                "seat_id": "s",
                "tier": "standard",
            }
        )
    return "".join(json.dumps(line) + "\n" for line in lines)


def listen(
    client: redis.Redis,
    seen: dict[str, float],
    charged: dict[str, float],
    stop: threading.Event,
) -> None:
    """Read the notification stream as a gateway would; note when each suspension arrives,
    and when the ledger charged it (its `occurred_at`, the charge's `recorded_at`)."""
    last = "$"
    while not stop.is_set():
        for _stream, entries in client.xread({NOTIFICATIONS: last}, block=100) or []:
            for entry_id, fields in entries:
                last = entry_id
                notification = json.loads(fields[b"data"])
                if notification["type"] == "seat.suspended":
                    event_id = notification["data"]["event_id"]
                    seen.setdefault(event_id, time.time())
                    at = datetime.fromisoformat(notification["occurred_at"].replace("Z", "+00:00"))
                    charged[event_id] = at.timestamp()


def run_probes(client: redis.Redis, count: int, rate: float) -> dict[str, float]:
    sent: dict[str, float] = {}
    now = datetime.now(UTC).isoformat()
    for n in range(count):
        event = {
            "event_id": f"probe-{n}",
            "subscription_id": f"probe-{n}",
            "seat_id": "s",
            "model": "qwen3.6-plus",
            "input_tokens": MAX_TOKENS,
            "cached_tokens": MAX_TOKENS,
            "output_tokens": MAX_TOKENS,
            "occurred_at": now,
        }
        sent[event["event_id"]] = time.time()
        client.xadd(STREAM, {"data": json.dumps(event)})
        time.sleep(1 / rate)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest-rate", type=float, default=10_000, help="usage events/s")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--probes", type=float, default=10, help="suspensions per second")
    args = parser.parse_args()
    probes = int(args.seconds * args.probes)
    folder = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    setup = setup_jsonl() + probe_setup(probes)
    seen: dict[str, float] = {}
    charged: dict[str, float] = {}
    streams = {"LEDGER_USAGE_STREAM": STREAM, "LEDGER_NOTIFICATION_STREAM": NOTIFICATIONS}
    with served_ledger(folder, setup, **streams) as served:
        port = served.port
        stop = threading.Event()
        listener = threading.Thread(
            target=listen,
            args=(redis.Redis.from_url(served.redis_url), seen, charged, stop),
            daemon=True,
        )
        listener.start()
        try:
            context = multiprocessing.get_context("spawn")
            published = context.Value("q", 0)
            publisher = context.Process(
                target=publish,
                args=(served.redis_url, STREAM, args.ingest_rate, args.seconds + 2, published),
            )
            publisher.start()
            time.sleep(2)  # ingest reaches its steady rate before the probes start
            head_before = http_json(port, "GET", "/v1/audit/digest")["position"]
            started = time.perf_counter()
            sent = run_probes(redis.Redis.from_url(served.redis_url), probes, args.probes)
            elapsed = time.perf_counter() - started
            head_after = http_json(port, "GET", "/v1/audit/digest")["position"]
            publisher.join()
            deadline = time.monotonic() + 30
            while len(seen) < probes and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
    latencies = [(seen[k] - at) * 1_000 for k, at in sent.items() if k in seen]
    rows = {
        "XADD -> stream": latencies,
        "XADD -> charged": [(charged[k] - at) * 1_000 for k, at in sent.items() if k in seen],
        "charged -> stream": [(seen[k] - charged[k]) * 1_000 for k in sent if k in seen],
    }
    print(
        f"\nseat.suspended on the stream, from the probe's XADD; background usage published at"
        f" {args.ingest_rate:,.0f} events/s ({published.value:,} events over {SUBSCRIPTIONS}"
        f" subscriptions x {SEATS} seats), {args.probes:g} probes/s for {args.seconds:g} s"
    )
    print(f"{'latency (ms)':<22} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for name, values in rows.items():
        row = [percentile(values, q) for q in (0.5, 0.9, 0.99)] + [max(values)]
        print(f"{name:<22} " + " ".join(f"{v:>7.1f}" for v in row))
    print(
        f"probes {len(sent)}, suspensions seen {len(latencies)}; log appended"
        f" {(head_after - head_before) / elapsed:,.0f} records/s meanwhile"
    )


if __name__ == "__main__":
    main()
