"""Random but reproducible workloads: subscriptions, seats, packs, tier changes, removals,
usage of every model with skewed sizes, clock jumps across cycles and expiries, and repeated
deliveries. Used by the property tests and the benchmarks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas.commands import AddSeat, BuyPack, ChangeTier, Command, OpenSubscription, RemoveSeat
from schemas.limits import MAX_TOKENS_PER_COMPONENT
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
        while produced < self.events:
            now += timedelta(seconds=rng.choice((1, 30, 600, 3600, 86_400, 6 * 86_400)))
            step = Step(now)
            for _ in range(rng.randint(1, self.batch_size)):
                sub = rng.choice(subs)
                roll = rng.random()
                if roll < 0.01:
                    step.commands.append(BuyPack(sub, f"pack-{serial}"))
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
                else:
                    event = self._usage(
                        rng, f"evt-{self.seed}-{serial}", sub, rng.choice(seats[sub]), now
                    )
                    sent.append(event)
                    step.commands.append(event)
                serial += 1
                produced += 1
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


def _tokens(rng: random.Random, alpha: float, typical: int) -> int:
    """A Pareto-skewed token count: mostly near `typical`, now and then far above it."""
    return min(int(rng.paretovariate(alpha) * typical), MAX_TOKENS_PER_COMPONENT)
