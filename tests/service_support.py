"""Helpers for tests that run `ledger serve` as a real process: a free loopback port for its
HTTP API, a small HTTP client for it, and `start_service`, which runs one with a manual clock
on a Redis stream of its own and stops it (exit status 0 expected) when its user is done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.cluster

from services.children import die_with_parent
from services.client import redis_client
from services.ingest.dead_letters import dead_letter_index
from services.redis_server import free_loopback_port

HTTP_TIMEOUT_S = 10.0
START = "2026-03-01T09:00:00Z"
"""Where the services' manual clocks start."""
ADMIN_TOKEN = "service-test-admin-token"
WAIT_S = 30.0
MAX_TOKENS = 50_000_000
"""Every component at its bound: 10,000 + 1,000 + 60,000 = 71,000 credits per event."""
LEDGER = (sys.executable, "-m", "services.cli")
LOG_TAIL_CHARS = 4_000


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
class Service:
    """A running `ledger serve` and the ways in: HTTP as admin, and its usage stream."""

    process: subprocess.Popen[bytes]
    api: HttpClient
    redis: redis.Redis
    stream: str
    data_dir: Path
    log_path: Path

    def publish(self, sub: str, seat: str, event_id: str | None = None, **counts: int) -> str:
        event_id = event_id or uuid.uuid4().hex
        event = {
            "event_id": event_id,
            "subscription_id": sub,
            "seat_id": seat,
            "model": "qwen3.6-plus",
            "occurred_at": START,
            **counts,
        }
        self.publish_event(event)
        return event_id

    def publish_event(self, event: dict[str, Any]) -> None:
        """What a gateway does: `XADD <stream> * data <json>`, with any event (or non-event)."""
        self.redis.xadd(self.stream, {"data": json.dumps(event)})

    def dead_letters(self) -> list[dict[bytes, bytes]]:
        """The fields of every entry of the dead-letter stream, oldest first."""
        return [fields for _, fields in self.redis.xrange(f"{self.stream}.dead")]

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of what the process wrote on stdout and stderr."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def publish_max(self, sub: str, seat: str, times: int = 1) -> None:
        for _ in range(times):
            self.publish(
                sub,
                seat,
                input_tokens=MAX_TOKENS,
                cached_tokens=MAX_TOKENS,
                output_tokens=MAX_TOKENS,
            )

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        reply = self.api.request(method, path, body, **kw)
        assert reply.status < 300, (method, path, reply.status, reply.body)
        return reply.body

    def open(self, sub: str, seats: dict[str, str], packs: tuple[str, ...] = ()) -> None:
        self.ok("POST", "/v1/subscriptions", {"subscription_id": sub})
        for seat, tier in seats.items():
            self.ok("POST", f"/v1/subscriptions/{sub}/seats", {"seat_id": seat, "tier": tier})
        for pack in packs:
            self.ok("POST", f"/v1/subscriptions/{sub}/packs", {"pack_id": pack})


def eventually(fetch: Callable[[], Any], check: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = fetch()
        if check(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last: {value}"
        time.sleep(0.05)


def start_service(
    tmp_path: Path,
    redis_url: str,
    *,
    admin_token: str = ADMIN_TOKEN,
    clock_start: str = START,
    cluster: bool = False,
    env_overrides: Mapping[str, str] | None = None,
) -> Iterator[Service]:
    """A generator for a fixture: `ledger serve` with its data in `tmp_path/data`, output in
    `tmp_path/serve.log` (printed when the block fails), the manual clock at `clock_start`.

    With `cluster`, `redis_url` is a node of a Redis Cluster (LEDGER_REDIS_CLUSTER=1);
    `env_overrides` are set last (say, LEDGER_DATABASE_URL)."""
    stream = f"test.{uuid.uuid4().hex[:12]}.usage"
    port = free_loopback_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(
        LEDGER_DATA_DIR=str(tmp_path / "data"),
        LEDGER_REDIS_URL=redis_url,
        LEDGER_USAGE_STREAM=stream,
        LEDGER_PORT=str(port),
        LEDGER_ADMIN_TOKEN=admin_token,
        LEDGER_CLOCK="manual",
        LEDGER_CLOCK_START=clock_start,
        PYTHONUNBUFFERED="1",
    )
    if cluster:
        env["LEDGER_REDIS_CLUSTER"] = "1"
    env.update(env_overrides or {})
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([*LEDGER, "serve"], env=env, stdout=log, stderr=log)
    client: Any = redis_client(redis_url, cluster=cluster)
    service = Service(
        process,
        HttpClient(f"http://127.0.0.1:{port}", admin_token),
        client,
        stream,
        tmp_path / "data",
        log_path,
    )
    try:
        service.api.wait_ready()
        yield service
    except BaseException:
        print(service.log_tail())
        raise
    finally:
        process.terminate()
        code = process.wait(timeout=30)
        client.delete(stream, f"{stream}.dead", dead_letter_index(stream))
        client.close()
        assert code == 0, service.log_tail()


@dataclass
class DefaultService:
    """A `ledger serve` started as a newcomer starts it: in `workdir`, with every default but
    the port, so its data dir is `workdir/var`, its Redis a private one, its clock the system's.
    """

    process: subprocess.Popen[bytes]
    workdir: Path
    port: int
    log_path: Path

    @property
    def data_dir(self) -> Path:
        return self.workdir / "var"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin(self) -> HttpClient:
        return HttpClient(self.base_url, (self.data_dir / "admin-token").read_text().strip())

    def ledger(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`ledger ARGS` run in the workdir, as a user would in another terminal."""
        return run_ledger_in(self.workdir, *args, stdin=stdin)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def newcomer_env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(PYTHONUNBUFFERED="1", **changes)
    return env


def run_ledger_in(
    workdir: Path, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEDGER, *args],
        cwd=workdir,
        env=dict(env) if env is not None else newcomer_env(),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT_S * 2,
    )


def spawn_default_service(workdir: Path) -> DefaultService:
    """Start `ledger serve` in `workdir` with the defaults (a free port) and wait until it has
    written where it answers (`var/serve.json`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_loopback_port()
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*LEDGER, "serve"],
            cwd=workdir,
            env=newcomer_env(LEDGER_PORT=str(port)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=_killed_with_parent,
        )
    service = DefaultService(process, workdir, port, log_path)
    deadline = time.monotonic() + WAIT_S * 2
    while not (service.data_dir / "serve.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"ledger serve did not start:\n{service.log_tail()}")
        time.sleep(0.05)
    return service


def stop_default_service(service: DefaultService) -> int:
    """SIGTERM, then its exit status."""
    service.process.terminate()
    return service.process.wait(timeout=WAIT_S)


def _killed_with_parent() -> None:
    die_with_parent(signal.SIGKILL)
