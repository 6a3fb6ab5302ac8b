"""The ledger's metrics on prometheus_client: counts and durations read back exactly, a
counter only goes up and takes exactly its labels, labels are escaped, histogram buckets are
cumulative, label sets are bounded, and every process of a serve counts into one exposition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.metrics import (
    LATENCY_BUCKETS_S,
    METRICS,
    METRICS_DIR,
    OVERFLOW_LABEL,
    SERVE_DIR_PREFIX,
    Bounded,
    LedgerMetrics,
)

ROOT = Path(__file__).resolve().parent.parent


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counts_read_back_exactly_and_durations_in_seconds() -> None:
    metrics = LedgerMetrics()
    metrics.credits_deducted_ucr.inc(71_000_000_000)
    metrics.events_ingested.inc(1_000_000)
    metrics.request_latency.labels(method="GET", route="/x", status="200").observe(0.002_5)
    read = samples(metrics.render().decode())
    assert read[("ledger_credits_deducted_ucr_total", ())] == 71_000_000_000
    assert read[("ledger_events_ingested_total", ())] == 1_000_000
    labels = (("method", "GET"), ("route", "/x"), ("status", "200"))
    bucket = "ledger_http_request_duration_seconds_bucket"
    assert read[(bucket, (("le", "0.001"), *labels))] == 0
    assert read[(bucket, (("le", "0.0025"), *labels))] == 1
    assert read[("ledger_http_request_duration_seconds_sum", labels)] == 0.002_5


def test_a_counter_only_goes_up_and_takes_exactly_its_labels() -> None:
    registry = CollectorRegistry()
    counter = Bounded(Counter("things", "Things", ("reason",), registry=registry))
    with pytest.raises(ValueError):
        counter.labels(reason="x").inc(-1)
    with pytest.raises(ValueError):
        counter.metric.inc(1)
    with pytest.raises(ValueError):
        counter.labels(reason="x", other="y")
    with pytest.raises(ValueError):
        Counter("things", "Again", registry=registry)
    counter.labels(reason="x").inc(2)
    assert registry.get_sample_value("things_total", {"reason": "x"}) == 2


def test_labels_are_escaped() -> None:
    registry = CollectorRegistry()
    Counter("odd", "Odd", ("why",), registry=registry).labels(why='a "b"\\c\nd').inc()
    lines = generate_latest(registry).decode().splitlines()
    assert 'odd_total{why="a \\"b\\"\\\\c\\nd"} 1.0' in lines


def test_histogram_buckets_are_cumulative_and_end_at_inf() -> None:
    registry = CollectorRegistry()
    latency = Histogram(
        "took_seconds", "Took", ("route",), registry=registry, buckets=LATENCY_BUCKETS_S
    )
    for seconds in (0.000_1, 0.003, 0.003, 20.0):
        latency.labels(route="/x").observe(seconds)
    read = samples(generate_latest(registry).decode())
    buckets = [
        (dict(labels)["le"], value)
        for (name, labels), value in read.items()
        if name == "took_seconds_bucket"
    ]
    assert len(buckets) == len(LATENCY_BUCKETS_S) + 1
    assert buckets[0] == ("0.00025", 1)
    assert ("0.005", 3) in buckets
    assert buckets[-1] == ("+Inf", 4)
    assert read[("took_seconds_sum", (("route", "/x"),))] == pytest.approx(20.006_1)
    assert read[("took_seconds_count", (("route", "/x"),))] == 4


def test_label_sets_beyond_the_bound_fold_into_one_overflow_series() -> None:
    registry = CollectorRegistry()
    counter = Bounded(Counter("ids", "Ids", ("id",), registry=registry), max_series=2)
    for value in ("a", "b", "c", "d"):
        counter.labels(id=value).inc()
    counter.labels(id="a").inc()
    value = registry.get_sample_value
    assert (value("ids_total", {"id": "a"}), value("ids_total", {"id": OVERFLOW_LABEL})) == (2, 2)


def test_the_ledger_metrics_have_their_names() -> None:
    assert isinstance(METRICS, LedgerMetrics)
    text = LedgerMetrics().render().decode()
    for name in (
        "ledger_events_ingested_total",
        "ledger_events_dead_lettered_total",
        "ledger_charges_total",
        "ledger_credits_deducted_ucr_total",
        "ledger_consumer_lag_events",
        "ledger_projection_lag_events",
        "ledger_http_request_duration_seconds",
    ):
        assert f"# TYPE {name} " in text


SERVE_AND_CHILD = """
import multiprocessing
import sys
from pathlib import Path

from services.metrics import METRICS, share_between_processes


def child() -> None:
    from services.metrics import METRICS

    METRICS.charges.inc(2)
    METRICS.dead_lettered.labels(reason="invalid_json").inc()


if __name__ == "__main__":
    share_between_processes(Path(sys.argv[1]))
    METRICS.events_ingested.inc(3)
    METRICS.consumer_lag.set(7)
    process = multiprocessing.get_context("spawn").Process(target=child)
    process.start()
    process.join()
    sys.stdout.write(METRICS.render().decode())
"""


def test_every_process_of_a_serve_counts_into_one_exposition(tmp_path: Path) -> None:
    gone = tmp_path / METRICS_DIR / f"{SERVE_DIR_PREFIX}999999999"  # beyond any pid
    gone.mkdir(parents=True)
    (gone / "counter_999999999.db").write_bytes(b"left by a serve killed with SIGKILL")
    script = tmp_path / "serve_and_child.py"
    script.write_text(SERVE_AND_CHILD)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    read = samples(done.stdout)
    assert read[("ledger_events_ingested_total", ())] == 3
    assert read[("ledger_consumer_lag_events", ())] == 7
    assert read[("ledger_charges_total", ())] == 2
    assert read[("ledger_events_dead_lettered_total", (("reason", "invalid_json"),))] == 1
    assert not gone.exists()
    assert [p.name.startswith(SERVE_DIR_PREFIX) for p in (tmp_path / METRICS_DIR).iterdir()] == [
        True
    ]
