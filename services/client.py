"""A small typed publisher of usage events for Python gateways (the v1 usage stream contract),
and `HoldClient`, the gateway's holds over the HTTP API.

It writes exactly what any gateway writes: `XADD <stream> * data <json>`, with the event
encoded by msgspec. Synchronous (redis-py) and free of FastStream, so a gateway depends on
`redis` and `msgspec` alone. With `partitions` > 1 (LEDGER_PARTITIONS) each event goes to its
subscription's partition stream (`ledger.partitions`: SHA-256 of the subscription id, first 8
bytes big-endian, modulo the count; stream `{<stream>.<k>}`).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final

import httpx
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


# -- holds: credits reserved before serving (HTTP) ------------------------------------------

HTTP_TIMEOUT_S: Final = 5.0


class HeldPart(msgspec.Struct, frozen=True):
    source: str
    """`seat`, `pack` or `grant`."""
    id: str
    credits: str


class Hold(msgspec.Struct, frozen=True):
    """A hold as the ledger answers it (amounts are decimal strings, as on the wire)."""

    hold_id: str
    seat_id: str
    status: str
    """`active`, `settled`, `released` or `expired`."""
    credits: str
    allocation: list[HeldPart]
    expires_at: str
    settled_by: str | None = None


class LedgerRefused(Exception):
    """The ledger answered a problem (RFC 9457): its HTTP status, type slug and detail."""

    def __init__(self, status: int, slug: str, detail: str, available: str | None) -> None:
        super().__init__(f"{status} {slug}: {detail}")
        self.status = status
        self.slug = slug
        self.detail = detail
        self.available = available
        """With `insufficient-credits`: what the seat could have held."""


_HOLD_DECODER: Final = msgspec.json.Decoder(Hold)


class HoldClient:
    """A gateway's holds over the HTTP API, with a `gateway` token of the subscription.

    Hold an estimate before serving a request, serve it, then publish its usage with the same
    `hold_id` (`UsageEvent(..., hold_id=...)`): the charge settles the hold in the same append.
    Release the hold when the request is not served; an unsettled hold expires after its TTL.
    A retry of `hold` with the same id and amount answers the same hold."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = HTTP_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
        )

    def hold(
        self, subscription_id: str, seat_id: str, hold_id: str, credits: str, ttl_s: int = 600
    ) -> Hold:
        """Hold `credits` (a decimal string, "2.50") for the seat; `LedgerRefused` with
        `slug == "insufficient-credits"` and `available` when the seat cannot cover it."""
        body = {"hold_id": hold_id, "credits": credits, "ttl_s": ttl_s}
        return self._call("POST", _holds_path(subscription_id, seat_id), body)

    def extend(self, subscription_id: str, seat_id: str, hold_id: str, ttl_s: int) -> Hold:
        """The hold then expires `ttl_s` seconds from now."""
        path = f"{_holds_path(subscription_id, seat_id)}/{hold_id}/extend"
        return self._call("POST", path, {"ttl_s": ttl_s})

    def release(self, subscription_id: str, seat_id: str, hold_id: str) -> Hold:
        """Free what the hold holds (the request was not served); an ended hold stays as is."""
        return self._call("DELETE", f"{_holds_path(subscription_id, seat_id)}/{hold_id}")

    def get(self, subscription_id: str, seat_id: str, hold_id: str) -> Hold:
        return self._call("GET", f"{_holds_path(subscription_id, seat_id)}/{hold_id}")

    def _call(self, method: str, path: str, body: object = None) -> Hold:
        reply = self._http.request(method, path, json=body)
        if reply.status_code >= 400:
            problem = _problem(reply)
            slug = str(problem.get("type", "")).rsplit("/", 1)[-1] or "error"
            detail = str(problem.get("detail", reply.text))
            raise LedgerRefused(reply.status_code, slug, detail, problem.get("available"))
        return _HOLD_DECODER.decode(reply.content)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HoldClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _holds_path(subscription_id: str, seat_id: str) -> str:
    return f"/v1/subscriptions/{subscription_id}/seats/{seat_id}/holds"


def _problem(reply: httpx.Response) -> dict[str, Any]:
    try:
        problem = reply.json()
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}
