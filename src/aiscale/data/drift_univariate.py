"""Per-feature two-sample tests for tabular columns: numeric and categorical.

Each function takes a reference sample and a current sample that are already cleaned
(nulls handled, values checked by ``drift.py``) and returns a :class:`UnivariateResult`:
the test's name, statistic, raw p-value and effect sizes. Multiple-testing correction and
the drift decision belong to ``drift.py``.

This module must never do I/O, read a clock or use global randomness; every test here is
deterministic.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import stats

#: Quantile bins for the population stability index of a numeric column.
DEFAULT_PSI_BINS = 10

#: A contingency column whose smallest expected count is below this is pooled (Cochran's rule).
MIN_EXPECTED_COUNT = 5.0

#: The pooled bucket of rare categories in a contingency table.
OTHER = "<other>"


@dataclass(frozen=True, slots=True)
class UnivariateResult:
    """The outcome of one two-sample test on one column, before any correction."""

    test: str
    statistic: float
    p_value: float
    effect_sizes: dict[str, float]
    new_categories: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def compare_numeric(
    reference: NDArray[np.float64],
    current: NDArray[np.float64],
    *,
    num_bins: int = DEFAULT_PSI_BINS,
) -> UnivariateResult:
    """Two-sample Kolmogorov–Smirnov test of two finite numeric samples.

    The exact distribution is used while ``n_ref * n_cur`` is small (scipy's ``auto``), the
    asymptotic one above that. Effect sizes: the Wasserstein distance (raw and in reference
    standard deviations), the PSI over reference-quantile bins, the mean shift in reference
    standard deviations and the ratio of standard deviations.
    """
    with warnings.catch_warnings():
        # scipy warns when the exact computation falls back to the asymptotic one; the
        # fallback is the documented behaviour we want, not an error.
        warnings.simplefilter("ignore", RuntimeWarning)
        ks = stats.ks_2samp(reference, current, method="auto")
    wasserstein = float(stats.wasserstein_distance(reference, current))
    scale = _scale(reference, current)
    ref_sd = float(np.std(reference, ddof=1)) if reference.size > 1 else 0.0
    cur_sd = float(np.std(current, ddof=1)) if current.size > 1 else 0.0
    effects = {
        "wasserstein": wasserstein,
        "wasserstein_sd": wasserstein / scale if scale > 0 else 0.0,
        "psi": population_stability_index(reference, current, num_bins=num_bins),
        "mean_shift_sd": (
            (float(np.mean(current)) - float(np.mean(reference))) / scale if scale > 0 else 0.0
        ),
    }
    if ref_sd > 0:  # undefined for a constant reference, so left out rather than infinite
        effects["std_ratio"] = cur_sd / ref_sd
    return UnivariateResult(
        test="ks_2samp",
        statistic=float(ks.statistic),
        p_value=float(ks.pvalue),
        effect_sizes=effects,
    )


def population_stability_index(
    reference: NDArray[np.float64],
    current: NDArray[np.float64],
    *,
    num_bins: int = DEFAULT_PSI_BINS,
) -> float:
    """PSI over bins cut at the reference sample's quantiles.

    Tied quantiles collapse into fewer bins. Counts are smoothed by half an observation per
    bin so an empty bin gives a large but finite value. Rule of thumb: < 0.1 stable,
    0.1–0.25 moderate, > 0.25 large shift.
    """
    bins = max(2, min(num_bins, reference.size // 5))
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    ref_counts = np.bincount(
        np.searchsorted(edges, reference, side="left"), minlength=edges.size + 1
    )
    cur_counts = np.bincount(np.searchsorted(edges, current, side="left"), minlength=edges.size + 1)
    return _psi(ref_counts.astype(np.float64), cur_counts.astype(np.float64))


def compare_categorical(
    reference: Sequence[Hashable],
    current: Sequence[Hashable],
    *,
    min_expected: float = MIN_EXPECTED_COUNT,
) -> UnivariateResult:
    """Chi-squared test of homogeneity on the 2 × K table of category counts.

    Rare categories: a category whose smallest expected count is below ``min_expected`` is
    pooled into one ``<other>`` bucket; if that bucket is itself too small it is merged into
    the smallest kept column. A 2 × 2 table with an expected count still below
    ``min_expected`` is tested with Fisher's exact test instead (``statistic`` stays the
    chi-squared value, the p-value is Fisher's). Categories present in the
    current sample but absent from the reference are reported in ``new_categories`` (with
    their share of current rows as the ``new_category_rate`` effect) whether or not the test
    rejects: a long tail makes a few new categories normal, so they do not decide drift
    alone.
    """
    ref_counts = Counter(reference)
    cur_counts = Counter(current)
    n_ref, n_cur = len(reference), len(current)
    categories = sorted(
        set(ref_counts) | set(cur_counts),
        key=lambda c: (-(ref_counts[c] + cur_counts[c]), repr(c)),
    )
    new = [c for c in categories if c not in ref_counts]
    new_rate = sum(cur_counts[c] for c in new) / n_cur

    ref_p = np.array([ref_counts[c] for c in categories], dtype=np.float64)
    cur_p = np.array([cur_counts[c] for c in categories], dtype=np.float64)
    total_variation = 0.5 * float(np.abs(ref_p / n_ref - cur_p / n_cur).sum())
    psi = _psi(ref_p, cur_p)

    table, num_pooled = _pooled_table(categories, ref_counts, cur_counts, min_expected)
    notes: list[str] = []
    if num_pooled:
        notes.append(f"{num_pooled} rare categories pooled into {OTHER}")
    if table.shape[1] < 2:
        # One category on both sides: the samples are identical in distribution.
        statistic, p_value, test, chi2 = 0.0, 1.0, "chi2_contingency", 0.0
    else:
        chi2, chi2_p, _, expected = stats.chi2_contingency(table, correction=False)
        chi2 = float(chi2)
        if table.shape[1] == 2 and float(np.min(expected)) < min_expected:
            res = stats.fisher_exact(table)
            statistic, p_value, test = float(chi2), float(res.pvalue), "fisher_exact"
        else:
            statistic, p_value, test = chi2, float(chi2_p), "chi2_contingency"
    n_total = n_ref + n_cur
    cramers_v = math.sqrt(chi2 / n_total) if table.shape[1] >= 2 else 0.0
    return UnivariateResult(
        test=test,
        statistic=statistic,
        p_value=min(1.0, p_value),
        effect_sizes={
            "total_variation": total_variation,
            "psi": psi,
            "cramers_v": cramers_v,
            "new_category_rate": new_rate,
        },
        new_categories=tuple(_label(c) for c in new),
        notes=tuple(notes),
    )


def _pooled_table(
    categories: list[Hashable],
    ref_counts: Counter[Hashable],
    cur_counts: Counter[Hashable],
    min_expected: float,
) -> tuple[NDArray[np.float64], int]:
    """The 2 × K contingency table after pooling rare columns; also how many were pooled."""
    n_ref, n_cur = sum(ref_counts.values()), sum(cur_counts.values())
    smaller_share = min(n_ref, n_cur) / (n_ref + n_cur)
    kept: list[list[float]] = []
    other = [0.0, 0.0]
    num_pooled = 0
    for c in categories:  # most frequent first
        column = [float(ref_counts[c]), float(cur_counts[c])]
        if (column[0] + column[1]) * smaller_share >= min_expected:
            kept.append(column)
        else:
            other[0] += column[0]
            other[1] += column[1]
            num_pooled += 1
    if num_pooled:
        if (other[0] + other[1]) * smaller_share >= min_expected or len(kept) < 2:
            kept.append(other)
        else:
            kept[-1] = [kept[-1][0] + other[0], kept[-1][1] + other[1]]
    return np.array(kept, dtype=np.float64).T.reshape(2, -1), num_pooled


def _psi(ref_counts: NDArray[np.float64], cur_counts: NDArray[np.float64]) -> float:
    """PSI of two count vectors over the same bins, half-count smoothed."""
    ref_p = (ref_counts + 0.5) / (ref_counts.sum() + 0.5 * ref_counts.size)
    cur_p = (cur_counts + 0.5) / (cur_counts.sum() + 0.5 * cur_counts.size)
    return float(np.sum((cur_p - ref_p) * np.log(cur_p / ref_p)))


def _scale(reference: NDArray[np.float64], current: NDArray[np.float64]) -> float:
    """Reference standard deviation, or the pooled one when the reference is constant."""
    if reference.size > 1:
        sd = float(np.std(reference, ddof=1))
        if sd > 0:
            return sd
    pooled = np.concatenate([reference, current])
    return float(np.std(pooled, ddof=1)) if pooled.size > 1 else 0.0


def _label(category: Hashable) -> str:
    """A category as text for reports (``None`` is the null category)."""
    return "<null>" if category is None else str(category)
