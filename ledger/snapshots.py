"""Snapshots: the writer's state (and, beside it, the balances) saved at a log position, so a
start folds only what follows instead of the whole log.

A snapshot is derived data: deleting every one changes nothing but time. Each is bound to its
position and to the hash of the record there, and carries a checksum over all of it and the
code's snapshot format. One that is damaged (a flipped byte, cut short), of another format, or
not on the chain (its head hash is not the log's at its position) is logged and passed over
for an older one, or for a fold from the start: never a wrong state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import msgspec
import structlog

from ledger.log import GENESIS_HASH, StoredRecord
from ledger.state import LedgerState

SNAPSHOT_FORMAT: Final = 1
"""The layout of the state and balances blobs this code writes and reads. Bump it whenever
`LedgerState`, the balances' rows or their encoding change: older snapshots are then skipped."""

log = structlog.get_logger("ledger.snapshots")


class SnapshotInfo(msgspec.Struct, frozen=True):
    """A stored snapshot, without its blobs."""

    position: int
    head_hash: bytes
    format: int
    checksum: bytes
    created_at_us: int
    size_bytes: int


class StoredSnapshot(msgspec.Struct, frozen=True):
    """A stored snapshot with its blobs, as read back (not yet checked)."""

    info: SnapshotInfo
    state: bytes
    balances: bytes


class SnapshotStore(Protocol):
    """Where snapshots live: beside the SQLite log, or a table in the PostgreSQL schema."""

    def save(self, snapshot: StoredSnapshot) -> None:
        """Store it, replacing one at the same position."""
        ...

    def infos(self) -> list[SnapshotInfo]:
        """Every stored snapshot, newest position first."""
        ...

    def load(self, position: int) -> StoredSnapshot | None: ...

    def delete(self, position: int) -> None: ...

    def close(self) -> None: ...


def checksum(fmt: int, position: int, head_hash: bytes, state: bytes, balances: bytes) -> bytes:
    header = fmt.to_bytes(4, "big") + position.to_bytes(8, "big") + head_hash
    return hashlib.sha256(header + len(state).to_bytes(8, "big") + state + balances).digest()


def sealed(
    position: int, head_hash: bytes, state: bytes, balances: bytes, created_at_us: int
) -> StoredSnapshot:
    """A snapshot of this code's format, its checksum computed."""
    digest = checksum(SNAPSHOT_FORMAT, position, head_hash, state, balances)
    size = len(state) + len(balances)
    info = SnapshotInfo(position, head_hash, SNAPSHOT_FORMAT, digest, created_at_us, size)
    return StoredSnapshot(info, state, balances)


# -- the writer's state ------------------------------------------------------------------------


def _encode_hook(value: Any) -> Any:
    if isinstance(value, deque):
        return list(value)
    raise NotImplementedError(f"cannot snapshot a {type(value).__name__}")


def _decode_hook(kind: Any, value: Any) -> Any:
    if kind is deque or getattr(kind, "__origin__", None) is deque:
        return deque((at, hold_id) for at, hold_id in value)
    raise NotImplementedError(f"cannot read a {kind} from a snapshot")


_STATE_ENCODER: Final = msgspec.msgpack.Encoder(enc_hook=_encode_hook)
_STATE_DECODER: Final = msgspec.msgpack.Decoder(LedgerState, dec_hook=_decode_hook)


LAYOUT_BYTES: Final = 8


class LayoutChanged(msgspec.DecodeError):
    """A snapshot blob written by code whose types had other fields: it is not read (a field
    added with a default would otherwise read as that default, not as what the log says)."""


def layout_of(*types_: type) -> bytes:
    """A fingerprint of the fields (names and declared types, nested types included) of
    dataclasses and msgspec structs: it changes whenever one of them gains, loses or retypes
    a field, so a snapshot of an older shape is never read as this one."""
    described: list[str] = []
    pending, seen = list(types_), set()
    while pending:
        kind = pending.pop(0)
        if kind in seen:
            continue
        seen.add(kind)
        if dataclasses.is_dataclass(kind):
            fields = [(f.name, str(f.type)) for f in dataclasses.fields(kind)]
            hints = typing.get_type_hints(kind)
        else:
            fields = [(f.name, str(f.type)) for f in msgspec.structs.fields(kind)]
            hints = {f.name: f.type for f in msgspec.structs.fields(kind)}
        described.append(f"{kind.__name__}{fields}")
        for hint in hints.values():
            pending += [t for t in _types_in(hint) if t not in seen]
    return hashlib.sha256("\n".join(described).encode()).digest()[:LAYOUT_BYTES]


def _types_in(hint: Any) -> list[type]:
    found = [hint] if isinstance(hint, type) and _has_fields(hint) else []
    for arg in typing.get_args(hint):
        found += _types_in(arg)
    return found


def _has_fields(kind: type) -> bool:
    return dataclasses.is_dataclass(kind) or issubclass(kind, msgspec.Struct)


def with_layout(layout: bytes, data: bytes) -> bytes:
    return layout + data


def without_layout(layout: bytes, blob: bytes) -> memoryview:
    """The data after the layout fingerprint; `LayoutChanged` when it is another layout's."""
    if blob[:LAYOUT_BYTES] != layout:
        raise LayoutChanged("it was written by code whose state had other fields")
    return memoryview(blob)[LAYOUT_BYTES:]


STATE_LAYOUT: Final = layout_of(LedgerState)


def encode_state(state: LedgerState) -> bytes:
    return with_layout(STATE_LAYOUT, _STATE_ENCODER.encode(state))


def decode_state(data: bytes) -> LedgerState:
    return _STATE_DECODER.decode(without_layout(STATE_LAYOUT, data))


# -- choosing one ------------------------------------------------------------------------------


class HashAt(Protocol):
    def read(self, after: int = 0, until: int | None = None) -> Iterator[StoredRecord]: ...


T = TypeVar("T")

DECODE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, NotImplementedError)


@dataclass(frozen=True)
class ValidSnapshot(Generic[T]):
    """A snapshot that passed every check, what it decoded to, and the recorded time of the
    record at its position."""

    position: int
    recorded_at_us: int
    value: T


def problem_with(snapshot: StoredSnapshot, events: HashAt) -> tuple[str | None, int]:
    """Why a snapshot must not be used (None when it may), and the recorded time of the record
    at its position."""
    info = snapshot.info
    if info.format != SNAPSHOT_FORMAT:
        newer = "newer" if info.format > SNAPSHOT_FORMAT else "older"
        return f"format {info.format} is {newer} than this code's {SNAPSHOT_FORMAT}", 0
    expected = checksum(
        info.format, info.position, info.head_hash, snapshot.state, snapshot.balances
    )
    if expected != info.checksum:
        return "its checksum does not match its contents", 0
    if info.position == 0:
        return (None if info.head_hash == GENESIS_HASH else "not on the log's chain"), 0
    records = list(events.read(after=info.position - 1, until=info.position))
    if not records:
        return f"the log has no record at position {info.position}", 0
    if records[0].hash != info.head_hash:
        return "its head hash is not the log's at its position (not on the chain)", 0
    return None, records[0].recorded_at_us


def newest_valid(
    snapshots: SnapshotStore,
    events: HashAt,
    decode: Callable[[StoredSnapshot], T],
    at_most: int | None = None,
) -> ValidSnapshot[T] | None:
    """The newest snapshot at or before `at_most` (any when None) that passes every check and
    decodes; each one passed over is logged with why."""
    for info in snapshots.infos():
        if at_most is not None and info.position > at_most:
            continue
        snapshot = snapshots.load(info.position)
        if snapshot is None:
            continue
        problem, recorded_at_us = problem_with(snapshot, events)
        if problem is None:
            try:
                return ValidSnapshot(info.position, recorded_at_us, decode(snapshot))
            except DECODE_ERRORS as error:
                problem = f"it does not decode: {error}"
        log.warning("snapshot.skipped", position=info.position, reason=problem)
    return None
