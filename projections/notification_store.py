"""Where notifications live once derived: the notifications themselves (in the order they were
derived, each with a sequence number, the feed's cursor), the notifier's checkpoints (the log
position derived up to, the sequence published on the stream), the webhook endpoints, each
endpoint's outbox and the record of every delivery attempt. The settings that decide when a
subscription notifies are not here: they are in the log (`notification.settings_changed`).

One class speaks SQL to both databases (`SqliteNotificationStore` and
`PostgresNotificationStore` in projections/stores/ give it a connection and its DDL). The
guarantees: a batch of derived notifications and the derivation checkpoint are committed
together, by a compare-and-set; a notification whose id is already stored is not stored again
(nor fanned out again), so deriving from position 0 once more adds nothing an endpoint or the
stream has had; a new notification is put in the outbox of every active endpoint of its
subscription whose filter takes it, in the same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

import msgspec

from schemas.notifications import TEST_NOTIFICATION_TYPE, Notification

DERIVED: Final = "derived"
"""The checkpoint: the log position the notifications are derived up to."""
PUBLISHED: Final = "published"
"""The checkpoint: the last notification sequence number put on the Redis stream."""
MAX_FEED_ITEMS: Final = 500
MAX_DELIVERY_RECORDS: Final = 200
"""Delivery attempts kept per endpoint (the oldest go first)."""
MAX_RESPONSE_BODY_BYTES: Final = 1_024

ENCODER: Final = msgspec.json.Encoder()
_NOTIFICATION: Final = msgspec.json.Decoder(Notification)
_TYPES: Final = msgspec.json.Decoder(list[str])

Run = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""Runs one statement (`?` placeholders) and returns its rows."""


class CheckpointMoved(RuntimeError):
    """Another notifier moved the derivation checkpoint first: nothing was written."""


class Webhook(msgspec.Struct, frozen=True):
    subscription_id: str
    webhook_id: str
    url: str
    secret: str
    event_types: tuple[str, ...]
    """The types it receives; empty: every type."""
    status: str
    """`active`, or `disabled` (after a whole day of failures)."""
    created_at_us: int
    disabled_at_us: int | None = None
    failing_since_us: int | None = None


class Pending(msgspec.Struct, frozen=True):
    """The head of an endpoint's outbox: the next notification it is to receive."""

    outbox_id: int
    notification_id: str
    body: bytes
    attempts: int
    next_attempt_us: int
    enqueued_us: int


class Delivery(msgspec.Struct, frozen=True):
    """One attempt to deliver one notification to one endpoint."""

    notification_id: str
    attempt: int
    attempted_at_us: int
    outcome: str
    """`delivered`, `failed`, or `refused` (the URL's address is not allowed)."""
    status_code: int | None
    duration_ms: int
    error: str | None
    response_body: str | None


def webhook_takes(webhook: Webhook, notification_type: str) -> bool:
    return not webhook.event_types or notification_type in webhook.event_types


class SqlNotificationStore:
    """The notification tables over one connection; `run` and `transaction` are the database's."""

    def __init__(self, run: Run, transaction: Callable[[], AbstractContextManager[Run]]) -> None:
        self._run = run
        self._transaction = transaction

    def try_lock_writer(self) -> bool:
        """Become the one notifier of these tables, without waiting: False when another is."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- derivation and the stream ------------------------------------------------------------

    def checkpoint(self, name: str = DERIVED) -> int:
        rows = self._run("SELECT position FROM nt_checkpoints WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def save(self, after: int, position: int, notifications: Sequence[Notification]) -> int:
        """Store the notifications not stored yet, fan them out, and move the derivation
        checkpoint from `after` to `position`; how many were new. `CheckpointMoved` when the
        checkpoint is no longer `after`."""
        with self._transaction() as run:
            _move(run, DERIVED, after, position)
            return sum(self._insert(run, notification) for notification in notifications)

    def add(self, notification: Notification) -> bool:
        """Store one notification outside derivation (`webhook.disabled`); False when stored."""
        with self._transaction() as run:
            return self._insert(run, notification)

    def _insert(self, run: Run, notification: Notification) -> bool:
        body = ENCODER.encode(notification)
        rows = run(
            "INSERT INTO nt_notifications (notification_id, subscription_id, type, position,"
            " body) VALUES (?, ?, ?, ?, ?) ON CONFLICT (notification_id) DO NOTHING"
            " RETURNING seq",
            (
                notification.notification_id,
                notification.subscription_id,
                notification.type,
                notification.position,
                body.decode(),
            ),
        )
        if not rows:
            return False
        for webhook in self._webhooks(run, notification.subscription_id, active_only=True):
            if webhook_takes(webhook, notification.type):
                _enqueue(run, webhook, notification.notification_id, body)
        return True

    def reset(self) -> None:
        """Derive again from position 0 (the stored notifications stay: none is new again)."""
        self._run("UPDATE nt_checkpoints SET position = 0 WHERE name = ?", (DERIVED,))

    def unpublished(self, limit: int) -> list[tuple[int, bytes]]:
        """The next notifications for the stream, after the `published` checkpoint."""
        after = self.checkpoint(PUBLISHED)
        rows = self._run(
            "SELECT seq, body FROM nt_notifications WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [(int(seq), body.encode()) for seq, body in rows]

    def mark_published(self, seq: int) -> None:
        with self._transaction() as run:
            run("DELETE FROM nt_checkpoints WHERE name = ?", (PUBLISHED,))
            run("INSERT INTO nt_checkpoints (name, position) VALUES (?, ?)", (PUBLISHED, seq))

    # -- the feed ------------------------------------------------------------------------------

    def feed(
        self, sub: str, after: int, limit: int, until_position: int | None = None
    ) -> list[tuple[int, Notification]]:
        """The subscription's notifications after sequence `after`, oldest first; with
        `until_position`, only those derived at or before that log position."""
        until = (1 << 62) if until_position is None else until_position
        rows = self._run(
            "SELECT seq, body FROM nt_notifications WHERE subscription_id = ? AND seq > ?"
            " AND position <= ? ORDER BY seq LIMIT ?",
            (sub, after, until, min(limit, MAX_FEED_ITEMS)),
        )
        return [(int(seq), _NOTIFICATION.decode(body)) for seq, body in rows]

    def notifications(self) -> list[Notification]:
        """Every notification in sequence order (for audits and tests; unbounded)."""
        rows = self._run("SELECT body FROM nt_notifications ORDER BY seq", ())
        return [_NOTIFICATION.decode(body) for (body,) in rows]

    # -- webhooks --------------------------------------------------------------------------------

    def create_webhook(self, webhook: Webhook) -> bool:
        """Add an endpoint; False when the subscription has one with this id already."""
        rows = self._run(
            "INSERT INTO nt_webhooks (subscription_id, webhook_id, url, secret, event_types,"
            " status, created_at_us) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (subscription_id, webhook_id) DO NOTHING RETURNING webhook_id",
            (
                webhook.subscription_id,
                webhook.webhook_id,
                webhook.url,
                webhook.secret,
                ENCODER.encode(list(webhook.event_types)).decode(),
                webhook.status,
                webhook.created_at_us,
            ),
        )
        return bool(rows)

    def webhook(self, sub: str, webhook_id: str) -> Webhook | None:
        rows = self._run(
            f"SELECT {_WEBHOOK_COLUMNS} FROM nt_webhooks WHERE subscription_id = ?"
            " AND webhook_id = ?",
            (sub, webhook_id),
        )
        return _webhook(rows[0]) if rows else None

    def webhooks(self, sub: str | None = None) -> list[Webhook]:
        """The subscription's endpoints (every endpoint when `sub` is None), by id."""
        if sub is None:
            rows = self._run(
                f"SELECT {_WEBHOOK_COLUMNS} FROM nt_webhooks ORDER BY subscription_id, webhook_id",
                (),
            )
            return [_webhook(row) for row in rows]
        return self._webhooks(self._run, sub, active_only=False)

    @staticmethod
    def _webhooks(run: Run, sub: str, *, active_only: bool) -> list[Webhook]:
        status = " AND status = 'active'" if active_only else ""
        rows = run(
            f"SELECT {_WEBHOOK_COLUMNS} FROM nt_webhooks WHERE subscription_id = ?{status}"
            " ORDER BY webhook_id",
            (sub,),
        )
        return [_webhook(row) for row in rows]

    def delete_webhook(self, sub: str, webhook_id: str) -> bool:
        with self._transaction() as run:
            key = (sub, webhook_id)
            run("DELETE FROM nt_outbox WHERE subscription_id = ? AND webhook_id = ?", key)
            run("DELETE FROM nt_deliveries WHERE subscription_id = ? AND webhook_id = ?", key)
            rows = run(
                "DELETE FROM nt_webhooks WHERE subscription_id = ? AND webhook_id = ?"
                " RETURNING webhook_id",
                key,
            )
            return bool(rows)

    def enqueue_test(self, webhook: Webhook, notification: Notification) -> None:
        """Put a test notification in one endpoint's outbox (never in the feed)."""
        assert notification.type == TEST_NOTIFICATION_TYPE
        with self._transaction() as run:
            _enqueue(run, webhook, notification.notification_id, ENCODER.encode(notification))

    # -- delivery ------------------------------------------------------------------------------

    def pending(self, webhook: Webhook) -> Pending | None:
        """The head of the endpoint's outbox (the oldest notification it has not had)."""
        rows = self._run(
            "SELECT outbox_id, notification_id, body, attempts, next_attempt_us, enqueued_us"
            " FROM nt_outbox"
            " WHERE subscription_id = ? AND webhook_id = ? ORDER BY outbox_id LIMIT 1",
            (webhook.subscription_id, webhook.webhook_id),
        )
        if not rows:
            return None
        outbox_id, notification_id, body, attempts, next_us, enqueued_us = rows[0]
        return Pending(
            int(outbox_id),
            notification_id,
            body.encode(),
            int(attempts),
            int(next_us),
            int(enqueued_us),
        )

    def outbox_size(self, webhook: Webhook) -> int:
        rows = self._run(
            "SELECT count(*) FROM nt_outbox WHERE subscription_id = ? AND webhook_id = ?",
            (webhook.subscription_id, webhook.webhook_id),
        )
        return int(rows[0][0])

    def record_attempt(
        self,
        webhook: Webhook,
        pending: Pending,
        delivery: Delivery,
        next_attempt_us: int | None,
    ) -> None:
        """Record an attempt; a delivered one leaves the outbox (and ends the endpoint's
        failing streak), a failed one waits until `next_attempt_us`."""
        key = (webhook.subscription_id, webhook.webhook_id)
        with self._transaction() as run:
            run(
                "INSERT INTO nt_deliveries (subscription_id, webhook_id, notification_id,"
                " attempt, attempted_at_us, outcome, status_code, duration_ms, error,"
                " response_body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, *msgspec.structs.astuple(delivery)),
            )
            run(
                "DELETE FROM nt_deliveries WHERE subscription_id = ? AND webhook_id = ? AND"
                " delivery_id <= (SELECT max(delivery_id) FROM nt_deliveries WHERE"
                " subscription_id = ? AND webhook_id = ?) - ?",
                (*key, *key, MAX_DELIVERY_RECORDS),
            )
            if next_attempt_us is None:
                run("DELETE FROM nt_outbox WHERE outbox_id = ?", (pending.outbox_id,))
                run(
                    "UPDATE nt_webhooks SET failing_since_us = NULL WHERE subscription_id = ?"
                    " AND webhook_id = ?",
                    key,
                )
                return
            run(
                "UPDATE nt_outbox SET attempts = attempts + 1, next_attempt_us = ?"
                " WHERE outbox_id = ?",
                (next_attempt_us, pending.outbox_id),
            )
            run(
                "UPDATE nt_webhooks SET failing_since_us = coalesce(failing_since_us, ?)"
                " WHERE subscription_id = ? AND webhook_id = ?",
                (delivery.attempted_at_us, *key),
            )

    def disable(self, webhook: Webhook, at_us: int) -> bool:
        """Disable an endpoint (its outbox is dropped); False when it was not active."""
        key = (webhook.subscription_id, webhook.webhook_id)
        with self._transaction() as run:
            rows = run(
                "UPDATE nt_webhooks SET status = 'disabled', disabled_at_us = ?"
                " WHERE subscription_id = ? AND webhook_id = ? AND status = 'active'"
                " RETURNING webhook_id",
                (at_us, *key),
            )
            run("DELETE FROM nt_outbox WHERE subscription_id = ? AND webhook_id = ?", key)
            return bool(rows)

    def deliveries(self, sub: str, webhook_id: str, limit: int) -> list[Delivery]:
        """The endpoint's latest delivery attempts, newest first."""
        rows = self._run(
            "SELECT notification_id, attempt, attempted_at_us, outcome, status_code,"
            " duration_ms, error, response_body FROM nt_deliveries WHERE subscription_id = ?"
            " AND webhook_id = ? ORDER BY delivery_id DESC LIMIT ?",
            (sub, webhook_id, min(limit, MAX_DELIVERY_RECORDS)),
        )
        return [Delivery(*row) for row in rows]


_WEBHOOK_COLUMNS: Final = (
    "subscription_id, webhook_id, url, secret, event_types, status, created_at_us,"
    " disabled_at_us, failing_since_us"
)


def _webhook(row: Sequence[Any]) -> Webhook:
    sub, webhook_id, url, secret, types, status, created, disabled, failing = row
    return Webhook(
        sub,
        webhook_id,
        url,
        secret,
        tuple(_TYPES.decode(types)),
        status,
        created,
        disabled,
        failing,
    )


def _enqueue(run: Run, webhook: Webhook, notification_id: str, body: bytes) -> None:
    run(
        "INSERT INTO nt_outbox (subscription_id, webhook_id, notification_id, body, attempts,"
        " next_attempt_us, enqueued_us) VALUES (?, ?, ?, ?, 0, 0, ?)",
        (
            webhook.subscription_id,
            webhook.webhook_id,
            notification_id,
            body.decode(),
            time.time_ns() // 1_000,
        ),
    )


def _move(run: Run, name: str, after: int, position: int) -> None:
    rows = run("SELECT position FROM nt_checkpoints WHERE name = ?", (name,))
    current = int(rows[0][0]) if rows else 0
    if current != after:
        raise CheckpointMoved(f"the {name} checkpoint is at {current}, not {after}")
    if rows:
        run("UPDATE nt_checkpoints SET position = ? WHERE name = ?", (position, name))
    else:
        run("INSERT INTO nt_checkpoints (name, position) VALUES (?, ?)", (name, position))


def table_statements(serial: str, bigint: str) -> tuple[str, ...]:
    """The tables, in either database: `serial` is an auto-numbered primary key's type,
    `bigint` a 64-bit integer's."""
    return (
        f"CREATE TABLE IF NOT EXISTS nt_checkpoints (name TEXT PRIMARY KEY,"
        f" position {bigint} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS nt_notifications (seq {serial},"
        f" notification_id TEXT NOT NULL UNIQUE, subscription_id TEXT NOT NULL,"
        f" type TEXT NOT NULL, position {bigint} NOT NULL, body TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS nt_notifications_by_subscription"
        " ON nt_notifications (subscription_id, seq)",
        f"CREATE TABLE IF NOT EXISTS nt_webhooks (subscription_id TEXT NOT NULL,"
        f" webhook_id TEXT NOT NULL, url TEXT NOT NULL, secret TEXT NOT NULL,"
        f" event_types TEXT NOT NULL, status TEXT NOT NULL, created_at_us {bigint} NOT NULL,"
        f" disabled_at_us {bigint}, failing_since_us {bigint},"
        f" PRIMARY KEY (subscription_id, webhook_id))",
        f"CREATE TABLE IF NOT EXISTS nt_outbox (outbox_id {serial},"
        f" subscription_id TEXT NOT NULL, webhook_id TEXT NOT NULL,"
        f" notification_id TEXT NOT NULL, body TEXT NOT NULL, attempts INTEGER NOT NULL,"
        f" next_attempt_us {bigint} NOT NULL, enqueued_us {bigint} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS nt_outbox_by_webhook"
        " ON nt_outbox (subscription_id, webhook_id, outbox_id)",
        f"CREATE TABLE IF NOT EXISTS nt_deliveries (delivery_id {serial},"
        f" subscription_id TEXT NOT NULL, webhook_id TEXT NOT NULL,"
        f" notification_id TEXT NOT NULL, attempt INTEGER NOT NULL,"
        f" attempted_at_us {bigint} NOT NULL, outcome TEXT NOT NULL, status_code INTEGER,"
        f" duration_ms {bigint} NOT NULL, error TEXT, response_body TEXT)",
        "CREATE INDEX IF NOT EXISTS nt_deliveries_by_webhook"
        " ON nt_deliveries (subscription_id, webhook_id, delivery_id)",
    )


def rows_iter(rows: Iterator[Any]) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in rows]
