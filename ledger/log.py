"""The append-only, hash-chained event log: its record, its hash rule and the store contract.

Every store (SQLite now, PostgreSQL later) implements `EventStore`; callers never know which.
A record's hash is SHA-256 over the previous record's hash and the record's canonical bytes:
its position and recorded time as 8-byte big-endian integers, then its event's bytes exactly
as stored (ledger/records.py: a format byte and MessagePack, or JSON in logs written before).
A record's `prev_hash` is the previous record's hash, so stores keep it once: they write an
empty one and fill it in from the record before when they read (records written before this
kept theirs, and read as stored).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol, get_args

import msgspec

from ledger.errors import (
    ClockOutOfRange,
    ClockWentBackwards,
    ConcurrentAppend,
    DuplicateUsageKey,
)
from ledger.idempotency import UsageKey
from ledger.leases import Fence
from ledger.records import decode_event, encode_event
from schemas.commands import ChargeOnRecord
from schemas.events import LogEvent, UsageCharged
from schemas.limits import MAX_INSTANT, MIN_INSTANT

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

GENESIS_HASH = bytes(32)
"""The `prev_hash` of the record at position 1."""

MAX_APPEND_EVENTS = 100_000
"""Most events one append (one transaction) may carry."""


class EventCodec:
    """Writes an event in the current record format; reads a record's bytes in any format."""

    @staticmethod
    def encode(event: LogEvent) -> bytes:
        return encode_event(event)

    @staticmethod
    def decode(data: bytes) -> LogEvent:
        return decode_event(data)


EVENT_ENCODER: Final = EventCodec()
EVENT_DECODER: Final = EVENT_ENCODER
EVENT_TYPE_TAG: dict[type, str] = {
    event_type: str(event_type.__struct_config__.tag) for event_type in get_args(LogEvent)
}
"""Each event type's `type` tag, stored in its own column beside the record."""

READ_CHUNK_RECORDS = 10_000
"""Records (positions) a store's `read` fetches per query: a long log streams, not loads."""


class StoredRecord(msgspec.Struct, frozen=True):
    """A log record as stored: `data` is the event's bytes, exactly as hashed."""

    position: int
    recorded_at_us: int
    data: bytes
    prev_hash: bytes
    hash: bytes

    @property
    def recorded_at(self) -> datetime:
        return datetime_from_us(self.recorded_at_us)

    def event(self) -> LogEvent:
        return decode_event(self.data)


class Head(msgspec.Struct, frozen=True):
    """The last record's position, hash and time; position 0 and the genesis hash when empty."""

    position: int
    hash: bytes
    recorded_at_us: int


class PriorCharge(msgspec.Struct, frozen=True):
    """What the log already holds for one usage idempotency key."""

    subscription_id: str
    event_id: str
    payload_digest: str
    position: int


RecordRow = tuple[int, int, bytes, bytes, bytes]
"""(position, recorded_at_us, data, stored prev_hash, hash) as a store reads it."""


def linked_records(
    rows: Iterable[RecordRow], hash_before: Callable[[int], bytes]
) -> Iterator[StoredRecord]:
    """Stored records from rows in position order, each `prev_hash` filled in: as stored when
    the row kept it, else the hash of the row before (`hash_before(position)` for the first:
    the genesis hash at position 1, that record's hash otherwise, empty when there is none)."""
    prev: bytes | None = None
    for position, recorded_at_us, data, stored_prev, digest in rows:
        if stored_prev:
            prev_hash = bytes(stored_prev)
        elif prev is not None:
            prev_hash = prev
        else:
            prev_hash = GENESIS_HASH if position == 1 else hash_before(position)
        prev = bytes(digest)
        yield StoredRecord(position, recorded_at_us, data, prev_hash, prev)


STORED_PREV_HASH: Final = b""
"""What a store writes in a record's prev_hash column (see `linked_records`)."""


_HEADER: Final = struct.Struct(">Qq")
"""A record's position and recorded time as hashed: 8-byte big-endian, the time signed."""


def record_hash(prev_hash: bytes, position: int, recorded_at_us: int, data: bytes) -> bytes:
    return hashlib.sha256(
        b"".join((prev_hash, _HEADER.pack(position, recorded_at_us), data))
    ).digest()


def us_from_datetime(instant: datetime) -> int:
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def datetime_from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


MIN_RECORDED_AT_US: Final = us_from_datetime(MIN_INSTANT)
MAX_RECORDED_AT_US: Final = us_from_datetime(MAX_INSTANT)


def recorded_instant(recorded_at_us: int) -> datetime:
    """The instant of a time to record; `ClockOutOfRange` when it lies outside the ledger's
    bounds (nothing is appended at such a time: nothing later could fold it)."""
    if not MIN_RECORDED_AT_US <= recorded_at_us <= MAX_RECORDED_AT_US:
        raise ClockOutOfRange(
            f"the ledger clock reads {recorded_at_us} µs since the epoch, outside"
            f" [{MIN_INSTANT.isoformat()}, {MAX_INSTANT.isoformat()}]: nothing is appended"
        )
    return datetime_from_us(recorded_at_us)


class EventStore(Protocol):
    """The contract every log store keeps.

    - `append` writes a batch in one transaction: positions are gap-free and equal to commit
      order, each record chains to the previous one, and for every `usage.charged` event its
      idempotency key (subscription_id, event_id) is written in that same transaction. A key
      already present makes the whole append fail with `DuplicateUsageKey` and write nothing.
    - `recorded_at_us` must not be earlier than the head's; the store refuses it otherwise.
    - `expected_position`, when given, is the head the events were decided on: if the head
      moved (another writer appended), the append raises `ConcurrentAppend` and writes nothing.
    - `fence`, when given, must still be the partition's live lease (owner, token, not expired
      by the database's clock) or the append raises `LeaseLost` and writes nothing.

    Both are checked inside the append transaction, after its lock, so no other append can
    come between the check and the commit.
    """

    def append(
        self,
        events: Sequence[LogEvent],
        recorded_at_us: int,
        *,
        expected_position: int | None = None,
        fence: Fence | None = None,
    ) -> list[StoredRecord]: ...

    def exclusive(self) -> AbstractContextManager[None]:
        """Hold the append lock for the block: what it reads stays the head until its one
        append, which therefore never meets `ConcurrentAppend` (a writer that lost a race
        decides again in here, so it cannot lose every time)."""
        ...

    def read(self, after: int = 0, until: int | None = None) -> Iterator[StoredRecord]:
        """Records with `after < position <= until` (no upper bound when None), in order."""
        ...

    def read_event_data(self, after: int, until: int) -> Iterator[list[bytes]]:
        """The event bytes of positions `after < position <= until`, in order, a chunk per
        list: for replays, which need neither hashes nor times."""
        ...

    def read_subscription_data(
        self, subscription_id: str, until: int, after: int = 0
    ) -> Iterator[list[bytes]]:
        """The event bytes of one subscription's records at `after < position <= until`, in
        order, a chunk per list (an index leads to them: the cost is that subscription's
        records)."""
        ...

    def head(self) -> Head: ...

    def prior_charges(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], PriorCharge]:
        """The stored charges for these (subscription_id, event_id) keys; absent keys omitted."""
        ...

    def position_at(self, recorded_at_us: int) -> int:
        """The last position recorded at or before the given instant (0 if none)."""
        ...

    def close(self) -> None: ...


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_append_arguments(events: Sequence[LogEvent], recorded_at_us: int) -> None:
    """What every store refuses before touching its database (`ValueError`)."""
    if len(events) > MAX_APPEND_EVENTS:
        raise ValueError(f"{len(events)} events in one append; at most {MAX_APPEND_EVENTS}")
    if not INT64_MIN <= recorded_at_us <= INT64_MAX:
        raise ValueError(f"recorded_at_us {recorded_at_us} does not fit in 64 bits")


def check_head(head: Head, recorded_at_us: int, expected_position: int | None) -> None:
    """What every store refuses once it holds the append lock and has read the head."""
    if expected_position is not None and head.position != expected_position:
        raise ConcurrentAppend(expected_position, head.position)
    if head.position and recorded_at_us < head.recorded_at_us:
        raise ClockWentBackwards(
            f"recorded_at_us {recorded_at_us} is earlier than the head's "
            f"{head.recorded_at_us} (position {head.position})"
        )


def charges_in(events: Sequence[LogEvent]) -> list[tuple[int, UsageKey, str]]:
    """(index in the batch, key, payload digest) of each charge; a key twice is refused."""
    charges: list[tuple[int, UsageKey, str]] = []
    seen: set[UsageKey] = set()
    for index, event in enumerate(events):
        if isinstance(event, UsageCharged):
            key = (event.subscription_id, event.event_id)
            if key in seen:
                raise DuplicateUsageKey(f"usage key {key} appears twice in one append")
            seen.add(key)
            charges.append((index, key, event.payload_digest))
    return charges


def chained(head: Head, recorded_at_us: int, encoded: list[bytes]) -> list[StoredRecord]:
    """The records of `encoded` events appended after `head` at one instant, each chained to
    the one before it."""
    records: list[StoredRecord] = []
    prev_hash = head.hash
    for position, data in enumerate(encoded, start=head.position + 1):
        digest = record_hash(prev_hash, position, recorded_at_us, data)
        records.append(StoredRecord(position, recorded_at_us, data, prev_hash, digest))
        prev_hash = digest
    return records


def charge_on_record(store: EventStore, position: int) -> ChargeOnRecord | None:
    """The charge recorded at `position`, with its recorded time; None when that record is not
    a charge."""
    records = list(store.read(after=position - 1, until=position))
    if not records:
        return None
    event = records[0].event()
    if not isinstance(event, UsageCharged):
        return None
    return ChargeOnRecord(event, records[0].recorded_at)


def find_charge(store: EventStore, subscription_id: str, event_id: str) -> ChargeOnRecord | None:
    """The charge of this usage key as the log holds it, found through the idempotency index."""
    prior = store.prior_charges([(subscription_id, event_id)]).get((subscription_id, event_id))
    return None if prior is None else charge_on_record(store, prior.position)
