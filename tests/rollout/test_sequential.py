"""Statistical guarantees over simulated rollouts: false rollbacks bounded by alpha, real
regressions caught. Seeded, so the outcome is reproducible."""

from __future__ import annotations

import math

import pytest

from aiscale.rollout.analysis import AnalysisConfig, MetricRule
from aiscale.rollout.power import RolloutScenario, power_table, simulate_rollouts

NUM_RUNS = 200


@pytest.mark.parametrize(
    ("scenario", "min_requests"),
    [
        (RolloutScenario(0.02, 0.02, feedback_fraction=0.2), 200),
        (RolloutScenario(0.001, 0.001, feedback_fraction=0.2), 50),
    ],
    ids=["errors-2pct", "rare-errors-0.1pct"],
)
def test_aa_rollouts_roll_back_at_most_alpha(scenario: RolloutScenario, min_requests: int) -> None:
    """200 A/A rollouts (1, 5, 25, 50 %; 8 looks per step; errors, latency and a feedback metric
    all identical) roll back at most alpha + 2 standard errors of the time, while a naive
    fixed-horizon test at the same looks would have fired far more often than alpha."""
    config = AnalysisConfig(
        alpha=0.05,
        min_requests=min_requests,
        min_metric_samples=50,
        metrics=(MetricRule("feedback", is_higher_better=True),),
    )
    result = simulate_rollouts(
        scenario,
        canary_percents=(1.0, 5.0, 25.0, 50.0),
        num_requests_per_step=12_000,
        num_looks_per_step=8,
        num_runs=NUM_RUNS,
        seed=20240601,
        config=config,
    )
    allowed = config.alpha + 2 * math.sqrt(config.alpha * (1 - config.alpha) / NUM_RUNS)
    assert result.rollback_rate <= allowed, result
    assert result.num_naive_rollbacks / NUM_RUNS > config.alpha, result


@pytest.mark.parametrize(
    ("scenario", "num_canary", "min_power"),
    [
        (RolloutScenario(0.01, 0.03), 2000, 0.9),
        (RolloutScenario(canary_tail_scale=1.5), 2000, 0.9),
        (RolloutScenario(canary_latency_scale=1.5), 500, 0.9),
    ],
    ids=["errors-1-to-3pct", "p99-only-plus-50pct", "latency-plus-50pct"],
)
def test_real_regressions_are_rolled_back(
    scenario: RolloutScenario, num_canary: int, min_power: float
) -> None:
    """With 10 % canary traffic, +2 error points, a tail-only +50 % p99, and +50 % on every
    latency are rolled back in at least 90 % of 50 runs at the given canary sample size."""
    table = power_table(scenario, (num_canary,), canary_percent=10.0, num_runs=50, seed=7)
    assert table[num_canary].rollback_rate >= min_power, table
