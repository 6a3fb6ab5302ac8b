"""Benchmark (not a test): latency of placing a hold
(`POST /v1/subscriptions/{sub}/seats/{seat}/holds`) at a fixed request rate, against a real
`ledger serve` while usage is published to its stream at a fixed event rate.

    python bench/bench_holds.py [--rate 300] [--ingest-rate 10000] [--seconds 20]
    python bench/bench_holds.py --ingest-rates 0,2000,5000,10000 [--seconds 10]
    python bench/bench_holds.py --writer-only [--slice 100] [--seconds 20]

A hold is a write: it goes through the one writer of the log that also charges the usage
batches, so it is the writer's fast path that is measured here. The load is open-loop, as in
bench_authorization.py (whose ledger, publisher and percentiles this reuses): request i is due
at start + i / rate, and its latency is counted from the instant it was due.

`--ingest-rates` runs one fresh `ledger serve` per usage rate, one after the other, and ends
with a table of them all: the usage actually charged beside what was offered shows where the
machine saturates, and the holds' latencies what the writer's fast path gives below that.

`--writer-only` measures the writer thread alone, in this process, with no HTTP, pipe or
Redis: usage batches of 1,000 go through the ingest processor at `--ingest-rate` while holds
are submitted to the `FastLane` at `--rate`; a hold's latency runs from its due time to its
append. `--slice 1000` is the writer without slices (a hold waits for the whole batch).
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
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench_authorization import (
    ADMIN_TOKEN,
    LEDGER,
    SEATS,
    SUBSCRIPTIONS,
    _wait_ready,
    http_json,
    percentile,
    publish,
    setup_jsonl,
)

from ledger.application import Ledger
from ledger.clock import SystemClock
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from schemas.commands import AddSeat, BuyPack, Command, OpenSubscription, PlaceHold
from services.ingest.processor import SLICE_EVENTS, IngestProcessor
from services.redis_server import EmbeddedRedis, free_loopback_port
from services.writer import FastLane

HOLD_CREDITS = "1.50"
HOLD_TTL_S = 60
HOLD_CONNECTIONS = 32
"""Enough that the load generator is never what holds requests back: at 300 holds/s a hold
may take up to 100 ms before a connection waits for its turn."""


async def _load(
    port: int, token: str, rate: float, seconds: float, connections: int
) -> tuple[list[float], list[float], int, float]:
    """Open-loop hold requests; (latencies from due time, from send time) in ms, errors, and
    the seconds from the first due time to the last answer."""
    total = int(rate * seconds)
    rng = random.Random(13)
    requests = []
    for i in range(total):
        sub = rng.randrange(SUBSCRIPTIONS)
        path = f"/v1/subscriptions/sub-{sub}/seats/sub-{sub}-seat-{rng.randrange(SEATS)}/holds"
        body = json.dumps({"hold_id": f"h-{i}", "credits": HOLD_CREDITS, "ttl_s": HOLD_TTL_S})
        requests.append((path, body.encode()))
    queue: asyncio.Queue[tuple[float, str, bytes] | None] = asyncio.Queue()
    from_due: list[float] = []
    from_send: list[float] = []
    errors = 0
    auth = f"Authorization: Bearer {token}"

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (item := await queue.get()) is not None:
            due, path, body = item
            sent = time.perf_counter()
            head = (
                f"POST {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            answer = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in answer.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            done = time.perf_counter()
            if not answer.startswith(b"HTTP/1.1 201"):
                errors += 1
            from_due.append((done - due) * 1_000)
            from_send.append((done - sent) * 1_000)
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    started = time.perf_counter()
    for i, (path, body) in enumerate(requests):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, path, body))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return from_due, from_send, errors, time.perf_counter() - started


def load(port: int, token: str, rate: float, seconds: float, connections: int, out: str) -> None:
    from_due, from_send, errors, span = asyncio.run(_load(port, token, rate, seconds, connections))
    Path(out).write_text(
        json.dumps({"due": from_due, "send": from_send, "errors": errors, "span": span})
    )


@dataclass(frozen=True)
class Run:
    """One whole-way run: what was offered, what the service did, and the holds' latencies."""

    ingest_offered: float
    usage_charged: float
    """Usage records appended per second while the holds ran (the log's growth minus holds)."""
    holds_per_s: float
    errors: int
    from_due: list[float]
    from_send: list[float]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300, help="hold requests/s")
    parser.add_argument("--ingest-rate", type=float, default=10_000, help="usage events/s")
    parser.add_argument(
        "--ingest-rates",
        type=lambda text: [float(rate) for rate in text.split(",")],
        help="a curve: one run per usage rate (events/s, comma-separated), e.g. 0,2000,5000,10000",
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--connections", type=int, default=HOLD_CONNECTIONS, help="keep-alive connections"
    )
    parser.add_argument("--writer-only", action="store_true", help="the writer thread alone")
    parser.add_argument("--slice", type=int, default=SLICE_EVENTS, help="events per append")
    args = parser.parse_args()
    if args.writer_only:
        writer_only(args)
        return
    runs = []
    for ingest_rate in args.ingest_rates or [args.ingest_rate]:
        runs.append(whole_way(args, ingest_rate))
        report(args, runs[-1])
    if len(runs) > 1:
        curve(args, runs)


def whole_way(args: argparse.Namespace, ingest_rate: float) -> Run:
    """Holds against a fresh `ledger serve` while usage is published at `ingest_rate`."""
    folder = Path(tempfile.mkdtemp(prefix="bench-holds-"))
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
        gateway = http_json(
            port,
            "POST",
            "/v1/tokens",
            {"role": "gateway", "subscription_ids": [f"sub-{s}" for s in range(SUBSCRIPTIONS)]},
        )["token"]
        context = multiprocessing.get_context("spawn")
        published = context.Value("q", 0)
        publisher = context.Process(
            target=publish, args=(embedded.url, stream, ingest_rate, args.seconds + 2, published)
        )
        if ingest_rate > 0:
            publisher.start()
            time.sleep(2)  # ingest reaches its steady rate before requests start
        head_before = http_json(port, "GET", "/v1/audit/digest")["position"]
        results = folder / "latencies.json"
        loader = context.Process(
            target=load,
            args=(port, gateway, args.rate, args.seconds, args.connections, str(results)),
        )
        started = time.perf_counter()
        loader.start()
        loader.join()
        elapsed = time.perf_counter() - started
        head_after = http_json(port, "GET", "/v1/audit/digest")["position"]
        if ingest_rate > 0:
            publisher.join()
        measured = json.loads(results.read_text())
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        embedded.stop()
    holds = len(measured["due"])
    return Run(
        ingest_offered=ingest_rate,
        usage_charged=(head_after - head_before - holds) / elapsed,
        holds_per_s=holds / measured["span"],  # `elapsed` includes starting the loader
        errors=measured["errors"],
        from_due=measured["due"],
        from_send=measured["send"],
    )


def report(args: argparse.Namespace, run: Run) -> None:
    print(
        f"\nholds at {args.rate:,.0f} req/s for {args.seconds:g} s over {args.connections}"
        f" connections, usage published at {run.ingest_offered:,.0f} events/s"
    )
    print(f"{'latency (ms)':<28} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}")
    for name, values in (("from due time (open loop)", run.from_due), ("from send", run.from_send)):
        row = [percentile(values, q) for q in (0.5, 0.9, 0.99, 0.999)] + [max(values)]
        print(f"{name:<28} " + " ".join(f"{v:>7.2f}" for v in row))
    print(
        f"holds {len(run.from_due):,} ({run.holds_per_s:,.0f}/s), errors {run.errors};"
        f" usage charged {run.usage_charged:,.0f} events/s meanwhile"
    )


def curve(args: argparse.Namespace, runs: list[Run]) -> None:
    """The runs side by side: where the machine saturates (usage charged falls behind what is
    offered) and what a hold waits below that."""
    print(f"\nholds at {args.rate:,.0f} req/s, latency in ms (due: from due time; send: from send)")
    print(
        f"{'usage offered/s':>15} {'charged/s':>9} {'holds/s':>7} {'due p50':>8} {'due p99':>8}"
        f" {'due p99.9':>9} {'send p50':>8} {'send p99':>8} {'send p99.9':>10}"
    )
    for run in runs:
        due = [percentile(run.from_due, q) for q in (0.5, 0.99, 0.999)]
        send = [percentile(run.from_send, q) for q in (0.5, 0.99, 0.999)]
        print(
            f"{run.ingest_offered:>15,.0f} {run.usage_charged:>9,.0f} {run.holds_per_s:>7,.0f}"
            f" {due[0]:>8.2f} {due[1]:>8.2f} {due[2]:>9.2f}"
            f" {send[0]:>8.2f} {send[1]:>8.2f} {send[2]:>10.2f}"
        )


INGEST_BATCH = 1_000


class _NoLetters:
    def write(self, letters: object) -> None:
        pass


def _open_ledger(folder: Path) -> Ledger:
    ledger = Ledger(SqliteEventStore(folder / "ledger.sqlite3"), load_rate_card(), SystemClock())
    for sub in range(SUBSCRIPTIONS):
        commands: list[Command] = [OpenSubscription(f"sub-{sub}")]
        commands += [AddSeat(f"sub-{sub}", f"sub-{sub}-seat-{n}", "premium") for n in range(SEATS)]
        commands.append(BuyPack(f"sub-{sub}", "p-1"))
        ledger.execute(commands)
    return ledger


def _batches(count: int) -> list[list[tuple[str, dict[bytes, bytes]]]]:
    rng = random.Random(3)
    batches = []
    for b in range(count):
        entries = []
        for i in range(INGEST_BATCH):
            sub = rng.randrange(SUBSCRIPTIONS)
            event = {
                "event_id": f"e-{b}-{i}",
                "subscription_id": f"sub-{sub}",
                "seat_id": f"sub-{sub}-seat-{rng.randrange(SEATS)}",
                "model": "qwen3.6-plus",
                "input_tokens": rng.randrange(100, 5_000),
                "output_tokens": rng.randrange(10, 1_000),
                "occurred_at": "2026-03-01T09:00:00Z",
            }
            entries.append((f"{b}-{i}", {b"data": json.dumps(event).encode()}))
        batches.append(entries)
    return batches


def writer_only(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-holds-writer-"))
    writer = ThreadPoolExecutor(max_workers=1)
    ledger = writer.submit(_open_ledger, folder).result()
    lane = FastLane(ledger, writer)
    processor = IngestProcessor(
        ledger, None, _NoLetters(), between_slices=lane.run_waiting, slice_events=args.slice
    )
    batches = _batches(int(args.ingest_rate * args.seconds / INGEST_BATCH) + 1)
    latencies: list[float] = []
    started = time.perf_counter()

    def ingest() -> None:
        for n, batch in enumerate(batches):
            delay = started + n * INGEST_BATCH / args.ingest_rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            writer.submit(processor.process, batch).result()

    feeder = threading.Thread(target=ingest)
    feeder.start()
    rng = random.Random(13)
    pending = []
    for i in range(int(args.rate * args.seconds)):
        due = started + i / args.rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sub = rng.randrange(SUBSCRIPTIONS)
        hold = PlaceHold(
            f"sub-{sub}", f"sub-{sub}-seat-{rng.randrange(SEATS)}", f"h-{i}", 1_500_000
        )
        future = lane.submit([hold])
        future.add_done_callback(
            lambda _, due=due: latencies.append((time.perf_counter() - due) * 1_000)
        )
        pending.append(future)
    for future in pending:
        assert future.result()[0].status == "applied"
    feeder.join()
    elapsed = time.perf_counter() - started
    writer.submit(ledger.store.close).result()
    writer.shutdown()
    print(
        f"\nwriter only: holds at {args.rate:,.0f}/s for {args.seconds:g} s while batches of"
        f" {INGEST_BATCH:,} usage events are charged at {args.ingest_rate:,.0f} events/s,"
        f" {args.slice} events per append"
    )
    print(f"{'latency (ms)':<28} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}")
    row = [percentile(latencies, q) for q in (0.5, 0.9, 0.99, 0.999)] + [max(latencies)]
    print(f"{'from due time':<28} " + " ".join(f"{v:>7.2f}" for v in row))
    print(f"usage charged {len(batches) * INGEST_BATCH / elapsed:,.0f} events/s")


if __name__ == "__main__":
    main()
