"""The usage stream's consumer group as Redis keeps it: creating the group, its lag, taking
over entries left pending, how often an entry was delivered, and trimming what the group is
done with (with the dead-letter index fields of the entries trimmed)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Final

from redis.exceptions import ResponseError

from services.client import as_text
from services.ingest.dead_letters import dead_letter_index
from services.ingest.processor import StreamEntry, entry_id_key

CONSUMER_GROUP: Final = "ledger"
INDEX_SCAN_FIELDS: Final = 1_000
"""Dead-letter index fields read per HSCAN, and deleted per HDEL, when trimming."""
FIRST_ID: Final = "0-0"


async def ensure_group(client: Any, stream: str, group: str = CONSUMER_GROUP) -> bool:
    """`XGROUP CREATE <stream> <group> 0 MKSTREAM`; False when the group already exists.

    Created at `0`, the group delivers the whole backlog. FastStream would create it at `$`
    (missing what was published before), and reading with last_id `0` instead would re-read
    the consumer's pending list forever; so the group is made here, before the subscriber
    starts, and the subscriber reads with `>`.
    """
    try:
        await client.xgroup_create(name=stream, groupname=group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


async def group_info(client: Any, stream: str, group: str) -> dict[str, Any] | None:
    """XINFO GROUPS' entry of `group`; None when the stream has no such group."""
    for info in await client.xinfo_groups(stream):
        if info["name"] in (group, group.encode()):  # str keys; values may be bytes
            return dict(info)
    return None


async def group_lag(client: Any, stream: str, group: str) -> int:
    """Entries of the stream the group has not finished: pending (read, not acknowledged)
    plus, on Redis 7, those not yet read (XINFO GROUPS `lag`; absent on Redis 6.2). With no
    group, the stream's length: a group created again at 0 reads every entry."""
    info = await group_info(client, stream, group)
    if info is None:
        return int(await client.xlen(stream))
    return int(info.get("lag") or 0) + int(info["pending"])


async def pending_pages(
    client: Any, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int
) -> AsyncIterator[list[StreamEntry]]:
    """Take over, page by page (XAUTOCLAIM, at most `count` a page; a page may be empty), every
    entry pending longer than `min_idle_ms`; each page is this consumer's to process and
    acknowledge. Stop iterating to claim no more."""
    start_id: bytes | str = FIRST_ID
    while True:
        reply = await client.xautoclaim(
            name=stream,
            groupname=group,
            consumername=consumer,
            min_idle_time=min_idle_ms,
            start_id=start_id,
            count=count,
        )
        next_id, claimed = reply[0], reply[1]
        # Redis < 7 reports entries deleted from the stream as (None, None).
        entries = [
            (entry_id.decode(), fields or {})
            for entry_id, fields in claimed
            if entry_id is not None
        ]
        yield entries
        if next_id in (FIRST_ID.encode(), FIRST_ID):
            return
        start_id = next_id


async def deliveries(client: Any, stream: str, group: str, entry_id: str) -> int:
    """How many times the pending entry `entry_id` was delivered (0 when it is not pending)."""
    pending = await client.xpending_range(
        name=stream, groupname=group, min=entry_id, max=entry_id, count=1
    )
    return int(pending[0]["times_delivered"]) if pending else 0


async def trim(client: Any, stream: str, group: str, retention_ms: int) -> tuple[int, int]:
    """Delete the entries the group is done with (read and acknowledged: charged or
    dead-lettered) whose ids are older than `retention_ms`, then forget the dead-letter index
    fields of source entries no longer in the stream. Returns (entries deleted, index fields
    forgotten).

    Nothing the group has not read, nor anything pending, is ever deleted: the bound is the
    lower of the last delivered id and the oldest pending id, read in that order (an entry
    read in between is pending by the second read, so the bound can only be lower).
    """
    info = await group_info(client, stream, group)
    if info is None:
        return 0, 0
    bound = entry_id_key(as_text(info["last-delivered-id"]))
    summary = await client.xpending(stream, group)
    if summary["pending"]:
        bound = min(bound, entry_id_key(as_text(summary["min"])))
    cutoff = (time.time_ns() // 1_000_000 - retention_ms, 0)
    keep_from = min(bound, cutoff)
    if keep_from <= (0, 0):
        return 0, 0
    minid = f"{keep_from[0]}-{keep_from[1]}"
    trimmed = int(await client.xtrim(stream, minid=minid, approximate=False))
    if not trimmed:
        return 0, 0
    return trimmed, await _forget_dead_letters_before(client, stream, keep_from)


async def _forget_dead_letters_before(client: Any, stream: str, keep_from: tuple[int, int]) -> int:
    """Drop the index fields of source ids below `keep_from`: those entries are gone from the
    stream, so they can never be read, nor dead-lettered, again. The letters stay."""
    index = dead_letter_index(stream)
    stale = [
        field
        async for field, _ in client.hscan_iter(index, count=INDEX_SCAN_FIELDS)
        if entry_id_key(as_text(field)) < keep_from
    ]
    for first in range(0, len(stale), INDEX_SCAN_FIELDS):
        await client.hdel(index, *stale[first : first + INDEX_SCAN_FIELDS])
    return len(stale)
