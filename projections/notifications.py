"""The notifications projection: which notifications the log's records fire, derived from the
records and the balances they fold into. Pure: no clock, no I/O; the notifier process stores and
delivers what `NotificationDeriver` returns.

Each notification fires once per crossing: a seat's threshold once per cycle (re-armed when its
spent share falls back below, say after a reversal), low credits once until the subscription
recovers (the recovery is a notification too), a pack's expiry warning once per window. Its id
is its type, the position of the record that caused it and what tells apart two of one record
(seat, threshold, pack), so deriving from position 0 again gives the same ids.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Final

from ledger.log import StoredRecord, datetime_from_us, us_from_datetime
from ledger.money import format_credits
from projections.balances import Balances, ChargeView, CompactChargeView, SeatKey, apply_data
from schemas.events import (
    HoldExpired,
    LogEvent,
    NotificationSettingsChanged,
    PackExpired,
    PackPurchased,
    SeatResumed,
    SeatSuspended,
    UsageCharged,
)
from schemas.notifications import DEFAULT_SETTINGS, Notification, NotificationSettings

EXPIRY_WARNINGS: Final[tuple[tuple[str, timedelta], ...]] = (
    ("7d", timedelta(days=7)),
    ("1d", timedelta(days=1)),
)
"""A pack's expiry warnings: (window name, how long before `expires_at`), longest first."""


class _Warning:
    """A pack expiry warning waiting for its instant."""

    __slots__ = ("due_us", "pack_id", "purchase_position", "subscription_id", "window")

    def __init__(self, due_us: int, sub: str, pack: str, window: str, purchase: int) -> None:
        self.due_us = due_us
        self.subscription_id = sub
        self.pack_id = pack
        self.window = window
        self.purchase_position = purchase

    def __lt__(self, other: _Warning) -> bool:
        return (self.due_us, self.purchase_position, self.window) < (
            other.due_us,
            other.purchase_position,
            other.window,
        )


class _SeatMark:
    """The thresholds a seat crossed in its cycle, and from which amount spent the lowest one
    not crossed yet is reached (under these settings and this quota)."""

    __slots__ = ("crossed", "cycle", "next_ucr", "quota_ucr", "settings", "used_ucr")

    def __init__(self, cycle: int) -> None:
        self.cycle = cycle
        self.crossed: set[int] = set()
        self.settings: NotificationSettings | None = None
        self.used_ucr = self.quota_ucr = self.next_ucr = 0

    def remember(self, settings: NotificationSettings, used_ucr: int, quota_ucr: int) -> None:
        self.settings, self.used_ucr, self.quota_ucr = settings, used_ucr, quota_ucr
        ahead = [p for p in settings.thresholds_percent if p not in self.crossed]
        # The least amount spent at which `used * 100 >= percent * quota` holds.
        self.next_ucr = -(-min(ahead) * quota_ucr // 100) if ahead else 1 << 62


class NotificationDeriver:
    """Folds records into its own balances and says which notifications each one fires."""

    def __init__(self) -> None:
        self.balances = Balances()
        self.position = 0
        self._settings: dict[str, NotificationSettings] = {}
        """Per subscription: the settings its last `notification.settings_changed` put in force."""
        self._marks: dict[SeatKey, _SeatMark] = {}
        """Per seat: the thresholds crossed in its cycle."""
        self._low: set[str] = set()
        """The subscriptions below their low-credits amount."""
        self._warnings: list[_Warning] = []

    def settings(self, sub: str) -> NotificationSettings:
        """The settings in force for subscription `sub` as of the records folded so far."""
        return self._settings.get(sub, DEFAULT_SETTINGS)

    def fold(self, records: Iterable[StoredRecord]) -> list[Notification]:
        """Fold `records` (the next ones of the log, in order); what they fire, in order."""
        fired: list[Notification] = []
        warnings = self._warnings
        for record in records:
            if warnings and warnings[0].due_us <= record.recorded_at_us:
                fired += self.due(record.recorded_at_us)
            fired += self._fold_one(record)
        self.balances.forget_changes()
        return fired

    def due(self, now_us: int) -> list[Notification]:
        """The pack expiry warnings whose instant is at or before `now_us` (ledger time), as of
        the records folded so far. Of the windows of one pack due at once, only the nearest
        fires; none fires for a pack that has ended or expires by `now_us`."""
        due: dict[tuple[str, str], _Warning] = {}
        while self._warnings and self._warnings[0].due_us <= now_us:
            warning = heapq.heappop(self._warnings)
            due[(warning.subscription_id, warning.pack_id)] = warning  # the later window wins
        fired = []
        for (sub, pack_id), warning in due.items():
            pack = self.balances.packs.get((sub, pack_id))
            if pack is None or pack.status not in ("active",) or pack.remaining_ucr <= 0:
                continue
            if us_from_datetime(pack.expires_at) <= now_us:
                continue
            data = {
                "pack_id": pack_id,
                "window": warning.window,
                "expires_at": pack.expires_at,
                "remaining": format_credits(pack.remaining_ucr),
            }
            notice_id = f"pack.expiring:{warning.purchase_position}:{warning.window}"
            fired.append(
                Notification(
                    notice_id,
                    "pack.expiring",
                    sub,
                    datetime_from_us(warning.due_us),
                    self.position,
                    data,
                )
            )
        return fired

    def _fold_one(self, record: StoredRecord) -> list[Notification]:
        position = record.position
        if position != self.position + 1:
            raise ValueError(f"record {position} does not follow {self.position}")
        charge = apply_data(self.balances, record.data)
        self.position = position
        if charge is not None:
            return self._after_charge(charge, record)
        event = record.event()
        fired = self._from_event(event, record)
        seat_id = getattr(event, "seat_id", None)
        if isinstance(seat_id, str):
            fired += self._thresholds((event.subscription_id, seat_id), record)
        fired += self._credits_low(event.subscription_id, record)
        return fired

    def _after_charge(
        self, charge: ChargeView | CompactChargeView | UsageCharged, record: StoredRecord
    ) -> list[Notification]:
        sub = charge.subscription_id
        fired = self._thresholds((sub, charge.seat_id), record)
        for part in charge.allocation:
            if part.source not in ("pack", "grant"):
                continue
            rows = self.balances.packs if part.source == "pack" else self.balances.grants
            pack = rows[(sub, part.id)]
            if pack.remaining_ucr == 0:
                data = {"pack_id": part.id, "kind": part.source, "seat_id": charge.seat_id}
                fired.append(self._notice("pack.exhausted", sub, record, data, part.id))
        fired += self._credits_low(sub, record)
        return fired

    def _from_event(self, event: LogEvent, record: StoredRecord) -> list[Notification]:
        sub = event.subscription_id
        if isinstance(event, SeatSuspended):
            data: dict[str, Any] = {
                "seat_id": event.seat_id,
                "reason": event.reason,
                "event_id": event.event_id,
            }
            return [self._notice("seat.suspended", sub, record, data, event.seat_id)]
        if isinstance(event, SeatResumed):
            data = {"seat_id": event.seat_id, "reason": event.reason}
            return [self._notice("seat.resumed", sub, record, data, event.seat_id)]
        if isinstance(event, PackExpired):
            data = {"pack_id": event.pack_id, "expired": format_credits(event.expired_ucr)}
            return [self._notice("pack.expired", sub, record, data, event.pack_id)]
        if isinstance(event, HoldExpired):
            data = {
                "seat_id": event.seat_id,
                "hold_id": event.hold_id,
                "released": format_credits(event.released_ucr),
            }
            return [self._notice("hold.expired", sub, record, data, event.hold_id)]
        if isinstance(event, PackPurchased):
            self._schedule(event, record.position)
        if isinstance(event, NotificationSettingsChanged):
            return self._settings_changed(event, record)
        return []

    def _settings_changed(
        self, event: NotificationSettingsChanged, record: StoredRecord
    ) -> list[Notification]:
        """New settings apply at once: every seat of the subscription is looked at again, so a
        threshold it has passed already under them fires at this record (low credits are looked
        at after every record)."""
        sub = event.subscription_id
        self._settings[sub] = NotificationSettings(event.thresholds_percent, event.credits_low_ucr)
        fired = []
        for seat_id in sorted(self.balances.seat_ids.get(sub, ())):
            if self.balances.seats[(sub, seat_id)].status != "removed":
                fired += self._thresholds((sub, seat_id), record)
        return fired

    def _schedule(self, event: PackPurchased, position: int) -> None:
        for window, lead in EXPIRY_WARNINGS:
            due_us = us_from_datetime(event.expires_at - lead)
            warning = _Warning(due_us, event.subscription_id, event.pack_id, window, position)
            heapq.heappush(self._warnings, warning)

    def _thresholds(self, key: SeatKey, record: StoredRecord) -> list[Notification]:
        """Each threshold the seat's spent share reached since it last looked (re-armed when
        the share falls back below it, and at a new cycle)."""
        seat = self.balances.seats.get(key)
        if seat is None or seat.quota_ucr <= 0:
            return []
        settings = self.settings(key[0])
        mark = self._marks.get(key)
        used, quota = seat.used_ucr, seat.quota_ucr
        if (
            mark is not None
            and mark.cycle == seat.cycle
            and mark.quota_ucr == quota
            and mark.settings is settings
            and mark.used_ucr <= used < mark.next_ucr
        ):
            mark.used_ucr = used  # the hot path: more spent, no threshold reached
            return []
        if mark is None or mark.cycle != seat.cycle:
            mark = self._marks[key] = _SeatMark(seat.cycle)
        fired = []
        for percent in settings.thresholds_percent:
            reached = used * 100 >= percent * quota
            if reached and percent not in mark.crossed:
                mark.crossed.add(percent)
                data = {
                    "seat_id": key[1],
                    "threshold_percent": percent,
                    "used": format_credits(used),
                    "quota": format_credits(quota),
                    "cycle": seat.cycle,
                }
                detail = f"{key[1]}:{percent}"
                fired.append(self._notice("seat.threshold_reached", key[0], record, data, detail))
            elif not reached:
                mark.crossed.discard(percent)
        mark.remember(settings, used, quota)
        return fired

    def _credits_low(self, sub: str, record: StoredRecord) -> list[Notification]:
        """Low credits when what the subscription can spend falls below its amount (once it
        has a seat); recovered when it is back at or above it."""
        low_ucr = self.settings(sub).credits_low_ucr
        if low_ucr is None or not self.balances.seat_ids.get(sub):
            return []  # a subscription without seats yet spends nothing: not low
        available = spendable_ucr(self.balances, sub)
        was_low = sub in self._low
        if (available < low_ucr) == was_low:
            return []
        state = "recovered" if was_low else "low"
        (self._low.discard if was_low else self._low.add)(sub)
        data = {
            "state": state,
            "available": format_credits(available),
            "threshold": format_credits(low_ucr),
        }
        return [self._notice("subscription.credits_low", sub, record, data)]

    def _notice(
        self,
        kind: str,
        sub: str,
        record: StoredRecord,
        data: dict[str, Any],
        detail: str | None = None,
    ) -> Notification:
        suffix = "" if detail is None else f":{detail}"
        return Notification(
            f"{kind}:{record.position}{suffix}",
            kind,
            sub,
            record.recorded_at,
            record.position,
            data,
        )


def spendable_ucr(balances: Balances, sub: str) -> int:
    """What the subscription's seats can still spend, all together: each active seat's own
    remaining quota and the subscription's active packs and grants, less what holds took."""
    total = 0
    for seat_id in balances.seat_ids.get(sub, ()):
        seat = balances.seats[(sub, seat_id)]
        if seat.status == "active":
            total += seat.remaining_ucr - seat.held_ucr
    for rows, ids in (
        (balances.packs, balances.pack_ids),
        (balances.grants, balances.grant_ids),
    ):
        for pack_id in ids.get(sub, ()):
            pack = rows[(sub, pack_id)]
            if pack.status == "active":
                total += pack.remaining_ucr - pack.held_ucr
    return max(total, 0)
