"""A real local HTTP receiver of webhooks for the tests: records every request (headers and
body) and answers as the test scripts it: a status, a pause before answering, or nothing at all
(stopped: the port refuses connections until it is started again)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook as Verifier

from services.redis_server import free_loopback_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers `status` after `delay_s`; `script` answers the next requests first, in order
    (a pair of status and delay each)."""

    port: int = field(default_factory=free_loopback_port)
    status: int = 204
    delay_s: float = 0.0
    script: list[tuple[int, float]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                    status, delay = (
                        receiver.script.pop(0)
                        if receiver.script
                        else (receiver.status, receiver.delay_s)
                    )
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *_args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        """Close the port: connections are refused until `start` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.received]

    def verified(self, secret: str) -> list[Any]:
        """Every body received, each after its signature is verified with `secret`."""
        return [Verifier(secret).verify(r.body, r.headers) for r in self.received]

    def wait_for(self, check: Callable[[list[Received]], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check(list(self.received)):
            assert time.monotonic() < deadline, f"receiver got {self.ids()}"
            time.sleep(0.02)
