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
import random
import tempfile
import time
from pathlib import Path

from _load import (
    ADMIN_TOKEN,
    LEDGER,  # noqa: F401 (bench_holds.py imports it from here)
    SEATS,
    SUBSCRIPTIONS,
    http_json,
    percentile,
    publish,
    served_ledger,
    setup_jsonl,
)
from _load import wait_ready as _wait_ready  # noqa: F401 (bench_holds.py imports it from here)

CONNECTIONS = 8


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1_000, help="pre-check requests/s")
    parser.add_argument("--ingest-rate", type=float, default=10_000, help="usage events/s")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--as-of-rate", type=float, default=0, help="reads of the past/s")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-authz-"))
    stream = "bench.usage"
    with served_ledger(folder, setup_jsonl(), LEDGER_USAGE_STREAM=stream) as served:
        port = served.port
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
            args=(served.redis_url, stream, args.ingest_rate, args.seconds + 2, published),
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


if __name__ == "__main__":
    main()
