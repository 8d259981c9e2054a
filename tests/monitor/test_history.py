"""Metric history: tiers, retention, queries; Prometheus exposition to points."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from aiscale.errors import InvalidInput, Overloaded
from aiscale.monitor.history import InMemoryMetricsStore, MetricsStore, Tier, labels_key
from aiscale.monitor.scrape import bucket_quantile, parse_exposition, scrape_points


def _store() -> InMemoryMetricsStore:
    return InMemoryMetricsStore([Tier(1.0, 60.0), Tier(10.0, 600.0), Tier(60.0, 3600.0)])


def test_store_satisfies_the_protocol() -> None:
    """The embedded store is a MetricsStore (the Prometheus reader implements the same)."""
    store: MetricsStore = _store()
    store.append("x", {"a": "1"}, 0.0, 1.0)
    assert store.series("x") == [(("a", "1"),)]


@pytest.mark.parametrize(
    ("agg", "expected"),
    [("avg", 4.5), ("sum", 45.0), ("rate", 4.5), ("min", 0.0), ("max", 9.0), ("count", 10.0),
     ("last", 9.0)],
)
def test_query_aggregations_over_one_step(agg: str, expected: float) -> None:
    """Each aggregation combines the step's points as documented (rate = sum / step_s)."""
    store = _store()
    for i in range(10):
        store.append("req", {}, float(i), float(i))
    assert store.query("req", None, 0.0, 10.0, 10.0, agg) == [(0.0, expected)]  # type: ignore[arg-type]


def test_downsampled_tiers_keep_sums_and_counts_exact() -> None:
    """Averages and totals read from a coarse tier equal those computed from the raw points."""
    store = _store()
    values = [float((i * 7) % 13) for i in range(3000)]
    for i, v in enumerate(values):
        store.append("lat", {"d": "a"}, float(i), v)
    # 3000 s of data: the 1 s tier keeps 60 s, so a query from t=0 reads the 60 s tier.
    assert store.tier_for("lat", 0.0).step_s == 60.0
    out = store.query("lat", {"d": "a"}, 0.0, 3000.0, 300.0, "avg")
    assert len(out) == 10
    for t, avg in out:
        chunk = values[int(t): int(t) + 300]
        assert avg == pytest.approx(sum(chunk) / len(chunk))
    totals = store.query("lat", None, 0.0, 3000.0, 300.0, "sum")
    assert sum(v for _, v in totals) == pytest.approx(sum(values))


def test_fine_tier_is_used_for_recent_ranges() -> None:
    """A recent range at fine step reads the 1 s tier; points older than retention are gone."""
    store = _store()
    for i in range(200):
        store.append("q", {}, float(i), float(i))
    assert store.query("q", None, 190.0, 200.0, 1.0, "last") == [
        (float(t), float(t)) for t in range(190, 200)]
    assert store.tier_for("q", 100.0).step_s == 10.0  # 1 s tier keeps only 60 s


def test_memory_is_bounded_by_retention() -> None:
    """However long the stream, the coarsest query returns at most retention / step buckets."""
    store = _store()
    for i in range(0, 20_000, 5):
        store.append("g", {}, float(i), 1.0)
    out = store.query("g", None, 0.0, 20_000.0, 60.0, "count")
    assert len(out) <= 60
    assert out[-1][0] == 19_980.0


def test_label_filter_combines_matching_series() -> None:
    """A filter selects series whose labels include it; 'last' sums gauges across series."""
    store = _store()
    for replica in ("r1", "r2", "r3"):
        store.append("depth", {"deployment": "a", "replica": replica}, 5.0, 2.0)
    store.append("depth", {"deployment": "b", "replica": "r1"}, 5.0, 100.0)
    assert store.query("depth", {"deployment": "a"}, 0.0, 10.0, 10.0, "last") == [(0.0, 6.0)]
    assert len(store.series("depth")) == 4
    assert store.series("depth", {"deployment": "b"}) == [labels_key({"deployment": "b",
                                                                      "replica": "r1"})]


def test_bad_inputs_are_refused() -> None:
    """Out-of-order and non-finite points, bad steps and a full store raise domain errors."""
    store = InMemoryMetricsStore([Tier(1.0, 10.0)], max_series=2)
    store.append("a", {}, 5.0, 1.0)
    with pytest.raises(InvalidInput) as exc:
        store.append("a", {}, 4.0, 1.0)
    assert exc.value.field == "t_s"
    with pytest.raises(InvalidInput):
        store.append("a", {}, 6.0, math.nan)
    with pytest.raises(InvalidInput):
        store.query("a", None, 0.0, 10.0, 0.0)
    store.append("b", {}, 0.0, 1.0)
    with pytest.raises(Overloaded):
        store.append("c", {}, 0.0, 1.0)


def _exposition(requests: int, errors: int, latencies: list[float], depth: float) -> str:
    registry = CollectorRegistry()
    c = Counter("aiscale_requests", "requests", ["code"], registry=registry)
    c.labels("200").inc(requests)
    c.labels("500").inc(errors)
    h = Histogram("aiscale_latency_seconds", "latency", buckets=(0.1, 0.2, 0.5, 1.0),
                  registry=registry)
    for v in latencies:
        h.observe(v)
    Gauge("aiscale_queue_depth", "depth", registry=registry).set(depth)
    return generate_latest(registry).decode()


def test_scrape_points_give_rates_and_interval_quantiles() -> None:
    """Counters become per-second rates; histogram quantiles cover only the interval's
    observations; gauges pass through."""
    before = parse_exposition(_exposition(100, 1, [0.05] * 10, 3.0), 0.0)
    after = parse_exposition(
        _exposition(300, 5, [0.05] * 10 + [0.15] * 50 + [0.7] * 50, 7.0), 10.0)
    points = {(name, lbls): v for name, lbls, t, v in scrape_points(before, after)}
    assert points[("aiscale_requests:rate_per_s", (("code", "200"),))] == pytest.approx(20.0)
    assert points[("aiscale_requests:rate_per_s", (("code", "500"),))] == pytest.approx(0.4)
    assert points[("aiscale_queue_depth", ())] == 7.0
    assert points[("aiscale_latency_seconds:rate_per_s", ())] == pytest.approx(10.0)
    assert points[("aiscale_latency_seconds:mean", ())] == pytest.approx(0.425)
    # 100 new observations: 50 in (0.1, 0.2], 50 in (0.5, 1.0]; the old 10 are not counted.
    assert points[("aiscale_latency_seconds:p50", ())] == pytest.approx(0.2)
    assert points[("aiscale_latency_seconds:p90", ())] == pytest.approx(0.9)


def test_counter_reset_counts_the_new_value() -> None:
    """A counter that went down was reset: its new value is the increase."""
    before = parse_exposition(_exposition(1000, 0, [], 0.0), 0.0)
    after = parse_exposition(_exposition(50, 0, [], 0.0), 5.0)
    points = {(n, lbls): v for n, lbls, _, v in scrape_points(before, after)}
    assert points[("aiscale_requests:rate_per_s", (("code", "200"),))] == pytest.approx(10.0)


def test_scrape_points_feed_the_store() -> None:
    """Points from consecutive scrapes append to the store in order."""
    store = _store()
    scrapes = [parse_exposition(_exposition(10 * i, 0, [], float(i)), float(i)) for i in range(5)]
    for prev, cur in zip(scrapes, scrapes[1:], strict=False):
        store.extend(scrape_points(prev, cur))
    rates = store.query("aiscale_requests:rate_per_s", {"code": "200"}, 0.0, 5.0, 1.0)
    assert [v for _, v in rates] == [10.0, 10.0, 10.0, 10.0]


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.0, 0.0), (0.25, 0.5), (0.5, 1.0), (0.75, 1.5), (1.0, 2.0)],
)
def test_bucket_quantile_interpolates_linearly(q: float, expected: float) -> None:
    """As PromQL's histogram_quantile: linear inside a bucket, lower bound 0 for the first."""
    assert bucket_quantile(q, [(1.0, 2.0), (2.0, 4.0), (math.inf, 4.0)]) == pytest.approx(
        expected)


def test_bad_exposition_and_reversed_scrapes_are_refused() -> None:
    """Unparsable text and a second scrape that is not later raise InvalidInput."""
    with pytest.raises(InvalidInput):
        parse_exposition("this is { not metrics", 0.0)
    s = parse_exposition(_exposition(1, 0, [], 0.0), 1.0)
    with pytest.raises(InvalidInput):
        scrape_points(s, s)
