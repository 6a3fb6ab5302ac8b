"""What `ledger serve` loads before its API process is on its way: the serving process never
imports the web stack (only the API process serves HTTP), a SQLite deployment never imports
the PostgreSQL driver, and the command line loads a command's modules only when that command
runs (every child `ledger serve` spawns imports the command line again as its `__main__`).
Each is a part of a second of start-up on the path to ready."""

from __future__ import annotations

import subprocess
import sys

import pytest

WEB_STACK = ("litestar", "uvicorn", "uvloop", "services.api.app")
COMMANDS_MODULES = (
    "structlog",
    "redis",
    "httpx",
    "ledger.records",
    "services.bootstrap",
    "services.publish",
    "services.simulate",
)
"""What the commands load to run: none of it is needed to parse a command line."""
POSTGRES = ("psycopg", "ledger.stores.postgres", "projections.stores.postgres")


def loaded_after(imports: str, watched: tuple[str, ...]) -> list[str]:
    """The `watched` modules a fresh interpreter has loaded after `imports`."""
    script = (
        f"import sys\nimport {imports}\nprint(' '.join(m for m in {watched!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.split()


def test_the_serving_process_imports_no_web_stack() -> None:
    assert loaded_after("services.cli, services.serve", WEB_STACK) == []


def test_the_command_line_loads_no_command_until_one_runs() -> None:
    assert loaded_after("services.cli", COMMANDS_MODULES + WEB_STACK) == []


def test_the_api_process_is_spawned_before_the_service_is_loaded() -> None:
    # `services.launch` spawns the API process; `services.serve` is imported after.
    assert loaded_after("services.cli, services.launch", COMMANDS_MODULES + WEB_STACK) == []


@pytest.mark.parametrize("module", ["services.cli", "services.serve", "services.api_process"])
def test_a_sqlite_deployment_imports_no_postgres_driver(module: str) -> None:
    assert loaded_after(module, POSTGRES) == []


def test_the_watch_sees_a_module_that_is_loaded() -> None:
    assert loaded_after("services.api.app", WEB_STACK[:1]) == ["litestar"]


def test_the_api_process_serves_without_a_websocket_protocol() -> None:
    # uvicorn imports the protocol its configuration names when it starts (`Config.load`).
    script = (
        "import sys\n"
        "from services.api_process import server_config\n"
        "from services.config import Settings\n"
        "async def app(scope, receive, send): ...\n"
        "server_config(Settings(), app).load()\n"
        "print(' '.join(m for m in ('wsproto', 'websockets') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == []
