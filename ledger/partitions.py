"""Partitions of the usage stream: which partition a subscription's usage belongs to, and the
Redis keys of each partition.

The partition of a subscription is the first 8 bytes of SHA-256 of its id (UTF-8), read as a
big-endian unsigned integer, modulo the partition count: stable across processes, machines
and languages. With one partition the stream keeps its plain name (`ledger.usage`);
with N > 1, partition k's stream is `{<stream>.<k>}`, whose braces make it a Redis Cluster hash
tag: its dead-letter stream `{<stream>.<k>}.dead` and index `{<stream>.<k>}.dead.index` carry
the same tag, so the three keys of a partition live in one cluster slot.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

MAX_PARTITIONS = 1_024
"""Most partitions a usage stream may be split into."""

HASH_PREFIX_BYTES = 8
PARTITION_CACHE_ENTRIES = 65_536
"""Subscriptions whose partition is remembered: the ingest checks one per event, and a few
subscriptions send most of them, so the SHA-256 is computed once per subscription."""


class PartitionError(ValueError):
    """A partition count or stream name that cannot be used."""


def check_partitions(partitions: int) -> int:
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise PartitionError(f"partitions must be in 1..{MAX_PARTITIONS}, not {partitions}")
    return partitions


@lru_cache(maxsize=PARTITION_CACHE_ENTRIES)
def partition_of(subscription_id: str, partitions: int) -> int:
    """The partition (0-based) whose stream carries this subscription's usage."""
    digest = hashlib.sha256(subscription_id.encode()).digest()
    return int.from_bytes(digest[:HASH_PREFIX_BYTES], "big") % partitions


def partition_stream(stream: str, partition: int, partitions: int) -> str:
    """The usage stream of one partition: `stream` itself when there is only one."""
    if partitions == 1:
        return stream
    if not 0 <= partition < partitions:
        raise PartitionError(f"partition {partition} is not in 0..{partitions - 1}")
    if "{" in stream or "}" in stream:
        raise PartitionError(f"a partitioned stream name may not contain braces: {stream!r}")
    return f"{{{stream}.{partition}}}"


def partition_streams(stream: str, partitions: int) -> list[str]:
    return [partition_stream(stream, k, partitions) for k in range(partitions)]
