"""`ledger simulate`: publish a realistic synthetic workload onto the usage stream.

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

Setup (`--setup`, the default) opens the subscriptions, adds their seats and buys one pack per
subscription through the HTTP API of the running `ledger serve` (its URL from the data dir's
`serve.json`, else LEDGER_HOST and LEDGER_PORT, or `--api-url`; the admin token from
LEDGER_ADMIN_TOKEN or the data dir's `admin-token` file), so they land in the log that serve
reads. On a second run what already exists is left as it is. Seat ids are `seat-N` within each
subscription (`--seat-ids plain`, the default), or `<subscription>-seat-N` (`prefixed`).

Events go where `ledger publish` sends them: LEDGER_REDIS_URL (or `--redis-url`) and the
configured stream, else the Redis and stream of the serve running on the data dir.

`run_simulation(...)` publishes without click (and without setup) and returns the summary.
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
import httpx
import msgspec

from ledger.errors import LedgerError
from ledger.rate_card import RateCard, RateCardVersion, load_rate_card
from schemas.commands import Tier
from schemas.limits import (
    MAX_IMAGES_PER_REQUEST,
    MAX_TOKENS_PER_COMPONENT,
    MAX_TOOL_CALLS_PER_REQUEST,
)
from schemas.usage import UsageEvent
from services.auth.tokens import ADMIN_TOKEN_FILE
from services.cli_errors import one_line_errors
from services.client import AnyRedis, UsagePublisher, encode_usage, redis_client
from services.config import ConfigError, Settings
from services.running import ServiceNotRunning, UsageTarget, http_url, usage_target

# -- defaults and shapes --------------------------------------------------------------------------

DEFAULT_EVENTS: Final = 10_000
DEFAULT_SUBSCRIPTIONS: Final = 20
DEFAULT_SEATS_PER_SUBSCRIPTION: Final = 8
DEFAULT_DUPLICATE_RATIO: Final = 0.01
DEFAULT_BAD_RATIO: Final = 0.005
DEFAULT_ID_PREFIX: Final = "sim"

HTTP_TIMEOUT_S: Final = 30.0
"""Longest wait for one setup write (answered once the serve's balances show it)."""
MAX_CHUNK_ENTRIES: Final = 1_000
"""Most entries generated and published per round of pacing."""
CHUNKS_PER_SECOND: Final = 50
"""At a given rate, chunks are sized so about this many go out per second (smooth pacing)."""
RECENT_EVENTS: Final = 1_024
"""Duplicates re-publish one of this many most recent valid events."""

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
EXISTING: Final = frozenset({"seat-exists"})
"""Setup refusals (problem types) that mean "already there from an earlier run": fine."""
MAX_DETAIL_CHARS: Final = 300
"""Most characters of a refusal's detail quoted in the one-line error."""

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


SeatIds = Literal["plain", "prefixed"]
"""`plain`: `seat-N` in every subscription (a seat id names a seat within its subscription);
`prefixed`: `<subscription>-seat-N`, unique across the ledger."""
SEAT_ID_STYLES: Final[tuple[SeatIds, ...]] = get_args(SeatIds)


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

    def requests(self) -> Iterator[tuple[str, dict[str, str]]]:
        """The admin API's writes that set the plan up, in order: (path, JSON body)."""
        for sub in self.subscriptions:
            yield "/v1/subscriptions", {"subscription_id": sub}
        for seat in self.seats:
            body = {"seat_id": seat.seat_id, "tier": seat.tier}
            yield f"/v1/subscriptions/{seat.subscription_id}/seats", body
        for sub, pack in self.packs:
            yield f"/v1/subscriptions/{sub}/packs", {"pack_id": pack}


def make_plan(
    subscriptions: int,
    seats_per_subscription: int,
    seed: int,
    prefix: str = DEFAULT_ID_PREFIX,
    seat_ids: SeatIds = "plain",
) -> Plan:
    rng = random.Random(f"plan-{seed}")
    tiers = [tier for tier, _ in TIER_WEIGHTS]
    weights = [weight for _, weight in TIER_WEIGHTS]
    subs = tuple(f"{prefix}-sub-{i}" for i in range(subscriptions))
    seats = tuple(
        SeatPlan(
            sub,
            f"seat-{j}" if seat_ids == "plain" else f"{sub}-seat-{j}",
            rng.choices(tiers, weights)[0],
        )
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


class SetupRefused(LedgerError):
    """The running ledger refused one of the setup's writes."""


def setup_through_api(api: httpx.Client, plan: Plan) -> SetupReport:
    """Make the plan's subscriptions, seats and packs with the admin API of the running serve
    (`api`: its base URL and admin token); what exists already is left as it is."""
    created = existing = 0
    for path, body in plan.requests():
        reply = api.post(path, json=body)
        if reply.status_code == httpx.codes.CREATED:
            created += 1
        elif reply.status_code == httpx.codes.OK or _problem(reply) in EXISTING:
            existing += 1  # there from an earlier run (a seat keeps the tier it has)
        else:
            detail = _problem_detail(reply)
            raise SetupRefused(f"setup: POST {path} answered {reply.status_code}: {detail}")
    head = api.get("/readyz").json()["head"]
    return SetupReport(created, existing, head)


def _problem(reply: httpx.Response) -> str | None:
    """The slug of an RFC 9457 problem reply (`seat-exists`), or None."""
    try:
        kind = reply.json().get("type", "")
    except ValueError:
        return None
    return kind.rsplit("/", 1)[-1] if isinstance(kind, str) else None


def _problem_detail(reply: httpx.Response) -> str:
    try:
        body = reply.json()
    except ValueError:
        return reply.text[:MAX_DETAIL_CHARS]
    return str(body.get("detail") or body.get("title") or body)[:MAX_DETAIL_CHARS]


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
            "api_key_id": f"key-{seat.subscription_id}-{seat.seat_id}",
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


def _publish_chunk(publisher: UsagePublisher, chunk: list[Entry]) -> None:
    """Publish in order: runs of events through the publisher, runs of bad bytes raw."""
    start = 0
    while start < len(chunk):
        is_bad = isinstance(chunk[start], Bad)
        end = start
        while end < len(chunk) and isinstance(chunk[end], Bad) == is_bad:
            end += 1
        run = chunk[start:end]
        if is_bad:
            publisher.publish_raw_many(e.data for e in run if isinstance(e, Bad))
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
    rate_card: RateCard | None = None,
    id_prefix: str = DEFAULT_ID_PREFIX,
    seat_ids: SeatIds = "plain",
    partitions: int = 1,
    on_progress: Callable[[int], None] | None = None,
    client: AnyRedis | None = None,
) -> dict[str, Any]:
    """Publish the workload of `make_plan(...)`'s seats and return its summary (no setup: the
    command sets up through the running serve's API first).

    `rate_card`: where the models come from (default: the shipped one). `on_progress(n)` is
    called after every published chunk of n entries.
    """
    _check(events, rate, subscriptions, seats_per_subscription, duplicate_ratio, bad_ratio)
    seed = random_seed() if seed is None else seed
    run_id = uuid.uuid4().hex[:8]
    plan = make_plan(subscriptions, seats_per_subscription, seed, id_prefix, seat_ids)
    text_models, image_models = models_in_force(rate_card or load_rate_card(), datetime.now(UTC))
    duplicates = round(events * duplicate_ratio) if events else 0
    bad = round(events * bad_ratio) if events else 0
    workload = Workload(
        plan, text_models, image_models, events, duplicates, bad, seed=seed, run_id=run_id
    )
    size = chunk_size(rate)
    bad_kinds: Counter[str] = Counter()
    published = 0
    started = time.monotonic()
    bucket = TokenBucket(rate, 2 * size) if rate > 0 else None
    with UsagePublisher(redis_url, stream, partitions=partitions, client=client) as publisher:
        for chunk in _chunks(workload.entries(), size):
            if bucket is not None:
                bucket.acquire(len(chunk))
            _publish_chunk(publisher, chunk)
            published += len(chunk)
            bad_kinds.update(e.kind for e in chunk if isinstance(e, Bad))
            if on_progress is not None:
                on_progress(len(chunk))
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
        "setup": None,
        "seconds": round(seconds, 6),
        "events_per_s": round(published / seconds, 1) if seconds > 0 else None,
    }


def _check(
    events: int,
    rate: float,
    subscriptions: int,
    seats_per_subscription: int,
    duplicate_ratio: float,
    bad_ratio: float,
) -> None:
    if events < 0 or subscriptions < 1 or seats_per_subscription < 1:
        raise ConfigError("simulate needs events >= 0, subscriptions >= 1 and seats >= 1")
    if not (0 <= duplicate_ratio <= 1 and 0 <= bad_ratio <= 1):
        raise ConfigError("simulate: --duplicate-ratio and --bad-ratio must be within 0..1")
    if rate < 0 or not math.isfinite(rate):
        raise ConfigError("simulate: --rate must be >= 0 (0: as fast as possible)")


# -- the command ----------------------------------------------------------------------------------


@click.command()
@click.option("--redis-url", help="Overrides LEDGER_REDIS_URL (default: the running serve's).")
@click.option("--stream", help="Overrides the usage stream (default: the running serve's).")
@click.option("--api-url", help="The running serve's HTTP API, for --setup (default: found).")
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
    help="Open the subscriptions, seats and packs first, through the running serve's API.",
)
@click.option(
    "--id-prefix",
    default=DEFAULT_ID_PREFIX,
    show_default=True,
    help="Prefix of subscription ids (<prefix>-sub-N) and pack ids.",
)
@click.option(
    "--seat-ids",
    type=click.Choice(SEAT_ID_STYLES),
    default="plain",
    show_default=True,
    help="plain: seat-N in each subscription; prefixed: <subscription>-seat-N.",
)
@click.pass_obj
@one_line_errors
def simulate(
    settings: Settings, /, redis_url: str | None, stream: str | None, **options: Any
) -> None:
    """Publish a realistic synthetic workload onto the usage stream.

    Many subscriptions and seats, a mix of the rate card's models, skewed token counts, and a
    sprinkle of duplicates and bad entries. Progress goes to stderr; a JSON summary to stdout.
    """
    api_url = options.pop("api_url")
    setup = options.pop("setup")
    options["seed"] = random_seed() if options["seed"] is None else options["seed"]
    target = usage_target(settings, redis_url, stream)
    client: AnyRedis = redis_client(target.redis_url, cluster=target.cluster)
    try:
        client.ping()  # before the ledger is touched: an unreachable Redis changes nothing
        report: SetupReport | None = None
        if setup:  # before the progress bar, so its one line stands on its own
            plan = make_plan(
                options["subscriptions"],
                options["seats_per_subscription"],
                options["seed"],
                options["id_prefix"],
                options["seat_ids"],
            )
            report = _set_up(settings, api_url or target.http_url, plan)
            click.echo(report.line(plan), err=True)
        summary = _publish_with_progress(settings, target, client, options)
    finally:
        client.close()
    if report is not None:
        summary["setup"] = report.as_dict()
    click.echo(_ENCODER.encode(summary))


def _set_up(settings: Settings, api_url: str | None, plan: Plan) -> SetupReport:
    url = api_url or http_url(settings.host, settings.port)
    token = settings.admin_token or _admin_token_file(settings)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=HTTP_TIMEOUT_S) as api:
        try:
            return setup_through_api(api, plan)
        except httpx.TransportError as error:
            raise ServiceNotRunning(
                f"no `ledger serve` answers at {url} ({error}); start one, or pass --no-setup"
            ) from None


def _admin_token_file(settings: Settings) -> str:
    try:
        return (settings.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            "simulate's setup needs the admin token: set LEDGER_ADMIN_TOKEN, or run it where "
            f"{settings.data_dir / ADMIN_TOKEN_FILE} is (or pass --no-setup)"
        ) from None


def _publish_with_progress(
    settings: Settings, target: UsageTarget, client: AnyRedis, options: dict[str, Any]
) -> dict[str, Any]:
    events = options["events"]
    total = (
        events + round(events * options["duplicate_ratio"]) + round(events * options["bad_ratio"])
    )
    with click.progressbar(length=total, label="publishing", file=sys.stderr) as bar:
        return run_simulation(
            target.redis_url,
            target.stream,
            rate_card=load_rate_card(settings.rate_card),
            partitions=target.partitions,
            on_progress=bar.update,
            client=client,
            **options,
        )
