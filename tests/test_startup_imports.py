"""What `ledger serve` loads before its API process is on its way: the serving process never
imports the web stack (only the API process serves HTTP), and a SQLite deployment never
imports the PostgreSQL driver. Each is seconds of start-up on the path to ready."""

from __future__ import annotations

import subprocess
import sys

import pytest

WEB_STACK = ("litestar", "uvicorn", "uvloop", "services.api.app")
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


@pytest.mark.parametrize("module", ["services.cli", "services.serve", "services.api_process"])
def test_a_sqlite_deployment_imports_no_postgres_driver(module: str) -> None:
    assert loaded_after(module, POSTGRES) == []


def test_the_watch_sees_a_module_that_is_loaded() -> None:
    assert loaded_after("services.api.app", WEB_STACK[:1]) == ["litestar"]
