"""Throughput of IngestProcessor.process with the real ledger, and end to end through the service."""
import asyncio, sys, tempfile, time, random
from datetime import UTC, datetime, timedelta
from pathlib import Path
import msgspec, redis, structlog, logging
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.log import us_from_datetime
from ledger.rate_card import load_rate_card
from ledger.sqlite_store import SqliteEventStore
from projections.runner import ProjectionRunner
from projections.store import SqliteReadModelStore
from schemas.commands import AddSeat, OpenSubscription
from services.ingest import *
from concurrent.futures import ThreadPoolExecutor

START = datetime(2026, 3, 1, tzinfo=UTC)
URL = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
MODELS = ("qwen3.6-plus", "glm-5", "MiniMax-M2.5", "deepseek-v3.2")

def make(path):
    store = SqliteEventStore(path)
    read = SqliteReadModelStore(path, store)
    ledger = Ledger(store, load_rate_card(), ManualClock(us_from_datetime(START)))
    cmds = []
    for s in range(100):
        cmds.append(OpenSubscription(f"sub-{s}", START))
        for j in range(10):
            cmds.append(AddSeat(f"sub-{s}", f"sub-{s}-seat-{j}", "premium"))
    ledger.execute(cmds)
    return store, read, ledger, ProjectionRunner(store, read)

def payloads(n, tag):
    rng = random.Random(1)
    out = []
    for i in range(n):
        s = rng.randrange(100)
        out.append(msgspec.json.encode({"event_id": f"{tag}-{i}", "subscription_id": f"sub-{s}", "seat_id": f"sub-{s}-seat-{rng.randrange(10)}", "model": rng.choice(MODELS), "occurred_at": "2026-03-01T00:00:00Z", "input_tokens": rng.randrange(100, 20000), "cached_tokens": rng.randrange(0, 50000), "output_tokens": rng.randrange(10, 2000)}))
    return out

class NullSink:
    def write(self, letters): pass

def bench_process(tmp):
    store, read, ledger, runner = make(tmp / "a.sqlite3")
    proc = IngestProcessor(ledger, runner, NullSink())
    data = payloads(N, "p")
    entries = [(f"{i+1}-0", {b"data": d}) for i, d in enumerate(data)]
    t = time.perf_counter()
    applied = 0
    for k in range(0, N, MAX_RECORDS):
        applied += proc.process(entries[k:k+MAX_RECORDS]).applied
    dt = time.perf_counter() - t
    print(f"process(): {applied} applied in {dt:.2f} s = {applied/dt:,.0f} events/s (batches of {MAX_RECORDS}, projections included)")
    # without projections
    store2, read2, ledger2, _ = make(tmp / "b.sqlite3")
    proc2 = IngestProcessor(ledger2, None, NullSink())
    t = time.perf_counter()
    for k in range(0, N, MAX_RECORDS):
        proc2.process(entries[k:k+MAX_RECORDS])
    dt = time.perf_counter() - t
    print(f"process() without projections: {N/dt:,.0f} events/s")
    t = time.perf_counter()
    for k in range(0, N, MAX_RECORDS):
        proc2.process(entries[k:k+MAX_RECORDS])
    dt = time.perf_counter() - t
    print(f"process() redelivery (all duplicates): {N/dt:,.0f} events/s")
    # decode only
    t = time.perf_counter()
    for e in entries: proc.decode(e)
    dt = time.perf_counter() - t
    print(f"decode only: {N/dt:,.0f} entries/s")

async def bench_service(tmp):
    ex = ThreadPoolExecutor(1)
    store, read, ledger, runner = ex.submit(make, tmp / "c.sqlite3").result()
    r = redis.Redis.from_url(URL)
    stream = "bench.usage"
    r.delete(stream, stream + ".dead", stream + ".dead.index")
    data = payloads(N, "s")
    pipe = r.pipeline(transaction=False)
    for d in data: pipe.xadd(stream, {"data": d})
    ids = pipe.execute()
    proc = IngestProcessor(ledger, runner, RedisDeadLetterSink(r, stream))
    svc = IngestService(build_broker(URL), proc, IngestConfig(stream=stream, consumer="bench"), executor=ex)
    t = time.perf_counter()
    await svc.start()
    while True:
        g = [x for x in r.xinfo_groups(stream)][0]
        if g["last-delivered-id"] == ids[-1] and g["pending"] == 0: break
        await asyncio.sleep(0.01)
    dt = time.perf_counter() - t
    print(f"service end to end (backlog of {N}): {N/dt:,.0f} events/s")
    await svc.stop()
    r.delete(stream, stream + ".dead", stream + ".dead.index")

with tempfile.TemporaryDirectory() as d:
    bench_process(Path(d))
    asyncio.run(bench_service(Path(d)))
