"""Publishes stored notifications on the Redis stream (`XADD <stream> MAXLEN ~ N * data
<json>`), in sequence order, then moves the `published` checkpoint: at least once (a crash
between the two publishes the same ids again; a reader dedupes on `notification_id`)."""

from __future__ import annotations

from typing import Any, Final

from projections.notification_store import PUBLISHED, SqlNotificationStore
from services.client import redis_client

PUBLISH_BATCH: Final = 1_000
"""Most entries added in one pipeline."""


class StreamPublisher:
    def __init__(self, redis_url: str, stream: str, maxlen: int, *, cluster: bool = False) -> None:
        self._redis: Any = redis_client(redis_url, cluster=cluster)
        self.stream = stream
        self._maxlen = maxlen

    def publish(self, store: SqlNotificationStore) -> int:
        """Add the next unpublished notifications; how many."""
        rows = store.unpublished(PUBLISH_BATCH)
        if not rows:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for _seq, body in rows:
            pipe.xadd(self.stream, {"data": body}, maxlen=self._maxlen, approximate=True)
        pipe.execute()
        store.mark_published(rows[-1][0])
        return len(rows)

    def published(self, store: SqlNotificationStore) -> int:
        return store.checkpoint(PUBLISHED)

    def close(self) -> None:
        self._redis.close()
