"""Helpers of the fault tests (tests/test_crash.py): real `ledger serve` processes, a known
workload, a publisher that survives Redis restarts, and an independent tally of the outcome.

Nothing here imports the ledger's pricing: the expected charge of every event is computed with
integers from `TEST_RATES`, the same numbers the test writes as the rate card the processes
load (`LEDGER_RATE_CARD`), so a pricing bug cannot agree with itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import redis

from services.children import die_with_parent
from services.redis_server import free_loopback_port

GROUP = "ledger"
UCR_PER_CREDIT = 1_000_000
ROUNDING_UNIT_UCR = 10_000  # 0.01 credit
TOKENS_PER_RATE = 1_000

STARTED_EVENT = '"event": "ledger.started"'
START_TIMEOUT_S = 60.0
"""A bound on a hang, not a speed goal: on a loaded two-core machine a start can take over
20 s, and a serve that exits instead fails the wait at once."""
STOP_TIMEOUT_S = 20.0
KILL_TIMEOUT_S = 5.0
CLI_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 30

# -- the rate card of the test (integer micro-credits) ------------------------------------------

TEXT_RATE_KEYS = ("input_per_1k", "cached_per_1k", "output_per_1k", "thinking_per_1k", "tool_call")

TEST_RATES: dict[str, dict[str, Any]] = {
    # The seed's published qwen3.6-plus rates (0.2 / 0.02 / 1.2 per 1K).
    "t-alpha": {
        "product": "text",
        "input_per_1k": 200_000,
        "cached_per_1k": 20_000,
        "output_per_1k": 1_200_000,
        "thinking_per_1k": 400_000,
        "tool_call": 10_000,
    },
    # Odd rates, so that many components land on or near a half-cent.
    "t-odd": {
        "product": "text",
        "input_per_1k": 137_000,
        "cached_per_1k": 13_100,
        "output_per_1k": 1_905_000,
        "thinking_per_1k": 555_000,
        "tool_call": 3_500,
    },
    # 8.125 credits per image: one image is 8.13 (half-up), two are exactly 16.25.
    "i-gamma": {"product": "image", "image": 8_125_000},
}
TEST_RATE_CARD_VERSION = "crash-test-1"


def _credits_text(ucr: int) -> str:
    return f"{ucr // UCR_PER_CREDIT}.{ucr % UCR_PER_CREDIT:06d}"


def write_rate_card(path: Path) -> Path:
    """The TOML rate card holding `TEST_RATES`, in force since 2000."""
    lines = [
        "[[versions]]",
        f'version = "{TEST_RATE_CARD_VERSION}"',
        "effective_from = 2000-01-01T00:00:00Z",
    ]
    for model, rates in TEST_RATES.items():
        lines += ["", f'[versions.models."{model}"]', f'product = "{rates["product"]}"']
        lines += [f'{k} = "{_credits_text(v)}"' for k, v in rates.items() if k != "product"]
        lines.append("assumed = []")
    path.write_text("\n".join(lines) + "\n")
    return path


def _half_up_cents(numerator: int, denominator: int) -> int:
    """numerator / denominator µcr, rounded half-up to whole 0.01 credits, in µcr."""
    quotient, remainder = divmod(numerator, denominator * ROUNDING_UNIT_UCR)
    if 2 * remainder >= denominator * ROUNDING_UNIT_UCR:
        quotient += 1
    return quotient * ROUNDING_UNIT_UCR


def expected_components(event: Mapping[str, Any]) -> dict[str, int]:
    """Each component of a usage event's charge under `TEST_RATES`, in µcr."""
    rates = TEST_RATES[event["model"]]
    if rates["product"] == "image":
        return {
            "input_ucr": 0,
            "cached_ucr": 0,
            "output_ucr": 0,
            "thinking_ucr": 0,
            "tools_ucr": 0,
            "images_ucr": _half_up_cents(event.get("images", 0) * rates["image"], 1),
        }
    output = event.get("output_tokens", 0)
    return {
        "input_ucr": _half_up_cents(
            event.get("input_tokens", 0) * rates["input_per_1k"], TOKENS_PER_RATE
        ),
        "cached_ucr": _half_up_cents(
            event.get("cached_tokens", 0) * rates["cached_per_1k"], TOKENS_PER_RATE
        ),
        "output_ucr": _half_up_cents(output * rates["output_per_1k"], TOKENS_PER_RATE),
        "thinking_ucr": _half_up_cents(output * rates["thinking_per_1k"], TOKENS_PER_RATE)
        if event.get("thinking")
        else 0,
        "tools_ucr": _half_up_cents(event.get("tool_calls", 0) * rates["tool_call"], 1),
        "images_ucr": 0,
    }


def expected_ucr(event: Mapping[str, Any]) -> int:
    return sum(expected_components(event).values())


# -- the workload --------------------------------------------------------------------------------

SUBSCRIPTION = "crash-team"
OTHER_SUBSCRIPTION = "crash-other"
SEATS = (("seat-p", "premium"), ("seat-a", "advanced"), ("seat-s", "standard"))
OTHER_SEAT = "seat-o"
PACK = "crash-pack-1"

Kind = Literal["valid", "duplicate", "conflict", "invalid"]


@dataclass(frozen=True)
class Item:
    """One XADD of the workload, and what the ledger must make of it."""

    fields: dict[bytes, bytes]
    kind: Kind
    event_id: str | None = None
    """The usage event's id (valid, duplicate and conflict items)."""
    reason: str | None = None
    """The dead-letter reason expected (invalid items; conflict items if they lose)."""

    @property
    def key(self) -> bytes:
        """Identifies the payload in the stream: the `data` bytes (or all fields without one)."""
        if b"data" in self.fields:
            return self.fields[b"data"]
        return entry_key(self.fields)


def entry_key(fields: Mapping[bytes, bytes]) -> bytes:
    if b"data" in fields:
        return fields[b"data"]
    return b"fields:" + b"|".join(k + b"=" + v for k, v in sorted(fields.items()))


def setup_commands() -> list[dict[str, Any]]:
    """The backfill lines written before `ledger serve` starts (ledger clock: system time)."""
    lines: list[dict[str, Any]] = [
        {"type": "subscription.open", "subscription_id": SUBSCRIPTION},
        {"type": "subscription.open", "subscription_id": OTHER_SUBSCRIPTION},
    ]
    lines += [
        {"type": "seat.add", "subscription_id": SUBSCRIPTION, "seat_id": seat, "tier": tier}
        for seat, tier in SEATS
    ]
    lines.append(
        {
            "type": "seat.add",
            "subscription_id": OTHER_SUBSCRIPTION,
            "seat_id": OTHER_SEAT,
            "tier": "standard",
        }
    )
    lines.append({"type": "pack.buy", "subscription_id": SUBSCRIPTION, "pack_id": PACK})
    return lines


@dataclass
class Workload:
    items: list[Item]
    events: dict[str, dict[str, Any]]
    """Every valid usage event by event_id, as published."""
    conflicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """By event_id: the other payload published later under the same event_id."""

    def counts(self) -> Counter[str]:
        return Counter(item.kind for item in self.items)

    def by_key(self) -> dict[bytes, Item]:
        found: dict[bytes, Item] = {}
        for item in self.items:
            found.setdefault(item.key, item)  # a duplicate has its original's key
        return found


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def make_workload(
    rng: random.Random, *, valid: int, duplicates: int, conflicts: int, invalid: int, tag: str
) -> Workload:
    """`valid` unique usage events, `duplicates` exact re-publications of some of them (the same
    bytes, later in the stream), `conflicts` of them re-published later with another payload
    (1,000 more input tokens), and `invalid` entries of every dead-letter kind, shuffled."""
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    events: dict[str, dict[str, Any]] = {}
    valid_items: list[Item] = []
    for n in range(valid):
        event_id = f"{tag}-ev-{n:06d}"
        seat, _tier = rng.choice(SEATS)
        model = rng.choice(("t-alpha", "t-alpha", "t-odd", "i-gamma"))
        event: dict[str, Any] = {
            "event_id": event_id,
            "subscription_id": SUBSCRIPTION,
            "seat_id": seat,
            "model": model,
            "occurred_at": (occurred + timedelta(milliseconds=n))
            .isoformat()
            .replace("+00:00", "Z"),
        }
        if model == "i-gamma":
            event["images"] = rng.randint(1, 4)
        else:
            event["input_tokens"] = rng.randint(0, 20_000)
            event["cached_tokens"] = rng.choice((0, rng.randint(0, 60_000)))
            event["output_tokens"] = rng.randint(0, 4_000)
            if rng.random() < 0.02:  # a few big ones exhaust seats and reach the pack
                event["output_tokens"] = rng.randint(1_000_000, 3_000_000)
            if rng.random() < 0.3:
                event["thinking"] = True
            if rng.random() < 0.3:
                event["tool_calls"] = rng.randint(1, 7)
        if rng.random() < 0.2:
            event["request_id"] = f"req-{n}"
        events[event_id] = event
        valid_items.append(Item({b"data": _encode(event)}, "valid", event_id=event_id))

    invalid_items = [_invalid_item(rng, n, tag, occurred) for n in range(invalid)]

    # Interleave valid and invalid at random; then insert each duplicate (and each conflicting
    # payload) somewhere after its original: right after it, or later.
    merged = valid_items + invalid_items
    rng.shuffle(merged)
    items: list[Item] = merged
    for _ in range(duplicates):
        original_index = rng.randrange(len(items))
        while items[original_index].kind != "valid":
            original_index = rng.randrange(len(items))
        original = items[original_index]
        at = (
            original_index + 1
            if rng.random() < 0.3
            else rng.randint(original_index + 1, len(items))
        )
        items.insert(at, Item(dict(original.fields), "duplicate", event_id=original.event_id))
    alternates: dict[str, dict[str, Any]] = {}
    for _ in range(conflicts):
        original_index = rng.randrange(len(items))
        while not _can_conflict(items[original_index], events, alternates):
            original_index = rng.randrange(len(items))
        event_id = items[original_index].event_id
        assert event_id is not None
        event = events[event_id]
        other = {**event, "input_tokens": event.get("input_tokens", 0) + 1_000}
        alternates[event_id] = other
        at = rng.randint(original_index + 1, min(len(items), original_index + 400))
        items.insert(
            at,
            Item({b"data": _encode(other)}, "conflict", event_id, reason="duplicate_conflict"),
        )
    return Workload(items, events, alternates)


def _can_conflict(item: Item, events: Mapping[str, Any], taken: Mapping[str, Any]) -> bool:
    return (
        item.kind == "valid"
        and item.event_id not in taken
        and events[item.event_id]["model"] != "i-gamma"
    )


def _invalid_item(rng: random.Random, n: int, tag: str, occurred: datetime) -> Item:
    base: dict[str, Any] = {
        "event_id": f"{tag}-bad-{n:05d}",
        "subscription_id": SUBSCRIPTION,
        "seat_id": SEATS[0][0],
        "model": "t-alpha",
        "input_tokens": 10 + n,
        "occurred_at": occurred.isoformat().replace("+00:00", "Z"),
    }
    kind = n % 7
    if kind == 0:  # bad JSON: cut in the middle
        text = _encode(base)
        return Item({b"data": text[: len(text) // 2]}, "invalid", reason="invalid_json")
    if kind == 1:  # valid JSON, not a usage event
        return Item(
            {b"data": _encode({**base, "input_tokens": -1})}, "invalid", reason="invalid_event"
        )
    if kind == 2:
        return Item(
            {b"data": _encode({**base, "model": "gpt-99"})}, "invalid", reason="unknown_model"
        )
    if kind == 3:
        seat = f"ghost-{n}"
        return Item({b"data": _encode({**base, "seat_id": seat})}, "invalid", reason="unknown_seat")
    if kind == 4:
        return Item(
            {b"data": _encode({**base, "subscription_id": "nobody"})},
            "invalid",
            reason="unknown_subscription",
        )
    if kind == 5:
        return Item(
            {b"data": _encode({**base, "seat_id": OTHER_SEAT})},
            "invalid",
            reason="unknown_seat",  # a seat of another subscription is no seat of this one
        )
    return Item({b"payload": f"{tag}-no-data-{n}".encode()}, "invalid", reason="missing_data")


# -- the publisher -------------------------------------------------------------------------------


RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class Publisher(threading.Thread):
    """Publishes the workload's items in order, in pipelined chunks, retrying on connection loss.

    While `pace` is set it sleeps `interval_s` between chunks (load spread over the faults);
    once cleared, it publishes the rest at full speed. With `atomic`, each chunk is one
    MULTI/EXEC, so a waiting consumer receives it whole (big batches in flight). A chunk whose
    round trip failed is sent again whole: some of its entries may then be in the stream twice,
    which the tally reads from the stream itself. Gives up after `give_up_s` of failures in a row.
    """

    def __init__(
        self,
        redis_url: str,
        stream: str,
        items: Sequence[Item],
        *,
        chunk: int,
        interval_s: float,
        give_up_s: float = 30.0,
        atomic: bool = False,
    ) -> None:
        super().__init__(name="crash-publisher", daemon=True)
        self.client = redis.Redis.from_url(
            redis_url, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        self.stream = stream
        self.items = items
        self.chunk = chunk
        self.interval_s = interval_s
        self.give_up_s = give_up_s
        self.atomic = atomic
        self.pace = threading.Event()
        self.pace.set()
        self.stop_now = threading.Event()
        self.published = 0
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, len(self.items), self.chunk):
                if self.stop_now.is_set():
                    return
                self._publish_chunk(self.items[start : start + self.chunk])
                if self.pace.is_set():
                    self.stop_now.wait(self.interval_s)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.client.close()

    def _publish_chunk(self, chunk: Sequence[Item]) -> None:
        failing_since: float | None = None
        while True:
            try:
                pipe = self.client.pipeline(transaction=self.atomic)
                for item in chunk:
                    pipe.xadd(self.stream, item.fields)
                pipe.execute()
            except RETRYABLE:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.give_up_s:
                    raise
                self.retries += 1
                time.sleep(0.05)
                continue
            self.published += len(chunk)
            return

    def finish(self, timeout_s: float) -> None:
        """Stop pacing and wait (bounded) until every item is published."""
        self.pace.clear()
        self.join(timeout_s)
        if self.is_alive():
            self.stop_now.set()
            raise AssertionError(
                f"publisher still running after {timeout_s:g} s "
                f"({self.published}/{len(self.items)} published, {self.retries} retries)"
            )
        if self.error is not None:
            raise AssertionError(f"publisher failed: {self.error!r}") from self.error


# -- `ledger` processes --------------------------------------------------------------------------


killed_with_parent = functools.partial(die_with_parent, signal.SIGKILL)
"""In a test's child: SIGKILL when the test process dies, so no `ledger serve` is orphaned."""


def ledger_env(
    *, data_dir: Path, redis_url: str, stream: str, rate_card: Path, claim_idle_ms: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(
        LEDGER_DATA_DIR=str(data_dir),
        LEDGER_REDIS_URL=redis_url,
        LEDGER_USAGE_STREAM=stream,
        LEDGER_RATE_CARD=str(rate_card),
        LEDGER_CLAIM_IDLE_MS=str(claim_idle_ms),
        LEDGER_ADMIN_TOKEN="crash-test-admin-token",
        LEDGER_PORT=str(free_loopback_port()),
        PYTHONUNBUFFERED="1",
    )
    return env


LEDGER_COMMAND = (sys.executable, "-m", "services.cli")
"""The `ledger` console script's entry point, run with this interpreter."""


def run_ledger(
    env: Mapping[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEDGER_COMMAND, *args],
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@dataclass
class ServeRun:
    process: subprocess.Popen[bytes]
    log_path: Path
    spawned_at: float
    started_at: float | None = None
    ended: str = "running"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_started(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds from spawn to the `ledger.started` line; fails if it exits or takes too long."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if STARTED_EVENT in self.log_text():
                self.started_at = time.monotonic()
                return self.started_at - self.spawned_at
            if self.process.poll() is not None:
                raise AssertionError(
                    f"ledger serve ({self.log_path.name}) exited with"
                    f" {self.process.returncode} before starting:\n{self.tail()}"
                )
            time.sleep(0.01)
        raise AssertionError(
            f"ledger serve ({self.log_path.name}) did not start within {timeout_s:g} s:"
            f"\n{self.tail()}"
        )


def spawn_serve(env: Mapping[str, str], log_path: Path, *args: str) -> ServeRun:
    """Start `ledger serve` with these extra arguments, its stdout and stderr in `log_path`;
    it is killed when this process dies."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*LEDGER_COMMAND, "serve", *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=killed_with_parent,
        )
    return ServeRun(process, log_path, time.monotonic())


@dataclass
class ServeProcesses:
    """Every `ledger serve` run of one test, with its log file (stdout and stderr)."""

    env: Mapping[str, str]
    log_dir: Path
    runs: list[ServeRun] = field(default_factory=list)

    @property
    def current(self) -> ServeRun:
        return self.runs[-1]

    def spawn(self, *args: str) -> ServeRun:
        """Start `ledger serve` with these extra arguments."""
        run = spawn_serve(self.env, self.log_dir / f"serve-{len(self.runs) + 1}.log", *args)
        self.runs.append(run)
        return run

    def wait_started(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds from spawn to the `ledger.started` line; fails if it exits or takes too long."""
        return self.current.wait_started(timeout_s)

    def kill(self) -> None:
        run = self.current
        run.process.send_signal(signal.SIGKILL)
        run.process.wait(KILL_TIMEOUT_S)
        run.ended = "SIGKILL"

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and the exit code; fails (after SIGKILL) if it does not stop in time."""
        run = self.current
        run.process.send_signal(signal.SIGTERM)
        try:
            code = run.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait(KILL_TIMEOUT_S)
            run.ended = "hung on SIGTERM; SIGKILL"
            raise AssertionError(
                f"ledger serve did not stop within {timeout_s:g} s of SIGTERM"
            ) from None
        run.ended = f"SIGTERM, exit {code}"
        return code

    def cleanup(self) -> None:
        for run in self.runs:
            if run.process.poll() is None:
                run.ended = "killed at cleanup"
                run.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.process.wait(KILL_TIMEOUT_S)

    def report(self) -> str:
        parts = []
        for n, run in enumerate(self.runs, start=1):
            parts.append(
                f"--- ledger serve run {n} (pid {run.process.pid}, {run.ended}, "
                f"exit {run.process.returncode}); last lines of {run.log_path}:\n{run.tail()}"
            )
        return "\n".join(parts)

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """Print every run's log tail when the block fails; always leaves no process behind."""
        try:
            yield
        except BaseException:
            print(self.report(), flush=True)
            raise
        finally:
            self.cleanup()


# -- the stream, the group and the outcome -------------------------------------------------------


def group_info(client: redis.Redis, stream: str) -> dict[str, Any] | None:
    if not client.exists(stream):
        return None
    for group in client.xinfo_groups(stream):
        name = group["name"]
        if (name.decode() if isinstance(name, bytes) else name) == GROUP:
            return dict(group)
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def drained(client: redis.Redis, stream: str) -> tuple[bool, str]:
    """Whether the group has read every entry (entries-read / last-delivered-id at the stream's
    end, lag 0 where Redis reports it) and acknowledged them all (XPENDING empty)."""
    group = group_info(client, stream)
    if group is None:
        return False, "no consumer group yet"
    info = client.xinfo_stream(stream)
    last = _text(info["last-generated-id"])
    delivered = _text(group["last-delivered-id"])
    pending = client.xpending(stream, GROUP)["pending"]
    lag = group.get("lag")  # Redis >= 7
    state = (
        f"length {info['length']}, last id {last}, delivered up to {delivered}, "
        f"entries-read {group.get('entries-read', 'n/a')}, lag {lag}, pending {pending}"
    )
    done = delivered == last and pending == 0 and (lag is None or lag == 0)
    return done, state


def wait_drained(client: redis.Redis, stream: str, timeout_s: float, alive: ServeRun) -> float:
    started = time.monotonic()
    deadline = started + timeout_s
    state = ""
    while time.monotonic() < deadline:
        if alive.process.poll() is not None:
            raise AssertionError(
                f"ledger serve exited with {alive.process.returncode} while draining ({state})"
            )
        with contextlib.suppress(*RETRYABLE):
            done, state = drained(client, stream)
            if done:
                return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"the stream was not drained within {timeout_s:g} s: {state}")


def read_stream(client: redis.Redis, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
    entries: list[tuple[str, dict[bytes, bytes]]] = []
    start = "-"
    while True:
        chunk = client.xrange(stream, min=start, max="+", count=1_000)
        if not chunk:
            return entries
        entries += [(_text(entry_id), fields) for entry_id, fields in chunk]
        start = "(" + entries[-1][0]


@dataclass
class Verdict:
    """The independent tally against what the ledger, the dead letters and the group say."""

    stream_entries: int
    valid_ids: int
    invalid_entries: int
    duplicate_entries: int
    charged_rows: int
    total_ucr: int
    dead_letters: int
    expected_dead_letters: int
    later_conflicts_won: int
    """Conflicting pairs charged with the payload published LATER (delivered out of order)."""
    problems: list[str]

    def summary(self) -> str:
        return (
            f"stream {self.stream_entries} entries: {self.valid_ids} unique valid events, "
            f"{self.duplicate_entries} repeated entries, {self.invalid_entries} invalid; "
            f"charged {self.charged_rows} rows, {self.total_ucr} µcr; "
            f"{self.dead_letters} dead letters; {self.later_conflicts_won} conflicting pairs "
            f"charged with the later payload"
        )


def verify_outcome(
    client: redis.Redis,
    stream: str,
    workload: Workload,
    env: Mapping[str, str],
) -> Verdict:
    """Every check of the fault tests, against the stream as Redis holds it (the ground truth
    of what was published, retried chunks included).

    A conflicting pair (two payloads under one event_id) must end with exactly one of them
    charged and every entry carrying the other dead-lettered as `duplicate_conflict`; which one
    stands is reported (`later_conflicts_won`), not asserted.
    """
    problems: list[str] = []
    by_key = workload.by_key()
    entries = read_stream(client, stream)

    # What the stream holds.
    valid_ids: set[str] = set()
    expected_dead: dict[str, Item] = {}
    """source entry id -> the item whose reason and bytes its dead letter must carry."""
    carriers: dict[str, list[tuple[str, bytes]]] = {}
    """event_id of a conflicting pair -> every (entry id, payload) carrying either payload."""
    unknown_entries = 0
    occurrences: Counter[bytes] = Counter()
    for entry_id, fields in entries:
        key = entry_key(fields)
        occurrences[key] += 1
        item = by_key.get(key)
        if item is None:
            unknown_entries += 1
        elif item.kind == "invalid":
            expected_dead[entry_id] = item
        else:
            assert item.event_id is not None
            valid_ids.add(item.event_id)
            if item.event_id in workload.conflicts:
                carriers.setdefault(item.event_id, []).append((entry_id, key))
    invalid_entries = len(expected_dead)
    if unknown_entries:
        problems.append(f"{unknown_entries} stream entries the workload did not publish")
    never_published = [key for key in by_key if occurrences[key] == 0]
    if never_published:
        problems.append(f"{len(never_published)} workload items are not in the stream (lost)")
    duplicate_entries = len(entries) - len(valid_ids) - invalid_entries - unknown_entries

    # The consumer group: nothing pending, everything delivered.
    done, state = drained(client, stream)
    if not done:
        problems.append(f"consumer group not drained: {state}")

    # The ledger: one usage row per unique valid event, each priced as the tally says.
    export = run_ledger(env, "export", "usage", "--format", "jsonl")
    rows: list[dict[str, Any]] = []
    if export.returncode != 0:
        problems.append(f"ledger export usage exited {export.returncode}: {export.stderr[-2000:]}")
    else:
        rows = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
    charged = Counter(row["event_id"] for row in rows)
    twice = sorted(e for e, n in charged.items() if n > 1)
    if twice:
        problems.append(f"{len(twice)} events charged more than once, e.g. {twice[:5]}")
    missing = sorted(valid_ids - set(charged))
    if missing:
        problems.append(f"{len(missing)} valid events never charged, e.g. {missing[:5]}")
    extra = sorted(set(charged) - valid_ids)
    if extra:
        problems.append(f"{len(extra)} charged events that are not valid, e.g. {extra[:5]}")

    winners: dict[str, dict[str, Any]] = {}
    """event_id -> the payload charged (for a conflicting pair, either of the two)."""
    mispriced = []
    for row in rows:
        event = workload.events.get(row["event_id"])
        if event is None:
            continue
        other = workload.conflicts.get(row["event_id"])
        if other is not None and row["usage"]["input_tokens"] == other.get("input_tokens", 0):
            event = other
        winners[row["event_id"]] = event
        want = expected_components(event)
        got = {k: row["components"].get(k, 0) for k in want}
        allocated = sum(part["credits_ucr"] for part in row["allocation"])
        if (
            got != want
            or row["credits_ucr"] != sum(want.values())
            or allocated != row["credits_ucr"]
        ):
            mispriced.append((row["event_id"], row["credits_ucr"], sum(want.values()), allocated))
        if row["rate_card_version"] != TEST_RATE_CARD_VERSION:
            mispriced.append((row["event_id"], row["rate_card_version"]))
    if mispriced:
        problems.append(f"{len(mispriced)} rows priced or allocated wrong, e.g. {mispriced[:5]}")
    expected_total = sum(expected_ucr(winners.get(e, workload.events[e])) for e in valid_ids)
    total = sum(row["credits_ucr"] for row in rows)
    if total != expected_total:
        problems.append(f"charged {total} µcr in all, the tally says {expected_total} µcr")

    # Conflicting pairs: every entry carrying the payload that was not charged is dead-lettered.
    later_won = 0
    for event_id, carrying in carriers.items():
        winner = winners.get(event_id)
        if winner is None:
            continue
        original = workload.events[event_id]
        later_won += winner is not original
        losing = _encode(workload.conflicts[event_id] if winner is original else original)
        for entry_id, key in carrying:
            if key == losing:
                expected_dead[entry_id] = Item(
                    {b"data": losing}, "conflict", event_id, reason="duplicate_conflict"
                )

    # The dead letters: exactly one per entry expected, with its reason and original bytes.
    dead = read_stream(client, f"{stream}.dead")
    dead_sources = Counter(_text(fields[b"source_id"]) for _, fields in dead)
    if set(dead_sources) != set(expected_dead):
        problems.append(
            f"dead letters for {len(dead_sources)} source ids, {len(expected_dead)} expected "
            f"(invalid entries and losing conflicts); missing "
            f"{sorted(set(expected_dead) - set(dead_sources))[:5]}, "
            f"unexpected {sorted(set(dead_sources) - set(expected_dead))[:5]}"
        )
    repeated = sorted(s for s, n in dead_sources.items() if n > 1)
    if repeated:
        problems.append(f"{len(repeated)} entries dead-lettered more than once: {repeated[:5]}")
    wrong = []
    for _, fields in dead:
        item = expected_dead.get(_text(fields[b"source_id"]))
        if item is None:
            continue
        if _text(fields[b"reason"]) != item.reason or entry_key_of_dead(fields) != item.key:
            wrong.append((_text(fields[b"source_id"]), _text(fields[b"reason"]), item.reason))
    if wrong:
        problems.append(f"{len(wrong)} dead letters with a wrong reason or bytes: {wrong[:5]}")

    audit = run_ledger(env, "audit", "verify")
    if audit.returncode != 0:
        problems.append(f"ledger audit verify exited {audit.returncode}: {audit.stderr.strip()}")

    return Verdict(
        stream_entries=len(entries),
        valid_ids=len(valid_ids),
        invalid_entries=invalid_entries,
        duplicate_entries=duplicate_entries,
        charged_rows=len(rows),
        total_ucr=total,
        dead_letters=len(dead),
        expected_dead_letters=len(expected_dead),
        later_conflicts_won=later_won,
        problems=problems,
    )


def entry_key_of_dead(fields: Mapping[bytes, bytes]) -> bytes:
    """The key of the source entry a dead letter carries: its `data` bytes, or for an entry
    without a payload field the JSON object of its fields (`missing_data`)."""
    data = fields[b"data"]
    if _text(fields[b"reason"]) != "missing_data":
        return data
    original = {k.encode(): v.encode() for k, v in json.loads(data).items()}
    return entry_key(original)


def consumer_pending(client: redis.Redis, stream: str, consumer: str) -> int:
    """Entries delivered to `consumer` and not acknowledged (0 when it is unknown)."""
    if not client.exists(stream):
        return 0
    for info in client.xinfo_consumers(stream, GROUP):
        if _text(info["name"]) == consumer:
            return int(info["pending"])
    return 0


def wait_for_batch_in_flight(
    client: redis.Redis, stream: str, consumer: str, timeout_s: float
) -> float:
    """Seconds until `consumer` holds delivered, unacknowledged entries (or `timeout_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if consumer_pending(client, stream, consumer) > 0:
            break
        time.sleep(0.0005)
    return time.monotonic() - started


def wait_for_new_delivery(client: redis.Redis, stream: str, timeout_s: float) -> float:
    """Seconds until the group delivers an entry past the one it had delivered last when this
    was called (the subscriber is reading again), or `timeout_s`."""
    started = time.monotonic()
    group = group_info(client, stream)
    last = _text(group["last-delivered-id"]) if group else None
    while time.monotonic() - started < timeout_s:
        group = group_info(client, stream)
        if group is not None and _text(group["last-delivered-id"]) != last:
            break
        time.sleep(0.0005)
    return time.monotonic() - started


def batch_state(
    client: redis.Redis, stream: str, consumer: str, workload: Workload, database: Path
) -> str:
    """Diagnostic: whether the batch a killed consumer left pending was already appended to the
    log (killed between the append and the ack: its redelivery must charge nothing) or not."""
    try:
        pending = client.xpending_range(stream, GROUP, "-", "+", 10_000, consumername=consumer)
        by_key = workload.by_key()
        event_id = None
        for entry in pending:
            found = client.xrange(stream, min=entry["message_id"], max=entry["message_id"])
            item = by_key.get(entry_key(found[0][1])) if found else None
            if item is not None and item.event_id is not None:
                event_id = item.event_id
                break
        if event_id is None:
            return "no valid event pending"
        uri = f"file:{database}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            (hits,) = db.execute(
                "SELECT count(*) FROM log WHERE instr(data, ?) > 0",
                (event_id.encode(),),
            ).fetchone()
        return "appended, not acked" if hits else "not appended"
    except Exception as exc:  # only a diagnostic
        return f"unknown ({exc!r})"
