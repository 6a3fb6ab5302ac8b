"""The notifier process of `ledger serve`: derives notifications from the log, publishes them on
the Redis stream and delivers them to webhooks (a thread of its own), on a core of its own.

Nothing here is on the path to a charge or a pre-check: a notifier that lags, dies or restarts
delays notifications, never what is charged. One notifier runs per deployment: it holds the
notification store's writer lock (SQLite: a file lock; PostgreSQL: a session advisory lock),
so a second one (another API host's) waits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Final

import structlog

from projections.notification_store import SqlNotificationStore
from services.bootstrap import make_clock, open_event_store, open_notification_store
from services.children import ChildProcess, die_with_parent
from services.config import Settings
from services.logs import configure_logging
from services.notifier.delivery import DeliveryWorker
from services.notifier.deriving import Notifier
from services.notifier.stream import StreamPublisher
from services.polling import IdleBackoff
from services.single_writer import wait_for_writer_lock

POLL_INTERVAL_S: Final = 0.01
"""Seconds between two looks at the log when the last found nothing new (doubling while
nothing comes, up to `IDLE_POLL_S`)."""
IDLE_POLL_S: Final = 0.1
"""The longest sleep on an idle ledger: a notification after a quiet spell waits this at most."""

log = structlog.get_logger("ledger.notifier")


def run_notifier(settings: Settings, parent_pid: int, redis_url: str | None) -> None:
    """The notifier process's main: derive, publish, repeat, until told to stop."""
    stopping = threading.Event()

    def stop(_signum: int, _frame: object) -> None:
        stopping.set()

    def wanted() -> bool:
        return not stopping.is_set() and os.getppid() == parent_pid

    configure_logging(settings.log_format)
    # No lower priority (unlike the projector): a gateway learns of a suspension through here,
    # and on a busy machine a niced notifier fell seconds behind.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    events = open_event_store(settings)
    store = open_notification_store(settings)
    publisher = None
    if redis_url is not None:
        publisher = StreamPublisher(
            redis_url,
            settings.notification_stream,
            settings.notification_stream_maxlen,
            cluster=settings.redis_cluster,
        )
    try:
        if not wait_for_writer_lock(
            store.try_lock_writer,
            wanted,
            log,
            "notifier.waiting",
            reason="another notifier writes these notifications",
        ):
            return
        notifier = Notifier(events, store, make_clock(settings))
        delivery = DeliveryWorker(settings, make_clock(settings))
        delivery.start()
        log.info("notifier.started", position=notifier.position)
        try:
            _derive(notifier, store, publisher, lambda: wanted() and _delivering(delivery))
        finally:
            delivery.stop()
        log.info("notifier.stopped", position=notifier.position)
    finally:
        if publisher is not None:
            publisher.close()
        store.close()
        events.close()


def _derive(
    notifier: Notifier,
    store: SqlNotificationStore,
    publisher: StreamPublisher | None,
    wanted: Callable[[], bool],
) -> None:
    backoff = IdleBackoff(POLL_INTERVAL_S, IDLE_POLL_S)
    while wanted():
        step = notifier.step()
        published = 0
        if publisher is not None:
            try:
                published = publisher.publish(store)
            except Exception as error:  # Redis away: the stream catches up when it is back
                log.warning("notifier.publish_failed", error=str(error))
        if step is not None and step[0] == 0 and published == 0:
            time.sleep(backoff.idle_sleep_s())
        else:
            backoff.found_work()


def _delivering(delivery: DeliveryWorker) -> bool:
    """True while the delivery thread runs; when it has stopped on an error, the notifier
    stops too, and `ledger serve` starts it again (with a new thread)."""
    if not delivery.alive:
        log.error("notifier.delivery_stopped")
        return False
    return True


class NotifierProcess(ChildProcess):
    """The serving process's handle on its notifier process."""

    def __init__(self, settings: Settings, redis_url: str | None) -> None:
        super().__init__("ledger-notifier", run_notifier, settings, os.getpid(), redis_url)
