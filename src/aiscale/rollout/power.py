"""Simulated rollouts: how often the canary analysis rolls back, for a given truth.

``simulate_rollouts`` drives ``analysis.decide`` exactly as the live controller does (repeated
looks within each step, steps in order, state carried across), on synthetic traffic whose truth
the caller sets: error rates, log-normal latencies, a latency regression of the whole
distribution or only of its tail, and 1-5 feedback scores. With identical versions (an A/A
rollout) the rollback rate is the false rollback rate; with a real regression it is the power.
``power_table`` gives the power at several canary sample sizes.

Used by the tests and by people tuning ``AnalysisConfig``; never on a serving path. Randomness
comes only from the ``seed`` argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from aiscale.contracts.histogram import Histogram, latency_histogram
from aiscale.rollout.analysis import (
    AnalysisConfig,
    AnalysisState,
    CanaryObservation,
    RolloutStep,
    Verdict,
    VersionCounts,
    decide,
)

__all__ = ["RolloutScenario", "SimulationResult", "power_table", "simulate_rollouts"]

#: Bounds that give one bucket per 1-5 feedback score.
_SCORE_BOUNDS = (1.0, 2.0, 3.0, 4.0, 5.0)
_SCORE_PROBS = (0.05, 0.10, 0.20, 0.35, 0.30)
_STANDARD_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class RolloutScenario:
    """The truth of one simulated rollout.

    Latency is log-normal with ``latency_median_s`` and ``latency_sigma``; the canary's is
    multiplied by ``canary_latency_scale`` everywhere, and additionally by ``canary_tail_scale``
    above the baseline's ``tail_from_quantile`` (a tail-only regression: p99 moves, p50 does
    not). ``feedback_fraction`` of requests carry a 1-5 score; the canary's scores are lowered
    by one point with probability ``canary_feedback_drop``.
    """

    baseline_error_rate: float = 0.01
    canary_error_rate: float = 0.01
    latency_median_s: float = 0.05
    latency_sigma: float = 0.5
    canary_latency_scale: float = 1.0
    canary_tail_scale: float = 1.0
    tail_from_quantile: float = 0.95
    feedback_fraction: float = 0.0
    canary_feedback_drop: float = 0.0


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """Outcome counts over ``num_runs`` simulated rollouts.

    ``num_naive_rollbacks`` counts the runs in which a fixed-horizon test (one-sided z beyond
    the per-test alpha, Bonferroni over tests, no correction for repeated looks) would have
    fired at some look, to show what repeated looks cost without sequential testing.
    """

    num_runs: int
    num_rollbacks: int
    num_naive_rollbacks: int
    rollbacks_by_test: dict[str, int] = field(default_factory=dict)

    @property
    def rollback_rate(self) -> float:
        """Share of runs that rolled back."""
        return self.num_rollbacks / self.num_runs if self.num_runs else math.nan

    @property
    def standard_error(self) -> float:
        """Monte Carlo standard error of ``rollback_rate``."""
        rate = self.rollback_rate
        return math.sqrt(rate * (1.0 - rate) / self.num_runs) if self.num_runs else math.nan


def simulate_rollouts(
    scenario: RolloutScenario,
    *,
    canary_percents: Sequence[float] = (1.0, 5.0, 25.0, 50.0),
    num_requests_per_step: int = 20_000,
    num_looks_per_step: int = 8,
    num_runs: int = 200,
    seed: int = 0,
    config: AnalysisConfig | None = None,
) -> SimulationResult:
    """Run ``num_runs`` rollouts through the steps; a run ends at its first rollback.

    Each step sends ``num_requests_per_step`` requests split by the step's canary percent, and
    the analysis looks after every ``1 / num_looks_per_step`` of them.
    """
    config = config or AnalysisConfig()
    rng = np.random.default_rng(seed)
    naive_z = _STANDARD_NORMAL.inv_cdf(1.0 - config.alpha_per_test)
    rollbacks = naive = 0
    by_test: dict[str, int] = {}
    for _ in range(num_runs):
        state = AnalysisState()
        is_naive_hit = False
        for index, percent in enumerate(canary_percents):
            num_c = int(round(num_requests_per_step * percent / 100.0))
            num_b = num_requests_per_step - num_c
            base = _draw(rng, scenario, num_b, is_canary=False)
            can = _draw(rng, scenario, num_c, is_canary=True)
            step = RolloutStep(index, percent, started_s=0.0, min_duration_s=1.0e9)
            verdict = Verdict.WAIT
            for look in range(1, num_looks_per_step + 1):
                observation = CanaryObservation(
                    base.counts_until(look / num_looks_per_step),
                    can.counts_until(look / num_looks_per_step),
                    step,
                    now_s=float(look),
                )
                decision, state = decide(observation, state, config)
                is_naive_hit = is_naive_hit or any(
                    not t.is_skipped and t.z > naive_z and t.is_material for t in decision.tests
                )
                verdict = decision.verdict
                if verdict is Verdict.ROLLBACK:
                    for test in decision.tests:
                        if test.is_worse:
                            by_test[test.name] = by_test.get(test.name, 0) + 1
                    break
            if verdict is Verdict.ROLLBACK:
                rollbacks += 1
                break
        naive += is_naive_hit
    return SimulationResult(num_runs, rollbacks, naive, by_test)


def power_table(
    scenario: RolloutScenario,
    canary_sample_sizes: Sequence[int] = (500, 2_000, 10_000),
    *,
    canary_percent: float = 10.0,
    num_looks: int = 10,
    num_runs: int = 200,
    seed: int = 0,
    config: AnalysisConfig | None = None,
) -> dict[int, SimulationResult]:
    """Power of one step at ``canary_percent`` to roll back ``scenario``, per canary sample size.

    The step sends ``n * 100 / canary_percent`` requests in all (so the canary gets ``n``) and
    the analysis looks ``num_looks`` times, evenly spaced.
    """
    return {
        size: simulate_rollouts(
            scenario,
            canary_percents=(canary_percent,),
            num_requests_per_step=int(round(size * 100.0 / canary_percent)),
            num_looks_per_step=num_looks,
            num_runs=num_runs,
            seed=seed + size,
            config=config,
        )
        for size in canary_sample_sizes
    }


@dataclass(frozen=True, slots=True)
class _Traffic:
    """One version's requests of one step, in arrival order (latencies already bucketed)."""

    errors: npt.NDArray[np.bool_]
    latency_s: npt.NDArray[np.float64]
    latency_bucket: npt.NDArray[np.intp]
    scores: npt.NDArray[np.float64]
    score_positions: npt.NDArray[np.int64]

    def counts_until(self, fraction: float) -> VersionCounts:
        num = int(round(len(self.errors) * fraction))
        empty = latency_histogram()
        counts = np.bincount(self.latency_bucket[:num], minlength=len(empty.counts))
        latency = Histogram(
            empty.upper_bounds, tuple(counts.tolist()), float(self.latency_s[:num].sum())
        )
        num_scores = int(np.searchsorted(self.score_positions, num, side="left"))
        metrics: dict[str, Histogram] = {}
        if self.scores.size:
            metrics["feedback"] = Histogram.empty(_SCORE_BOUNDS).with_samples(
                self.scores[:num_scores]
            )
        return VersionCounts(num, int(self.errors[:num].sum()), latency, metrics)


def _draw(
    rng: np.random.Generator, scenario: RolloutScenario, num: int, *, is_canary: bool
) -> _Traffic:
    rate = scenario.canary_error_rate if is_canary else scenario.baseline_error_rate
    errors = rng.random(num) < rate
    normal = rng.standard_normal(num)
    latency = scenario.latency_median_s * np.exp(scenario.latency_sigma * normal)
    if is_canary:
        latency = latency * scenario.canary_latency_scale
        tail_z = _STANDARD_NORMAL.inv_cdf(scenario.tail_from_quantile)
        latency = np.where(normal > tail_z, latency * scenario.canary_tail_scale, latency)
    bucket = np.searchsorted(np.asarray(latency_histogram().upper_bounds), latency, side="left")
    positions = np.flatnonzero(rng.random(num) < scenario.feedback_fraction).astype(np.int64)
    scores = rng.choice(np.asarray(_SCORE_BOUNDS), size=positions.size, p=_SCORE_PROBS)
    if is_canary and scenario.canary_feedback_drop > 0:
        drop = rng.random(positions.size) < scenario.canary_feedback_drop
        scores = np.maximum(1.0, scores - drop)
    return _Traffic(errors, latency, bucket, scores.astype(np.float64), positions)
