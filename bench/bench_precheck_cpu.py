"""Benchmark (not a test): the API server's CPU per gateway pre-check, without ingest, to tell
the HTTP server's share from the app's.

    python bench/bench_precheck_cpu.py [--rate 1000] [--seconds 8]

uvicorn with httptools and uvloop (as the API process of `ledger serve`) serves in a process of
its own, first an ASGI app that answers the pre-check's bytes and nothing else (the server's
floor), then the Litestar app over the API tests' ledger (every request rewritten to one seat's
pre-check); bench_authorization.py's open-loop load generator drives each. Printed: server and
client CPU per request, and latency from send.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import uvicorn
from _load import cpu_seconds, percentile
from bench_authorization import load

from services.redis_server import free_loopback_port

BODY: Final = b'{"allowed":true,"available":"564996.82","held":"0.00","reason":"ok"}'
PRECHECK: Final = "/v1/subscriptions/team-1/seats/alice/authorization"
START_WAIT_S: Final = 2.0


async def bare(scope: Any, receive: Any, send: Any) -> None:
    """The floor: the pre-check's answer, with no framework behind it."""
    if scope["type"] != "http":
        return
    length = str(len(BODY)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", length)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def serve(kind: str, port: int, token_file: str) -> None:
    if kind == "bare":
        app: Any = bare
        Path(token_file).write_text("none")
    else:
        from tests.support.api_app import open_api

        api = open_api(Path(tempfile.mkdtemp(prefix="bench-precheck-"))).__enter__()
        inner = api.client.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope["path"], scope["raw_path"] = PRECHECK, PRECHECK.encode()
            await inner(scope, receive, send)

        Path(token_file).write_text(api.token("gateway", ["team-1"])[1])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    uvicorn.Server(config).run()


def measure(kind: str, rate: float, seconds: float) -> None:
    context = multiprocessing.get_context("spawn")
    port = free_loopback_port()
    folder = Path(tempfile.mkdtemp(prefix="bench-precheck-"))
    token_file, out = folder / "token", folder / "latencies.json"
    server = context.Process(target=serve, args=(kind, port, str(token_file)))
    server.start()
    while not token_file.exists():
        if not server.is_alive():
            raise SystemExit(f"the {kind} server did not start")
        time.sleep(0.1)
    time.sleep(START_WAIT_S)
    assert server.pid is not None
    cpu_before, started = cpu_seconds([server.pid]), time.perf_counter()
    client = context.Process(
        target=load, args=(port, token_file.read_text(), rate, seconds, str(out))
    )
    client.start()
    client.join()
    elapsed, server_cpu_s = time.perf_counter() - started, cpu_seconds([server.pid]) - cpu_before
    server.terminate()
    server.join()
    measured = json.loads(out.read_text())
    requests = len(measured["send"])
    print(
        f"{kind:>10} {server_cpu_s * 1e6 / requests:>14.0f}"
        f" {measured['cpu_s'] * 1e6 / requests:>14.0f} {requests / elapsed:>10,.0f}"
        f" {percentile(measured['send'], 0.5):>9.2f} {percentile(measured['send'], 0.99):>9.2f}"
        f" {measured['errors']:>7}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1_000, help="pre-check requests/s")
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    print(
        f"{'server':>10} {'server µs/req':>14} {'client µs/req':>14} {'served/s':>10}"
        f" {'p50 (ms)':>9} {'p99 (ms)':>9} {'errors':>7}"
    )
    for kind in ("bare", "litestar"):
        measure(kind, args.rate, args.seconds)


if __name__ == "__main__":
    main()
