"""The metrics registry renders Prometheus text exactly: integers as digits, durations as exact
decimal seconds, cumulative histogram buckets, escaped labels, and a bound on label sets."""

from __future__ import annotations

import pytest

from services import metrics
from services.metrics import (
    LATENCY_BUCKETS_NS,
    OVERFLOW_LABEL,
    LedgerMetrics,
    Registry,
    format_number,
    format_seconds,
)


def test_counts_render_as_integers_and_durations_as_exact_seconds() -> None:
    assert format_number(71_000_000_000) == "71000000000"
    assert format_number(1e6) == "1000000"
    assert format_number(0.25) == "0.25"
    assert format_number(float("inf")) == "+Inf"
    assert format_seconds(2_500_000) == "0.0025"
    assert format_seconds(1_000_000_000) == "1"
    assert format_seconds(1) == "0.000000001"
    assert format_seconds(0) == "0"


def test_a_counter_only_goes_up_and_takes_exactly_its_labels() -> None:
    registry = Registry()
    counter = registry.counter("things_total", "Things", ("reason",))
    with pytest.raises(ValueError):
        counter.inc(-1, reason="x")
    with pytest.raises(ValueError):
        counter.inc(1)
    with pytest.raises(ValueError):
        counter.inc(1, reason="x", other="y")
    with pytest.raises(ValueError):
        registry.counter("things_total", "Again")
    counter.inc(2, reason="x")
    assert counter.value(reason="x") == 2


def test_labels_are_escaped() -> None:
    registry = Registry()
    registry.counter("odd_total", "Odd", ("why",)).inc(why='a "b"\\c\nd')
    assert 'odd_total{why="a \\"b\\"\\\\c\\nd"} 1' in registry.render().splitlines()


def test_histogram_buckets_are_cumulative_and_end_at_inf() -> None:
    registry = Registry()
    latency = registry.histogram("took_seconds", "Took", ("route",))
    for ns in (100_000, 3_000_000, 3_000_000, 20_000_000_000):
        latency.observe_ns(ns, route="/x")
    lines = registry.render().splitlines()
    buckets = [line for line in lines if line.startswith("took_seconds_bucket")]
    assert len(buckets) == len(LATENCY_BUCKETS_NS) + 1
    assert buckets[0] == 'took_seconds_bucket{route="/x",le="0.00025"} 1'
    assert 'took_seconds_bucket{route="/x",le="0.005"} 3' in buckets
    assert buckets[-1] == 'took_seconds_bucket{route="/x",le="+Inf"} 4'
    assert 'took_seconds_sum{route="/x"} 20.0061' in lines
    assert 'took_seconds_count{route="/x"} 4' in lines
    assert latency.count(route="/x") == 4


def test_label_sets_beyond_the_bound_fold_into_one_overflow_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "MAX_SERIES_PER_METRIC", 2)
    registry = Registry()
    counter = registry.counter("ids_total", "Ids", ("id",))
    for value in ("a", "b", "c", "d"):
        counter.inc(id=value)
    counter.inc(id="a")
    assert (counter.value(id="a"), counter.value(id=OVERFLOW_LABEL)) == (2, 2)


def test_the_process_instruments_are_module_attributes() -> None:
    assert metrics.events_ingested is metrics.METRICS.events_ingested
    assert metrics.REGISTRY is metrics.METRICS.registry
    text = LedgerMetrics().render()
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
