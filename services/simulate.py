"""`ledger simulate`: publish a realistic synthetic workload onto the usage stream (SPEC §3).

The workload: `--subscriptions` teams of `--seats-per-subscription` seats each (tiers mixed,
a few seats far busier than the rest), every model of the rate card in force (text mostly,
images now and then), token counts from skewed distributions (log-normal input and cache,
Pareto output) within the bounds of `schemas.limits`, thinking on about 30% of text requests,
a few tool calls. On top of `--events` unique valid events come duplicates (an earlier event
published again, unchanged: charged once) and bad entries (invalid JSON, wrong types, negative
or absurd counts, unknown model, unknown seat: dead-lettered by ingest), at fixed ratios.

Pacing: `--rate` entries per second (every entry counts: valid, duplicate and bad) through a
token bucket filled from `time.monotonic`, so sleep overshoot is credited back and the
average rate stays exact over time; `--rate 0` publishes as fast as Redis takes it.

Setup (`--setup`, the default) writes the subscriptions, seats and one pack per subscription
into the ledger's log first, through `Ledger.execute` as `ledger backfill` does, so the events
can be charged. It is safe beside a running `ledger serve`: the store serializes writers and
the serving ledger folds what it finds beyond its position. On a second run what already
exists is left as it is.

`run_simulation(...)` does the same without click and returns the summary.
"""

from __future__ import annotations

import bisect
import math
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

import click
import msgspec
import redis
import redis.cluster

from ledger.errors import LedgerError
from ledger.rate_card import RateCard, RateCardVersion, load_rate_card
from schemas.commands import AddSeat, BuyPack, Command, OpenSubscription, Tier
from schemas.limits import (
    MAX_IMAGES_PER_REQUEST,
    MAX_TOKENS_PER_COMPONENT,
    MAX_TOOL_CALLS_PER_REQUEST,
)
from schemas.usage import UsageEvent
from services.cli_errors import one_line_errors
from services.client import DATA_FIELD, UsagePublisher, encode_usage, redis_client
from services.config import ConfigError, Settings

# -- defaults and shapes --------------------------------------------------------------------------

DEFAULT_EVENTS: Final = 10_000
DEFAULT_SUBSCRIPTIONS: Final = 20
DEFAULT_SEATS_PER_SUBSCRIPTION: Final = 8
DEFAULT_DUPLICATE_RATIO: Final = 0.01
DEFAULT_BAD_RATIO: Final = 0.005
DEFAULT_ID_PREFIX: Final = "sim"

MAX_CHUNK_ENTRIES: Final = 1_000
"""Most entries generated and published per round of pacing."""
CHUNKS_PER_SECOND: Final = 50
"""At a given rate, chunks are sized so about this many go out per second (smooth pacing)."""
RECENT_EVENTS: Final = 1_024
"""Duplicates re-publish one of this many most recent valid events."""
SETUP_BATCH_COMMANDS: Final = 1_000

TIER_WEIGHTS: Final[tuple[tuple[Tier, float], ...]] = (
    ("standard", 0.6),
    ("advanced", 0.3),
    ("premium", 0.1),
)
IMAGE_SHARE: Final = 0.1
"""Share of requests that go to an image model (when the card has any)."""
THINKING_SHARE: Final = 0.3
TOOL_CALL_SHARE: Final = 0.25
CACHE_HIT_SHARE: Final = 0.6
SEAT_ACTIVITY_EXPONENT: Final = 1.1
"""Zipf exponent of seat activity: a few seats send most of the requests."""
MODEL_POPULARITY_EXPONENT: Final = 0.8
"""Zipf exponent of model popularity, in the rate card's order."""

# Token counts: log-normal (median, sigma) for prompts and cache reads, Pareto (scale, alpha)
# for output, whose long tail is the expensive part; all clamped to schemas.limits.
INPUT_TOKENS_MEDIAN: Final = 1_500
INPUT_TOKENS_SIGMA: Final = 1.2
CACHED_TOKENS_MEDIAN: Final = 12_000
CACHED_TOKENS_SIGMA: Final = 1.0
OUTPUT_TOKENS_SCALE: Final = 250
THINKING_OUTPUT_TOKENS_SCALE: Final = 900
OUTPUT_TOKENS_ALPHA: Final = 1.6
IMAGE_PROMPT_TOKENS_MEDIAN: Final = 60
IMAGE_PROMPT_TOKENS_SIGMA: Final = 0.6
MAX_IMAGES_SIMULATED: Final = 4
TOOL_CALLS_MEAN_EXTRA: Final = 1.7
"""Tool calls, when a request makes any: 1 + an exponential with this mean."""
MAX_TRUNCATED_JSON_BYTES: Final = 40
"""An `invalid_json` bad entry is a valid event cut to at most this many bytes."""
EXISTING: Final = frozenset({"subscription_exists", "seat_exists"})
"""Setup refusals that mean "already there from an earlier run": fine."""

BadKind = Literal[
    "invalid_json",
    "not_an_object",
    "wrong_type",
    "negative_count",
    "absurd_count",
    "unknown_model",
    "unknown_seat",
]
BAD_KINDS: Final[tuple[BadKind, ...]] = get_args(BadKind)
UNDECODABLE_KINDS: Final = frozenset(
    {"invalid_json", "not_an_object", "wrong_type", "negative_count", "absurd_count"}
)
"""Bad kinds that fail `UsageEvent` decoding; the others decode but the ledger refuses them."""
UNKNOWN_MODEL: Final = "no-such-model"
_ENCODER: Final = msgspec.json.Encoder()


# -- the plan: who exists -------------------------------------------------------------------------


@dataclass(frozen=True)
class SeatPlan:
    subscription_id: str
    seat_id: str
    tier: Tier


@dataclass(frozen=True)
class Plan:
    """The subscriptions, seats and packs a simulation uses; ids are stable across runs."""

    subscriptions: tuple[str, ...]
    seats: tuple[SeatPlan, ...]
    packs: tuple[tuple[str, str], ...]

    def commands(self) -> list[Command]:
        opened: list[Command] = [OpenSubscription(sub) for sub in self.subscriptions]
        seats: list[Command] = [AddSeat(s.subscription_id, s.seat_id, s.tier) for s in self.seats]
        packs: list[Command] = [BuyPack(sub, pack) for sub, pack in self.packs]
        return opened + seats + packs


def make_plan(
    subscriptions: int, seats_per_subscription: int, seed: int, prefix: str = DEFAULT_ID_PREFIX
) -> Plan:
    rng = random.Random(f"plan-{seed}")
    tiers = [tier for tier, _ in TIER_WEIGHTS]
    weights = [weight for _, weight in TIER_WEIGHTS]
    subs = tuple(f"{prefix}-sub-{i}" for i in range(subscriptions))
    seats = tuple(
        SeatPlan(sub, f"{sub}-seat-{j}", rng.choices(tiers, weights)[0])
        for sub in subs
        for j in range(seats_per_subscription)
    )
    return Plan(subs, seats, tuple((sub, f"{sub}-pack-1") for sub in subs))


@dataclass(frozen=True)
class SetupReport:
    created: int
    existing: int
    position: int

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "existing": self.existing, "position": self.position}

    def line(self, plan: Plan) -> str:
        return (
            f"setup: {len(plan.subscriptions)} subscriptions, {len(plan.seats)} seats, "
            f"{len(plan.packs)} packs ({self.created} created, {self.existing} already there), "
            f"log position {self.position}"
        )


def setup_ledger(settings: Settings, plan: Plan) -> SetupReport:
    """Write the plan's subscriptions, seats and packs into the ledger; existing ones are fine."""
    from services.bootstrap import bootstrap  # the store is opened only when asked for

    parts = bootstrap(settings)
    try:
        ledger = parts.ledger()
        commands = plan.commands()
        created = existing = 0
        for start in range(0, len(commands), SETUP_BATCH_COMMANDS):
            batch = commands[start : start + SETUP_BATCH_COMMANDS]
            for command, outcome in zip(batch, ledger.execute(batch), strict=True):
                if outcome.status == "rejected":
                    if outcome.reason not in EXISTING:
                        raise LedgerError(
                            f"setup: {type(command).__name__} refused: "
                            f"{outcome.reason}: {outcome.detail}"
                        )
                    existing += 1
                elif outcome.records:
                    created += 1
                else:
                    existing += 1  # e.g. a pack bought on an earlier run: nothing new
        return SetupReport(created, existing, ledger.position)
    finally:
        parts.close()


# -- pacing ---------------------------------------------------------------------------------------


TOKEN_EPSILON: Final = 1e-6
"""Tokens a bucket may be short and still grant: otherwise a rounding error can sleep for a
time too small to move the clock, forever."""


class TokenBucket:
    """Tokens accrue at `rate` per second of `clock` up to `capacity`; `acquire(n)` waits for n.

    The bucket starts empty, so n entries take at least n / rate seconds from its creation.
    Time spent elsewhere (generating, publishing, sleeping too long) is credited as tokens,
    so the long-run rate is exact rather than drifting below it.
    """

    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()

    def acquire(self, n: int) -> None:
        if n > self.capacity:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.capacity}")
        while True:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n - TOKEN_EPSILON:  # float sums may land a hair short
                self._tokens -= n
                return
            self._sleep((n - self._tokens) / self.rate)


def chunk_size(rate: float) -> int:
    """Entries per chunk: the largest at full speed, ~1/CHUNKS_PER_SECOND of a second paced."""
    if rate <= 0:
        return MAX_CHUNK_ENTRIES
    return max(1, min(MAX_CHUNK_ENTRIES, round(rate / CHUNKS_PER_SECOND)))


# -- the workload ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Valid:
    event: UsageEvent


@dataclass(frozen=True)
class Duplicate:
    event: UsageEvent


@dataclass(frozen=True)
class Bad:
    kind: BadKind
    data: bytes


Entry = Valid | Duplicate | Bad


def models_in_force(card: RateCard, at: datetime) -> tuple[list[str], list[str]]:
    """The text and image models of the version in force at `at` (else the latest).

    In the card's order: the first ones listed get the most traffic.
    """
    version: RateCardVersion = card.in_force(at) or card.versions[-1]
    text = [m for m, rates in version.models.items() if rates.product == "text"]
    image = [m for m, rates in version.models.items() if rates.product == "image"]
    return text, image


def _clamp(value: float, high: int) -> int:
    return max(0, min(high, int(value)))


def _log_normal(rng: random.Random, median: int, sigma: float) -> int:
    return _clamp(rng.lognormvariate(math.log(median), sigma), MAX_TOKENS_PER_COMPONENT)


class ZipfPicker:
    """Picks from `items` with weight 1 / rank**exponent: the first few most of the time."""

    def __init__(self, items: Sequence[Any], exponent: float) -> None:
        self.items = list(items)
        total = 0.0
        self._cumulative: list[float] = []
        for rank in range(1, len(self.items) + 1):
            total += 1.0 / rank**exponent
            self._cumulative.append(total)
        self._total = total

    def pick(self, rng: random.Random) -> Any:
        index = bisect.bisect_right(self._cumulative, rng.random() * self._total)
        return self.items[min(index, len(self.items) - 1)]


@dataclass
class Workload:
    """Yields the entries to publish, in order: `events` valid, plus duplicates and bad ones."""

    plan: Plan
    text_models: Sequence[str]
    image_models: Sequence[str]
    events: int
    duplicates: int
    bad: int
    seed: int
    run_id: str
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if not self.plan.seats:
            raise ConfigError("simulate needs at least one seat")
        if not self.text_models and not self.image_models:
            raise ConfigError("the rate card in force has no models")
        self.rng = random.Random(self.seed)
        seats = list(self.plan.seats)
        self.rng.shuffle(seats)  # which seats are the busy ones is up to the seed
        self._seats = ZipfPicker(seats, SEAT_ACTIVITY_EXPONENT)
        self._text = ZipfPicker(self.text_models, MODEL_POPULARITY_EXPONENT)
        self._image = ZipfPicker(self.image_models, MODEL_POPULARITY_EXPONENT)

    @property
    def total(self) -> int:
        return self.events + self.duplicates + self.bad

    def entries(self) -> Iterator[Entry]:
        rng = self.rng
        # Slot 0 is always a valid event, so every duplicate has an earlier event to repeat.
        special = rng.sample(range(1, self.total), self.duplicates + self.bad) if self.total else []
        duplicate_slots = set(special[: self.duplicates])
        bad_slots = set(special[self.duplicates :])
        recent: list[UsageEvent] = []
        serial = 0
        for slot in range(self.total):
            if slot in duplicate_slots:
                yield Duplicate(rng.choice(recent))
            elif slot in bad_slots:
                yield self._bad(BAD_KINDS[rng.randrange(len(BAD_KINDS))], slot)
            else:
                event = self._event(f"{self._id_base()}-{serial}")
                serial += 1
                if len(recent) < RECENT_EVENTS:
                    recent.append(event)
                else:
                    recent[rng.randrange(RECENT_EVENTS)] = event
                yield Valid(event)

    def _id_base(self) -> str:
        return f"sim-{self.seed}-{self.run_id}"

    def _event(self, event_id: str) -> UsageEvent:
        rng = self.rng
        seat: SeatPlan = self._seats.pick(rng)
        now = datetime.now(UTC)
        common: dict[str, Any] = {
            "event_id": event_id,
            "subscription_id": seat.subscription_id,
            "seat_id": seat.seat_id,
            "occurred_at": now,
            "request_id": f"req-{event_id}",
            "api_key_id": f"key-{seat.seat_id}",
            "gateway": "ledger-simulate",
        }
        if self.image_models and (not self.text_models or rng.random() < IMAGE_SHARE):
            model: str = self._image.pick(rng)
            images = min(rng.randint(1, MAX_IMAGES_SIMULATED), MAX_IMAGES_PER_REQUEST)
            prompt = _log_normal(rng, IMAGE_PROMPT_TOKENS_MEDIAN, IMAGE_PROMPT_TOKENS_SIGMA)
            return UsageEvent(model=model, input_tokens=prompt, images=images, **common)
        model = self._text.pick(rng)
        thinking = rng.random() < THINKING_SHARE
        input_tokens = _log_normal(rng, INPUT_TOKENS_MEDIAN, INPUT_TOKENS_SIGMA)
        cached = 0
        if rng.random() < CACHE_HIT_SHARE:
            cached = _log_normal(rng, CACHED_TOKENS_MEDIAN, CACHED_TOKENS_SIGMA)
        scale = THINKING_OUTPUT_TOKENS_SCALE if thinking else OUTPUT_TOKENS_SCALE
        output = _clamp(rng.paretovariate(OUTPUT_TOKENS_ALPHA) * scale, MAX_TOKENS_PER_COMPONENT)
        tool_calls = 0
        if rng.random() < TOOL_CALL_SHARE:
            extra = rng.expovariate(1 / TOOL_CALLS_MEAN_EXTRA)
            tool_calls = _clamp(1 + extra, MAX_TOOL_CALLS_PER_REQUEST)
        return UsageEvent(
            model=model,
            input_tokens=input_tokens,
            cached_tokens=cached,
            output_tokens=output,
            tool_calls=tool_calls,
            thinking=thinking,
            **common,
        )

    def _bad(self, kind: BadKind, slot: int) -> Bad:
        event = self._event(f"{self._id_base()}-bad-{slot}")
        fields = msgspec.to_builtins(event)
        if kind == "invalid_json":
            return Bad(kind, encode_usage(event)[: self.rng.randint(1, MAX_TRUNCATED_JSON_BYTES)])
        if kind == "not_an_object":
            return Bad(kind, _ENCODER.encode([fields["event_id"], fields["seat_id"]]))
        if kind == "wrong_type":
            fields["input_tokens"] = "lots"
        elif kind == "negative_count":
            fields["output_tokens"] = -self.rng.randint(1, 1_000)
        elif kind == "absurd_count":
            fields["input_tokens"] = MAX_TOKENS_PER_COMPONENT * 10
        elif kind == "unknown_model":
            fields["model"] = UNKNOWN_MODEL
        elif kind == "unknown_seat":
            fields["seat_id"] = f"{fields['subscription_id']}-ghost-{slot}"
        return Bad(kind, _ENCODER.encode(fields))


def random_seed() -> int:
    return random.SystemRandom().randrange(2**31)


# -- publishing -----------------------------------------------------------------------------------


def _publish_chunk(publisher: UsagePublisher, client: redis.Redis, chunk: list[Entry]) -> None:
    """Publish in order: runs of events through the publisher, runs of bad bytes raw."""
    start = 0
    while start < len(chunk):
        is_bad = isinstance(chunk[start], Bad)
        end = start
        while end < len(chunk) and isinstance(chunk[end], Bad) == is_bad:
            end += 1
        run = chunk[start:end]
        if is_bad:
            pipe = client.pipeline(transaction=False)
            for entry in run:
                assert isinstance(entry, Bad)
                pipe.xadd(publisher.stream, {DATA_FIELD: entry.data})
            pipe.execute()
        else:
            publisher.publish_many(e.event for e in run if not isinstance(e, Bad))
        start = end


def _chunks(entries: Iterator[Entry], size: int) -> Iterator[list[Entry]]:
    chunk: list[Entry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_simulation(
    redis_url: str,
    stream: str,
    *,
    events: int = DEFAULT_EVENTS,
    rate: float = 0.0,
    subscriptions: int = DEFAULT_SUBSCRIPTIONS,
    seats_per_subscription: int = DEFAULT_SEATS_PER_SUBSCRIPTION,
    duplicate_ratio: float = DEFAULT_DUPLICATE_RATIO,
    bad_ratio: float = DEFAULT_BAD_RATIO,
    seed: int | None = None,
    setup: Settings | None = None,
    rate_card: RateCard | None = None,
    id_prefix: str = DEFAULT_ID_PREFIX,
    on_progress: Callable[[int], None] | None = None,
    on_setup: Callable[[str], None] | None = None,
    client: redis.Redis | None = None,
) -> dict[str, Any]:
    """Publish the workload and return its summary.

    `setup`: the settings of the ledger to create the subscriptions and seats in first (None:
    no setup). `rate_card`: where the models come from (default: `setup`'s card, else the
    shipped one). `on_progress(n)` is called after every published chunk of n entries;
    `on_setup(line)` with the one-line setup summary.
    """
    if events < 0 or subscriptions < 1 or seats_per_subscription < 1:
        raise ConfigError("simulate needs events >= 0, subscriptions >= 1 and seats >= 1")
    if not (0 <= duplicate_ratio <= 1 and 0 <= bad_ratio <= 1):
        raise ConfigError("simulate: --duplicate-ratio and --bad-ratio must be within 0..1")
    if rate < 0 or not math.isfinite(rate):
        raise ConfigError("simulate: --rate must be >= 0 (0: as fast as possible)")
    seed = random_seed() if seed is None else seed
    run_id = uuid.uuid4().hex[:8]
    plan = make_plan(subscriptions, seats_per_subscription, seed, id_prefix)
    if rate_card is None:
        rate_card = load_rate_card(setup.rate_card if setup is not None else None)
    text_models, image_models = models_in_force(rate_card, datetime.now(UTC))

    setup_report: SetupReport | None = None
    if setup is not None:
        setup_report = setup_ledger(setup, plan)
        if on_setup is not None:
            on_setup(setup_report.line(plan))

    duplicates = round(events * duplicate_ratio) if events else 0
    bad = round(events * bad_ratio) if events else 0
    workload = Workload(
        plan, text_models, image_models, events, duplicates, bad, seed=seed, run_id=run_id
    )
    size = chunk_size(rate)
    own_client = client is None
    conn = redis.Redis.from_url(redis_url) if client is None else client
    bad_kinds: Counter[str] = Counter()
    published = 0
    started = time.monotonic()
    bucket = TokenBucket(rate, 2 * size) if rate > 0 else None
    try:
        with UsagePublisher(redis_url, stream, client=conn) as publisher:
            for chunk in _chunks(workload.entries(), size):
                if bucket is not None:
                    bucket.acquire(len(chunk))
                _publish_chunk(publisher, conn, chunk)
                published += len(chunk)
                bad_kinds.update(e.kind for e in chunk if isinstance(e, Bad))
                if on_progress is not None:
                    on_progress(len(chunk))
    finally:
        if own_client:
            conn.close()
    seconds = time.monotonic() - started
    return {
        "stream": stream,
        "seed": seed,
        "run_id": run_id,
        "published": published,
        "valid_unique": events,
        "duplicates": duplicates,
        "bad": bad,
        "bad_by_kind": dict(sorted(bad_kinds.items())),
        "subscriptions": len(plan.subscriptions),
        "seats": len(plan.seats),
        "setup": None if setup_report is None else setup_report.as_dict(),
        "seconds": round(seconds, 6),
        "events_per_s": round(published / seconds, 1) if seconds > 0 else None,
    }


# -- the command ----------------------------------------------------------------------------------


@click.command()
@click.option("--redis-url", help="Overrides LEDGER_REDIS_URL (one of them is required).")
@click.option("--stream", help="Overrides LEDGER_USAGE_STREAM.")
@click.option(
    "--events",
    type=click.IntRange(min=0),
    default=DEFAULT_EVENTS,
    show_default=True,
    help="Unique valid usage events (duplicates and bad entries come on top).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="EVENTS_PER_S",
    help="Stream entries per second; 0 publishes as fast as possible.",
)
@click.option(
    "--subscriptions",
    type=click.IntRange(min=1),
    default=DEFAULT_SUBSCRIPTIONS,
    show_default=True,
)
@click.option(
    "--seats-per-subscription",
    type=click.IntRange(min=1),
    default=DEFAULT_SEATS_PER_SUBSCRIPTION,
    show_default=True,
)
@click.option(
    "--duplicate-ratio",
    type=click.FloatRange(0, 1),
    default=DEFAULT_DUPLICATE_RATIO,
    show_default=True,
    help="Earlier events published again, per valid event.",
)
@click.option(
    "--bad-ratio",
    type=click.FloatRange(0, 1),
    default=DEFAULT_BAD_RATIO,
    show_default=True,
    help="Invalid entries (bad JSON, wrong types, bad counts, unknown model or seat).",
)
@click.option("--seed", type=int, help="Makes the workload reproducible (default: random).")
@click.option(
    "--setup/--no-setup",
    default=True,
    show_default=True,
    help="Create the subscriptions, seats and packs in the ledger first.",
)
@click.option(
    "--id-prefix",
    default=DEFAULT_ID_PREFIX,
    show_default=True,
    help="Prefix of subscription ids (<prefix>-sub-N), seat ids and pack ids.",
)
@click.pass_obj
@one_line_errors
def simulate(
    settings: Settings,
    redis_url: str | None,
    stream: str | None,
    events: int,
    rate: float,
    subscriptions: int,
    seats_per_subscription: int,
    duplicate_ratio: float,
    bad_ratio: float,
    seed: int | None,
    setup: bool,
    id_prefix: str,
) -> None:
    """Publish a realistic synthetic workload onto the usage stream.

    Many subscriptions and seats, a mix of the rate card's models, skewed token counts, and a
    sprinkle of duplicates and bad entries. Progress goes to stderr; a JSON summary to stdout.
    """
    settings = settings.with_overrides(redis_url=redis_url, usage_stream=stream)
    if settings.redis_url is None:
        raise ConfigError("simulate needs a Redis: pass --redis-url or set LEDGER_REDIS_URL")
    seed = random_seed() if seed is None else seed
    rate_card = load_rate_card(settings.rate_card)
    client: Any = redis_client(settings.redis_url, cluster=settings.redis_cluster)
    try:
        client.ping()  # before the ledger is touched: an unreachable Redis changes nothing
        report: SetupReport | None = None
        if setup:  # before the progress bar, so its one line stands on its own
            plan = make_plan(subscriptions, seats_per_subscription, seed, id_prefix)
            report = setup_ledger(settings, plan)
            click.echo(report.line(plan), err=True)
        total = events + round(events * duplicate_ratio) + round(events * bad_ratio)
        with click.progressbar(length=total, label="publishing", file=sys.stderr) as bar:
            summary = run_simulation(
                settings.redis_url,
                settings.usage_stream,
                events=events,
                rate=rate,
                subscriptions=subscriptions,
                seats_per_subscription=seats_per_subscription,
                duplicate_ratio=duplicate_ratio,
                bad_ratio=bad_ratio,
                seed=seed,
                rate_card=rate_card,
                id_prefix=id_prefix,
                on_progress=bar.update,
                client=client,
            )
    except redis.RedisError as error:  # an OSError to the CLI's table: exit 4
        raise ConnectionError(f"Redis: {error}") from error
    finally:
        client.close()
    if report is not None:
        summary["setup"] = report.as_dict()
    click.echo(_ENCODER.encode(summary))
