"""Keeps the notification tables in step with the log: folds new records into the notifications
projection (projections/notifications.py) and stores what they fire with the checkpoint.

At start the projection's state (balances, thresholds crossed, warnings due) is folded again
from position 0 up to the checkpoint without storing anything, then derivation goes on from the
checkpoint. Deriving from position 0 again (`rebuild`) stores nothing new: ids are derived from
the log and a stored id is never stored twice.
"""

from __future__ import annotations

from typing import Final

import structlog

from ledger.clock import Clock
from ledger.log import EventStore
from projections.notification_store import CheckpointMoved, SqlNotificationStore
from projections.notifications import NotificationDeriver
from schemas.notifications import Notification
from services.metrics import METRICS, LedgerMetrics

BATCH_EVENTS: Final = 20_000
"""Most records folded and committed in one transaction."""
REPLAY_BATCH_EVENTS: Final = 100_000

log = structlog.get_logger("ledger.notifier")


class Notifier:
    """The notifications projection over one log and one notification store."""

    def __init__(
        self,
        events: EventStore,
        store: SqlNotificationStore,
        clock: Clock,
        metrics: LedgerMetrics = METRICS,
    ) -> None:
        self._events = events
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self.deriver = NotificationDeriver()
        self._load()

    @property
    def position(self) -> int:
        return self.deriver.position

    def _load(self) -> None:
        """Fold the log up to the stored checkpoint, storing nothing."""
        self.deriver = NotificationDeriver()
        checkpoint = self._store.checkpoint()
        while self.deriver.position < checkpoint:
            until = min(self.deriver.position + REPLAY_BATCH_EVENTS, checkpoint)
            self.deriver.fold(self._events.read(after=self.deriver.position, until=until))

    def rebuild(self) -> int:
        """Derive everything again from position 0; returns how many notifications were new."""
        self._store.reset()
        self._load()
        new = 0
        while (step := self.step()) is not None and step[0]:
            new += step[1]
        return new

    def step(self, batch_events: int = BATCH_EVENTS) -> tuple[int, int] | None:
        """Fold and store the next records (at most `batch_events`), or, caught up, the expiry
        warnings now due: (records folded, notifications new); None when another notifier
        moved the checkpoint (the state is then loaded again from the store)."""
        after = self.deriver.position
        head = self._events.head().position
        if head > after:
            until = min(after + batch_events, head)
            fired = self.deriver.fold(self._events.read(after=after, until=until))
        else:
            if self._store.checkpoint() != after:  # `ledger notifications rebuild`
                self._load()
                return None
            until = after
            fired = self.deriver.due(self._clock.now_us())
            if not fired:
                return 0, 0
        try:
            new = self._store.save(after, until, fired)
        except CheckpointMoved:
            log.warning("notifier.checkpoint_moved", position=after)
            self._load()
            return None
        self._count(fired)
        return until - after, new

    def _count(self, fired: list[Notification]) -> None:
        for notification in fired:
            self._metrics.notifications.labels(type=notification.type).inc()
