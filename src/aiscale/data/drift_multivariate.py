"""Multivariate two-sample test for embeddings and text: MMD with an RBF kernel.

The statistic is the squared maximum mean discrepancy between the reference and current
samples under a Gaussian kernel whose bandwidth is the median pairwise distance of the
pooled sample (the median heuristic). Its p-value comes from a permutation test with a
bounded number of permutations; each side is first subsampled to at most ``max_n`` rows so
the cost stays bounded (the kernel matrix is at most ``2 * max_n`` square).

Text without an embedder is turned into a few simple per-text features (length, token
counts, character mix) and tested the same way.

This module must never do I/O, read a clock or use global randomness: the numpy
``Generator`` that draws subsamples and permutations is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: Permutations for the MMD p-value; the smallest reachable p-value is 1 / (this + 1), which
#: must stay well below alpha divided by the number of features for the correction to work.
DEFAULT_NUM_PERMUTATIONS = 1000

#: Rows kept per side before the kernel matrix is built.
DEFAULT_MAX_N = 500

#: Permutations evaluated per matrix product (bounds memory to this × 2·max_n floats).
_CHUNK = 200

#: Names of the columns :func:`text_features` returns, in order.
TEXT_FEATURES = (
    "log_chars",
    "log_tokens",
    "mean_token_chars",
    "digit_share",
    "upper_share",
    "punct_share",
)


@dataclass(frozen=True, slots=True)
class MmdResult:
    """Outcome of one MMD permutation test."""

    statistic: float
    """Biased (V-statistic) MMD² of the tested samples: the permuted quantity."""
    p_value: float
    mmd2_unbiased: float
    bandwidth: float
    num_permutations: int
    n_ref_used: int
    n_cur_used: int


def mmd_permutation_test(
    reference: NDArray[np.float64],
    current: NDArray[np.float64],
    *,
    rng: np.random.Generator,
    num_permutations: int = DEFAULT_NUM_PERMUTATIONS,
    max_n: int = DEFAULT_MAX_N,
) -> MmdResult:
    """Permutation test of equal distributions for two ``(n, d)`` samples.

    p-value = (1 + #{permuted statistic ≥ observed}) / (1 + num_permutations), which is a
    valid p-value for any number of permutations. The bandwidth depends only on the pooled
    sample, so it is the same under every permutation and the test stays exact.
    """
    x = _subsample(reference, max_n, rng)
    y = _subsample(current, max_n, rng)
    n, m = x.shape[0], y.shape[0]
    pooled = np.concatenate([x, y])
    sq_dist = _squared_distances(pooled)
    bandwidth = _median_bandwidth(sq_dist)
    kernel = np.exp(-sq_dist / (2.0 * bandwidth * bandwidth))

    # With weights w = (1/n for reference rows, -1/m for current rows), the biased MMD² is
    # wᵀ K w; a permutation only reorders w, so all permutations are one matrix product.
    weights = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(weights @ kernel @ weights)
    num_at_least = 0
    done = 0
    while done < num_permutations:
        size = min(_CHUNK, num_permutations - done)
        permuted = rng.permuted(np.broadcast_to(weights, (size, n + m)), axis=1)
        values = np.einsum("ij,ij->i", permuted @ kernel, permuted)
        # A small tolerance keeps ties (common with duplicated rows) on the safe side.
        num_at_least += int(np.count_nonzero(values >= observed - 1e-12))
        done += size
    p_value = (1 + num_at_least) / (1 + num_permutations)

    k_xx = kernel[:n, :n]
    k_yy = kernel[n:, n:]
    k_xy = kernel[:n, n:]
    unbiased = (
        (k_xx.sum() - n) / (n * (n - 1)) + (k_yy.sum() - m) / (m * (m - 1)) - 2.0 * k_xy.mean()
    )
    return MmdResult(
        statistic=max(0.0, observed),
        p_value=p_value,
        mmd2_unbiased=float(unbiased),
        bandwidth=bandwidth,
        num_permutations=num_permutations,
        n_ref_used=n,
        n_cur_used=m,
    )


def centroid_distance(reference: NDArray[np.float64], current: NDArray[np.float64]) -> float:
    """Distance between the sample means, in units of the reference's RMS spread."""
    shift = float(np.linalg.norm(current.mean(axis=0) - reference.mean(axis=0)))
    spread = float(np.sqrt(np.mean(np.sum((reference - reference.mean(axis=0)) ** 2, axis=1))))
    return shift / spread if spread > 0 else shift


def text_features(texts: Sequence[str]) -> NDArray[np.float64]:
    """Simple per-text features, one row per text, columns as in :data:`TEXT_FEATURES`."""
    rows = np.empty((len(texts), len(TEXT_FEATURES)), dtype=np.float64)
    for i, text in enumerate(texts):
        tokens = text.split()
        num_chars = len(text)
        rows[i, 0] = math.log1p(num_chars)
        rows[i, 1] = math.log1p(len(tokens))
        rows[i, 2] = sum(len(t) for t in tokens) / len(tokens) if tokens else 0.0
        if num_chars:
            rows[i, 3] = sum(ch.isdigit() for ch in text) / num_chars
            rows[i, 4] = sum(ch.isupper() for ch in text) / num_chars
            rows[i, 5] = sum(not ch.isalnum() and not ch.isspace() for ch in text) / num_chars
        else:
            rows[i, 3:] = 0.0
    return rows


def standardize_pooled(
    reference: NDArray[np.float64], current: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Scale each column to unit variance over the pooled sample (constant columns kept as 0).

    Pooled statistics are the same under every permutation, so the permutation test stays
    exact; reference-only statistics would not be.
    """
    pooled = np.concatenate([reference, current])
    mean = pooled.mean(axis=0)
    sd = pooled.std(axis=0)
    sd[sd == 0] = 1.0
    return (reference - mean) / sd, (current - mean) / sd


def _subsample(
    sample: NDArray[np.float64], max_n: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    if sample.shape[0] <= max_n:
        return sample
    return sample[rng.choice(sample.shape[0], size=max_n, replace=False)]


def _squared_distances(points: NDArray[np.float64]) -> NDArray[np.float64]:
    norms = np.einsum("ij,ij->i", points, points)
    sq: NDArray[np.float64] = norms[:, None] + norms[None, :] - 2.0 * (points @ points.T)
    np.maximum(sq, 0.0, out=sq)
    np.fill_diagonal(sq, 0.0)
    return sq


def _median_bandwidth(sq_dist: NDArray[np.float64]) -> float:
    """Median pairwise distance; the mean of the non-zero ones, or 1, when that is 0."""
    upper = sq_dist[np.triu_indices(sq_dist.shape[0], k=1)]
    median = float(np.median(upper)) if upper.size else 0.0
    if median <= 0.0:
        positive = upper[upper > 0]
        median = float(positive.mean()) if positive.size else 1.0
    return math.sqrt(median)
