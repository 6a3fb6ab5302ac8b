"""Benchmark (not a test): latency of the gateway pre-check
(`GET /v1/subscriptions/{sub}/seats/{seat}/authorization`) at a fixed request rate, against a
real `ledger serve` process while usage is published to its stream at a fixed event rate.

    python bench/bench_authorization.py [--rate 1000] [--ingest-rate 10000] [--seconds 20]
        [--as-of-rate 10]
    python bench/bench_authorization.py --ingest-rates 0,2000,5000,10000 [--seconds 10]

The request load is open-loop: request i is due at start + i / rate whatever happened to the
ones before, spread over several keep-alive connections, and its latency is counted from the
instant it was due (so a stall shows in every request it delays, not just one). The publisher
and the load generator are processes of their own, beside the service on the same 2 cores.
With `--as-of-rate R`, a third process sends R reads of the past per second meanwhile (one
subscription's overview at a random position of the log), open loop too.

With `--ingest-rates`, one served ledger is measured at each ingest rate in turn (the log
settles between two) and a curve is printed: the pre-check's percentiles from send and from
due time, the ingest actually appended, and the load generator's own CPU per request (to tell
a slow service from a slow client).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import uvloop
from _load import (
    ADMIN_TOKEN,
    LEDGER,  # noqa: F401 (bench_holds.py imports it from here)
    SEATS,
    SUBSCRIPTIONS,
    Served,
    cpu_seconds,
    http_json,
    percentile,
    process_tree,
    publish,
    served_ledger,
    setup_jsonl,
)
from _load import wait_ready as _wait_ready  # noqa: F401 (bench_holds.py imports it from here)

CONNECTIONS = 8


SETTLE_QUIET_S: Final = 1.0
"""Between two ingest rates: the log's head stands still this long before the next starts."""
SETTLE_TIMEOUT_S: Final = 120.0


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
    """The load generator's process: uvloop (as the service), and its own CPU time noted."""
    cpu_started = time.process_time()
    from_due, from_send, errors = uvloop.run(_load(port, token, rate, seconds))
    cpu_s = time.process_time() - cpu_started
    Path(out).write_text(
        json.dumps({"due": from_due, "send": from_send, "errors": errors, "cpu_s": cpu_s})
    )


@dataclass(frozen=True)
class Step:
    """One ingest rate's measurement."""

    ingest_rate: float
    published: int
    appended_rate: float
    elapsed: float
    measured: dict[str, Any]
    as_of: dict[str, Any] | None
    cpu_percent: dict[str, float]
    """CPU used during the requests, in % of one core, by who used it."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1_000, help="pre-check requests/s")
    parser.add_argument("--ingest-rate", type=float, default=10_000, help="usage events/s")
    parser.add_argument(
        "--ingest-rates",
        type=lambda text: [float(rate) for rate in text.split(",")],
        help="a curve: these usage event rates in turn, comma separated (0: no ingest)",
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--as-of-rate", type=float, default=0, help="reads of the past/s")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-authz-"))
    stream = "bench.usage"
    with served_ledger(folder, setup_jsonl(), LEDGER_USAGE_STREAM=stream) as served:
        set_up = http_json(served.port, "GET", "/v1/audit/digest")["position"]
        gateway = http_json(
            served.port,
            "POST",
            "/v1/tokens",
            {"role": "gateway", "subscription_ids": [f"sub-{s}" for s in range(SUBSCRIPTIONS)]},
        )["token"]
        steps = []
        for number, ingest_rate in enumerate(args.ingest_rates or [args.ingest_rate]):
            if number:
                _settle(served.port)
            steps.append(
                _step(args, served, folder, stream, gateway, set_up, ingest_rate, f"{number}-")
            )
    if args.ingest_rates:
        _report_curve(args, steps)
    else:
        _report(args, steps[0])


def _step(
    args: argparse.Namespace,
    served: Served,
    folder: Path,
    stream: str,
    gateway: str,
    set_up: int,
    ingest_rate: float,
    id_prefix: str,
) -> Step:
    """The pre-check (and reads of the past) measured while usage is published at this rate."""
    port = served.port
    context = multiprocessing.get_context("spawn")
    published = context.Value("q", 0)
    publisher = context.Process(
        target=publish,
        # Publishing outlasts the requests by a second, so it is measured over all of them.
        args=(served.redis_url, stream, ingest_rate, args.seconds + 3, published, id_prefix),
    )
    if ingest_rate:
        publisher.start()
        time.sleep(2)  # ingest reaches its steady rate before requests start
    head_before = http_json(port, "GET", "/v1/audit/digest")["position"]
    results = folder / f"latencies-{id_prefix}.json"
    loader = context.Process(
        target=load, args=(port, gateway, args.rate, args.seconds, str(results))
    )
    as_of_results = folder / f"as_of-{id_prefix}.json"
    past = context.Process(
        target=as_of_load,
        args=(port, args.as_of_rate, args.seconds, (set_up, head_before), str(as_of_results)),
    )
    api = [served.api_pid()]
    service = [pid for pid in process_tree(served.pid) if pid not in api]
    watched = {
        "API": api,
        "rest of serve": service,
        "Redis": [served.redis_pid],
        "publisher": [publisher.pid] if publisher.pid else [],
    }
    cpu_before = {name: cpu_seconds(pids) for name, pids in watched.items()}
    started = time.perf_counter()
    loader.start()
    if args.as_of_rate:
        past.start()
    loader.join()
    if args.as_of_rate:
        past.join()
    elapsed = time.perf_counter() - started
    cpu_percent = {
        name: (cpu_seconds(pids) - cpu_before[name]) * 100 / elapsed
        for name, pids in watched.items()
    }
    head_after = http_json(port, "GET", "/v1/audit/digest")["position"]
    if ingest_rate:
        publisher.join()
    return Step(
        ingest_rate=ingest_rate,
        published=published.value,
        appended_rate=(head_after - head_before) / elapsed,
        elapsed=elapsed,
        measured=json.loads(results.read_text()),
        as_of=json.loads(as_of_results.read_text()) if args.as_of_rate else None,
        cpu_percent=cpu_percent,
    )


def _settle(port: int) -> None:
    """Wait until the log's head stands still (what the last rate published is appended)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    head = http_json(port, "GET", "/v1/audit/digest")["position"]
    while time.monotonic() < deadline:
        time.sleep(SETTLE_QUIET_S)
        now = http_json(port, "GET", "/v1/audit/digest")["position"]
        if now == head:
            return
        head = now
    raise SystemExit(f"the log still grew {SETTLE_TIMEOUT_S:g} s after the publisher stopped")


def _report(args: argparse.Namespace, step: Step) -> None:
    measured, elapsed = step.measured, step.elapsed
    from_due, from_send = measured["due"], measured["send"]
    print(
        f"\npre-check at {args.rate:,.0f} req/s for {args.seconds:g} s over {CONNECTIONS}"
        f" connections, ingest published at {step.ingest_rate:,.0f} events/s"
        f" ({step.published:,} events)"
    )
    print(f"{'latency (ms)':<28} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}")
    for name, values in (("from due time (open loop)", from_due), ("from send", from_send)):
        row = [percentile(values, q) for q in (0.5, 0.9, 0.99, 0.999)] + [max(values)]
        print(f"{name:<28} " + " ".join(f"{v:>7.2f}" for v in row))
    print(
        f"requests {len(from_due):,} ({len(from_due) / elapsed:,.0f}/s), errors"
        f" {measured['errors']}; log appended {step.appended_rate:,.0f} records/s meanwhile;"
        f" load generator CPU {_client_cpu_us(step):.0f} µs per request"
    )
    if step.as_of is not None:
        values = step.as_of["latencies"]
        print(
            f"as_of at {args.as_of_rate:g}/s meanwhile: {len(values)} reads, p50"
            f" {percentile(values, 0.5):.1f} ms, p99 {percentile(values, 0.99):.1f} ms,"
            f" statuses {step.as_of['statuses']}"
        )
    _report_cpu([step])


def _report_curve(args: argparse.Namespace, steps: Sequence[Step]) -> None:
    print(
        f"\npre-check at {args.rate:,.0f} req/s for {args.seconds:g} s per ingest rate over"
        f" {CONNECTIONS} connections; latency in ms"
        + (f"; {args.as_of_rate:g} as_of reads/s meanwhile" if args.as_of_rate else "")
    )
    columns = (
        "ingest/s",
        "appended/s",
        "served/s",
        "send p50",
        "send p99",
        "send p99.9",
        "due p50",
        "due p99",
        "due p99.9",
        "errors",
    )
    print(" ".join(f"{c:>10}" for c in columns))
    for step in steps:
        send, due = step.measured["send"], step.measured["due"]
        row = [
            f"{step.ingest_rate:,.0f}",
            f"{step.appended_rate:,.0f}",
            f"{len(due) / step.elapsed:,.0f}",
            *(f"{percentile(send, q):.2f}" for q in (0.5, 0.99, 0.999)),
            *(f"{percentile(due, q):.2f}" for q in (0.5, 0.99, 0.999)),
            str(step.measured["errors"]),
        ]
        print(" ".join(f"{cell:>10}" for cell in row))
    _report_cpu(steps)


def _report_cpu(steps: Sequence[Step]) -> None:
    """Where the 2 cores went during the requests: the service's processes, Redis, and the
    benchmark's own publisher and load generator."""
    names = [*steps[0].cpu_percent, "load generator"]
    print("\nCPU during the requests, % of one core (the machine has 2 cores)")
    per_request = ("API µs/req", "client µs/req")
    print(f"{'ingest/s':>10} " + " ".join(f"{n:>14}" for n in [*names, *per_request]))
    for step in steps:
        shares = [*step.cpu_percent.values(), step.measured["cpu_s"] * 100 / step.elapsed]
        requests = max(1, len(step.measured["due"]))
        api_us = step.cpu_percent["API"] * step.elapsed * 1e4 / requests
        print(
            f"{step.ingest_rate:>10,.0f} "
            + " ".join(f"{share:>14.0f}" for share in shares)
            + f" {api_us:>14.0f} {_client_cpu_us(step):>14.0f}"
        )


def _client_cpu_us(step: Step) -> float:
    """The load generator's CPU time per request it sent (its own cost, not the service's)."""
    cpu_s: float = step.measured["cpu_s"]
    return cpu_s * 1e6 / max(1, len(step.measured["due"]))


if __name__ == "__main__":
    main()
