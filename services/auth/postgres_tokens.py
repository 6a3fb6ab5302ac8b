"""The API's tokens in the log's PostgreSQL schema: one `api_tokens` table that every API process
behind a load balancer reads, so a token created through one replica works on every other, and
one revoked through any replica fails on the very next request to any of them.

Same columns and rules as `services.auth.tokens.SqliteTokenStore`: only SHA-256 hashes are
stored, the hash found is compared again in constant time, the bootstrap admin row is
upserted. The table is created and migrated by the store when it opens, under the log's
migration lock, and versioned in `api_tokens_schema_version` (apart from the log's and the
read models' versions).

The API authenticates every `/v1` request on its event loop, so `authenticate` is one round
trip on one connection (a lock guards it) through the unique index on `token_hash`, a
statement psycopg prepares after a few calls. A connection the server or the network dropped
is opened again and the call repeated, once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Final, LiteralString, TypeVar

import psycopg
from psycopg import sql

from ledger.errors import StoreError
from ledger.stores.postgres import DEFAULT_SCHEMA, check_schema_name, connect, migrate
from services.auth.tokens import (
    BOOTSTRAP_ADMIN_ID,
    MAX_TOKEN_CHARS,
    Principal,
    Role,
    check_admin_token,
    check_scope,
    encode_scope,
    new_token,
    new_token_id,
    now_us,
    principal_of,
    token_hash,
)

STATEMENT_TIMEOUT_MS: Final = 5_000
"""Longest a token statement may run: a request's guard waits for it on the event loop."""
RECONNECT_ATTEMPTS: Final = 1
"""Times a call is repeated on a new connection after the one it ran on was dropped."""

MIGRATIONS: Final[tuple[tuple[int, LiteralString], ...]] = (
    (
        1,
        """
        CREATE TABLE {schema}.api_tokens (
            token_id text COLLATE "C" PRIMARY KEY,
            token_hash bytea NOT NULL UNIQUE,
            role text NOT NULL,
            subscription_ids text,
            created_at_us bigint NOT NULL,
            revoked_at_us bigint
        );
        """,
    ),
)
"""(version, SQL) in order; `{schema}` is the store's schema. Append new ones, never edit."""

SCHEMA_VERSION: Final = MIGRATIONS[-1][0]

Connection = psycopg.Connection[tuple[Any, ...]]
_T = TypeVar("_T")


class PostgresTokenStore:
    """A `services.auth.tokens.TokenStore` in a PostgreSQL schema (the log's), created and migrated
    when it opens. Safe to share between threads; any number of stores, in any processes, may
    open the same schema.

    A write whose connection dropped after the server committed it is repeated on the new
    connection: `revoke` then answers False for the token it revoked, and `create` fails on the
    row it inserted (a token never shown, so no one holds it).
    """

    def __init__(self, url: str, *, schema: str = DEFAULT_SCHEMA) -> None:
        check_schema_name(schema)
        self.schema = schema
        self._url = url
        self._lock = threading.Lock()
        self._q = _Queries(sql.Identifier(schema))
        self._db = self._connect()
        try:
            self._migrate()
        except psycopg.Error as error:
            self._db.close()
            raise StoreError(f"cannot create or migrate the token table: {error}") from error
        except BaseException:
            self._db.close()
            raise

    def create(self, role: Role, subscription_ids: Iterable[str] | None = None) -> tuple[str, str]:
        scope = check_scope(role, subscription_ids)
        token_id = new_token_id()
        token = new_token()
        row = (token_id, token_hash(token), role, encode_scope(scope), now_us())
        self._call(lambda db: db.execute(self._q.insert, row))
        return token_id, token

    def set_bootstrap_admin(self, token: str) -> None:
        check_admin_token(token)
        row = (BOOTSTRAP_ADMIN_ID, token_hash(token), now_us())
        self._call(lambda db: db.execute(self._q.upsert_bootstrap_admin, row))

    def revoke(self, token_id: str) -> bool:
        cursor = self._call(lambda db: db.execute(self._q.revoke, (now_us(), token_id)))
        return cursor.rowcount == 1

    def authenticate(self, bearer: str) -> Principal | None:
        if not bearer or len(bearer) > MAX_TOKEN_CHARS:
            return None
        digest = token_hash(bearer)
        row = self._call(lambda db: db.execute(self._q.live_token, (digest,)).fetchone())
        return principal_of(digest, row)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _call(self, work: Callable[[Connection], _T]) -> _T:
        """`work` on the connection, repeated on a new one when the server or the network
        dropped it; any other PostgreSQL failure becomes a `StoreError`."""
        with self._lock:
            attempts = RECONNECT_ATTEMPTS
            while True:
                try:
                    if self._db.broken:  # a store closed on purpose stays closed
                        self._db.close()
                        self._db = self._connect()
                    return work(self._db)
                except psycopg.Error as error:
                    if not self._db.broken or attempts == 0:
                        raise StoreError(f"token store: {error}") from error
                    attempts -= 1

    def _connect(self) -> Connection:
        return connect(self._url, {"statement_timeout": f"{STATEMENT_TIMEOUT_MS}ms"})

    def _migrate(self) -> None:
        """Create the token table, or apply the migrations it lacks (see `migrate`)."""
        migrate(self._db, self.schema, "api_tokens_schema_version", MIGRATIONS, "token table")


class _Queries:
    """Every statement of the store, qualified with its schema once."""

    def __init__(self, schema: sql.Identifier) -> None:
        def q(text: LiteralString) -> sql.Composed:
            return sql.SQL(text).format(schema=schema)

        self.insert = q(
            "INSERT INTO {schema}.api_tokens"
            " (token_id, token_hash, role, subscription_ids, created_at_us)"
            " VALUES (%s, %s, %s, %s, %s)"
        )
        # One row, whatever a replica or an earlier start left: the new hash, live again.
        self.upsert_bootstrap_admin = q(
            "INSERT INTO {schema}.api_tokens"
            " (token_id, token_hash, role, subscription_ids, created_at_us)"
            " VALUES (%s, %s, 'admin', NULL, %s)"
            " ON CONFLICT (token_id) DO UPDATE SET token_hash = EXCLUDED.token_hash,"
            " role = 'admin', subscription_ids = NULL, created_at_us = EXCLUDED.created_at_us,"
            " revoked_at_us = NULL"
        )
        self.revoke = q(
            "UPDATE {schema}.api_tokens SET revoked_at_us = %s"
            " WHERE token_id = %s AND revoked_at_us IS NULL"
        )
        self.live_token = q(
            "SELECT token_id, token_hash, role, subscription_ids FROM {schema}.api_tokens"
            " WHERE token_hash = %s AND revoked_at_us IS NULL"
        )
