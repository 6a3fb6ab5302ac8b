"""Prometheus metrics with no dependency: counters, gauges and a fixed-bucket latency histogram,
rendered in the text exposition format 0.0.4 that `GET /metrics` serves.

Counts stay integers (events, micro-credits), so the text shows `1000000`, never `1e+06`;
durations are kept in integer nanoseconds and rendered as exact decimal seconds. Every metric is
safe to update from any thread. The process-wide instruments are `METRICS` (also module
attributes); ingest and the API are handed a `LedgerMetrics`, so tests can give them their own.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_SERIES_PER_METRIC: Final = 1_000
"""Label combinations one metric keeps; later ones are counted under `OVERFLOW_LABEL`."""
OVERFLOW_LABEL: Final = "_overflow"
NS_PER_S: Final = 1_000_000_000
LATENCY_BUCKETS_NS: Final[tuple[int, ...]] = (
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
)
"""Upper bounds of the request latency buckets: 0.25 ms to 10 s (the 5 ms goal sits on one)."""

Number = int | float
LabelValues = tuple[str, ...]


def format_number(value: Number) -> str:
    """An integer as digits; a float as its shortest exact repr; infinities and NaN as Prometheus
    spells them."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def format_seconds(ns: int) -> str:
    """Integer nanoseconds as exact decimal seconds: 2_500_000 -> "0.0025"."""
    sign = "-" if ns < 0 else ""
    whole, fraction = divmod(abs(ns), NS_PER_S)
    digits = f"{fraction:09d}".rstrip("0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self._label_set = frozenset(self.label_names)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if labels.keys() != self._label_set:
            raise ValueError(f"{self.name} takes the labels {self.label_names}, got {labels}")
        return tuple(str(labels[name]) for name in self.label_names)

    def _bounded(self, key: LabelValues, series: Mapping[LabelValues, object]) -> LabelValues:
        """`key`, or the overflow series once this metric holds its bound of label sets."""
        if key in series or len(series) < MAX_SERIES_PER_METRIC:
            return key
        return tuple(OVERFLOW_LABEL for _ in key)

    def header(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}",
            f"# TYPE {self.name} {self.kind}",
        ]

    def render(self) -> list[str]:
        raise NotImplementedError


class _Valued(_Metric):
    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[LabelValues, Number] = {} if label_names else {(): 0}

    def _add(self, amount: Number, labels: dict[str, str]) -> None:
        key = self._key(labels)
        with self._lock:
            key = self._bounded(key, self._values)
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> Number:
        with self._lock:
            return self._values.get(self._key(labels), 0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [
            f"{self.name}{_label_text(self.label_names, key)} {format_number(value)}"
            for key, value in items
        ]


class Counter(_Valued):
    """Only goes up. Name it `..._total`."""

    kind = "counter"

    def inc(self, amount: Number = 1, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name} is a counter: it cannot go down by {amount}")
        self._add(amount, labels)


class Gauge(_Valued):
    """A value that is set (a lag, a depth)."""

    kind = "gauge"

    def set(self, value: Number, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            key = self._bounded(key, self._values)
            self._values[key] = value


class _Series:
    __slots__ = ("buckets", "count", "sum_ns")

    def __init__(self, bucket_count: int) -> None:
        self.buckets = [0] * bucket_count  # not cumulative: one observation lands in one bucket
        self.count = 0
        self.sum_ns = 0


class Histogram(_Metric):
    """Durations in fixed buckets (`LATENCY_BUCKETS_NS` by default), exposed in seconds."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str] = (),
        buckets_ns: Sequence[int] = LATENCY_BUCKETS_NS,
    ) -> None:
        super().__init__(name, help_text, label_names)
        assert list(buckets_ns) == sorted(set(buckets_ns)) and buckets_ns[0] > 0
        assert "le" not in self.label_names
        self.buckets_ns = tuple(buckets_ns)
        self._bounds = [format_seconds(b) for b in self.buckets_ns] + ["+Inf"]
        self._series: dict[LabelValues, _Series] = {}

    def observe_ns(self, duration_ns: int, **labels: str) -> None:
        key = self._key(labels)
        duration_ns = max(0, duration_ns)
        slot = bisect.bisect_left(self.buckets_ns, duration_ns)  # the first bound >= it
        with self._lock:
            key = self._bounded(key, self._series)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(len(self.buckets_ns) + 1)
            series.buckets[slot] += 1
            series.count += 1
            series.sum_ns += duration_ns

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return 0 if series is None else series.count

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(
                (key, list(s.buckets), s.count, s.sum_ns) for key, s in self._series.items()
            )
        names = (*self.label_names, "le")
        lines: list[str] = []
        for key, buckets, count, sum_ns in items:
            cumulative = 0
            for bound, in_bucket in zip(self._bounds, buckets, strict=True):
                cumulative += in_bucket
                labels = _label_text(names, (*key, bound))
                lines.append(f"{self.name}_bucket{labels} {cumulative}")
            assert cumulative == count
            plain = _label_text(self.label_names, key)
            lines.append(f"{self.name}_sum{plain} {format_seconds(sum_ns)}")
            lines.append(f"{self.name}_count{plain} {count}")
        return lines


class Registry:
    """Metrics by name, rendered together."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def register(self, metric: _Metric) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"a metric named {metric.name!r} is registered already")
            self._metrics[metric.name] = metric

    def names(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._metrics)

    def counter(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, label_names)
        self.register(metric)
        return metric

    def gauge(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help_text, label_names)
        self.register(metric)
        return metric

    def histogram(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Histogram:
        metric = Histogram(name, help_text, label_names)
        self.register(metric)
        return metric

    def render(self, names: Collection[str] | None = None) -> str:
        """The exposition text: every metric's (or those `names`') HELP, TYPE and samples."""
        with self._lock:
            metrics = sorted(
                (m for m in self._metrics.values() if names is None or m.name in names),
                key=lambda m: m.name,
            )
        lines: list[str] = []
        for metric in metrics:
            lines += metric.header() + metric.render()
        return "\n".join(lines) + "\n"


class LedgerMetrics:
    """The ledger's instruments on one registry (a fresh one per test; `METRICS` in a process)."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        r = self.registry
        self.events_ingested = r.counter(
            "ledger_events_ingested_total", "Usage stream entries the ingest processed"
        )
        self.dead_lettered = r.counter(
            "ledger_events_dead_lettered_total",
            "Usage stream entries sent to the dead-letter stream, by reason",
            ("reason",),
        )
        self.charges = r.counter("ledger_charges_total", "Usage charges appended to the log")
        self.credits_deducted_ucr = r.counter(
            "ledger_credits_deducted_ucr_total",
            "Micro-credits charged (seat, pack and uncovered parts together)",
        )
        self.consumer_lag = r.gauge(
            "ledger_consumer_lag_events",
            "Usage stream entries not yet processed by the consumer group",
        )
        self.projection_lag = r.gauge(
            "ledger_projection_lag_events", "Log records not yet folded into the read models"
        )
        self.request_latency = r.histogram(
            "ledger_http_request_duration_seconds",
            "HTTP request latency by method, route template and status",
            ("method", "route", "status"),
        )

    def render(self, names: Collection[str] | None = None) -> str:
        return self.registry.render(names)


METRICS: Final = LedgerMetrics()
"""The process's instruments; `GET /metrics` renders these unless the app is given others."""
WRITER_METRIC_NAMES: Final = frozenset(
    metric.name
    for metric in (
        METRICS.events_ingested,
        METRICS.dead_lettered,
        METRICS.charges,
        METRICS.credits_deducted_ucr,
        METRICS.consumer_lag,
    )
)
"""The metrics the writer (ingest) sets. `ledger serve` runs the HTTP API in a process of its
own, which renders the rest and asks the writer for these."""
REGISTRY: Final = METRICS.registry
events_ingested: Final = METRICS.events_ingested
dead_lettered: Final = METRICS.dead_lettered
charges: Final = METRICS.charges
credits_deducted_ucr: Final = METRICS.credits_deducted_ucr
consumer_lag: Final = METRICS.consumer_lag
projection_lag: Final = METRICS.projection_lag
request_latency: Final = METRICS.request_latency
