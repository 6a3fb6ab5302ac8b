"""API tokens: roles, subscription scopes, and only SHA-256 hashes stored (docs/rules.md, "Access").

A token is `lt_` followed by 43 URL-safe characters (256 random bits); the table keeps its
hash, never the token. `TokenStore` is the contract; `SqliteTokenStore` keeps the table in a
SQLite file of its own beside the read models, `services.auth.postgres_tokens.PostgresTokenStore` in
the log's PostgreSQL schema, shared by every API process. Every `authenticate` asks the table,
so a revocation holds from the next request on, in every process that reads that table.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Literal, Protocol, get_args

import msgspec

Role = Literal["admin", "gateway", "viewer", "auditor"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
TOKEN_PREFIX: Final = "lt_"
TOKEN_BYTES: Final = 32
MAX_TOKEN_CHARS: Final = 256
MAX_SCOPE_SUBSCRIPTIONS: Final = 1_000
BOOTSTRAP_ADMIN_ID: Final = "admin-bootstrap"
"""The token id of the admin token from LEDGER_ADMIN_TOKEN or the `admin-token` file."""
ADMIN_TOKEN_FILE: Final = "admin-token"
TOKENS_FILE: Final = "tokens.sqlite3"
BUSY_TIMEOUT_S: Final = 5.0

_TABLE_SQL: Final = """
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    role TEXT NOT NULL,
    subscription_ids TEXT,
    created_at_us INTEGER NOT NULL,
    revoked_at_us INTEGER
)
"""


class InvalidTokenRequest(ValueError):
    """A role and scope that do not go together (a viewer names exactly one subscription...)."""


class Principal(msgspec.Struct, frozen=True):
    """Who a request acts as: the token's id, role and subscription scope (None: all)."""

    token_id: str
    role: Role
    subscription_ids: frozenset[str] | None

    def sees(self, subscription_id: str) -> bool:
        return self.subscription_ids is None or subscription_id in self.subscription_ids


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def check_scope(role: Role, subscription_ids: Iterable[str] | None) -> frozenset[str] | None:
    """The scope a token of `role` may have; raises `InvalidTokenRequest` otherwise."""
    if role not in ROLES:
        raise InvalidTokenRequest(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    scope = None if subscription_ids is None else frozenset(subscription_ids)
    if role in ("admin", "auditor"):
        if scope is not None:
            raise InvalidTokenRequest(f"an {role} token sees every subscription: no scope")
        return None
    if scope is None or not scope:
        raise InvalidTokenRequest(f"a {role} token names the subscriptions it may see")
    if role == "viewer" and len(scope) != 1:
        raise InvalidTokenRequest("a viewer token names exactly one subscription")
    if len(scope) > MAX_SCOPE_SUBSCRIPTIONS:
        raise InvalidTokenRequest(f"at most {MAX_SCOPE_SUBSCRIPTIONS} subscriptions per token")
    return scope


def new_token_id() -> str:
    return "tok_" + secrets.token_hex(8)


def check_admin_token(token: str) -> None:
    """Raises `InvalidTokenRequest` unless `token` can be the bootstrap admin token."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise InvalidTokenRequest(f"an admin token is 1 to {MAX_TOKEN_CHARS} characters")


def encode_scope(scope: frozenset[str] | None) -> str | None:
    """The `subscription_ids` column: a sorted JSON list, or NULL for every subscription."""
    return None if scope is None else msgspec.json.encode(sorted(scope)).decode()


def principal_of(
    digest: bytes, row: tuple[str, bytes, Role, str | None] | None
) -> Principal | None:
    """The principal of a token row found by `digest`; the stored hash is compared again in
    constant time, whatever index found the row."""
    if row is None:
        return None
    token_id, stored, role, scope_json = row
    if not hmac.compare_digest(bytes(stored), digest):
        return None
    scope = None if scope_json is None else frozenset(msgspec.json.decode(scope_json))
    return Principal(token_id=token_id, role=role, subscription_ids=scope)


class TokenStore(Protocol):
    """Where the API's tokens live: one table of hashes, read by every request."""

    def create(self, role: Role, subscription_ids: Iterable[str] | None = None) -> tuple[str, str]:
        """A new token: (token_id, token). The token is shown to the caller once, never kept."""
        ...

    def set_bootstrap_admin(self, token: str) -> None:
        """Make `token` the bootstrap admin token, replacing (and un-revoking) the previous one."""
        ...

    def revoke(self, token_id: str) -> bool:
        """Revoke a token at once; False when no live token has that id."""
        ...

    def authenticate(self, bearer: str) -> Principal | None:
        """The principal of a live token; None for an unknown, revoked or malformed one."""
        ...

    def close(self) -> None: ...


class SqliteTokenStore:
    """The token table in the SQLite file at `path` (created with its folder when absent).

    Safe to share between threads (a lock guards the one connection).
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(_TABLE_SQL)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, role: Role, subscription_ids: Iterable[str] | None = None) -> tuple[str, str]:
        """A new token: (token_id, token). The token is shown to the caller once, never kept."""
        scope = check_scope(role, subscription_ids)
        token_id = new_token_id()
        token = new_token()
        self._insert(token_id, token, role, scope)
        return token_id, token

    def set_bootstrap_admin(self, token: str) -> None:
        """Make `token` the bootstrap admin token, replacing (and un-revoking) the previous one."""
        check_admin_token(token)
        with self._lock:
            self._db.execute("DELETE FROM api_tokens WHERE token_id = ?", (BOOTSTRAP_ADMIN_ID,))
            self._db.execute(
                "INSERT INTO api_tokens (token_id, token_hash, role, subscription_ids,"
                " created_at_us) VALUES (?, ?, 'admin', NULL, ?)",
                (BOOTSTRAP_ADMIN_ID, token_hash(token), now_us()),
            )

    def revoke(self, token_id: str) -> bool:
        """Revoke a token at once; False when no live token has that id."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE api_tokens SET revoked_at_us = ?"
                " WHERE token_id = ? AND revoked_at_us IS NULL",
                (now_us(), token_id),
            )
        return cursor.rowcount == 1

    def authenticate(self, bearer: str) -> Principal | None:
        """The principal of a live token; None for an unknown, revoked or malformed one."""
        if not bearer or len(bearer) > MAX_TOKEN_CHARS:
            return None
        digest = token_hash(bearer)
        with self._lock:
            row = self._db.execute(
                "SELECT token_id, token_hash, role, subscription_ids FROM api_tokens"
                " WHERE token_hash = ? AND revoked_at_us IS NULL",
                (digest,),
            ).fetchone()
        return principal_of(digest, row)

    def _insert(self, token_id: str, token: str, role: Role, scope: frozenset[str] | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO api_tokens (token_id, token_hash, role, subscription_ids,"
                " created_at_us) VALUES (?, ?, ?, ?, ?)",
                (token_id, token_hash(token), role, encode_scope(scope), now_us()),
            )


def ensure_admin_token(tokens: TokenStore, data_dir: Path, env_token: str | None) -> str | None:
    """Install the admin token; return it only when it was just generated (to print it once).

    With LEDGER_ADMIN_TOKEN set, that token is the admin token. Otherwise the one saved in
    `<data_dir>/admin-token` is, and when there is none a new one is generated and saved there
    with mode 0600.
    """
    if env_token:
        tokens.set_bootstrap_admin(env_token)
        return None
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        tokens.set_bootstrap_admin(path.read_text().strip())
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    token = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    tokens.set_bootstrap_admin(token)
    return token


def now_us() -> int:
    return time.time_ns() // 1_000
