"""Partitions of the usage stream: the stable hash gateways reproduce, the stream keys and
their cluster slots, the publisher's routing, the `wrong_partition` dead letter, fair shares."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from ledger.application import Ledger
from ledger.clock import ManualClock
from ledger.leases import fair_share
from ledger.log import us_from_datetime
from ledger.partitions import PartitionError, partition_of, partition_stream
from ledger.rate_card import load_rate_card
from ledger.stores.sqlite import SqliteEventStore
from schemas.commands import AddSeat, OpenSubscription
from schemas.usage import UsageEvent
from services.client import UsagePublisher, encode_usage
from services.config import ConfigError, Settings
from services.ingest.dead_letters import (
    WRONG_PARTITION,
    DeadLetter,
    dead_letter_index,
    dead_letter_stream,
)
from services.ingest.processor import IngestProcessor

T0 = datetime(2026, 5, 1, tzinfo=UTC)

README_EXAMPLES_N4 = {"team-1": 0, "team-2": 2, "team-4": 3, "globex": 3, "acme": 0}
"""The table of docs/operations.md's "Partitions": gateways in other languages test against it."""


def usage(event_id: str, subscription_id: str, seat_id: str = "seat-1") -> UsageEvent:
    return UsageEvent(
        event_id=event_id,
        subscription_id=subscription_id,
        seat_id=seat_id,
        model="qwen3.6-plus",
        input_tokens=8_349,
        cached_tokens=40_794,
        output_tokens=573,
        occurred_at=T0,
    )


def test_the_partition_of_a_subscription_is_sha256_first_8_bytes_big_endian_modulo_n() -> None:
    assert {s: partition_of(s, 4) for s in README_EXAMPLES_N4} == README_EXAMPLES_N4
    assert partition_of("team-1", 6) == 4
    assert all(partition_of(s, 1) == 0 for s in README_EXAMPLES_N4)


def test_one_partition_keeps_the_plain_stream_name() -> None:
    assert partition_stream("ledger.usage", 0, 1) == "ledger.usage"


def test_a_partitions_stream_and_dead_letter_keys_share_one_cluster_slot() -> None:
    for k in range(4):
        stream = partition_stream("ledger.usage", k, 4)
        assert stream == f"{{ledger.usage.{k}}}"
        keys = [stream, dead_letter_stream(stream), dead_letter_index(stream)]
        assert keys[2] == f"{{ledger.usage.{k}}}.dead.index"
        assert len({key_slot(key.encode()) for key in keys}) == 1


def test_a_partitioned_stream_name_with_braces_is_refused() -> None:
    with pytest.raises(PartitionError):
        partition_stream("ledger.{usage}", 1, 4)
    with pytest.raises(ConfigError):
        Settings.from_env({"LEDGER_PARTITIONS": "4", "LEDGER_USAGE_STREAM": "a{b}"})


def test_partition_count_and_lease_ttl_come_from_the_environment() -> None:
    settings = Settings.from_env({"LEDGER_PARTITIONS": "6", "LEDGER_LEASE_TTL_MS": "1500"})
    assert (settings.partitions, settings.lease_ttl_ms) == (6, 1_500)
    assert Settings.from_env({}).partitions == 1
    for bad in ("0", "-1", "x", "100000"):
        with pytest.raises(ConfigError):
            Settings.from_env({"LEDGER_PARTITIONS": bad})


def test_the_publisher_puts_each_event_on_its_subscriptions_partition(
    redis_sync: redis.Redis, stream_name: str
) -> None:
    events = [usage(f"e-{n}", subscription) for n, subscription in enumerate(README_EXAMPLES_N4)]
    with UsagePublisher("", stream_name, partitions=4, client=redis_sync) as publisher:
        publisher.publish_many(events[1:])
        publisher.publish(events[0])
    for event in events:
        stream = partition_stream(stream_name, README_EXAMPLES_N4[event.subscription_id], 4)
        datas = [fields[b"data"] for _, fields in redis_sync.xrange(stream)]
        assert encode_usage(event) in datas


class ListSink:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def write(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)


def test_an_event_on_another_partitions_stream_is_dead_lettered_not_charged(
    tmp_path: Path,
) -> None:
    store = SqliteEventStore(tmp_path / "ledger.sqlite3")
    ledger = Ledger(store, load_rate_card(None), ManualClock(us_from_datetime(T0)))
    ledger.execute(
        [
            OpenSubscription("team-1"),
            AddSeat("team-1", "seat-1", "standard"),
            OpenSubscription("team-2"),
            AddSeat("team-2", "seat-2", "standard"),
        ]
    )
    sink = ListSink()
    processor = IngestProcessor(ledger, None, sink, partition=0, partitions=4)
    home = encode_usage(usage("home", "team-1"))
    stray = encode_usage(usage("stray", "team-2", "seat-2"))  # partition 2

    result = processor.process([("1-0", {b"data": home}), ("2-0", {b"data": stray})])

    assert result.applied == 1
    assert [(letter.source_id, letter.reason, letter.data) for letter in sink.letters] == [
        ("2-0", WRONG_PARTITION, stray)
    ]
    assert store.prior_charges([("team-2", "stray")]) == {}
    store.close()


@pytest.mark.parametrize("partitions", [1, 4, 6, 7])
@pytest.mark.parametrize("workers", [1, 2, 3, 5, 8])
def test_fair_shares_cover_every_partition_and_differ_by_at_most_one(
    partitions: int, workers: int
) -> None:
    names = [f"worker-{n}" for n in range(workers)]
    shares = [fair_share(partitions, names, name) for name in names]
    assert sum(shares) == partitions
    assert max(shares) - min(shares) <= 1
