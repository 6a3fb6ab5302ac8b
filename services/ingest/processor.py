"""The batch processor: a batch of raw usage stream entries becomes ledger appends (the valid
events charged `SLICE_EVENTS` at a time, with the writes someone waits on run in between) plus
dead letters for the rest.

It never acknowledges anything: its caller acknowledges the batch after `process` returns.
Crash safety follows from the order: append, then dead letters, then (the caller's) ack. A
crash before the ack leaves the batch pending, so it is delivered again; the ledger's
idempotency (`event_id`) makes the second delivery charge nothing, and the dead-letter sink
writes at most one letter per source entry.

Entry formats accepted (the payload is looked up in this order):

- `data`: the public contract, `XADD <stream> * data <json>`; the field value is the JSON.
- `__data__`: written by FastStream's own publisher (`broker.publish(obj, stream=...)`). In
  FastStream 0.7.8 the value is `BinaryMessageFormatV1`: the magic `b"\\x89BIN\\r\\n\\x1a\\n"`,
  a 2-byte version (1), 4-byte offsets of the headers and of the body, a 2-byte header count,
  length-prefixed header keys and values (`correlation_id`, `content-type`, custom headers),
  then the body (the JSON). Older FastStream releases wrote a JSON envelope
  `{"data": "...", "headers": {...}}`. Both are unwrapped by the broker's `message_format`
  (FastStream's own parser), and the body is decoded as a usage event.

With partitions, an event whose subscription belongs to another partition is dead-lettered
(`wrong_partition`: charging it here could race its partition's owner), and the append runs
under the partition lease's `Fence`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec
import structlog
from faststream.redis.message import DATA_KEY
from faststream.redis.parser import BinaryMessageFormatV1, MessageFormat

from ledger.leases import Fence
from ledger.partitions import partition_of
from schemas.usage import UsageEvent
from services.ingest.dead_letters import (
    INVALID_EVENT,
    INVALID_JSON,
    MISSING_DATA,
    REJECTED,
    WRONG_PARTITION,
    DeadLetter,
    DeadLetterSink,
    fields_as_json,
)
from services.metrics import LedgerMetrics

log = structlog.get_logger(__name__)

DATA_FIELD: Final = b"data"
"""The payload field of the public contract: `XADD <stream> * data <json>`."""
FASTSTREAM_DATA_FIELD: Final = DATA_KEY.encode()
"""The payload field FastStream's publisher writes (`__data__`)."""

StreamEntry = tuple[str, Mapping[bytes, bytes]]
"""One raw Redis stream entry: its id (`"1700000000000-0"`) and its fields."""

USAGE_DECODER: Final = msgspec.json.Decoder(UsageEvent)


class ChargeOutcome(Protocol):
    """What `Ledger.charge` answers per usage event."""

    @property
    def status(self) -> str: ...  # "applied" | "duplicate" | "rejected"

    @property
    def reason(self) -> str | None: ...

    @property
    def detail(self) -> str | None: ...

    @property
    def charged_ucr(self) -> int: ...


class ChargingLedger(Protocol):
    def charge(self, usages: Sequence[UsageEvent]) -> Sequence[ChargeOutcome]: ...


class FencedLedger(Protocol):
    def charge(
        self, usages: Sequence[UsageEvent], fence: Fence | None = None
    ) -> Sequence[ChargeOutcome]: ...


class Projections(Protocol):
    def catch_up(self) -> int: ...


SLICE_EVENTS: Final = 100
"""Usage events charged per append within a batch: before each slice the writer thread runs
the writes a caller waits on (`between_slices`), so none waits for a whole batch. About 3 ms of
charging at ~30 µs per event. Ten appends per full batch cost some ingest throughput
(docs/benchmarks.md), so a processor with nothing to run between slices does not slice."""


class BatchResult(msgspec.Struct, frozen=True):
    """What one `process` call did; the caller acknowledges `entry_ids` afterwards."""

    entry_ids: tuple[str, ...]
    applied: int
    duplicates: int
    dead_letters: tuple[DeadLetter, ...]
    projected: bool
    """False when the projections failed to catch up (they retry with the next batch)."""


class _Decoded(msgspec.Struct, frozen=True):
    entry_id: str
    original: bytes
    event: UsageEvent


@dataclass
class _Charged:
    """What a batch's appends did: counts, credits, and the dead letters of the refused events."""

    applied: int = 0
    duplicates: int = 0
    credits_ucr: int = 0
    letters: list[DeadLetter] = field(default_factory=list)


class IngestProcessor:
    """Turns a batch of raw stream entries into ledger appends (a slice each) plus dead letters.

    `process` is synchronous and holds `lock` for the ledger and projection work; it raises
    (and nothing is to be acknowledged) when the append, or writing dead letters, fails.
    """

    def __init__(
        self,
        ledger: ChargingLedger,
        projections: Projections | None,
        dead_letter_sink: DeadLetterSink,
        *,
        message_format: type[MessageFormat] = BinaryMessageFormatV1,
        lock: threading.Lock | threading.RLock | None = None,
        metrics: LedgerMetrics | None = None,
        partition: int = 0,
        partitions: int = 1,
        fence: Fence | None = None,
        between_slices: Callable[[], object] | None = None,
        slice_events: int = SLICE_EVENTS,
    ) -> None:
        if slice_events < 1:
            raise ValueError(f"a slice of {slice_events} events")
        if not 0 <= partition < partitions:
            raise ValueError(f"partition {partition} is not in 0..{partitions - 1}")
        if fence is not None and fence.partition != partition:
            raise ValueError(f"a fence of partition {fence.partition} for partition {partition}")
        self.partition = partition
        self.partitions = partitions
        self.fence = fence
        self.metrics = metrics
        self.ledger = ledger
        self.projections = projections
        self.dead_letter_sink = dead_letter_sink
        self.message_format = message_format
        self.lock = lock if lock is not None else threading.Lock()
        self.between_slices = between_slices
        self.slice_events = slice_events

    def payload(self, fields: Mapping[bytes, bytes]) -> tuple[bytes, bytes] | None:
        """(original bytes, usage JSON bytes) of an entry; None when it has no payload field."""
        data = fields.get(DATA_FIELD)
        if data is not None:
            return data, data
        wrapped = fields.get(FASTSTREAM_DATA_FIELD)
        if wrapped is not None:
            body, _headers = self.message_format.parse(wrapped)
            return wrapped, body
        return None

    def decode(self, entry: StreamEntry) -> _Decoded | DeadLetter:
        entry_id, fields = entry
        found = self.payload(fields)
        if found is None:
            names = ", ".join(sorted(k.decode(errors="backslashreplace") for k in fields))
            return DeadLetter(
                entry_id,
                MISSING_DATA,
                f"no 'data' or '{DATA_KEY}' field (fields: {names or 'none'})",
                fields_as_json(fields),
            )
        original, body = found
        try:
            event = USAGE_DECODER.decode(body)
        except msgspec.ValidationError as exc:  # valid JSON, not a valid event
            return DeadLetter(entry_id, INVALID_EVENT, str(exc), original)
        except msgspec.DecodeError as exc:
            return DeadLetter(entry_id, INVALID_JSON, str(exc), original)
        except UnicodeDecodeError as exc:  # a JSON string holding bytes that are not UTF-8
            return DeadLetter(entry_id, INVALID_JSON, f"not UTF-8: {exc}", original)
        return _Decoded(entry_id, original, event)

    def process(self, entries: Sequence[StreamEntry]) -> BatchResult:
        bound = log.bind(
            stream=getattr(self.dead_letter_sink, "source_stream", None),
            first_id=entries[0][0] if entries else None,
            entries=len(entries),
        )
        valid, letters = self._sort(entries)
        projected = True
        with self.lock:
            charged = self._charge(valid)
            letters += charged.letters
            if self.projections is not None:
                projected = self._catch_up(bound)
        if letters:
            letters.sort(key=lambda letter: entry_id_key(letter.source_id))
            self._write_dead_letters(letters, bound)
        if self.metrics is not None:
            self._count(len(entries), charged.applied, charged.credits_ucr, letters)
        bound.debug(
            "ingest.batch",
            applied=charged.applied,
            duplicates=charged.duplicates,
            dead_letters=len(letters),
            projected=projected,
        )
        return BatchResult(
            entry_ids=tuple(entry_id for entry_id, _ in entries),
            applied=charged.applied,
            duplicates=charged.duplicates,
            dead_letters=tuple(letters),
            projected=projected,
        )

    def _sort(self, entries: Sequence[StreamEntry]) -> tuple[list[_Decoded], list[DeadLetter]]:
        """The entries to charge here, and the dead letters of those that cannot be: entries
        that do not decode, and, with partitions, events of another partition's subscriptions."""
        letters: list[DeadLetter] = []
        valid: list[_Decoded] = []
        for entry in entries:
            decoded = self.decode(entry)
            if isinstance(decoded, DeadLetter):
                letters.append(decoded)
            elif (wrong := self._wrong_partition(decoded)) is not None:
                letters.append(wrong)
            else:
                valid.append(decoded)
        return valid, letters

    def _wrong_partition(self, decoded: _Decoded) -> DeadLetter | None:
        if self.partitions == 1:
            return None
        sub = decoded.event.subscription_id
        home = partition_of(sub, self.partitions)
        if home == self.partition:
            return None
        return DeadLetter(
            decoded.entry_id,
            WRONG_PARTITION,
            f"subscription {sub!r} belongs to partition {home} of {self.partitions},"
            f" not {self.partition}",
            decoded.original,
        )

    def _charge(self, valid: Sequence[_Decoded]) -> _Charged:
        """Charge every valid event, one append per slice of `slice_events` (under the fence,
        with one), running `between_slices` before each slice (without it, in one append); the
        refused ones become dead letters with the ledger's reason. A crash between slices leaves
        the batch unacknowledged: its redelivery charges the slices appended already as
        duplicates, that is, nothing."""
        charged = _Charged()
        if self.between_slices is None:  # nothing to run between slices: one append is cheaper
            self._charge_slice(valid, charged)
            return charged
        for start in range(0, len(valid), self.slice_events):
            # Before the first slice too: a write that came while the previous batch ended
            # waits behind this one on the writer's queue, and would otherwise wait a slice more.
            self.between_slices()
            self._charge_slice(valid[start : start + self.slice_events], charged)
        return charged

    def _charge_slice(self, valid: Sequence[_Decoded], charged: _Charged) -> None:
        usages = [item.event for item in valid]
        if self.fence is None:
            outcomes = self.ledger.charge(usages)
        else:
            fenced: FencedLedger = self.ledger  # type: ignore[assignment]
            outcomes = fenced.charge(usages, fence=self.fence)
        if len(outcomes) != len(valid):
            raise RuntimeError(f"ledger answered {len(outcomes)} outcomes for {len(valid)} usages")
        for item, outcome in zip(valid, outcomes, strict=True):
            if outcome.status == "applied":
                charged.applied += 1
                charged.credits_ucr += outcome.charged_ucr
            elif outcome.status == "duplicate":
                charged.duplicates += 1
            else:
                reason, detail = outcome.reason or REJECTED, outcome.detail or ""
                charged.letters.append(DeadLetter(item.entry_id, reason, detail, item.original))

    def _write_dead_letters(self, letters: Sequence[DeadLetter], bound: Any) -> None:
        self.dead_letter_sink.write(letters)
        bound.warning(
            "ingest.dead_letters",
            count=len(letters),
            reasons=dict(Counter(letter.reason for letter in letters)),
            first_source_id=letters[0].source_id,
        )
        for letter in letters:
            bound.debug(
                "ingest.dead_letter",
                source_id=letter.source_id,
                reason=letter.reason,
                detail=letter.detail,
            )

    def _count(
        self, entries: int, applied: int, credits_ucr: int, letters: Sequence[DeadLetter]
    ) -> None:
        metrics = self.metrics
        assert metrics is not None
        metrics.events_ingested.inc(entries)
        metrics.charges.inc(applied)
        metrics.credits_deducted_ucr.inc(credits_ucr)
        for reason, count in Counter(letter.reason for letter in letters).items():
            metrics.dead_lettered.labels(reason=reason).inc(count)

    def _catch_up(self, bound: Any) -> bool:
        """Fold the new records into the read models.

        The log is the source of truth and the append has already committed, so a failure here
        does not fail the batch (redelivering it would charge nothing): it is logged, and the
        next batch catches up again.
        """
        assert self.projections is not None
        try:
            self.projections.catch_up()
        except Exception:
            bound.exception("ingest.projections_failed")
            return False
        return True


def entry_id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence), to order ids as Redis does."""
    millis, _, seq = entry_id.partition("-")
    try:
        return int(millis), int(seq or 0)
    except ValueError:
        return (0, 0)
