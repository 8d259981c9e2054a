"""Statistics behind the canary analysis: effect estimates and an always-valid sequential test.

Every comparison is reduced to an estimate ``d`` of "how much worse the canary is" with a
variance ``V`` under the null hypothesis (no difference), and kept as ``Evidence``: the score
``d / V`` and the information ``1 / V``. Independent periods (rollout steps) add up: summed
score and information are the inverse-variance-weighted estimate over all steps, so a canary
that was measured at 1 %, then 5 %, then 25 % is judged on all of it, each step comparing canary
and baseline over the same period (no bias from traffic that changes over the day).

Counts (errors, requests in the latency tail) are instead judged exactly, conditional on the
hits (``count_evidence``): rare events make the normal approximation unsafe at small counts.

The other tests use a one-sided mixture sequential probability ratio test (mSPRT; Robbins 1970,
Johari et al. 2017 "Always valid inference"). Under the normal approximation the score is a
Brownian motion in information time with drift ``theta``; mixing its likelihood ratio over
``theta ~ N(0, tau**2)`` restricted to ``theta > 0`` gives

    E = 2 / sqrt(1 + I tau**2) * exp(S**2 / (2 a)) * Phi(S / sqrt(a)),   a = I + 1 / tau**2

which is a non-negative supermartingale when the canary is not worse (``theta <= 0``). By Ville's
inequality ``P(E ever >= 1 / alpha) <= alpha``: the analysis may look after every request, for
as long as it likes, and still rolls back a healthy canary with probability at most ``alpha``.
The count tests' e-values are supermartingales too, so the same bound holds for them.
``tau`` is the size of effect the test is tuned to detect fastest.

This module never does I/O and never reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one test has accumulated over independent periods.

    ``score`` (estimate / variance) and ``information`` (1 / variance) drive the normal mixture
    test and the reported z. Count tests also carry ``log_likelihood_ratios``: the exact log
    likelihood ratio of each relative risk of the grid they were computed for.
    """

    score: float = 0.0
    information: float = 0.0
    log_likelihood_ratios: tuple[float, ...] = ()

    def plus(self, other: Evidence) -> Evidence:
        """The evidence of two independent periods together."""
        mine, theirs = self.log_likelihood_ratios, other.log_likelihood_ratios
        if mine and theirs:
            ratios = tuple(a + b for a, b in zip(mine, theirs, strict=True))
        else:
            ratios = mine or theirs
        return Evidence(self.score + other.score, self.information + other.information, ratios)

    def flipped(self) -> Evidence:
        """The same normal-approximation evidence with "worse" meaning the other direction."""
        return Evidence(-self.score, self.information)

    @property
    def z(self) -> float:
        """The standardised statistic (0 when there is no information)."""
        return self.score / math.sqrt(self.information) if self.information > 0 else 0.0


def proportion_evidence(
    num_baseline: int, hits_baseline: int, num_canary: int, hits_canary: int
) -> Evidence:
    """Two-proportion comparison: canary rate minus baseline rate, pooled null variance."""
    if num_baseline <= 0 or num_canary <= 0:
        return Evidence()
    pooled = (hits_baseline + hits_canary) / (num_baseline + num_canary)
    variance = pooled * (1.0 - pooled) * (1.0 / num_baseline + 1.0 / num_canary)
    if variance <= 0.0:
        return Evidence()
    difference = hits_canary / num_canary - hits_baseline / num_baseline
    return Evidence(difference / variance, 1.0 / variance)


def count_evidence(
    num_baseline: int,
    hits_baseline: int,
    num_canary: int,
    hits_canary: int,
    relative_risks: Sequence[float],
) -> Evidence:
    """Exact evidence that canary requests hit (fail, land in the tail) more often.

    Conditional on the hits, each hit lands on the canary with probability ``pi``, the canary's
    share of requests, when both versions are alike; when the canary's hit rate is ``r`` times
    the baseline's, with ``pi' = r pi / (r pi + 1 - pi)``. The product of these per-hit
    likelihood ratios is an exact martingale (a supermartingale when the canary is better), so
    it stays valid with a handful of rare errors where the normal approximation is not. The
    ratio is kept for each ``r`` of the grid; ``log_e_value`` averages them.
    """
    normal = proportion_evidence(num_baseline, hits_baseline, num_canary, hits_canary)
    if num_baseline <= 0 or num_canary <= 0:
        return normal
    share = num_canary / (num_baseline + num_canary)
    ratios: list[float] = []
    for risk in relative_risks:
        alternative = risk * share / (risk * share + 1.0 - share)
        ratios.append(
            hits_canary * math.log(alternative / share)
            + hits_baseline * math.log((1.0 - alternative) / (1.0 - share))
        )
    return Evidence(normal.score, normal.information, tuple(ratios))


def rank_evidence(baseline_counts: Sequence[int], canary_counts: Sequence[int]) -> Evidence:
    """Mann-Whitney U on bucketed data: estimate ``P(canary > baseline) - 1/2``.

    Values in the same bucket count as ties (half a win each); the null variance carries the
    usual tie correction, so this is exactly the asymptotic Mann-Whitney test of the bucketed
    values (without continuity correction).
    """
    base = np.asarray(baseline_counts, dtype=np.float64)
    can = np.asarray(canary_counts, dtype=np.float64)
    num_b = float(base.sum())
    num_c = float(can.sum())
    if num_b <= 0 or num_c <= 0:
        return Evidence()
    below = np.cumsum(base) - base
    u_canary = float(np.dot(can, below + 0.5 * base))
    num = num_b + num_c
    ties = base + can
    tie_term = float(np.sum(ties**3 - ties)) / (num * (num - 1.0))
    variance_u = num_b * num_c / 12.0 * ((num + 1.0) - tie_term)
    if variance_u <= 0.0:
        return Evidence()
    scale = num_b * num_c
    variance = variance_u / (scale * scale)
    return Evidence((u_canary / scale - 0.5) / variance, 1.0 / variance)


def exceedances(
    baseline_counts: Sequence[int], canary_counts: Sequence[int], quantile: float
) -> tuple[int, int]:
    """How many baseline and canary values lie above the pooled ``quantile`` bucket.

    The threshold is a symmetric function of the pooled data, so when both versions draw from
    the same distribution the split of exceedances between them is exchangeable, and the
    two-proportion test on them is a valid test of the tail.
    """
    base = np.asarray(baseline_counts, dtype=np.int64)
    can = np.asarray(canary_counts, dtype=np.int64)
    pooled = np.cumsum(base + can)
    total = int(pooled[-1]) if pooled.size else 0
    if total == 0:
        return 0, 0
    index = int(np.searchsorted(pooled, quantile * total, side="left"))
    index = min(index, len(pooled) - 1)
    above_b = int(base.sum() - base[: index + 1].sum())
    above_c = int(can.sum() - can[: index + 1].sum())
    return above_b, above_c


def log_e_value(evidence: Evidence, tau: float) -> float:
    """Log of the e-value: the mixture likelihood ratio; 0 without data.

    With ``log_likelihood_ratios`` it is their equal-weight average (a mixture over the grid
    of relative risks; ``tau`` is unused), otherwise the one-sided normal mixture of the module
    docstring.
    """
    ratios = evidence.log_likelihood_ratios
    if ratios:
        top = max(ratios)
        return top + math.log(sum(math.exp(r - top) for r in ratios) / len(ratios))
    info = evidence.information
    if info <= 0.0:
        return 0.0
    a = info + 1.0 / (tau * tau)
    score = evidence.score
    return (
        _LOG_2
        + _log_norm_cdf(score / math.sqrt(a))
        + score * score / (2.0 * a)
        - 0.5 * math.log1p(info * tau * tau)
    )


def _log_norm_cdf(x: float) -> float:
    """log Phi(x), accurate far into the lower tail."""
    if x > -20.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    # Asymptotic series of Mills' ratio; relative error below 1e-9 for x <= -20.
    inv2 = 1.0 / (x * x)
    return -0.5 * x * x - math.log(-x) - _HALF_LOG_2PI + math.log1p(-inv2 + 3.0 * inv2 * inv2)
