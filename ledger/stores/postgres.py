"""The PostgreSQL event store: the hash-chained log and its usage idempotency index.

Same contract as `SqliteEventStore` (see `ledger.log.EventStore`), for production and for many
writers and readers on other machines. Every table lives in one PostgreSQL schema (`public`
unless told otherwise), so several ledgers, or several tests, can share one database.

Why appends take an advisory lock. A position is the head's plus one, so two appenders must
never read the same head; and a reader that follows `position > cursor` must never see
position N+1 committed while N is still in flight, or it would move its cursor past N and skip
it for good. Each append therefore takes a transaction-level advisory lock
(`pg_advisory_xact_lock`, one key per schema) *before* it reads the head, in a statement of its
own so that the head read takes a fresh snapshot after the wait. The lock is released only
after the commit is visible to everyone, so positions are assigned, committed and made visible
in one order: whoever sees N+1 sees N. The price is one appender at a time per log, which the
writer is anyway (it batches a thousand events per transaction); the partitions of the usage
stream share it, as they share the chain. Fencing readers on transaction ids
(`pg_snapshot_xmin`) would let appends overlap, but positions would then come from a sequence
with holes and commit out of order, and the hash chain needs the previous record's hash
before the next can be written, so overlapping appends could not chain anyway.

An append costs two round trips in pipeline mode: (lock, lease, head) then (insert the records
and their keys with one multi-row `unnest` statement each, commit). Inside the lock it checks
the head it was decided on (`ConcurrentAppend`) and, for an ingest worker, its partition lease
(`LeaseLost`, on the database's clock); a lease is taken over under the same lock, so no append
under an old token commits after a takeover. Every fenced append leaves a `fenced_appends` row
(token and time of the check), every takeover a `lease_takeovers` row: the failover test
proves the fencing from them. Data and hashes are `bytea`.
The usage key table's primary key is the idempotency check itself: a key already stored makes
the insert fail, and with it the whole transaction. Its columns use the "C" collation: byte
comparisons, whatever the database's locale (a linguistic collation would make every B-tree
step a `strcoll`, for keys whose order means nothing).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from ledger.errors import (
    DuplicateUsageKey,
    LeaseLost,
    StoreError,
)
from ledger.idempotency import UsageKey
from ledger.leases import (
    DEAD_WORKER_ROWS_KEPT_S,
    RENEWALS_PER_TTL,
    Fence,
    Lease,
    LeaseHolder,
    check_fence,
)
from ledger.log import (
    EVENT_ENCODER,
    EVENT_TYPE_TAG,
    GENESIS_HASH,
    READ_CHUNK_RECORDS,
    STORED_PREV_HASH,
    Head,
    PriorCharge,
    StoredRecord,
    chained,
    charges_in,
    check_append_arguments,
    check_head,
    linked_records,
)
from ledger.snapshots import SnapshotInfo, StoredSnapshot
from schemas.events import LogEvent

DEFAULT_SCHEMA = "public"


CONNECT_TIMEOUT_S = 10
"""How long opening the connection may take before the store gives up."""

APPEND_LOCK_TIMEOUT_MS = 30_000
"""How long an append waits for another append's lock before giving up (SQLite's busy wait)."""

IDLE_IN_TRANSACTION_TIMEOUT_MS = 10_000
"""A session that stops in the middle of an append (its process frozen or cut off) is ended by
the server after this long, which releases the append lock it holds."""

LEASE_LAPSED_SQLSTATE = "LL001"
"""Raised by the schema's `lease_check` function, the last statement of a fenced append."""


MAX_SCHEMA_NAME_CHARS = 63
"""PostgreSQL's identifier limit (NAMEDATALEN - 1)."""


_USAGE_KEYS_PRIMARY_KEY = "usage_keys_pkey"

MIGRATIONS: tuple[tuple[int, LiteralString], ...] = (
    (
        1,
        """
        CREATE TABLE {schema}.log (
            position bigint PRIMARY KEY,
            recorded_at_us bigint NOT NULL,
            subscription_id text NOT NULL,
            type text NOT NULL,
            prev_hash bytea NOT NULL,
            hash bytea NOT NULL,
            data bytea NOT NULL
        );
        CREATE INDEX log_recorded_at_us ON {schema}.log (recorded_at_us, position);
        CREATE TABLE {schema}.usage_keys (
            subscription_id text COLLATE "C" NOT NULL,
            event_id text COLLATE "C" NOT NULL,
            payload_digest text NOT NULL,
            position bigint NOT NULL,
            CONSTRAINT usage_keys_pkey PRIMARY KEY (subscription_id, event_id)
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE {schema}.leases (
            partition integer PRIMARY KEY,
            owner text NOT NULL,
            token bigint NOT NULL,
            expires_at timestamptz NOT NULL
        );
        CREATE TABLE {schema}.lease_takeovers (
            partition integer NOT NULL,
            token bigint NOT NULL,
            owner text NOT NULL,
            taken_at timestamptz NOT NULL,
            PRIMARY KEY (partition, token)
        );
        CREATE TABLE {schema}.workers (
            owner text PRIMARY KEY,
            expires_at timestamptz NOT NULL
        );
        CREATE TABLE {schema}.fenced_appends (
            first_position bigint PRIMARY KEY,
            last_position bigint NOT NULL,
            partition integer NOT NULL,
            owner text NOT NULL,
            token bigint NOT NULL,
            checked_at timestamptz NOT NULL
        );
        CREATE FUNCTION {schema}.lease_check(p integer, o text, t bigint)
        RETURNS timestamptz LANGUAGE plpgsql AS $$
        DECLARE
            checked timestamptz := clock_timestamp();
        BEGIN
            PERFORM 1 FROM {schema}.leases
            WHERE partition = p AND owner = o AND token = t AND expires_at > checked;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'the lease of partition % (token %) lapsed', p, t
                    USING ERRCODE = 'LL001';
            END IF;
            RETURN checked;
        END
        $$;
        """,
    ),
    (3, "CREATE INDEX log_subscription ON {schema}.log (subscription_id, position);"),
    (
        4,
        """
        CREATE TABLE {schema}.snapshots (
            position bigint PRIMARY KEY,
            head_hash bytea NOT NULL,
            format integer NOT NULL,
            checksum bytea NOT NULL,
            created_at_us bigint NOT NULL,
            state bytea NOT NULL,
            balances bytea NOT NULL
        );
        """,
    ),
)
"""(version, SQL) in order; `{schema}` is the store's schema. Append new ones, never edit."""

SCHEMA_VERSION = MIGRATIONS[-1][0]


def advisory_lock_key(schema: str, purpose: str) -> int:
    """A 64-bit advisory lock key for one purpose within one schema (log, read models...)."""
    text = f"credits-ledger:{schema}:{purpose}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


def append_lock_key(schema: str = DEFAULT_SCHEMA) -> int:
    """The advisory lock key every append to this schema's log holds until it commits."""
    return advisory_lock_key(schema, "append")


def migration_lock_key(schema: str = DEFAULT_SCHEMA) -> int:
    return advisory_lock_key(schema, "migrate")


def connect(
    url: str, settings: dict[str, str], *, application_name: str | None = None
) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection with these session `settings` (`set_config` names and
    values); every failure is a `StoreError`, and a half-set-up connection is closed."""
    options: dict[str, Any] = {}
    if application_name is not None:
        options["application_name"] = application_name
    try:
        db = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, **options)
    except psycopg.Error as error:
        raise StoreError(f"cannot connect to PostgreSQL: {error}") from error
    try:
        if settings:
            calls = sql.SQL(", ").join(
                sql.SQL("set_config({}, {}, false)").format(sql.Literal(name), sql.Literal(value))
                for name, value in settings.items()
            )
            db.execute(sql.SQL("SELECT {}").format(calls))
    except psycopg.Error as error:
        db.close()
        raise StoreError(f"cannot set up the PostgreSQL connection: {error}") from error
    return db


def check_schema_name(schema: str) -> None:
    """Refuse a schema name PostgreSQL would not keep whole (`ValueError`)."""
    if not schema or len(schema) > MAX_SCHEMA_NAME_CHARS:
        raise ValueError(f"schema must be 1 to {MAX_SCHEMA_NAME_CHARS} characters: {schema!r}")


def migrate(
    db: psycopg.Connection[Any],
    schema: str,
    version_table: LiteralString,
    migrations: Sequence[tuple[int, LiteralString]],
    what: str,
) -> None:
    """Create `schema` if missing and apply the `migrations` its `version_table` does not list,
    in one transaction under the schema's migration lock (one opener at a time, whatever it
    opens: the log, the read models, the tokens). `{schema}` in a statement is the schema.
    A schema at a version newer than the last of `migrations` is refused (`StoreError`)."""
    name = sql.Identifier(schema)
    versions = sql.SQL("{}.{}").format(name, sql.Identifier(version_table))
    latest = migrations[-1][0]
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (migration_lock_key(schema),))
        exists = db.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if exists is None:
            db.execute(sql.SQL("CREATE SCHEMA {}").format(name))
        db.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(versions)
        )
        row = db.execute(sql.SQL("SELECT max(version) FROM {}").format(versions)).fetchone()
        current = 0 if row is None or row[0] is None else int(row[0])
        if current > latest:
            raise StoreError(
                f"the {what} of schema {schema!r} are at version {current}, newer than this"
                f" code's {latest}"
            )
        for version, statements in migrations:
            if version > current:
                db.execute(sql.SQL(statements).format(schema=name))
                db.execute(
                    sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(versions), (version,)
                )


class PostgresEventStore:
    """An `EventStore` in a PostgreSQL schema, created and migrated when it opens.

    One instance holds one connection and is used by one thread at a time (a lock guards it,
    so an async service may call it from executor threads); any number of instances, in any
    processes, may open the same schema. A connection the server or the network dropped fails
    the call in flight with `StoreError` and is opened again by the next call (an append whose
    commit was in flight may or may not have committed: callers read the log again, as
    `Ledger` does after any failed append).
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        lock_timeout_ms: int = APPEND_LOCK_TIMEOUT_MS,
        idle_in_transaction_timeout_ms: int = IDLE_IN_TRANSACTION_TIMEOUT_MS,
        application_name: str | None = None,
    ) -> None:
        check_schema_name(schema)
        if lock_timeout_ms < 1:
            raise ValueError(f"lock_timeout_ms must be at least 1, not {lock_timeout_ms}")
        self.schema = schema
        self._url = url
        self._lock_timeout_ms = lock_timeout_ms
        self._idle_timeout_ms = idle_in_transaction_timeout_ms
        self._application_name = application_name
        """An ingest worker names its sessions after itself (its lease owner id), so that a
        takeover can end the sessions of a worker whose heartbeat expired."""
        self._append_key = append_lock_key(schema)
        self._lock = threading.RLock()
        self._q = _Queries(sql.Identifier(schema))
        self._db = self._connect()
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def append(
        self,
        events: Sequence[LogEvent],
        recorded_at_us: int,
        *,
        expected_position: int | None = None,
        fence: Fence | None = None,
    ) -> list[StoredRecord]:
        if not events:
            return []
        check_append_arguments(events, recorded_at_us)
        encoded = [EVENT_ENCODER.encode(event) for event in events]
        charges = charges_in(events)
        with self._lock:
            self._reconnect_if_broken()
            try:
                with self._db.pipeline() as pipeline, self._db.transaction():
                    # Two statements: the head read must take its snapshot after the lock wait.
                    self._db.execute(self._q.lock, (self._append_key,))
                    lease = None
                    if fence is not None:
                        lease = self._db.execute(self._q.fence, (fence.partition,), binary=True)
                    head_cursor = self._db.execute(self._q.head, binary=True)
                    # A Sync, not just a flush: the server is then "idle in transaction" while
                    # this process chains the records, so `idle_in_transaction_session_timeout`
                    # ends the session (and frees the lock) if the process freezes right here.
                    pipeline.sync()
                    head = _head_of(head_cursor.fetchone())
                    if fence is not None:  # the first check; `lease_check` repeats it last
                        assert lease is not None
                        check_fence(fence, lease.fetchone())
                    check_head(head, recorded_at_us, expected_position)
                    records = chained(head, recorded_at_us, encoded)
                    if charges:
                        self._db.execute(self._q.insert_keys, _key_columns(charges, records))
                    self._db.execute(self._q.insert_records, _record_columns(records, events))
                    if fence is not None:  # checked again last: a lease lapsed meanwhile aborts
                        self._db.execute(
                            self._q.insert_fenced_append,
                            (
                                records[0].position,
                                records[-1].position,
                                fence.partition,
                                fence.owner,
                                fence.token,
                                fence.partition,
                                fence.owner,
                                fence.token,
                            ),
                        )
            except psycopg.errors.UniqueViolation as error:
                if error.diag.constraint_name == _USAGE_KEYS_PRIMARY_KEY:
                    raise DuplicateUsageKey(
                        f"a usage key is already in the log: {error.diag.message_detail}"
                    ) from error
                raise StoreError(f"append refused: {error}") from error
            except psycopg.errors.LockNotAvailable as error:
                raise StoreError(
                    f"append gave up waiting {self._lock_timeout_ms} ms for another append"
                ) from error
            except psycopg.Error as error:
                if error.sqlstate == LEASE_LAPSED_SQLSTATE:
                    raise LeaseLost(f"the lease lapsed before the commit: {error}") from error
                raise StoreError(f"append failed: {error}") from error
        return records

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the append lock across the calls made in the block, on this thread: reads, then
        at most one append, in one transaction committed at the end (a savepoint each)."""
        with self._lock:
            self._reconnect_if_broken()
            try:
                with self._db.transaction():
                    self._db.execute(self._q.lock, (self._append_key,))
                    yield
            except psycopg.errors.LockNotAvailable as error:
                raise StoreError(
                    f"gave up waiting {self._lock_timeout_ms} ms for another append"
                ) from error
            except psycopg.Error as error:
                raise StoreError(f"exclusive section failed: {error}") from error

    def read(self, after: int = 0, until: int | None = None) -> Iterator[StoredRecord]:
        """Records with `after < position <= until`, in order, `READ_CHUNK_RECORDS` per query.

        With no `until`, up to the head as it is when iteration starts.
        """
        rows = (row for chunk in self._chunks(self._q.records, after, until) for row in chunk)
        return linked_records(rows, self._hash_at_before)

    def _hash_at_before(self, position: int) -> bytes:
        rows = self._fetch(self._q.hash_at, (position - 1,))
        return bytes(rows[0][0]) if rows else b""

    def read_event_data(self, after: int, until: int) -> Iterator[list[bytes]]:
        for rows in self._chunks(self._q.event_data, after, until):
            yield [data for (_, data) in rows]

    def read_subscription_data(
        self, subscription_id: str, until: int, after: int = 0
    ) -> Iterator[list[bytes]]:
        position = after
        while True:
            rows = self._fetch(
                self._q.subscription_data, (subscription_id, position, until, READ_CHUNK_RECORDS)
            )
            if not rows:
                return
            yield [data for (_, data) in rows]
            if len(rows) < READ_CHUNK_RECORDS:
                return
            position = rows[-1][0]

    def head(self) -> Head:
        rows = self._fetch(self._q.head, ())
        return _head_of(rows[0] if rows else None)

    def prior_charges(self, keys: Sequence[UsageKey]) -> dict[UsageKey, PriorCharge]:
        if not keys:
            return {}
        rows = self._fetch(
            self._q.prior_charges, ([key[0] for key in keys], [key[1] for key in keys])
        )
        return {
            (subscription_id, event_id): PriorCharge(
                subscription_id, event_id, payload_digest, position
            )
            for subscription_id, event_id, payload_digest, position in rows
        }

    def position_at(self, recorded_at_us: int) -> int:
        """Recorded times never decrease along the log, so the latest time at or before the
        instant, highest position first, is the answer (one index probe)."""
        rows = self._fetch(self._q.position_at, (recorded_at_us,))
        return int(rows[0][0]) if rows else 0

    # -- leases (ledger.leases.LeaseStore) ---------------------------------------------------

    def acquire(self, partition: int, owner: str, ttl_ms: int) -> Lease | None:
        with self._lock:
            self._reconnect_if_broken()
            try:
                # A worker frozen in the middle of sending an append keeps its session busy
                # (not "idle in transaction") and the append lock held: its heartbeat expired,
                # so its sessions are ended first; its transaction rolls back.
                self._db.execute(self._q.end_dead_workers_sessions)
                with self._db.transaction():
                    # Under the append lock: no append is between its fence check and commit.
                    # Waiting at most a renewal interval for it, so the keeper renews on time.
                    wait_ms = max(1, min(self._lock_timeout_ms, ttl_ms // RENEWALS_PER_TTL))
                    self._db.execute(
                        "SELECT set_config('lock_timeout', %s, true)", (f"{wait_ms}ms",)
                    )
                    self._db.execute(self._q.lock, (self._append_key,))
                    row = self._db.execute(
                        self._q.take_lease, (partition, owner, ttl_ms)
                    ).fetchone()
                    if row is None:
                        return None
                    token, expires_at = row
                    self._db.execute(self._q.record_takeover, (partition, token, owner))
            except psycopg.Error as error:
                raise StoreError(f"lease acquisition failed: {error}") from error
        return Lease(partition, owner, token, expires_at)

    def renew(self, fence: Fence, ttl_ms: int) -> Lease | None:
        rows = self._fetch(
            self._q.renew_lease, (ttl_ms, fence.partition, fence.owner, fence.token), binary=False
        )
        if not rows:
            return None
        return Lease(fence.partition, fence.owner, fence.token, rows[0][0])

    def release(self, fence: Fence) -> None:
        self._fetch(
            self._q.release_lease, (fence.partition, fence.owner, fence.token), binary=False
        )

    def heartbeat(self, owner: str, ttl_ms: int) -> list[str]:
        with self._lock:
            self._reconnect_if_broken()
            try:
                with self._db.transaction():
                    self._db.execute(self._q.heartbeat, (owner, ttl_ms))
                    self._db.execute(self._q.forget_dead_workers, (DEAD_WORKER_ROWS_KEPT_S,))
                    rows = self._db.execute(self._q.live_workers).fetchall()
            except psycopg.Error as error:
                raise StoreError(f"heartbeat failed: {error}") from error
        return [owner for (owner,) in rows]

    def leave(self, owner: str) -> None:
        self._fetch(self._q.leave, (owner,), binary=False)

    def holders(self) -> dict[int, LeaseHolder]:
        rows = self._fetch(self._q.holders, (), binary=False)
        return {
            partition: LeaseHolder(partition, owner, token, live)
            for partition, owner, token, live in rows
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _chunks(
        self, query: sql.Composed, after: int, until: int | None
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of `query` for positions `after < position <= until` (up to the head), by
        ranges of `READ_CHUNK_RECORDS` positions, each sorted by position (its first column).

        The query asks for a bounded range and no order: the plan is then cheap whatever the
        statistics say. With `ORDER BY position LIMIT n` over an open range, a table not yet
        analyzed gets a bitmap scan of the whole range and an on-disk sort (measured: 4 times
        slower); the rows of one range arrive nearly in order, so sorting them here costs a pass.
        With `until`, the head is not asked for: positions are gap-free and committed in order
        (appends hold the append lock to their commit), so a range that comes back short ends
        at the head.
        """
        last = self.head().position if until is None else until
        position = after
        while position < last:
            upper = min(last, position + READ_CHUNK_RECORDS)
            rows = self._fetch(query, (position, upper))
            rows.sort(key=_first)
            if rows:
                yield rows
            if len(rows) < upper - position:
                return
            position = upper

    def _fetch(
        self, query: sql.Composed, params: Sequence[Any], *, binary: bool = True
    ) -> list[Any]:
        with self._lock:
            self._reconnect_if_broken()
            try:
                cursor = self._db.execute(query, params, binary=binary)
                return cursor.fetchall() if cursor.description is not None else []
            except psycopg.Error as error:
                raise StoreError(f"query failed: {error}") from error

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return connect(
            self._url,
            {
                "lock_timeout": f"{self._lock_timeout_ms}ms",
                "idle_in_transaction_session_timeout": f"{self._idle_timeout_ms}ms",
            },
            application_name=self._application_name,
        )

    def _reconnect_if_broken(self) -> None:
        if self._db.broken:
            self._db = self._connect()

    def _migrate(self) -> None:
        migrate(self._db, self.schema, "schema_version", MIGRATIONS, "log tables")


class _Queries:
    """Every statement of the store, qualified with its schema once."""

    def __init__(self, schema: sql.Identifier) -> None:
        self._schema = schema
        self._log_statements()
        self._lease_statements()

    def _q(self, text: LiteralString) -> sql.Composed:
        return sql.SQL(text).format(schema=self._schema)

    def _log_statements(self) -> None:
        q = self._q
        self.lock = q("SELECT pg_advisory_xact_lock(%b)")
        self.head = q(
            "SELECT position, hash, recorded_at_us FROM {schema}.log ORDER BY position DESC LIMIT 1"
        )
        self.insert_records = q(
            "INSERT INTO {schema}.log"
            " (position, recorded_at_us, subscription_id, type, prev_hash, hash, data)"
            " SELECT * FROM unnest("
            "%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::bytea[], %b::bytea[],"
            " %b::bytea[])"
        )
        self.insert_keys = q(
            "INSERT INTO {schema}.usage_keys (subscription_id, event_id, payload_digest, position)"
            " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[])"
        )
        self.records = q(
            "SELECT position, recorded_at_us, data, prev_hash, hash FROM {schema}.log"
            " WHERE position > %b AND position <= %b"
        )
        self.hash_at = q("SELECT hash FROM {schema}.log WHERE position = %b")
        self.event_data = q(
            "SELECT position, data FROM {schema}.log WHERE position > %b AND position <= %b"
        )
        self.subscription_data = q(
            "SELECT position, data FROM {schema}.log"
            " WHERE subscription_id = %b AND position > %b AND position <= %b"
            " ORDER BY subscription_id, position LIMIT %b"
        )
        self.prior_charges = q(
            "SELECT k.subscription_id, k.event_id, k.payload_digest, k.position"
            " FROM {schema}.usage_keys k"
            " JOIN unnest(%b::text[], %b::text[]) AS wanted (subscription_id, event_id)"
            ' ON k.subscription_id = wanted.subscription_id COLLATE "C"'
            ' AND k.event_id = wanted.event_id COLLATE "C"'
        )
        self.position_at = q(
            "SELECT position FROM {schema}.log WHERE recorded_at_us <= %b"
            " ORDER BY recorded_at_us DESC, position DESC LIMIT 1"
        )

    def _lease_statements(self) -> None:
        q = self._q
        self.fence = q(
            "SELECT owner, token, expires_at > clock_timestamp()"
            " FROM {schema}.leases WHERE partition = %b"
        )
        self.insert_fenced_append = q(
            "INSERT INTO {schema}.fenced_appends"
            " (first_position, last_position, partition, owner, token, checked_at)"
            " VALUES (%b, %b, %b, %b, %b, {schema}.lease_check(%b, %b, %b))"
        )
        self.take_lease = q(
            "INSERT INTO {schema}.leases AS l (partition, owner, token, expires_at)"
            " VALUES (%s, %s, 1, clock_timestamp() + %s * interval '1 millisecond')"
            " ON CONFLICT (partition) DO UPDATE"
            " SET owner = excluded.owner, token = l.token + 1, expires_at = excluded.expires_at"
            " WHERE l.expires_at <= clock_timestamp() OR l.owner = excluded.owner"
            " RETURNING token, expires_at"
        )
        self.end_dead_workers_sessions = q(
            "SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a"
            " JOIN {schema}.workers w ON w.owner = a.application_name"
            " WHERE w.expires_at <= clock_timestamp() AND a.pid <> pg_backend_pid()"
            " AND a.datname = current_database()"
        )
        self.record_takeover = q(
            "INSERT INTO {schema}.lease_takeovers (partition, token, owner, taken_at)"
            " VALUES (%s, %s, %s, clock_timestamp())"
        )
        self.renew_lease = q(
            "UPDATE {schema}.leases"
            " SET expires_at = clock_timestamp() + %s * interval '1 millisecond'"
            " WHERE partition = %s AND owner = %s AND token = %s"
            " AND expires_at > clock_timestamp() RETURNING expires_at"
        )
        self.release_lease = q(
            "UPDATE {schema}.leases SET expires_at = clock_timestamp()"
            " WHERE partition = %s AND owner = %s AND token = %s"
            " AND expires_at > clock_timestamp()"
        )
        self.heartbeat = q(
            "INSERT INTO {schema}.workers (owner, expires_at)"
            " VALUES (%s, clock_timestamp() + %s * interval '1 millisecond')"
            " ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at"
        )
        self.forget_dead_workers = q(
            "DELETE FROM {schema}.workers"
            " WHERE expires_at < clock_timestamp() - %s * interval '1 second'"
        )
        self.live_workers = q(
            "SELECT owner FROM {schema}.workers WHERE expires_at > clock_timestamp()"
            ' ORDER BY owner COLLATE "C"'
        )
        self.leave = q("DELETE FROM {schema}.workers WHERE owner = %s")
        self.holders = q(
            "SELECT partition, owner, token, expires_at > clock_timestamp() FROM {schema}.leases"
        )


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def _head_of(row: tuple[int, bytes, int] | None) -> Head:
    if row is None:
        return Head(0, GENESIS_HASH, 0)
    position, digest, recorded_at_us = row
    return Head(position, bytes(digest), recorded_at_us)


def _record_columns(records: list[StoredRecord], events: Sequence[LogEvent]) -> list[list[Any]]:
    return [
        [record.position for record in records],
        [record.recorded_at_us for record in records],
        [event.subscription_id for event in events],
        [EVENT_TYPE_TAG[type(event)] for event in events],
        [STORED_PREV_HASH for _ in records],
        [record.hash for record in records],
        [record.data for record in records],
    ]


def _key_columns(
    charges: list[tuple[int, UsageKey, str]], records: list[StoredRecord]
) -> list[list[Any]]:
    return [
        [key[0] for _, key, _ in charges],
        [key[1] for _, key, _ in charges],
        [digest for _, _, digest in charges],
        [records[index].position for index, _, _ in charges],
    ]


class PostgresSnapshotStore:
    """Snapshots in the `snapshots` table of the log's schema (created by the log's migrations:
    open the `PostgresEventStore` first)."""

    def __init__(self, url: str, *, schema: str = DEFAULT_SCHEMA) -> None:
        check_schema_name(schema)
        self._url = url
        self._lock = threading.Lock()
        table = sql.Identifier(schema, "snapshots")
        info = sql.SQL(
            "position, head_hash, format, checksum, created_at_us, length(state) + length(balances)"
        )
        self._save = sql.SQL(
            "INSERT INTO {} (position, head_hash, format, checksum, created_at_us, state, balances)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (position) DO UPDATE SET"
            " head_hash = excluded.head_hash, format = excluded.format,"
            " checksum = excluded.checksum, created_at_us = excluded.created_at_us,"
            " state = excluded.state, balances = excluded.balances"
        ).format(table)
        self._infos = sql.SQL("SELECT {} FROM {} ORDER BY position DESC").format(info, table)
        self._load = sql.SQL("SELECT {}, state, balances FROM {} WHERE position = %s").format(
            info, table
        )
        self._delete = sql.SQL("DELETE FROM {} WHERE position = %s").format(table)
        self._db = connect(url, {})

    def save(self, snapshot: StoredSnapshot) -> None:
        i = snapshot.info
        row = (i.position, i.head_hash, i.format, i.checksum, i.created_at_us)
        self._run(self._save, (*row, snapshot.state, snapshot.balances))

    def infos(self) -> list[SnapshotInfo]:
        return [_snapshot_info(row) for row in self._run(self._infos, ())]

    def load(self, position: int) -> StoredSnapshot | None:
        rows = self._run(self._load, (position,))
        if not rows:
            return None
        row = rows[0]
        return StoredSnapshot(_snapshot_info(row[:6]), bytes(row[6]), bytes(row[7]))

    def delete(self, position: int) -> None:
        self._run(self._delete, (position,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, query: sql.Composed, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                if self._db.broken:
                    self._db = connect(self._url, {})
                cursor = self._db.execute(query, params)
                return cursor.fetchall() if cursor.description is not None else []
            except psycopg.Error as error:
                raise StoreError(f"snapshot query failed: {error}") from error


def _snapshot_info(row: Sequence[Any]) -> SnapshotInfo:
    position, head_hash, fmt, digest, created_at_us, size = row
    return SnapshotInfo(position, bytes(head_hash), fmt, bytes(digest), created_at_us, size)
