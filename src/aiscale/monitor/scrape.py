"""Prometheus text exposition → samples for the metric history.

What it does: ``parse_exposition`` turns the text a ``/metrics`` endpoint serves into a
``Scrape`` (parsed with ``prometheus_client.parser``); ``scrape_points`` turns two consecutive
scrapes of one target into points for the history store: gauges as they are, counters as
per-second rates over the interval (a counter that went down was reset, so its new value is the
increase), and histograms as the request rate, the mean and quantiles of the observations made
*between* the two scrapes (bucket deltas, interpolated inside a bucket as PromQL's
``histogram_quantile`` does). This is how the live monitor feeds ``InMemoryMetricsStore``.

What it must never do: fetch anything (the caller scrapes and passes the text and its time),
read a clock, or invent a value: a counter or histogram seen in only one scrape gives no point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from aiscale.errors import InvalidInput
from aiscale.monitor.history import Labels, labels_key

__all__ = ["Histogram", "Scrape", "Point", "parse_exposition", "scrape_points",
           "bucket_quantile"]

#: One point for the history store: ``(name, labels, t_s, value)``.
Point = tuple[str, Labels, float, float]


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative buckets ``(upper_bound, count)`` sorted by bound (the last is ``+Inf``)."""

    buckets: tuple[tuple[float, float], ...]
    total: float
    count: float


@dataclass(frozen=True, slots=True)
class Scrape:
    """One target's metrics at ``t_s``: gauges, counters (by sample name, e.g. ``x_total``)
    and histograms (by family name, labels without ``le``)."""

    t_s: float
    gauges: dict[tuple[str, Labels], float] = field(default_factory=dict)
    counters: dict[tuple[str, Labels], float] = field(default_factory=dict)
    histograms: dict[tuple[str, Labels], Histogram] = field(default_factory=dict)


def parse_exposition(text: str, t_s: float) -> Scrape:
    """Parse Prometheus text format. Raises ``InvalidInput`` when the text does not parse.

    Untyped and summary samples are kept as gauges; ``_created`` samples are dropped.
    """
    gauges: dict[tuple[str, Labels], float] = {}
    counters: dict[tuple[str, Labels], float] = {}
    partial: dict[tuple[str, Labels], dict[str, object]] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise InvalidInput(f"metrics text does not parse: {exc}", field="metrics") from exc
    for fam in families:
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            value = float(s.value)
            if fam.type == "counter":
                counters[(s.name, labels_key(s.labels))] = value
            elif fam.type == "histogram":
                lbls = labels_key({k: v for k, v in s.labels.items() if k != "le"})
                h = partial.setdefault((fam.name, lbls), {"buckets": []})
                if s.name.endswith("_bucket"):
                    bounds = h["buckets"]
                    assert isinstance(bounds, list)
                    bounds.append((float(s.labels["le"]), value))
                elif s.name.endswith("_sum"):
                    h["sum"] = value
                elif s.name.endswith("_count"):
                    h["count"] = value
            else:
                gauges[(s.name, labels_key(s.labels))] = value
    histograms: dict[tuple[str, Labels], Histogram] = {}
    for key, h in partial.items():
        raw = h["buckets"]
        assert isinstance(raw, list)
        buckets = tuple(sorted(raw))
        count = h.get("count", buckets[-1][1] if buckets else 0.0)
        total = h.get("sum", 0.0)
        assert isinstance(count, float) and isinstance(total, float)
        histograms[key] = Histogram(buckets, total, count)
    return Scrape(t_s, gauges, counters, histograms)


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The ``q`` quantile from cumulative ``(upper_bound, count)`` buckets, linear inside a
    bucket (lower bound 0 for the first); the last finite bound when it falls in ``+Inf``.
    NaN when there are no observations. Raises ``InvalidInput`` for ``q`` outside [0, 1]."""
    if not 0.0 <= q <= 1.0:
        raise InvalidInput(f"quantile {q} is outside [0, 1]", field="q")
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > prev_count:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = (bound if not math.isinf(bound) else prev_bound), count
    return prev_bound


def _increase(prev: float, cur: float) -> float:
    # A counter that went down was reset between the scrapes: all of cur is new.
    return cur - prev if cur >= prev else cur


def scrape_points(prev: Scrape, cur: Scrape,
                  quantiles: Sequence[float] = (0.5, 0.9, 0.99)) -> list[Point]:
    """Points at ``cur.t_s``. Names: gauges as exposed; counters ``<name>:rate_per_s``;
    histograms ``<name>:rate_per_s`` (observations/s), ``<name>:mean`` and ``<name>:p<q>``
    (e.g. ``:p99``, ``:p99.9``) over the interval. A histogram with no new observation gives
    only its rate (0). Raises ``InvalidInput`` when ``cur`` is not later than ``prev``."""
    dt = cur.t_s - prev.t_s
    if not dt > 0:
        raise InvalidInput("the second scrape must be later than the first", field="t_s")
    t = cur.t_s
    points: list[Point] = [(name, lbls, t, v) for (name, lbls), v in sorted(cur.gauges.items())]
    for (name, lbls), value in sorted(cur.counters.items()):
        before = prev.counters.get((name, lbls))
        if before is not None:
            base = name[: -len("_total")] if name.endswith("_total") else name
            points.append((f"{base}:rate_per_s", lbls, t, _increase(before, value) / dt))
    for (name, lbls), h in sorted(cur.histograms.items()):
        old = prev.histograms.get((name, lbls))
        if old is None:
            continue
        reset = h.count < old.count
        n_new = h.count if reset else h.count - old.count
        points.append((f"{name}:rate_per_s", lbls, t, n_new / dt))
        if n_new <= 0:
            continue
        total_new = h.total if reset else h.total - old.total
        points.append((f"{name}:mean", lbls, t, total_new / n_new))
        old_counts = dict(old.buckets)
        delta = [(b, c if reset else c - old_counts.get(b, 0.0)) for b, c in h.buckets]
        for q in quantiles:
            label = f"{q * 100:g}"
            points.append((f"{name}:p{label}", lbls, t, bucket_quantile(q, delta)))
    return points
