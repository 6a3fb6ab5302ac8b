"""Random but reproducible workloads: subscriptions, seats, packs, tier changes, removals,
usage of every model with skewed sizes, clock jumps across cycles and expiries, and repeated
deliveries. Used by the property tests and the benchmarks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec

from schemas.commands import (
    AddSeat,
    AdjustSeat,
    BuyPack,
    ChangeTier,
    Command,
    ExtendHold,
    GrantCredits,
    OpenSubscription,
    PlaceHold,
    ReleaseHold,
    RemoveSeat,
    ReverseCharge,
    SetNotificationSettings,
    VoidGrant,
    VoidPack,
)
from schemas.limits import MAX_HOLD_TTL_S, MAX_TOKENS_PER_COMPONENT, UCR_PER_CREDIT
from schemas.usage import UsageEvent

TEXT_MODELS = ("qwen3.6-plus", "glm-5", "MiniMax-M2.5", "deepseek-v3.2")
IMAGE_MODELS = ("qwen-image-2.0", "qwen-image-2.0-pro", "wan2.7-image", "wan2.7-image-pro")
TIERS = ("standard", "advanced", "premium")
START = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)


@dataclass
class Step:
    """Commands to run as one batch at `at` (the manual clock is moved there first)."""

    at: datetime
    commands: list[Command | UsageEvent] = field(default_factory=list)


@dataclass
class Workload:
    seed: int
    subscriptions: int = 3
    seats_per_subscription: int = 4
    events: int = 2_000
    batch_size: int = 50
    heavy: bool = True
    """Heavy usage exhausts quotas so packs, uncovered charges and suspensions happen."""
    holds_and_corrections: bool = False
    """Also holds (placed, extended, released, settled by usage, expiring) and corrections
    (adjustments, grants, reversals, voids), some of them refused."""

    def steps(self) -> Iterator[Step]:
        rng = random.Random(self.seed)
        now = START
        subs = [f"sub-{i}" for i in range(self.subscriptions)]
        seats: dict[str, list[str]] = {sub: [] for sub in subs}
        removed: set[str] = set()
        opening = Step(now)
        for sub in subs:
            opening.commands.append(OpenSubscription(sub, now - timedelta(days=rng.randint(0, 20))))
            for j in range(self.seats_per_subscription):
                seat = f"{sub}-seat-{j}"
                seats[sub].append(seat)
                opening.commands.append(AddSeat(sub, seat, rng.choice(TIERS)))  # type: ignore[arg-type]
        yield opening
        sent: list[UsageEvent] = []
        produced = 0
        serial = 0
        extra = _HoldsAndCorrections()
        while produced < self.events:
            now += timedelta(seconds=rng.choice((1, 30, 600, 3600, 86_400, 6 * 86_400)))
            step = Step(now)
            for _ in range(rng.randint(1, self.batch_size)):
                sub = rng.choice(subs)
                roll = rng.random()
                if roll < 0.01:
                    step.commands.append(BuyPack(sub, f"pack-{serial}"))
                    extra.packs.append((sub, f"pack-{serial}"))
                elif roll < 0.015:
                    step.commands.append(ChangeTier(sub, rng.choice(seats[sub]), rng.choice(TIERS)))  # type: ignore[arg-type]
                elif roll < 0.017:
                    seat = f"{sub}-seat-{len(seats[sub])}"
                    seats[sub].append(seat)
                    step.commands.append(AddSeat(sub, seat, rng.choice(TIERS)))  # type: ignore[arg-type]
                elif roll < 0.018:
                    seat = rng.choice(seats[sub])
                    removed.add(seat)
                    step.commands.append(RemoveSeat(sub, seat))
                elif roll < 0.05 and sent:
                    step.commands.append(rng.choice(sent))  # a redelivery
                elif self.holds_and_corrections and roll < 0.15:
                    step.commands.append(extra.next(rng, serial, sub, seats[sub], now, sent))
                else:
                    event = self._usage(
                        rng, f"evt-{self.seed}-{serial}", sub, rng.choice(seats[sub]), now
                    )
                    if self.holds_and_corrections:
                        event = extra.settling(rng, event)
                    sent.append(event)
                    step.commands.append(event)
                serial += 1
                produced += 1
                if self.holds_and_corrections and serial % SETTINGS_EVERY == 0:
                    step.commands.append(_settings_change(sub, serial))
            yield step

    def _usage(
        self, rng: random.Random, event_id: str, sub: str, seat: str, now: datetime
    ) -> UsageEvent:
        scale = 400 if self.heavy else 1
        if rng.random() < 0.1:
            return UsageEvent(
                event_id=event_id,
                subscription_id=sub,
                seat_id=seat,
                model=rng.choice(IMAGE_MODELS),
                occurred_at=now,
                images=rng.randint(1, 4) * (scale // 40 + 1),
            )
        return UsageEvent(
            event_id=event_id,
            subscription_id=sub,
            seat_id=seat,
            model=rng.choice(TEXT_MODELS),
            occurred_at=now - timedelta(milliseconds=rng.randint(0, 5_000)),
            input_tokens=_tokens(rng, 1.2, 2_000 * scale),
            cached_tokens=_tokens(rng, 1.5, 10_000 * scale),
            output_tokens=_tokens(rng, 1.3, 300 * scale),
            tool_calls=rng.choice((0, 0, 0, 1, 3)),
            thinking=rng.random() < 0.3,
        )


SETTINGS_EVERY = 211
"""Steps between two notification settings changes of a holds-and-corrections workload (drawn
without the random source, so the rest of the workload is what it was without them)."""


def _settings_change(sub: str, serial: int) -> SetNotificationSettings:
    """Settings of every shape: 0-3 thresholds given unsorted, no low amount, 0, or some."""
    thresholds = tuple({(serial * k) % 150 + 1 for k in (7, 1, 13)})[: serial % 4]
    low = (None, 0, (serial % 500 + 1) * 100 * UCR_PER_CREDIT)[serial % 3]
    return SetNotificationSettings(sub, thresholds, low, reason="tuning alerts")


def _tokens(rng: random.Random, alpha: float, typical: int) -> int:
    """A Pareto-skewed token count: mostly near `typical`, now and then far above it."""
    return min(int(rng.paretovariate(alpha) * typical), MAX_TOKENS_PER_COMPONENT)


class _HoldsAndCorrections:
    """Hold and correction commands for a workload, naming holds, packs and grants it made."""

    def __init__(self) -> None:
        self.holds: list[tuple[str, str, str]] = []  # (subscription, seat, hold id)
        self.grants: list[tuple[str, str]] = []
        self.packs: list[tuple[str, str]] = []

    def next(
        self,
        rng: random.Random,
        serial: int,
        sub: str,
        seats: list[str],
        now: datetime,
        sent: list[UsageEvent],
    ) -> Command:
        seat = rng.choice(seats)
        kind = rng.choice(("hold", "hold", "hold", "extend", "extend", "release", "adjust",
                           "grant", "reverse", "void"))  # fmt: skip
        known = [h for h in self.holds[-20:] if h[0] == sub]
        if kind == "extend" and known:
            _, held_seat, hold_id = rng.choice(known)
            return ExtendHold(sub, held_seat, hold_id, rng.randint(1, MAX_HOLD_TTL_S))
        if kind == "release" and known:
            _, held_seat, hold_id = known[-1] if rng.random() < 0.7 else rng.choice(known)
            return ReleaseHold(sub, held_seat, hold_id)
        if kind == "adjust":
            credits = rng.randint(-20_000, 20_000) * UCR_PER_CREDIT or UCR_PER_CREDIT
            return AdjustSeat(sub, seat, f"adj-{serial}", credits, "goodwill")
        if kind == "grant":
            self.grants.append((sub, f"grant-{serial}"))
            expires_at = now + timedelta(seconds=rng.choice((3_600, 86_400, 40 * 86_400)))
            credits = rng.randint(1, 200_000) * UCR_PER_CREDIT
            return GrantCredits(sub, f"grant-{serial}", credits, expires_at, "compensation")
        mine = [e for e in sent[-200:] if e.subscription_id == sub]
        if kind == "reverse" and mine:
            event = rng.choice(mine)
            credits = rng.choice((None, rng.randint(1, 5) * UCR_PER_CREDIT // 100))
            return ReverseCharge(sub, event.event_id, f"rev-{serial}", "mispriced", credits)
        if kind == "void":
            grants = [g for g in self.grants if g[0] == sub]
            packs = [p for p in self.packs if p[0] == sub]
            if grants and (rng.random() < 0.5 or not packs):
                return VoidGrant(sub, rng.choice(grants)[1], "refunded")
            if packs:
                return VoidPack(sub, rng.choice(packs)[1], "payment bounced")
        hold_id = f"hold-{serial}"
        self.holds.append((sub, seat, hold_id))
        credits = rng.choice((1, 100, 5_000, 60_000)) * UCR_PER_CREDIT
        ttl_s = rng.choice((1, 60, 600, MAX_HOLD_TTL_S, MAX_HOLD_TTL_S))
        return PlaceHold(sub, seat, hold_id, credits, ttl_s)

    def settling(self, rng: random.Random, event: UsageEvent) -> UsageEvent:
        """Now and then, usage served under a hold of its seat (maybe ended, maybe not yet)."""
        held = [h for h in self.holds if h[:2] == (event.subscription_id, event.seat_id)]
        if not held or rng.random() < 0.5:
            return event
        return msgspec.structs.replace(event, hold_id=rng.choice(held)[2])
