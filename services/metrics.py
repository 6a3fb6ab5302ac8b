"""The ledger's Prometheus metrics on prometheus_client: the instruments (`LedgerMetrics`), the
text `GET /metrics` serves, and the multiprocess mode of `ledger serve`.

`ledger serve` runs the writer (ingest), the HTTP API and the projector in processes of their
own. Each writes its metrics to files in one directory of the data dir
(`share_between_processes`, prometheus_client's multiprocess mode), and the API process's
`GET /metrics` reads them all (`MultiProcessCollector`), so it shows what ingest counted.
Without that directory (tests, a lone process) a `LedgerMetrics` keeps its values in memory.

Values are float64, as Prometheus stores them: counts and micro-credits are exact up to 2^53.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Final, Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from services.metrics_folder import METRICS_DIR as METRICS_DIR
from services.metrics_folder import MULTIPROCESS_DIR_ENV as MULTIPROCESS_DIR_ENV
from services.metrics_folder import SERVE_DIR_PREFIX as SERVE_DIR_PREFIX
from services.metrics_folder import make_shared_folder

MEDIA_TYPE: Final = "text/plain; version=0.0.4"
"""What `generate_latest` writes: the Prometheus text format 0.0.4, in UTF-8 (Litestar adds
`charset=utf-8` to a text media type)."""
MAX_SERIES_PER_METRIC: Final = 1_000
"""Label combinations one metric keeps; later ones are counted under `OVERFLOW_LABEL`."""
OVERFLOW_LABEL: Final = "_overflow"
NS_PER_S: Final = 1_000_000_000
LATENCY_BUCKETS_S: Final[tuple[float, ...]] = (
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
"""Upper bounds of the request latency buckets: 0.25 ms to 10 s (the 5 ms goal sits on one)."""

# No `_created` series: the exposition holds the ledger's metrics only.
disable_created_metrics()  # type: ignore[no-untyped-call]

M = TypeVar("M", Counter, Gauge, Histogram)

DELIVERY_LAG_BUCKETS_S: Final[tuple[float, ...]] = (
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    30.0,
    60.0,
    600.0,
    3_600.0,
    21_600.0,
    86_400.0,
)


class Bounded(Generic[M]):
    """A labelled instrument that keeps at most `max_series` label sets: later ones are counted
    under `OVERFLOW_LABEL` (a client sending made-up HTTP methods must not grow the exposition
    without end)."""

    def __init__(self, metric: M, max_series: int = MAX_SERIES_PER_METRIC) -> None:
        self.metric: M = metric
        self.max_series = max_series
        self._seen: set[tuple[tuple[str, str], ...]] = set()
        self._lock = threading.Lock()

    def labels(self, **labels: str) -> M:
        """The series of these labels (exactly the metric's label names), or the overflow
        series once `max_series` others are kept."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            overflow = key not in self._seen and len(self._seen) >= self.max_series
            series = self.metric.labels(
                **(dict.fromkeys(labels, OVERFLOW_LABEL) if overflow else labels)
            )
            if not overflow:
                self._seen.add(key)
        return series


class LedgerMetrics:
    """The ledger's instruments on one registry (a fresh one per test; `METRICS` in a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.use(registry if registry is not None else CollectorRegistry())

    def use(self, registry: CollectorRegistry) -> None:
        """Make every instrument afresh, at zero, on `registry`, storing values the way
        prometheus_client does now (in memory, or in this process's multiprocess file)."""
        self.registry = registry
        self.shared_dir = os.environ.get(MULTIPROCESS_DIR_ENV)
        r = registry
        self.events_ingested = Counter(
            "ledger_events_ingested", "Usage stream entries the ingest processed", registry=r
        )
        self.dead_lettered = Bounded(
            Counter(
                "ledger_events_dead_lettered",
                "Usage stream entries sent to the dead-letter stream, by reason",
                ("reason",),
                registry=r,
            )
        )
        self.charges = Counter("ledger_charges", "Usage charges appended to the log", registry=r)
        self.credits_deducted_ucr = Counter(
            "ledger_credits_deducted_ucr",
            "Micro-credits charged (seat, pack and uncovered parts together)",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "ledger_consumer_lag_events",
            "Usage stream entries not yet processed by the consumer group",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.projection_lag = Gauge(
            "ledger_projection_lag_events",
            "Log records not yet folded into the read models",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.request_latency = Bounded(
            Histogram(
                "ledger_http_request_duration_seconds",
                "HTTP request latency by method, route template and status",
                ("method", "route", "status"),
                registry=r,
                buckets=LATENCY_BUCKETS_S,
            )
        )

        self.notifications = Bounded(
            Counter(
                "ledger_notifications",
                "Notifications derived from the log (and endpoints disabled), by type",
                ("type",),
                registry=r,
            )
        )
        self.webhook_deliveries = Bounded(
            Counter(
                "ledger_webhook_deliveries",
                "Webhook delivery attempts, by outcome (delivered, failed, refused)",
                ("outcome",),
                registry=r,
            )
        )
        self.webhook_delivery_lag = Histogram(
            "ledger_webhook_delivery_lag_seconds",
            "Seconds from a notification entering an endpoint's outbox to its delivery",
            registry=r,
            buckets=DELIVERY_LAG_BUCKETS_S,
        )

    def render(self) -> bytes:
        """The text exposition: every process's metrics in multiprocess mode, else this
        registry's."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        every_process = CollectorRegistry()
        MultiProcessCollector(every_process, path=self.shared_dir)  # type: ignore[no-untyped-call]
        return generate_latest(every_process)


METRICS: Final = LedgerMetrics()
"""The process's instruments; `GET /metrics` renders these unless the app is given others."""


def share_between_processes(data_dir: Path) -> Path:
    """Put this process's metrics, and those of the processes it starts from now on, in
    multiprocess mode: files in a folder of `data_dir` of this serve's own (made afresh, and
    those of serves that are gone removed). `METRICS` is made again, at zero, to write there.
    Returns the folder."""
    directory = make_shared_folder(data_dir)
    use_shared_folder()
    return directory


def use_shared_folder() -> None:
    """Write `METRICS` to the folder `make_shared_folder` named, made again at zero."""
    # prometheus_client chose where values live when it was imported: choose again.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    METRICS.use(CollectorRegistry())
