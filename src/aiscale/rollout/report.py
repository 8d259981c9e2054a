"""The A/B report behind ``aiscale experiment report DEPLOYMENT``.

``build_report(stats)`` turns the JSON of ``GET /admin/deployments/{name}/stats`` (see
``serving.admin.counts_json``) into an ``ExperimentReport``: per version its traffic share,
error rate with a Wilson interval, latency p50/p90/p99 with order-statistic intervals, and
custom metrics; and for each version against the baseline the difference in error rate
(Newcombe interval, two-proportion z-test) and a Mann-Whitney test of the latency histograms.
Every interval and test is named in the report (``report_stats`` holds them). Versions with
fewer than ``min_requests`` requests get "not enough traffic" instead of intervals.

The p-values are fixed-horizon and two-sided, one per comparison and metric, unadjusted for
multiplicity or repeated looks; the canary analysis (``analysis.decide``) is the one that may be
consulted as often as one likes. Counts run since each version's replicas started, so two
versions may cover different periods; the report says so rather than hiding it.

``build_report`` is pure: no I/O, no clock, no randomness. Input validation lives in
``report_input``, the statistics in ``report_stats``, the renderings in ``report_output``
(``report_json``, ``write_report``, ``render_table``) and ``report_plots``. Those import this
module and never the other way round; importing either this module or ``report_output``
never loads matplotlib or rich.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiscale.contracts.histogram import Histogram
from aiscale.errors import InvalidInput
from aiscale.rollout.report_input import ParsedMetric, ParsedVersion, parse_stats
from aiscale.rollout.report_stats import (
    Interval,
    SignificanceTest,
    error_rate_test,
    latency_rank_test,
    newcombe_interval,
    quantile_interval,
    welch_difference,
    wilson_interval,
    z_value,
)

__all__ = [
    "Comparison",
    "ExperimentReport",
    "Interval",
    "MetricComparison",
    "MetricEstimate",
    "QuantileEstimate",
    "SignificanceTest",
    "VersionReport",
    "build_report",
]

#: The latency quantiles the report gives, by name.
QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))

NOT_ENOUGH_TRAFFIC = "not enough traffic"
NEEDS_SAMPLES = "std unknown (stats give only mean and count); interval: needs samples"


@dataclass(frozen=True, slots=True)
class QuantileEstimate:
    """A latency quantile in milliseconds with its order-statistic interval."""

    name: str
    quantile: float
    value_ms: float
    interval_ms: Interval


@dataclass(frozen=True, slots=True)
class MetricEstimate:
    """A custom metric of one version: mean, count, and an interval when the std is known."""

    name: str
    mean: float | None
    num_samples: int
    std: float | None
    interval: Interval | None
    note: str


@dataclass(frozen=True, slots=True)
class VersionReport:
    """One version's numbers. Without enough traffic only counts and share are given."""

    version: str
    num_requests: int
    num_errors: int
    traffic_share: float
    has_enough_traffic: bool
    error_rate: float | None
    error_rate_interval: Interval | None
    num_latency_samples: int
    latency: tuple[QuantileEstimate, ...]
    metrics: tuple[MetricEstimate, ...]
    latency_histogram: Histogram
    note: str


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """Difference of a custom metric's mean (version minus baseline)."""

    name: str
    difference: float | None
    interval: Interval | None
    test: SignificanceTest | None
    note: str


@dataclass(frozen=True, slots=True)
class Comparison:
    """One version against the baseline; differences are version minus baseline.

    ``probability_slower`` is P(a request of this version is slower than one of the baseline),
    ties counted half. ``is_comparable`` is false (and every estimate ``None``) when either side
    lacks traffic.
    """

    version: str
    baseline: str
    is_comparable: bool
    note: str
    error_rate_difference: float | None
    error_rate_difference_interval: Interval | None
    error_rate_test: SignificanceTest | None
    latency_test: SignificanceTest | None
    probability_slower: float | None
    metrics: tuple[MetricComparison, ...]


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    """The whole A/B report of one deployment."""

    deployment: str
    baseline: str
    confidence: float
    min_requests: int
    total_requests: int
    versions: tuple[VersionReport, ...]
    comparisons: tuple[Comparison, ...]
    notes: tuple[str, ...]

    def version(self, name: str) -> VersionReport:
        """The report of version ``name`` (``InvalidInput`` if there is none)."""
        for report in self.versions:
            if report.version == name:
                return report
        raise InvalidInput(f"no version {name!r} in the report", field="version")

    def comparison(self, name: str) -> Comparison:
        """The comparison of version ``name`` with the baseline (``InvalidInput`` if none)."""
        for comparison in self.comparisons:
            if comparison.version == name:
                return comparison
        raise InvalidInput(f"no comparison for version {name!r}", field="version")


def build_report(
    stats: Mapping[str, Any],
    *,
    baseline: str | None = None,
    confidence: float = 0.95,
    min_requests: int = 30,
) -> ExperimentReport:
    """Build the A/B report from a deployment's stats JSON.

    ``baseline`` defaults to the version with the most requests (ties: the first in name
    order). Raises ``InvalidInput`` naming the bad field (dotted path, e.g.
    ``versions.v2.num_errors``) for malformed stats, an unknown baseline, a confidence outside
    (0, 1) or ``min_requests`` below 2.
    """
    if not 0.0 < confidence < 1.0:
        raise InvalidInput(
            f"confidence must be within (0, 1), not {confidence!r}", field="confidence"
        )
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 2:
        raise InvalidInput("min_requests must be an integer >= 2", field="min_requests")
    deployment, parsed = parse_stats(stats)
    if baseline is None:
        baseline = min(parsed, key=lambda v: (-parsed[v].num_requests, v))
    elif baseline not in parsed:
        raise InvalidInput(
            f"baseline {baseline!r} is not a version of {deployment!r}", field="baseline"
        )
    total = sum(p.num_requests for p in parsed.values())
    versions = tuple(_version_report(p, total, confidence, min_requests) for p in parsed.values())
    by_name = {v.version: v for v in versions}
    base = by_name[baseline]
    comparisons = tuple(
        _compare(base, v, parsed[baseline], parsed[v.version], confidence)
        for v in versions
        if v.version != baseline
    )
    notes = [
        f"Intervals are {confidence:.0%} two-sided; p-values are two-sided, fixed-horizon and "
        "not adjusted for multiple comparisons or repeated looks.",
        "Counts run since each version's replicas started: versions may cover different periods.",
        f"Versions with fewer than {min_requests} requests are reported as '{NOT_ENOUGH_TRAFFIC}'.",
    ]
    if len(versions) == 1:
        notes.append("Only one version: there is nothing to compare against.")
    return ExperimentReport(
        deployment, baseline, confidence, min_requests, total, versions, comparisons, tuple(notes)
    )


def _version_report(
    parsed: ParsedVersion, total: int, confidence: float, min_requests: int
) -> VersionReport:
    share = parsed.num_requests / total if total else 0.0
    has_traffic = parsed.num_requests >= min_requests
    latency = parsed.latency_s
    num_latency = latency.num_samples
    quantiles: tuple[QuantileEstimate, ...] = ()
    if has_traffic and num_latency >= min_requests:
        quantiles = tuple(
            QuantileEstimate(
                name,
                q,
                latency.quantile(q) * 1000.0,
                _scaled(quantile_interval(latency, q, confidence), 1000.0),
            )
            for name, q in QUANTILES
        )
    note = "" if has_traffic else NOT_ENOUGH_TRAFFIC
    if has_traffic and not quantiles:
        note = f"latency: {NOT_ENOUGH_TRAFFIC} ({num_latency} samples)"
    return VersionReport(
        version=parsed.name,
        num_requests=parsed.num_requests,
        num_errors=parsed.num_errors,
        traffic_share=share,
        has_enough_traffic=has_traffic,
        error_rate=parsed.num_errors / parsed.num_requests if has_traffic else None,
        error_rate_interval=wilson_interval(parsed.num_errors, parsed.num_requests, confidence)
        if has_traffic
        else None,
        num_latency_samples=num_latency,
        latency=quantiles,
        metrics=tuple(
            _metric_estimate(name, m, confidence, min_requests if has_traffic else math.inf)
            for name, m in sorted(parsed.metrics.items())
        ),
        latency_histogram=latency,
        note=note,
    )


def _metric_estimate(
    name: str, metric: ParsedMetric, confidence: float, min_samples: float
) -> MetricEstimate:
    if metric.mean is None or metric.num_samples == 0:
        return MetricEstimate(name, None, metric.num_samples, metric.std, None, "no samples")
    if metric.num_samples < min_samples:
        return MetricEstimate(
            name, metric.mean, metric.num_samples, metric.std, None, NOT_ENOUGH_TRAFFIC
        )
    if metric.std is None:
        return MetricEstimate(name, metric.mean, metric.num_samples, None, None, NEEDS_SAMPLES)
    half = z_value(confidence) * metric.std / math.sqrt(metric.num_samples)
    interval = Interval(metric.mean - half, metric.mean + half)
    return MetricEstimate(
        name, metric.mean, metric.num_samples, metric.std, interval, "normal approximation"
    )


def _compare(
    base: VersionReport,
    other: VersionReport,
    parsed_base: ParsedVersion,
    parsed_other: ParsedVersion,
    confidence: float,
) -> Comparison:
    if not (base.has_enough_traffic and other.has_enough_traffic):
        short = other.version if not other.has_enough_traffic else base.version
        return Comparison(
            other.version,
            base.version,
            False,
            f"{NOT_ENOUGH_TRAFFIC} ({short})",
            None,
            None,
            None,
            None,
            None,
            (),
        )
    errors = (base.num_errors, base.num_requests, other.num_errors, other.num_requests)
    latency_test: SignificanceTest | None = None
    slower: float | None = None
    note = ""
    if base.latency and other.latency:
        if base.latency_histogram.upper_bounds != other.latency_histogram.upper_bounds:
            raise InvalidInput(
                f"latency histograms of {base.version} and {other.version} have different bounds",
                field=f"versions.{other.version}.latency_histogram.upper_bounds_s",
            )
        latency_test, slower = latency_rank_test(base.latency_histogram, other.latency_histogram)
    else:
        note = f"latency: {NOT_ENOUGH_TRAFFIC}"
    return Comparison(
        version=other.version,
        baseline=base.version,
        is_comparable=True,
        note=note,
        error_rate_difference=other.num_errors / other.num_requests
        - base.num_errors / base.num_requests,
        error_rate_difference_interval=newcombe_interval(*errors, confidence),
        error_rate_test=error_rate_test(*errors),
        latency_test=latency_test,
        probability_slower=slower,
        metrics=_compare_metrics(base, other, confidence),
    )


def _compare_metrics(
    base: VersionReport, other: VersionReport, confidence: float
) -> tuple[MetricComparison, ...]:
    base_metrics = {m.name: m for m in base.metrics}
    out: list[MetricComparison] = []
    for metric in other.metrics:
        reference = base_metrics.get(metric.name)
        if reference is None:
            out.append(MetricComparison(metric.name, None, None, None, "baseline lacks it"))
            continue
        if metric.mean is None or reference.mean is None:
            out.append(MetricComparison(metric.name, None, None, None, "no samples"))
            continue
        difference = metric.mean - reference.mean
        if metric.interval is None or reference.interval is None:
            note = metric.note if metric.interval is None else reference.note
            out.append(MetricComparison(metric.name, difference, None, None, note))
            continue
        assert metric.std is not None and reference.std is not None  # intervals imply a std
        difference, interval, test = welch_difference(
            reference.mean,
            reference.std,
            reference.num_samples,
            metric.mean,
            metric.std,
            metric.num_samples,
            confidence,
        )
        out.append(MetricComparison(metric.name, difference, interval, test, ""))
    return tuple(out)


def _scaled(interval: Interval, factor: float) -> Interval:
    return Interval(interval.low * factor, interval.high * factor)
