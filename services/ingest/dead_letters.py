"""Dead letters: the usage entries that could not be charged, each kept with its original bytes
and a stable reason on `<stream>.dead`, at most once per source entry.

A letter's fields on the dead-letter stream are `reason`, `detail`, `data` (the original bytes
of the payload field, envelope included; for `missing_data`, a JSON object of the entry's
fields), `source_id` (the entry id) and `stream` (the source stream). The ledger's rejections
add their own reasons to the ones named here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Protocol

import msgspec
import redis
import structlog

from services.client import redis_client

log = structlog.get_logger(__name__)

DEAD_LETTER_SUFFIX: Final = ".dead"
DEAD_LETTER_INDEX_SUFFIX: Final = ".index"
"""Hash of source entry id → dead-letter entry id, beside the dead-letter stream (see
`dead_letter_index`); makes dead-lettering idempotent."""

INVALID_JSON: Final = "invalid_json"
INVALID_EVENT: Final = "invalid_event"
MISSING_DATA: Final = "missing_data"
WRONG_PARTITION: Final = "wrong_partition"
"""The event's subscription hashes to another partition than the stream it arrived on."""
REJECTED: Final = "rejected"
"""Fallback reason for a ledger rejection that carries none."""
DELIVERY_LIMIT: Final = "delivery_limit"
"""An entry that failed on its own `max_deliveries` times (a payload that trips a bug)."""

_FIELDS_ENCODER: Final = msgspec.json.Encoder()


class DeadLetter(msgspec.Struct, frozen=True):
    """An entry that could not be charged, with the original bytes and a stable reason."""

    source_id: str
    reason: str
    detail: str
    data: bytes


class DeadLetterSink(Protocol):
    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Persist every letter (idempotently per `source_id`) or raise."""
        ...


def fields_as_json(fields: Mapping[bytes, bytes]) -> bytes:
    """An entry without a payload field, kept as a JSON object of its fields."""
    return _FIELDS_ENCODER.encode(
        {
            key.decode(errors="backslashreplace"): value.decode(errors="backslashreplace")
            for key, value in fields.items()
        }
    )


_DEAD_LETTER_SCRIPT: Final = """
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  return {existing, 0}
end
local id = redis.call('XADD', KEYS[1], '*',
  'reason', ARGV[2], 'detail', ARGV[3], 'data', ARGV[4], 'source_id', ARGV[1],
  'stream', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], id)
return {id, 1}
"""
"""XADD one dead letter unless this source entry already has one (atomic on the server)."""


def dead_letter_stream(stream: str) -> str:
    return f"{stream}{DEAD_LETTER_SUFFIX}"


def dead_letter_index(stream: str) -> str:
    """The index key of `stream`'s dead letters, in the same Redis Cluster slot as the
    dead-letter stream (the script writing a letter touches both): a name that carries a hash
    tag keeps it; otherwise the whole dead-letter stream name becomes the tag, which hashes to
    the slot of that name itself (`{ledger.usage.dead}.index` beside `ledger.usage.dead`).

    Redis's rule: the tag is what lies between the first `{` and the first `}` after it, if
    anything does. (An untagged stream name containing `}` cannot be given a same-slot index
    this way; such names are not supported on a cluster.)"""
    dead = dead_letter_stream(stream)
    opening = dead.find("{")
    closing = dead.find("}", opening + 1) if opening != -1 else -1
    tagged = closing > opening + 1
    return f"{dead if tagged else '{' + dead + '}'}{DEAD_LETTER_INDEX_SUFFIX}"


class RedisDeadLetterSink:
    """Writes dead letters to `<stream>.dead`, at most one per source entry id.

    The index hash (`dead_letter_index`) remembers which source ids were dead-lettered (one
    field per letter); `IngestService.trim_once` drops the fields of source entries it deleted.
    On a Redis Cluster, where a pipeline may not run scripts, each letter is one round trip.
    """

    def __init__(
        self, client: redis.Redis | redis.cluster.RedisCluster, source_stream: str
    ) -> None:
        self._client = client
        self.source_stream = source_stream
        self.stream = dead_letter_stream(source_stream)
        self.index = dead_letter_index(source_stream)
        self._script = client.register_script(_DEAD_LETTER_SCRIPT)
        self._pipelined = not isinstance(client, redis.cluster.RedisCluster)

    @classmethod
    def from_url(
        cls, redis_url: str, source_stream: str, *, cluster: bool = False
    ) -> RedisDeadLetterSink:
        return cls(redis_client(redis_url, cluster=cluster), source_stream)

    def write(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        keys = [self.stream, self.index]

        def args(letter: DeadLetter) -> list[str | bytes]:
            return [letter.source_id, letter.reason, letter.detail, letter.data, self.source_stream]

        if self._pipelined:
            pipe = self._client.pipeline(transaction=False)
            for letter in letters:
                self._script(keys=keys, args=args(letter), client=pipe)
            replies = pipe.execute()
        else:
            replies = [self._script(keys=keys, args=args(letter)) for letter in letters]
        for letter, (dead_id, written) in zip(letters, replies, strict=True):
            if not written:
                log.info(
                    "ingest.dead_letter_exists",
                    stream=self.source_stream,
                    source_id=letter.source_id,
                    dead_letter_id=dead_id.decode(),
                )

    def close(self) -> None:
        self._client.close()
