"""Helpers for tests that run `ledger serve` as a real process: a free loopback port for its
HTTP API, a small HTTP client for it, and `running_serve`, which starts one on a usage stream
of its own in a real Redis and stops it (exit status 0 expected) when the block ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

HTTP_TIMEOUT_S = 10.0
LEDGER_COMMAND = (sys.executable, "-m", "services.cli")
"""`ledger`, run by this interpreter (a subprocess inherits PYTHONPATH, so a worktree's code)."""
SERVE_READY_TIMEOUT_S = 60.0
SERVE_STOP_TIMEOUT_S = 30.0
LOG_TAIL_CHARS = 4_000


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it), on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass(frozen=True)
class HttpClient:
    """JSON over HTTP to one running service; every call may carry a bearer token."""

    base_url: str
    token: str | None = None

    def with_token(self, token: str | None) -> HttpClient:
        return HttpClient(self.base_url, token)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as reply:
                return Response(reply.status, _json(reply.read()), dict(reply.headers))
        except urllib.error.HTTPError as error:
            return Response(error.code, _json(error.read()), dict(error.headers))

    def get(self, path: str, **params: Any) -> Response:
        return self.request("GET", path, params=params)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.get("/readyz").status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.base_url} not ready within {timeout_s:g} s")
            time.sleep(0.05)


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


@dataclass
class ServeProcess:
    """A running `ledger serve`: its process, HTTP as the admin, and its Redis usage stream."""

    process: subprocess.Popen[bytes]
    api: HttpClient
    redis: redis.Redis
    stream: str
    data_dir: Path
    log_path: Path

    def publish(self, event: dict[str, Any]) -> None:
        """What a gateway does: `XADD <stream> * data <json>`."""
        self.redis.xadd(self.stream, {"data": json.dumps(event)})

    def dead_letters(self) -> list[dict[bytes, bytes]]:
        return [fields for _, fields in self.redis.xrange(f"{self.stream}.dead")]

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextmanager
def running_serve(
    work_dir: Path,
    redis_url: str,
    *,
    admin_token: str,
    clock_start: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[ServeProcess]:
    """`ledger serve` with its data in `work_dir/data`, on a free port and a stream of its own
    (`test.<hex>.usage`), with the manual clock at `clock_start` when one is given. Its stdout
    and stderr go to `work_dir/serve.log`, printed when it fails to start. At the end it is sent
    SIGTERM and must exit 0; the stream and its dead letters are deleted."""
    prefix = f"test.{uuid.uuid4().hex[:12]}"
    stream = f"{prefix}.usage"
    port = free_port()
    data_dir = work_dir / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(
        LEDGER_DATA_DIR=str(data_dir),
        LEDGER_REDIS_URL=redis_url,
        LEDGER_USAGE_STREAM=stream,
        LEDGER_PORT=str(port),
        LEDGER_ADMIN_TOKEN=admin_token,
        PYTHONUNBUFFERED="1",
    )
    if clock_start is not None:
        env.update(LEDGER_CLOCK="manual", LEDGER_CLOCK_START=clock_start)
    env.update(extra_env or {})
    log_path = work_dir / "serve.log"
    work_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen([*LEDGER_COMMAND, "serve"], env=env, stdout=log, stderr=log)
    client = redis.Redis.from_url(redis_url)
    serve = ServeProcess(
        process,
        HttpClient(f"http://127.0.0.1:{port}", admin_token),
        client,
        stream,
        data_dir,
        log_path,
    )
    try:
        try:
            serve.api.wait_ready(SERVE_READY_TIMEOUT_S)
        except AssertionError:
            print(serve.log_tail())
            raise
        yield serve
    finally:
        process.terminate()
        try:
            code = process.wait(timeout=SERVE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
        assert code == 0, f"ledger serve exited {code}:\n{serve.log_tail()}"
