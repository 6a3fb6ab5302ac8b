"""compose.yaml and the Dockerfile: what can be checked without a Docker engine, including
`docker compose config` (Compose v2) or `docker-compose config` (v1), which parse and validate
the file against the Compose schema without one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TIMEOUT_S = 60


def compose_config_command() -> list[str] | None:
    """`docker compose config` when the v2 plugin is there, else `docker-compose config`."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"]
    if shutil.which("docker-compose"):
        return ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    command = compose_config_command()
    if command is None:
        reason = "neither `docker compose` nor `docker-compose` is installed"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (.ci/run installs docker-compose)", pytrace=False)
        pytest.skip(reason)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT_S, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def dockerfile_lines() -> list[str]:
    return [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]


def test_compose_runs_redis_and_the_ledger_by_default(compose: dict[str, Any]) -> None:
    default = {name for name, service in compose["services"].items() if "profiles" not in service}
    assert default == {"redis", "ledger"}


def test_the_scale_profile_runs_postgres_two_ingest_workers_and_two_api_replicas(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    scaled = {name for name, service in services.items() if "scale" in service.get("profiles", ())}
    assert scaled == {"postgres", "ingest", "api"}
    for name, role in (("ingest", "ingest"), ("api", "api")):
        service = services[name]
        assert service["command"] == ["serve", "--role", role]
        assert service["deploy"]["replicas"] == 2
        environment = service["environment"]
        assert environment["LEDGER_DATABASE_URL"].startswith("postgresql://")
        assert environment["LEDGER_DATABASE_URL"].endswith("@postgres:5432/ledger")
        assert int(environment["LEDGER_PARTITIONS"]) > 1
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["image"].startswith("postgres:15")


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["healthcheck"]["test"][0] == "CMD", name


def test_redis_keeps_an_append_only_file_on_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert redis["image"].startswith("redis:7")
    volume = redis["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_the_ledger_waits_for_a_healthy_redis_and_uses_it(compose: dict[str, Any]) -> None:
    ledger = compose["services"]["ledger"]
    assert ledger["depends_on"]["redis"]["condition"] == "service_healthy"
    environment = ledger["environment"]
    assert environment["LEDGER_REDIS_URL"] == "redis://redis:6379/0"
    assert environment["LEDGER_HOST"] == "0.0.0.0"
    assert environment["LEDGER_DATA_DIR"] == "/data"
    assert ledger["command"] == ["serve"]
    assert any(str(port).endswith(":8080") for port in ledger["ports"])
    assert any(str(volume).endswith(":/data") for volume in ledger["volumes"])


def test_the_ledger_healthcheck_asks_readyz_and_reads_the_writers_heartbeat(
    compose: dict[str, Any],
) -> None:
    check = compose["services"]["ledger"]["healthcheck"]["test"]
    assert "http://127.0.0.1:8080/readyz" in check[-1]
    assert "/data/serve.heartbeat" in check[-1]
    compile(check[-1], "healthcheck", "exec")


def test_dockerfile_installs_the_package_and_runs_ledger(dockerfile_lines: list[str]) -> None:
    assert "FROM python:3.11-slim" in dockerfile_lines
    assert any(line.startswith("RUN pip install .") for line in dockerfile_lines)
    assert 'ENTRYPOINT ["ledger"]' in dockerfile_lines


def test_dockerfile_copies_every_package(dockerfile_lines: list[str]) -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - {"tests"}
    copied = {line.split()[1] for line in dockerfile_lines if line.startswith("COPY ")}
    assert packages <= copied
