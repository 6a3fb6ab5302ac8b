"""A throwaway local PostgreSQL server from the machine's binaries, for tests and benchmarks.

Never for production: the cluster is created in a fresh temporary folder with trust
authentication, listens on a free loopback port (its unix socket in that folder too) and is
deleted when stopped. `initdb` and `postgres` refuse to run as root, so as root both run as an
unprivileged user (`postgres` when it exists, else `nobody`) through `runuser` or `setpriv`,
and the folder is handed to that user.

pytest-postgresql's process fixture does not fit here: it runs `pg_ctl` as the current user in
pytest's temporary folder, which only its owner may enter, so as root (CI runs as root) the
server refuses to start and an unprivileged user could not reach its data.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import structlog

from services.redis_server import free_loopback_port

log = structlog.get_logger()

LOOPBACK_HOST = "127.0.0.1"
SUPERUSER = "postgres"
DATABASE = "postgres"
BINARY_DIR_PATTERN = "/usr/lib/postgresql/*/bin"
UNPRIVILEGED_USERS = ("postgres", "nobody")

START_TIMEOUT_S = 60
"""How long `pg_ctl start` waits for the server to accept connections."""
STOP_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 120.0
"""Upper bound on initdb and pg_ctl runs."""
MAX_PORT_ATTEMPTS = 5
"""Attempts with a new free port when another process takes the one picked before the bind."""
LOG_TAIL_CHARS = 2_000


class LocalPostgresError(RuntimeError):
    """No PostgreSQL binaries were found, or the server could not be set up or started."""


def find_postgres_binaries() -> Path:
    """The folder holding `initdb` and `pg_ctl`: from PATH, else the newest
    /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(
        glob.glob(BINARY_DIR_PATTERN),
        key=lambda folder: [int(p) for p in Path(folder).parent.name.split(".") if p.isdigit()],
        reverse=True,
    )
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    raise LocalPostgresError(
        f"no initdb and pg_ctl on PATH or in {BINARY_DIR_PATTERN} (install PostgreSQL's server)"
    )


def _unprivileged_user() -> pwd.struct_passwd:
    for name in UNPRIVILEGED_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise LocalPostgresError(f"running as root and none of the users {UNPRIVILEGED_USERS} exist")


def _run_as_prefix(user: pwd.struct_passwd) -> list[str]:
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--"]
    if shutil.which("setpriv"):
        return [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            "--",
        ]
    raise LocalPostgresError("running as root and neither runuser nor setpriv is on PATH")


class LocalPostgres:
    """`start()` creates and starts a cluster; `stop()` stops it and deletes its folder.

    `durable=False` (tests) turns fsync off and skips initdb's syncs: fast, and a crash of the
    machine may corrupt the cluster, which is thrown away anyway. Benchmarks pass `durable=True`
    for PostgreSQL's default durability (fsync of the WAL at every commit).
    """

    def __init__(self, parent: Path | None = None, *, durable: bool = False) -> None:
        self._parent = parent
        self._durable = durable
        self._folder: Path | None = None
        self._prefix: list[str] = []
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise LocalPostgresError("the server is not started")
        return f"postgresql://{SUPERUSER}@{LOOPBACK_HOST}:{self.port}/{DATABASE}"

    def start(self) -> LocalPostgres:
        binaries = find_postgres_binaries()
        folder = Path(tempfile.mkdtemp(prefix="ledger-pg-", dir=self._parent))
        self._folder = folder
        try:
            if os.geteuid() == 0:
                user = _unprivileged_user()
                os.chown(folder, user.pw_uid, user.pw_gid)
                self._prefix = _run_as_prefix(user)
            data = folder / "data"
            initdb = [str(binaries / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust"]
            initdb += ["-E", "UTF8", "--locale=C"]
            if not self._durable:
                initdb.append("--no-sync")
            self._run(initdb)
            self._start_server(binaries, data)
        except BaseException:
            self._remove_folder()
            raise
        log.info("postgres.local_started", url=self.url, folder=str(folder))
        return self

    def stop(self) -> None:
        if self._folder is None:
            return
        try:
            if self.port is not None:
                pg_ctl = str(find_postgres_binaries() / "pg_ctl")
                data = str(self._folder / "data")
                self._run(
                    [pg_ctl, "-D", data, "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S), "stop"]
                )
        finally:
            self.port = None
            self._remove_folder()

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_server(self, binaries: Path, data: Path) -> None:
        assert self._folder is not None
        server_log = self._folder / "postgres.log"
        settings = [
            f"-c listen_addresses={LOOPBACK_HOST}",
            f"-c unix_socket_directories={self._folder}",
        ]
        if not self._durable:
            settings += ["-c fsync=off", "-c full_page_writes=off"]
        for _ in range(MAX_PORT_ATTEMPTS):
            port = free_loopback_port()
            command = [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(server_log), "-w"]
            command += ["-t", str(START_TIMEOUT_S), "-o", " ".join([f"-p {port}", *settings])]
            try:
                self._run([*command, "start"])
            except LocalPostgresError:
                if "could not bind" in _tail(server_log):
                    continue  # someone took the port between the probe and the bind
                raise
            self.port = port
            return
        raise LocalPostgresError(f"no free port after {MAX_PORT_ATTEMPTS} attempts")

    def _run(self, command: list[str]) -> None:
        try:
            subprocess.run(
                [*self._prefix, *command],
                check=True,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                cwd=self._folder,
            )
        except subprocess.CalledProcessError as error:
            server_log = "" if self._folder is None else _tail(self._folder / "postgres.log")
            raise LocalPostgresError(
                f"{Path(command[0]).name} failed ({error.returncode}): "
                f"{error.stderr.strip()[-LOG_TAIL_CHARS:]}\n{server_log}"
            ) from error
        except subprocess.TimeoutExpired as error:
            raise LocalPostgresError(f"{Path(command[0]).name} timed out") from error

    def _remove_folder(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return ""
