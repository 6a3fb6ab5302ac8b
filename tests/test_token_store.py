"""The token store contract (access: docs/rules.md), run against the SQLite file and the
PostgreSQL table alike: only hashes stored, scopes that follow the role, the bootstrap admin
token, and a revocation that holds at once for every store open on the same table; then two
`ledger serve --role api` replicas on one PostgreSQL schema, as behind a load balancer."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from services.auth.postgres_tokens import SCHEMA_VERSION, PostgresTokenStore
from services.auth.tokens import (
    ADMIN_TOKEN_FILE,
    BOOTSTRAP_ADMIN_ID,
    TOKEN_PREFIX,
    TOKENS_FILE,
    InvalidTokenRequest,
    SqliteTokenStore,
    TokenStore,
    ensure_admin_token,
)
from services.bootstrap import open_token_store
from services.config import Settings
from tests.service_support import Service, start_service


@dataclass
class Backend:
    """Stores open on one token table, and what that table holds, as raw as it is kept."""

    open: Callable[[], TokenStore]
    stored: Callable[[], bytes]


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / TOKENS_FILE

    def stored() -> bytes:
        return b"".join(file.read_bytes() for file in tmp_path.glob(TOKENS_FILE + "*"))

    return Backend(lambda: SqliteTokenStore(path), stored)


def _postgres_backend(url: str, schema: str) -> Backend:
    def stored() -> bytes:
        with psycopg.connect(url) as connection:
            table = sql.Identifier(schema, "api_tokens")
            rows = connection.execute(sql.SQL("SELECT t::text FROM {} t").format(table))
            text = "\n".join(row for (row,) in rows).encode()
            hashes = connection.execute(sql.SQL("SELECT token_hash FROM {}").format(table))
            return text + b"".join(bytes(digest) for (digest,) in hashes)

    return Backend(lambda: PostgresTokenStore(url, schema=schema), stored)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path)
    url: str = request.getfixturevalue("postgres_url")
    return _postgres_backend(url, request.getfixturevalue("postgres_schema"))


@pytest.fixture
def tokens(backend: Backend) -> Iterator[TokenStore]:
    store = backend.open()
    yield store
    store.close()


def test_a_token_authenticates_until_it_is_revoked(tokens: TokenStore) -> None:
    token_id, token = tokens.create("auditor")
    assert token.startswith(TOKEN_PREFIX)
    principal = tokens.authenticate(token)
    assert principal is not None
    assert (principal.token_id, principal.role, principal.subscription_ids) == (
        token_id,
        "auditor",
        None,
    )
    assert tokens.revoke(token_id)
    assert tokens.authenticate(token) is None
    assert not tokens.revoke(token_id) and not tokens.revoke("tok_unknown")


def test_scopes_follow_the_role(tokens: TokenStore) -> None:
    for role, scope in [
        ("viewer", None),
        ("viewer", ["a", "b"]),
        ("gateway", []),
        ("admin", ["a"]),
        ("auditor", ["a"]),
        ("root", None),
    ]:
        with pytest.raises(InvalidTokenRequest):
            tokens.create(role, scope)  # type: ignore[arg-type]
    token_id, token = tokens.create("gateway", ["a", "b"])
    principal = tokens.authenticate(token)
    assert principal is not None and principal.token_id == token_id
    assert principal.sees("a") and principal.sees("b") and not principal.sees("c")
    viewer = tokens.authenticate(tokens.create("viewer", ["a"])[1])
    assert viewer is not None and viewer.subscription_ids == frozenset({"a"})
    assert tokens.authenticate(token + "x") is None and tokens.authenticate("") is None
    assert tokens.authenticate("x" * 10_000) is None


def test_only_hashes_of_tokens_are_stored(backend: Backend, tokens: TokenStore) -> None:
    _, token = tokens.create("viewer", ["team-1"])
    tokens.set_bootstrap_admin("lt_bootstrap-admin-secret")
    stored = backend.stored()
    assert hashlib.sha256(token.encode()).digest() in stored
    for secret in (token, "lt_bootstrap-admin-secret"):
        assert secret.encode() not in stored
        assert secret[len(TOKEN_PREFIX) :].encode() not in stored


def test_a_revocation_holds_at_once_for_every_store_on_the_table(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    try:
        token_id, token = first.create("gateway", ["team-1"])
        assert second.authenticate(token) is not None
        assert second.revoke(token_id)
        assert first.authenticate(token) is None
        assert not first.revoke(token_id)
    finally:
        first.close()
        second.close()


def test_the_bootstrap_admin_token_is_replaced_when_the_configured_one_changes(
    backend: Backend, tokens: TokenStore
) -> None:
    tokens.set_bootstrap_admin("lt_first-admin")
    principal = tokens.authenticate("lt_first-admin")
    assert principal is not None and principal.role == "admin"
    assert principal.token_id == BOOTSTRAP_ADMIN_ID
    assert tokens.revoke(BOOTSTRAP_ADMIN_ID)  # the API refuses this; the store does not
    other = backend.open()  # another process starting with another configured token
    try:
        other.set_bootstrap_admin("lt_second-admin")
    finally:
        other.close()
    assert tokens.authenticate("lt_first-admin") is None
    principal = tokens.authenticate("lt_second-admin")  # un-revoked, with the new hash
    assert principal is not None and principal.token_id == BOOTSTRAP_ADMIN_ID
    with pytest.raises(InvalidTokenRequest):
        tokens.set_bootstrap_admin("")


def test_the_admin_token_is_generated_once_with_mode_0600(
    tokens: TokenStore, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    token = ensure_admin_token(tokens, data_dir, None)
    assert token is not None and token.startswith(TOKEN_PREFIX)
    path = data_dir / ADMIN_TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    principal = tokens.authenticate(token)
    assert principal is not None and principal.role == "admin"
    assert ensure_admin_token(tokens, data_dir, None) is None  # printed once only
    assert tokens.authenticate(token) is not None
    # LEDGER_ADMIN_TOKEN replaces it.
    assert ensure_admin_token(tokens, data_dir, "lt_from-env") is None
    assert tokens.authenticate("lt_from-env") is not None
    assert tokens.authenticate(token) is None


# -- PostgreSQL only ------------------------------------------------------------------------


def test_the_postgresql_table_is_created_once_with_its_version(
    postgres_url: str, postgres_schema: str
) -> None:
    stores = [PostgresTokenStore(postgres_url, schema=postgres_schema) for _ in range(2)]
    _, token = stores[0].create("auditor")
    for store in stores:
        store.close()
    again = PostgresTokenStore(postgres_url, schema=postgres_schema)
    try:
        assert again.authenticate(token) is not None
    finally:
        again.close()
    with psycopg.connect(postgres_url) as connection:
        versions = connection.execute(
            sql.SQL("SELECT version FROM {}").format(
                sql.Identifier(postgres_schema, "api_tokens_schema_version")
            )
        ).fetchall()
    assert versions == [(SCHEMA_VERSION,)]


def test_the_postgresql_store_reconnects_once_after_its_connection_is_dropped(
    postgres_url: str, postgres_schema: str
) -> None:
    tokens = PostgresTokenStore(postgres_url, schema=postgres_schema)
    try:
        _, token = tokens.create("auditor")
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND query LIKE %s",
                (f'%"{postgres_schema}".api_tokens%',),
            ).fetchone()
        assert ended == (1,)
        assert tokens.authenticate(token) is not None
    finally:
        tokens.close()


def test_open_token_store_follows_the_log(
    tmp_path: Path, postgres_url: str, postgres_schema: str
) -> None:
    on_sqlite = open_token_store(Settings(data_dir=tmp_path))
    on_sqlite.close()
    assert isinstance(on_sqlite, SqliteTokenStore) and (tmp_path / TOKENS_FILE).exists()
    settings = Settings(
        data_dir=tmp_path / "pg", database_url=postgres_url, database_schema=postgres_schema
    )
    on_postgres = open_token_store(settings)
    on_postgres.close()
    assert isinstance(on_postgres, PostgresTokenStore)
    assert on_postgres.schema == postgres_schema and not (tmp_path / "pg").exists()


# -- two API replicas on one PostgreSQL schema ----------------------------------------------


@pytest.fixture
def replicas(
    tmp_path: Path, redis_url: str, postgres_url: str, postgres_schema: str
) -> Iterator[tuple[Service, Service]]:
    """Two `ledger serve --role api` on one log, each with a data dir of its own."""
    env = {
        "LEDGER_DATABASE_URL": postgres_url,
        "LEDGER_DATABASE_SCHEMA": postgres_schema,
        "LEDGER_ROLE": "api",
    }
    running = contextmanager(start_service)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        running(tmp_path / "a", redis_url, env_overrides=env) as a,
        running(tmp_path / "b", redis_url, env_overrides=env) as b,
    ):
        yield a, b


def test_a_token_made_or_revoked_through_one_replica_holds_on_the_other(
    replicas: tuple[Service, Service],
) -> None:
    a, b = replicas
    for service in (a, b):
        assert not (service.data_dir / TOKENS_FILE).exists()
    created = a.ok("POST", "/v1/tokens", {"role": "auditor"})
    on_a, on_b = a.api.with_token(created["token"]), b.api.with_token(created["token"])
    assert on_b.get("/v1/audit/digest").status == 200
    assert b.api.request("DELETE", f"/v1/tokens/{created['token_id']}").status == 204
    assert on_a.get("/v1/audit/digest").status == 401
    assert on_b.get("/v1/audit/digest").status == 401
    made_on_b = b.ok("POST", "/v1/tokens", {"role": "auditor"})
    assert a.api.request("DELETE", f"/v1/tokens/{made_on_b['token_id']}").status == 204
    assert b.api.with_token(made_on_b["token"]).get("/v1/audit/digest").status == 401
