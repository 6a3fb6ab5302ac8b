"""Hash-chain verification over stored records, whatever store they came from.

It proves the log is internally consistent; a log cut short at its end still verifies, so an
auditor also compares the head against a digest published earlier.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from ledger.log import GENESIS_HASH, StoredRecord, record_hash
from ledger.records import decode_event


def link_problem(
    record: StoredRecord, expected_position: int, prev_hash: bytes, prev_recorded_at_us: int | None
) -> str | None:
    """Why this record does not link onto the chain so far, or None when it does."""
    if record.position != expected_position:
        return f"expected position {expected_position}, found {record.position}"
    if record.prev_hash != prev_hash:
        return "prev_hash is not the previous record's hash"
    if record.hash != record_hash(prev_hash, record.position, record.recorded_at_us, record.data):
        return "hash does not match the record's contents"
    if prev_recorded_at_us is not None and record.recorded_at_us < prev_recorded_at_us:
        return "recorded time goes backwards"
    return None


def verify_chain(records: Iterable[StoredRecord]) -> int | None:
    """The first position at which the chain breaks, or None when every record holds.

    Records must come in position order from position 1. A record breaks the chain when its
    position is not the next one (a missing record breaks at the position that is missing),
    its `prev_hash` is not the previous record's hash, its hash is not the hash of its own
    contents, its recorded time is earlier than the previous record's, or its data is not a
    log event.
    """
    expected_position, prev_hash, prev_recorded_at_us = 1, GENESIS_HASH, None
    for record in records:
        if link_problem(record, expected_position, prev_hash, prev_recorded_at_us) is not None:
            return min(record.position, expected_position)
        try:
            decode_event(record.data)
        except msgspec.DecodeError:
            return record.position
        expected_position += 1
        prev_hash, prev_recorded_at_us = record.hash, record.recorded_at_us
    return None
