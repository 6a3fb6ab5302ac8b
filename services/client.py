"""A small typed publisher of usage events for Python gateways (the v1 usage stream contract).

It writes exactly what any gateway writes: `XADD <stream> * data <json>`, with the event
encoded by msgspec. Synchronous (redis-py) and free of FastStream, so a gateway depends on
`redis` and `msgspec` alone. With `partitions` > 1 (LEDGER_PARTITIONS) each event goes to its
subscription's partition stream (`ledger.partitions`: SHA-256 of the subscription id, first 8
bytes big-endian, modulo the count; stream `{<stream>.<k>}`).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Final

import msgspec
import redis
import redis.cluster

from ledger.partitions import check_partitions, partition_of, partition_streams
from schemas.usage import UsageEvent

DEFAULT_STREAM: Final = "ledger.usage"
DATA_FIELD: Final = "data"
PUBLISH_CHUNK_EVENTS: Final = 1_000
"""Most XADDs sent in one pipelined round trip by `publish_many`."""

_ENCODER: Final = msgspec.json.Encoder()

AnyRedis = redis.Redis | redis.cluster.RedisCluster
"""A client of one Redis, or of a Redis Cluster."""


def encode_usage(event: UsageEvent) -> bytes:
    """The JSON bytes a gateway puts in the `data` field."""
    return _ENCODER.encode(event)


class UsagePublisher:
    """Publishes usage events onto the usage stream; returns the stream entry ids."""

    def __init__(
        self,
        redis_url: str,
        stream: str = DEFAULT_STREAM,
        *,
        partitions: int = 1,
        client: AnyRedis | None = None,
        cluster: bool = False,
    ) -> None:
        """With `cluster`, `redis_url` names one node of a Redis Cluster (the rest are found
        from it) and each XADD goes to the node holding the stream's slot."""
        self.stream = stream
        self.partitions = check_partitions(partitions)
        self._streams = partition_streams(stream, partitions)
        self._own_client = client is None
        self._client = redis_client(redis_url, cluster=cluster) if client is None else client

    def stream_of(self, event: UsageEvent) -> str:
        """The stream this event is published on: its subscription's partition."""
        if self.partitions == 1:
            return self.stream
        return self._streams[partition_of(event.subscription_id, self.partitions)]

    def publish(self, event: UsageEvent) -> str:
        entry_id = self._client.xadd(self.stream_of(event), {DATA_FIELD: encode_usage(event)})
        return as_text(entry_id)

    def publish_many(self, events: Iterable[UsageEvent]) -> list[str]:
        """Pipelined XADDs, in order, `PUBLISH_CHUNK_EVENTS` per round trip."""
        return self._pipelined((self.stream_of(event), encode_usage(event)) for event in events)

    def publish_raw_many(self, payloads: Iterable[bytes]) -> list[str]:
        """Pipelined XADDs of `data` fields that need not be events (what a broken gateway
        sends: the ledger dead-letters them), on the first partition's stream."""
        return self._pipelined((self._streams[0], payload) for payload in payloads)

    def _pipelined(self, entries: Iterable[tuple[str, bytes]]) -> list[str]:
        ids: list[str] = []
        pipe = self._client.pipeline(transaction=False)
        pending = 0
        for stream, payload in entries:
            pipe.xadd(stream, {DATA_FIELD: payload})
            pending += 1
            if pending == PUBLISH_CHUNK_EVENTS:
                ids.extend(as_text(entry_id) for entry_id in pipe.execute())
                pending = 0
        if pending:
            ids.extend(as_text(entry_id) for entry_id in pipe.execute())
        return ids

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> UsagePublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def redis_client(redis_url: str, *, cluster: bool = False) -> AnyRedis:
    """A client of the Redis at `redis_url`; with `cluster`, of the Redis Cluster that node is
    part of (the other nodes are found from it)."""
    if cluster:
        return redis.cluster.RedisCluster.from_url(redis_url)
    return redis.Redis.from_url(redis_url)


def as_text(value: bytes | str) -> str:
    """A Redis reply as text: clients without `decode_responses` answer bytes."""
    return value.decode() if isinstance(value, bytes) else value
