"""The embedded event store: the hash-chained log and its usage idempotency index, in SQLite.

Several instances, in threads or processes, may share a file; appends serialize on SQLite's
write lock, so positions stay gap-free and in commit order.

Why the idempotency index has two levels. An index keyed by a random `event_id` turns every
append into one random B-tree page write per key: the WAL then carries a 4 KiB page per event
on top of the ~1 KiB log row, and appends run at half the speed or less (bench/bench_store.py).
So a charge's key is first written to `usage_keys_recent`, in position order (a few pages per
append), and mirrored in a per-instance dict of at most `RECENT_USAGE_KEYS_MAX` entries; the
append that reaches that many moves them, sorted, into `usage_keys` in one pass, so a page of
that B-tree is written once per merge rather than once per key. Both levels key a charge by a
64-bit hash of (subscription_id, event_id) and point at its position in the log, which holds
the charge itself: the whole index is derivable from the log. Two keys whose hashes collide
are told apart by the charge the hash points at; the later one is kept, under its full key,
in `usage_keys_overflow`.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from ledger.errors import (
    DuplicateUsageKey,
    StoreError,
)
from ledger.idempotency import UsageKey
from ledger.leases import DEAD_WORKER_ROWS_KEPT_S, Fence, Lease, LeaseHolder, check_fence
from ledger.log import (
    EVENT_ENCODER,
    EVENT_TYPE_TAG,
    GENESIS_HASH,
    READ_CHUNK_RECORDS,
    STORED_PREV_HASH,
    Head,
    PriorCharge,
    RecordRow,
    StoredRecord,
    chained,
    charges_in,
    check_append_arguments,
    check_head,
    datetime_from_us,
    linked_records,
)
from ledger.records import decode_event, is_compact
from ledger.snapshots import SnapshotInfo, StoredSnapshot
from schemas.events import LogEvent, UsageCharged

SCHEMA_VERSION = 1

CACHE_SIZE_KIB = 262_144
"""Page cache per connection (256 MiB): holds the hot part of the idempotency index."""

BUSY_TIMEOUT_S = 30.0
"""How long an append (or an open) waits for another connection's lock before giving up."""

OPEN_RETRY_INTERVAL_S = 0.01
"""Pause between tries to switch a file to WAL while another connection is creating it."""

WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
"""What a WAL file is truncated to after a checkpoint, once a big merge has grown it."""


RECENT_USAGE_KEYS_MAX = 131_072
"""Unmerged keys after which an append merges them into `usage_keys` (~14 MiB of dict)."""


SQL_VARIABLES_PER_QUERY = 500
"""Bound parameters per `IN (...)` list, well under SQLite's limit."""


UsageKeyHash = Callable[[str, str], int]


def usage_key_hash(subscription_id: str, event_id: str) -> int:
    """A signed 64-bit hash of a usage key: a SQLite integer primary key as it stands."""
    text = f"{subscription_id}\x00{event_id}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    position INTEGER PRIMARY KEY,
    recorded_at_us INTEGER NOT NULL,
    subscription_id TEXT NOT NULL,
    type TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_subscription ON log (subscription_id, position);
CREATE TABLE IF NOT EXISTS usage_keys (key INTEGER PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage_keys_recent (
    position INTEGER PRIMARY KEY,
    key INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_keys_overflow (
    subscription_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    payload_digest TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (subscription_id, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    partition INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lease_takeovers (
    partition INTEGER NOT NULL,
    token INTEGER NOT NULL,
    owner TEXT NOT NULL,
    taken_at_us INTEGER NOT NULL,
    PRIMARY KEY (partition, token)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers (owner TEXT PRIMARY KEY, expires_at_us INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
INSERT OR IGNORE INTO meta (key, value) VALUES ('usage_keys_merged_through', '0');
"""

_INSERT_RECORD = (
    "INSERT INTO log (position, recorded_at_us, subscription_id, type, prev_hash, hash, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_RECORDS = (
    "SELECT position, recorded_at_us, data, prev_hash, hash FROM log"
    " WHERE position > ? AND position <= ? ORDER BY position LIMIT ?"
)
_SELECT_EVENT_DATA = (
    "SELECT data FROM log WHERE position > ? AND position <= ? ORDER BY position LIMIT ?"
)
_SELECT_SUBSCRIPTION_DATA = (
    "SELECT position, data FROM log INDEXED BY log_subscription"
    " WHERE subscription_id = ? AND position > ? AND position <= ? ORDER BY position LIMIT ?"
)
_SELECT_HEAD = "SELECT position, hash, recorded_at_us FROM log ORDER BY position DESC LIMIT 1"


class _ChargeIdentity(msgspec.Struct, frozen=True):
    """The part of a stored `usage.charged` the idempotency index needs."""

    subscription_id: str
    event_id: str
    payload_digest: str


_IDENTITY_DECODER = msgspec.json.Decoder(_ChargeIdentity)


def _charge_identity(data: bytes) -> _ChargeIdentity:
    """Who a stored charge is: read straight from JSON records, from the event otherwise."""
    if is_compact(data):
        event = decode_event(data)
        assert isinstance(event, UsageCharged), "the usage key index points at charges only"
        return _ChargeIdentity(event.subscription_id, event.event_id, event.payload_digest)
    return _IDENTITY_DECODER.decode(data)


class SqliteEventStore:
    """An `EventStore` in one SQLite file (WAL mode), created with its folders when absent.

    One instance is used by one thread at a time (a lock guards it, so an async service may
    call it from executor threads); several instances may open the same file.
    `usage_key_hash` is replaceable for tests that force hash collisions; every instance on a
    file must use the same one. `recent_usage_keys_max` bounds the per-instance mirror of
    unmerged keys (lower: less memory, more frequent merges; tests set it low to merge often).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        usage_key_hash: UsageKeyHash = usage_key_hash,
        recent_usage_keys_max: int = RECENT_USAGE_KEYS_MAX,
    ) -> None:
        if recent_usage_keys_max < 1:
            raise ValueError(
                f"recent_usage_keys_max must be at least 1, not {recent_usage_keys_max}"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._key_hash = usage_key_hash
        self._recent_max = recent_usage_keys_max
        self._lock = threading.RLock()
        self._after_commit: list[Callable[[], None]] | None = None
        """Inside `exclusive`: what to do once its transaction commits."""
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            self._prepare(path)
        except BaseException:
            self._db.close()
            raise
        # The mirror of `usage_keys_recent`: key hash -> position, as of `_recent_through`.
        self._recent: dict[int, int] = {}
        self._recent_through = 0
        self._merged_through: int | None = None  # None: the mirror was never loaded
        self._hashed_last: dict[UsageKey, int] = {}
        """The keys the last `prior_charges` hashed: the append that follows hashes them again."""

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
        looked_up = self._hashed_last  # the keys `prior_charges` just hashed, as a rule
        hashed = {
            key: looked_up[key] if key in looked_up else self._key_hash(*key)
            for _, key, _ in charges
        }
        with self._lock:
            with self._transaction("BEGIN IMMEDIATE"):
                if fence is not None:
                    self._check_fence(fence)
                head = self._read_head()
                check_head(head, recorded_at_us, expected_position)
                records = chained(head, recorded_at_us, encoded)
                recent_rows, overflow_rows = self._place_keys(charges, hashed, head.position + 1)
                self._db.executemany(_INSERT_RECORD, _log_rows(records, events))
                if recent_rows:
                    self._db.executemany(
                        "INSERT INTO usage_keys_recent (position, key) VALUES (?, ?)", recent_rows
                    )
                if overflow_rows:
                    self._db.executemany(
                        "INSERT INTO usage_keys_overflow"
                        " (subscription_id, event_id, payload_digest, position)"
                        " VALUES (?, ?, ?, ?)",
                        overflow_rows,
                    )
                through = records[-1].position
                merged = bool(recent_rows) and self._merge_recent_if_full(len(recent_rows), through)

            # Committed: only now does the mirror take this append's keys. With charges in the
            # batch it was synced inside the transaction, so it is current up to `through`.
            def mirror() -> None:
                if merged:
                    self._recent.clear()
                    self._merged_through = through
                else:
                    self._recent.update((key, position) for position, key in recent_rows)
                if charges:
                    self._recent_through = through

            self._on_commit(mirror)
        return records

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the write lock (`BEGIN IMMEDIATE`) across the calls made in the block, on this
        thread: reads, then at most one append, commit together at the end."""
        with self._lock:
            if self._after_commit is not None:
                raise RuntimeError("exclusive sections do not nest")
            self._db.execute("BEGIN IMMEDIATE")
            self._after_commit = []
            try:
                yield
                self._db.execute("COMMIT")
                actions = self._after_commit
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._after_commit = None
            for action in actions:
                action()

    def read(self, after: int = 0, until: int | None = None) -> Iterator[StoredRecord]:
        """Records with `after < position <= until`, in order, `READ_CHUNK_RECORDS` per query.

        With no `until`, up to the head as it is when called.
        """
        with self._lock:
            last = self._read_head().position if until is None else until
        return linked_records(self._record_rows(after, last), self._hash_at_before)

    def _record_rows(self, after: int, last: int) -> Iterator[RecordRow]:
        position = after
        while position < last:
            with self._lock:
                rows = self._db.execute(
                    _SELECT_RECORDS, (position, last, READ_CHUNK_RECORDS)
                ).fetchall()
            if not rows:
                return
            yield from rows
            position = rows[-1][0]

    def _hash_at_before(self, position: int) -> bytes:
        with self._lock:
            row = self._db.execute("SELECT hash FROM log WHERE position = ?", (position - 1,))
            found = row.fetchone()
        return b"" if found is None else bytes(found[0])

    def read_event_data(self, after: int, until: int) -> Iterator[list[bytes]]:
        position = after
        while position < until:
            with self._lock:
                rows = self._db.execute(
                    _SELECT_EVENT_DATA, (position, until, READ_CHUNK_RECORDS)
                ).fetchall()
            if not rows:
                return
            yield [data for (data,) in rows]
            position += len(rows)  # positions are gap-free

    def read_subscription_data(
        self, subscription_id: str, until: int, after: int = 0
    ) -> Iterator[list[bytes]]:
        position = after
        while True:
            with self._lock:
                rows = self._db.execute(
                    _SELECT_SUBSCRIPTION_DATA,
                    (subscription_id, position, until, READ_CHUNK_RECORDS),
                ).fetchall()
            if not rows:
                return
            yield [data for (_, data) in rows]
            if len(rows) < READ_CHUNK_RECORDS:
                return
            position = rows[-1][0]

    def head(self) -> Head:
        with self._lock:
            return self._read_head()

    def prior_charges(self, keys: Sequence[UsageKey]) -> dict[UsageKey, PriorCharge]:
        if not keys:
            return {}
        hashed = {key: self._key_hash(*key) for key in keys}
        self._hashed_last = hashed
        with self._lock, self._transaction("BEGIN"):
            self._sync_recent()
            found, _ = self._lookup(hashed)
        return found

    def position_at(self, recorded_at_us: int) -> int:
        """A binary search over positions: recorded times never decrease along the log."""
        with self._lock, self._transaction("BEGIN"):
            low, high = 0, self._read_head().position
            while low < high:
                middle = (low + high + 1) // 2
                row = self._db.execute(
                    "SELECT recorded_at_us FROM log WHERE position = ?", (middle,)
                ).fetchone()
                if row is None:
                    raise StoreError(f"the log has no record at position {middle}")
                if row[0] <= recorded_at_us:
                    low = middle
                else:
                    high = middle - 1
            return low

    # -- leases (ledger.leases.LeaseStore) ---------------------------------------------------
    # The database's clock is this machine's: every process sharing the file shares it.

    def acquire(self, partition: int, owner: str, ttl_ms: int) -> Lease | None:
        with self._lock, self._transaction("BEGIN IMMEDIATE"):  # the append lock
            now_us = _now_us()
            row = self._db.execute(
                "SELECT owner, token, expires_at_us FROM leases WHERE partition = ?", (partition,)
            ).fetchone()
            if row is not None and row[0] != owner and row[2] > now_us:
                return None
            token = 1 if row is None else row[1] + 1
            expires_at_us = now_us + ttl_ms * 1_000
            self._db.execute(
                "INSERT OR REPLACE INTO leases (partition, owner, token, expires_at_us)"
                " VALUES (?, ?, ?, ?)",
                (partition, owner, token, expires_at_us),
            )
            self._db.execute(
                "INSERT INTO lease_takeovers (partition, token, owner, taken_at_us)"
                " VALUES (?, ?, ?, ?)",
                (partition, token, owner, now_us),
            )
        return Lease(partition, owner, token, datetime_from_us(expires_at_us))

    def renew(self, fence: Fence, ttl_ms: int) -> Lease | None:
        with self._lock, self._transaction("BEGIN IMMEDIATE"):
            now_us = _now_us()
            expires_at_us = now_us + ttl_ms * 1_000
            renewed = self._db.execute(
                "UPDATE leases SET expires_at_us = ?"
                " WHERE partition = ? AND owner = ? AND token = ? AND expires_at_us > ?",
                (expires_at_us, fence.partition, fence.owner, fence.token, now_us),
            ).rowcount
        if not renewed:
            return None
        return Lease(fence.partition, fence.owner, fence.token, datetime_from_us(expires_at_us))

    def release(self, fence: Fence) -> None:
        with self._lock, self._transaction("BEGIN IMMEDIATE"):
            now_us = _now_us()
            self._db.execute(
                "UPDATE leases SET expires_at_us = ?"
                " WHERE partition = ? AND owner = ? AND token = ? AND expires_at_us > ?",
                (now_us, fence.partition, fence.owner, fence.token, now_us),
            )

    def heartbeat(self, owner: str, ttl_ms: int) -> list[str]:
        with self._lock, self._transaction("BEGIN IMMEDIATE"):
            now_us = _now_us()
            self._db.execute(
                "INSERT OR REPLACE INTO workers (owner, expires_at_us) VALUES (?, ?)",
                (owner, now_us + ttl_ms * 1_000),
            )
            self._db.execute(
                "DELETE FROM workers WHERE expires_at_us < ?",
                (now_us - DEAD_WORKER_ROWS_KEPT_S * 1_000_000,),
            )
            rows = self._db.execute(
                "SELECT owner FROM workers WHERE expires_at_us > ? ORDER BY owner", (now_us,)
            ).fetchall()
        return [owner for (owner,) in rows]

    def leave(self, owner: str) -> None:
        with self._lock, self._transaction("BEGIN IMMEDIATE"):
            self._db.execute("DELETE FROM workers WHERE owner = ?", (owner,))

    def holders(self) -> dict[int, LeaseHolder]:
        with self._lock:
            now_us = _now_us()
            rows = self._db.execute(
                "SELECT partition, owner, token, expires_at_us FROM leases"
            ).fetchall()
        return {
            partition: LeaseHolder(partition, owner, token, expires_at_us > now_us)
            for partition, owner, token, expires_at_us in rows
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _check_fence(self, fence: Fence) -> None:
        row = self._db.execute(
            "SELECT owner, token, expires_at_us > ? FROM leases WHERE partition = ?",
            (_now_us(), fence.partition),
        ).fetchone()
        check_fence(fence, None if row is None else (row[0], row[1], bool(row[2])))

    def _prepare(self, path: Path) -> None:
        self._enter_wal_mode()
        # NORMAL in WAL mode: a commit survives a crash of the process; on power loss or an OS
        # crash, the transactions committed since the last checkpoint may be rolled back (each
        # whole, the file stays consistent). FULL would also fsync the WAL at every commit, so
        # that every commit survives power loss too, at the cost of one fsync per append.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(f"PRAGMA cache_size = -{CACHE_SIZE_KIB}")
        self._db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        with self._transaction("BEGIN IMMEDIATE"):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            version = self._meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise StoreError(f"{path}: log schema version {version}, expected {SCHEMA_VERSION}")

    def _enter_wal_mode(self) -> None:
        """Switch to WAL, retrying while another opener holds the lock.

        SQLite does not call the busy handler for this switch, so two connections creating the
        same new file at once would otherwise fail at once with "database is locked".
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                (mode,) = self._db.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(OPEN_RETRY_INTERVAL_S)
        if str(mode).lower() != "wal":
            raise StoreError(f"SQLite refused WAL mode (journal mode is {mode})")

    def _on_commit(self, action: Callable[[], None]) -> None:
        if self._after_commit is None:
            action()
        else:
            self._after_commit.append(action)

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[None]:
        if self._after_commit is not None:  # inside `exclusive`: part of its transaction
            yield
            return
        self._db.execute(begin)
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _read_head(self) -> Head:
        row = self._db.execute(_SELECT_HEAD).fetchone()
        if row is None:
            return Head(0, GENESIS_HASH, 0)
        position, digest, recorded_at_us = row
        return Head(position, digest, recorded_at_us)

    def _sync_recent(self) -> None:
        """Bring the mirror of `usage_keys_recent` up to what is committed (in a transaction)."""
        merged_through = int(self._meta("usage_keys_merged_through") or 0)
        if merged_through != self._merged_through:
            self._recent.clear()
            self._recent_through = self._merged_through = merged_through
        rows = self._db.execute(
            "SELECT position, key FROM usage_keys_recent WHERE position > ? ORDER BY position",
            (self._recent_through,),
        ).fetchall()
        for position, key in rows:
            self._recent[key] = position
        if rows:
            self._recent_through = rows[-1][0]

    def _place_keys(
        self, charges: list[tuple[int, UsageKey, str]], hashed: dict[UsageKey, int], first: int
    ) -> tuple[list[tuple[int, int]], list[tuple[str, str, str, int]]]:
        """Rows for `usage_keys_recent` and `usage_keys_overflow`; refuses a key already held."""
        if not charges:
            return [], []
        self._sync_recent()
        found, taken = self._lookup(hashed)
        if found:
            key, prior = next(iter(found.items()))
            raise DuplicateUsageKey(
                f"usage key {key} is already in the log at position {prior.position}"
            )
        recent_rows: list[tuple[int, int]] = []
        overflow_rows: list[tuple[str, str, str, int]] = []
        for index, key, digest in charges:
            key_hash, position = hashed[key], first + index
            if key_hash in taken:
                overflow_rows.append((*key, digest, position))
            else:
                taken.add(key_hash)
                recent_rows.append((position, key_hash))
        return recent_rows, overflow_rows

    def _lookup(self, hashed: dict[UsageKey, int]) -> tuple[dict[UsageKey, PriorCharge], set[int]]:
        """The stored charges for these keys, and every hash among theirs the index holds."""
        holders: dict[int, int] = {}
        unmerged_misses: list[int] = []
        for key_hash in set(hashed.values()):
            position = self._recent.get(key_hash)
            if position is None:
                unmerged_misses.append(key_hash)
            else:
                holders[key_hash] = position
        for chunk in _chunks(unmerged_misses, SQL_VARIABLES_PER_QUERY):
            holders.update(
                self._db.execute(
                    f"SELECT key, position FROM usage_keys WHERE key IN ({_marks(len(chunk))})",
                    chunk,
                ).fetchall()
            )
        if not holders:
            return {}, set()
        identities = self._charges_at(set(holders.values()))
        found: dict[UsageKey, PriorCharge] = {}
        collided: list[UsageKey] = []
        for key, key_hash in hashed.items():
            position = holders.get(key_hash)
            if position is None:
                continue
            identity = identities[position]
            if (identity.subscription_id, identity.event_id) == key:
                found[key] = PriorCharge(*key, identity.payload_digest, position)
            else:
                collided.append(key)
        if collided:
            found.update(self._overflow(collided))
        return found, set(holders)

    def _charges_at(self, positions: set[int]) -> dict[int, _ChargeIdentity]:
        identities: dict[int, _ChargeIdentity] = {}
        for chunk in _chunks(sorted(positions), SQL_VARIABLES_PER_QUERY):
            rows = self._db.execute(
                f"SELECT position, data FROM log WHERE position IN ({_marks(len(chunk))})", chunk
            ).fetchall()
            for position, data in rows:
                identities[position] = _charge_identity(data)
        missing = positions - identities.keys()
        if missing:
            raise StoreError(f"the usage key index points at positions not in the log: {missing}")
        return identities

    def _overflow(self, keys: list[UsageKey]) -> dict[UsageKey, PriorCharge]:
        found: dict[UsageKey, PriorCharge] = {}
        for chunk in _chunks(keys, SQL_VARIABLES_PER_QUERY // 2):
            pairs = ", ".join(["(?, ?)"] * len(chunk))
            rows = self._db.execute(
                "SELECT subscription_id, event_id, payload_digest, position"
                f" FROM usage_keys_overflow WHERE (subscription_id, event_id) IN (VALUES {pairs})",
                [part for key in chunk for part in key],
            ).fetchall()
            for subscription_id, event_id, payload_digest, position in rows:
                found[(subscription_id, event_id)] = PriorCharge(
                    subscription_id, event_id, payload_digest, position
                )
        return found

    def _merge_recent_if_full(self, added: int, through: int) -> bool:
        if len(self._recent) + added < self._recent_max:
            return False
        self._db.execute(
            "INSERT INTO usage_keys (key, position)"
            " SELECT key, position FROM usage_keys_recent ORDER BY key"
        )
        self._db.execute("DELETE FROM usage_keys_recent")
        self._db.execute(
            "UPDATE meta SET value = ? WHERE key = 'usage_keys_merged_through'", (str(through),)
        )
        return True


def _log_rows(
    records: list[StoredRecord], events: Sequence[LogEvent]
) -> Iterator[tuple[int, int, str, str, bytes, bytes, bytes]]:
    for record, event in zip(records, events, strict=True):
        yield (
            record.position,
            record.recorded_at_us,
            event.subscription_id,
            EVENT_TYPE_TAG[type(event)],
            STORED_PREV_HASH,
            record.hash,
            record.data,
        )


def _now_us() -> int:
    return time.time_ns() // 1_000


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(count: int) -> str:
    return ", ".join(["?"] * count)


_SNAPSHOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    position INTEGER PRIMARY KEY,
    head_hash BLOB NOT NULL,
    format INTEGER NOT NULL,
    checksum BLOB NOT NULL,
    created_at_us INTEGER NOT NULL,
    state BLOB NOT NULL,
    balances BLOB NOT NULL
)
"""
_SNAPSHOT_INFO = (
    "position, head_hash, format, checksum, created_at_us, length(state) + length(balances)"
)


class SqliteSnapshotStore:
    """Snapshots in a SQLite file of their own beside the log's (`snapshot_path`): derived,
    disposable, and never holding the log's write lock."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._db.execute(_SNAPSHOT_SCHEMA)

    def save(self, snapshot: StoredSnapshot) -> None:
        info = snapshot.info
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO snapshots"
                " (position, head_hash, format, checksum, created_at_us, state, balances)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    info.position,
                    info.head_hash,
                    info.format,
                    info.checksum,
                    info.created_at_us,
                    snapshot.state,
                    snapshot.balances,
                ),
            )

    def infos(self) -> list[SnapshotInfo]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_SNAPSHOT_INFO} FROM snapshots ORDER BY position DESC"
            ).fetchall()
        return [SnapshotInfo(*row) for row in rows]

    def load(self, position: int) -> StoredSnapshot | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_SNAPSHOT_INFO}, state, balances FROM snapshots WHERE position = ?",
                (position,),
            ).fetchone()
        if row is None:
            return None
        return StoredSnapshot(SnapshotInfo(*row[:6]), row[6], row[7])

    def delete(self, position: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM snapshots WHERE position = ?", (position,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
