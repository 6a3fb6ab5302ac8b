"""Benchmark (not a test): latency of the gateway pre-check
(`GET /v1/subscriptions/{sub}/seats/{seat}/authorization`) at a fixed request rate, against a
real `ledger serve` process while usage is published to its stream at a fixed event rate.

    python bench/bench_authorization.py [--rate 1000] [--ingest-rate 10000] [--seconds 20]
        [--as-of-rate 10]

The request load is open-loop: request i is due at start + i / rate whatever happened to the
ones before, spread over several keep-alive connections, and its latency is counted from the
instant it was due (so a stall shows in every request it delays, not just one). The publisher
and the load generator are processes of their own, beside the service on the same 2 cores.
With `--as-of-rate R`, a third process sends R reads of the past per second meanwhile (one
subscription's overview at a random position of the log), open loop too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import redis

from services.redis_server import EmbeddedRedis, free_loopback_port

SUBSCRIPTIONS = 100
SEATS = 10
CONNECTIONS = 8
PUBLISH_TICK_S = 0.01
ADMIN_TOKEN = "bench-admin-token"
MODELS = ("qwen3.6-plus", "glm-5", "MiniMax-M2.5", "deepseek-v3.2")
LEDGER = (sys.executable, "-m", "services.cli")


def setup_jsonl() -> str:
    lines = []
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


def publish(redis_url: str, stream: str, rate: float, seconds: float, done: object) -> None:
    """Publish `rate` usage events per second for `seconds`, in a tick every 10 ms."""
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
                "event_id": f"bench-{i}",
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
    done.value = sent  # type: ignore[attr-defined]


async def _load(
    port: int, token: str, rate: float, seconds: float
) -> tuple[list[float], list[float], int]:
    """Open-loop requests; (latencies from due time, from send time) in ms, and errors."""
    total = int(rate * seconds)
    rng = random.Random(11)
    subs = [rng.randrange(SUBSCRIPTIONS) for _ in range(total)]
    paths = [
        f"/v1/subscriptions/sub-{sub}/seats/sub-{sub}-seat-{rng.randrange(SEATS)}/authorization"
        for sub in subs
    ]
    queue: asyncio.Queue[tuple[float, str] | None] = asyncio.Queue()
    from_due: list[float] = []
    from_send: list[float] = []
    errors = 0

    auth = f"Authorization: Bearer {token}"

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (item := await queue.get()) is not None:
            due, path = item
            sent = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            done = time.perf_counter()
            if not head.startswith(b"HTTP/1.1 200") or b'"allowed"' not in body:
                errors += 1
            from_due.append((done - due) * 1_000)
            from_send.append((done - sent) * 1_000)
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(CONNECTIONS)]
    started = time.perf_counter()
    for i, path in enumerate(paths):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, path))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return from_due, from_send, errors


async def _as_of_load(
    port: int, rate: float, seconds: float, positions: tuple[int, int]
) -> tuple[list[float], dict[int, int]]:
    """Open-loop reads of the past at positions in `positions` (after the set-up, so every
    subscription is open), one connection each; (latencies in ms, count by status)."""
    rng = random.Random(5)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    auth = f"Authorization: Bearer {ADMIN_TOKEN}"

    async def one(path: str) -> None:
        sent = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        head_line = await reader.readuntil(b"\r\n")
        await reader.read()  # the server closes after its answer
        writer.close()
        status = int(head_line.split()[1])
        statuses[status] = statuses.get(status, 0) + 1
        latencies.append((time.perf_counter() - sent) * 1_000)

    tasks = []
    started = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sub = rng.randrange(SUBSCRIPTIONS)
        at = rng.randint(*positions)
        path = f"/v1/subscriptions/sub-{sub}/overview?as_of=position:{at}"
        tasks.append(asyncio.create_task(one(path)))
    await asyncio.gather(*tasks)
    return latencies, statuses


def as_of_load(
    port: int, rate: float, seconds: float, positions: tuple[int, int], out: str
) -> None:
    latencies, statuses = asyncio.run(_as_of_load(port, rate, seconds, positions))
    Path(out).write_text(json.dumps({"latencies": latencies, "statuses": statuses}))


def load(port: int, token: str, rate: float, seconds: float, out: str) -> None:
    from_due, from_send, errors = asyncio.run(_load(port, token, rate, seconds))
    Path(out).write_text(json.dumps({"due": from_due, "send": from_send, "errors": errors}))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def http_json(port: int, method: str, path: str, body: object = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1_000, help="pre-check requests/s")
    parser.add_argument("--ingest-rate", type=float, default=10_000, help="usage events/s")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--as-of-rate", type=float, default=0, help="reads of the past/s")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-authz-"))
    embedded = EmbeddedRedis(folder / "redis")
    embedded.start()
    port = free_loopback_port()
    stream = "bench.usage"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(
        LEDGER_DATA_DIR=str(folder / "data"),
        LEDGER_REDIS_URL=embedded.url,
        LEDGER_USAGE_STREAM=stream,
        LEDGER_PORT=str(port),
        LEDGER_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    subprocess.run([*LEDGER, "backfill", "-"], input=setup_jsonl(), text=True, env=env, check=True)
    log_file = (folder / "serve.log").open("wb")
    serve = subprocess.Popen([*LEDGER, "serve"], env=env, stdout=log_file, stderr=log_file)
    try:
        _wait_ready(port)
        set_up = http_json(port, "GET", "/v1/audit/digest")["position"]
        gateway = http_json(
            port,
            "POST",
            "/v1/tokens",
            {"role": "gateway", "subscription_ids": [f"sub-{s}" for s in range(SUBSCRIPTIONS)]},
        )["token"]
        context = multiprocessing.get_context("spawn")
        published = context.Value("q", 0)
        publisher = context.Process(
            target=publish,
            args=(embedded.url, stream, args.ingest_rate, args.seconds + 2, published),
        )
        publisher.start()
        time.sleep(2)  # ingest reaches its steady rate before requests start
        head_before = http_json(port, "GET", "/v1/audit/digest")["position"]
        results = folder / "latencies.json"
        loader = context.Process(
            target=load, args=(port, gateway, args.rate, args.seconds, str(results))
        )
        as_of_results = folder / "as_of.json"
        past = context.Process(
            target=as_of_load,
            args=(port, args.as_of_rate, args.seconds, (set_up, head_before), str(as_of_results)),
        )
        started = time.perf_counter()
        loader.start()
        if args.as_of_rate:
            past.start()
        loader.join()
        if args.as_of_rate:
            past.join()
        elapsed = time.perf_counter() - started
        head_after = http_json(port, "GET", "/v1/audit/digest")["position"]
        publisher.join()
        measured = json.loads(results.read_text())
        as_of = json.loads(as_of_results.read_text()) if args.as_of_rate else None
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        embedded.stop()
    _report(args, measured, as_of, published.value, (head_after - head_before) / elapsed, elapsed)


def _report(
    args: argparse.Namespace,
    measured: dict,
    as_of: dict | None,
    published: int,
    appended_rate: float,
    elapsed: float,
) -> None:
    from_due, from_send = measured["due"], measured["send"]
    print(
        f"\npre-check at {args.rate:,.0f} req/s for {args.seconds:g} s over {CONNECTIONS}"
        f" connections, ingest published at {args.ingest_rate:,.0f} events/s"
        f" ({published:,} events)"
    )
    print(f"{'latency (ms)':<28} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}")
    for name, values in (("from due time (open loop)", from_due), ("from send", from_send)):
        row = [percentile(values, q) for q in (0.5, 0.9, 0.99, 0.999)] + [max(values)]
        print(f"{name:<28} " + " ".join(f"{v:>7.2f}" for v in row))
    print(
        f"requests {len(from_due):,} ({len(from_due) / elapsed:,.0f}/s), errors"
        f" {measured['errors']}; log appended {appended_rate:,.0f} records/s meanwhile"
    )
    if as_of is not None:
        values = as_of["latencies"]
        print(
            f"as_of at {args.as_of_rate:g}/s meanwhile: {len(values)} reads, p50"
            f" {percentile(values, 0.5):.1f} ms, p99 {percentile(values, 0.99):.1f} ms,"
            f" statuses {as_of['statuses']}"
        )


def _wait_ready(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"ledger serve not ready on port {port} within {timeout_s} s")


if __name__ == "__main__":
    main()
