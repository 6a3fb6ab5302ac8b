"""`ledger export log`: the admin writes of the log (subscriptions opened, seats added, re-tiered
and removed, packs bought, and every correction), with who asked and why, as CSV or JSON lines.

Rows come from the read models' history index (caught up first), one subscription after
another in id order, each in log order; each row is decoded from the log's own record.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import IO, Final

import msgspec

from projections.history import MAX_HISTORY_ROWS, HistoryQuery
from projections.read_store import ReadModelStore
from schemas.instants import instant_text
from services.api.admin_views import AdminActionView, admin_action_view

LOG_CSV_COLUMNS: Final = (
    "position",
    "recorded_at",
    "subscription_id",
    "type",
    "id",
    "seat_id",
    "event_id",
    "credits",
    "expires_at",
    "parts",
    "actor_token_id",
    "actor_role",
    "reason",
)
"""`parts`: where a reversal's credits went, `source:id=credits(outcome)` joined by `;`."""


def admin_actions(read_store: ReadModelStore, subscription_id: str) -> Iterator[AdminActionView]:
    """Every admin write of one subscription the read models hold, in log order."""
    after = 0
    while True:
        page = read_store.history(HistoryQuery(subscription_id, after, limit=MAX_HISTORY_ROWS))
        yield from (admin_action_view(record) for record in page.items)
        if page.next_after is None:
            return
        after = page.next_after


def csv_row(action: AdminActionView) -> list[object]:
    parts = ";".join(
        f"{p.source}:{p.id}={p.credits}({p.outcome})" if p.id else f"{p.source}={p.credits}"
        for p in action.parts or ()
    )
    return [
        action.position,
        instant_text(action.recorded_at),
        action.subscription_id,
        action.type,
        action.id,
        action.seat_id or "",
        action.event_id or "",
        action.credits or "",
        "" if action.expires_at is None else instant_text(action.expires_at),
        parts,
        "" if action.actor is None else action.actor.token_id,
        "" if action.actor is None else action.actor.role,
        action.reason or "",
    ]


_ENCODER: Final = msgspec.json.Encoder()


def write_admin_actions(
    read_store: ReadModelStore, subscription_ids: list[str], fmt: str, output: IO[str]
) -> int:
    """Write the admin writes of these subscriptions as `fmt` (csv or jsonl); how many."""
    writer = csv.writer(output, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writerow(LOG_CSV_COLUMNS)
    count = 0
    for subscription_id in subscription_ids:
        for action in admin_actions(read_store, subscription_id):
            if writer is not None:
                writer.writerow(csv_row(action))
            else:
                output.write(_ENCODER.encode(action).decode() + "\n")
            count += 1
    return count
