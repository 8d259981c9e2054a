"""Histogram: bounded, mergeable, and quantiles within one bucket of the truth."""

from __future__ import annotations

import numpy as np
import pytest

from aiscale.contracts.histogram import Histogram, latency_histogram
from aiscale.errors import InvalidInput


def test_quantiles_are_within_one_bucket_of_the_samples() -> None:
    """p50 and p99 from the latency histogram are within 5 % of the exact sample quantiles."""
    rng = np.random.default_rng(0)
    samples = rng.lognormal(np.log(0.05), 0.6, 50_000)
    hist = latency_histogram().with_samples(samples)
    assert hist.num_samples == 50_000
    for q in (0.5, 0.9, 0.99):
        exact = float(np.quantile(samples, q))
        assert abs(hist.quantile(q) / exact - 1.0) <= 0.05
    assert hist.mean() == pytest.approx(float(samples.mean()))


def test_merge_equals_recording_everything_in_one() -> None:
    """Histograms from two gateways add up exactly to the histogram of all samples."""
    rng = np.random.default_rng(1)
    a, b = rng.exponential(0.1, 1000), rng.exponential(0.2, 700)
    empty = latency_histogram()
    merged = empty.with_samples(a).merge(empty.with_samples(b))
    together = empty.with_samples(np.concatenate([a, b]))
    assert merged.counts == together.counts
    assert merged.total == pytest.approx(together.total)


def test_bucket_edges_follow_le_semantics() -> None:
    """A value equal to a bound lands in that bound's bucket; values above the last overflow."""
    hist = Histogram.empty([1.0, 2.0, 3.0]).with_samples([0.5, 1.0, 1.5, 3.0, 7.0])
    assert hist.counts == (2, 1, 1, 1)
    assert hist.quantile(0.999) == 3.0
    assert np.isnan(Histogram.empty([1.0]).quantile(0.5))


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Histogram((1.0, 1.0), (0, 0, 0)), "upper_bounds"),
        (lambda: Histogram((), (0,)), "upper_bounds"),
        (lambda: Histogram((1.0, 2.0), (0, 0)), "counts"),
        (lambda: Histogram((1.0,), (1, -1)), "counts"),
        (lambda: Histogram.empty([1.0]).merge(Histogram.empty([2.0])), "upper_bounds"),
        (lambda: Histogram.empty([1.0]).with_samples([float("inf")]), "values"),
        (lambda: Histogram.log_spaced(1.0, 0.5, 1.1), "growth"),
    ],
)
def test_bad_histograms_are_rejected(build: object, field: str) -> None:
    """Unordered bounds, wrong count lengths, negative counts, bound mismatches: InvalidInput."""
    with pytest.raises(InvalidInput) as caught:
        build()  # type: ignore[operator]
    assert caught.value.field == field
