"""What the aggregated simulator shows a policy as the interval's TTFT p99
(``plan/llm/observing.py``): the quantile of its latency model's whole mixture."""

from __future__ import annotations

import numpy as np
import pytest

from aiscale.plan.llm.observing import IntervalStats, mixture_quantile


def test_the_mixture_quantile_matches_a_sample_of_the_model() -> None:
    """Prompt quantiles' services plus an M/G/1 wait (atom at 0, exponential tail), over
    steps of different weights: the p99 is the one a large sample of it has."""
    rng = np.random.default_rng(5)
    models = [
        (np.array([0.05, 0.1, 0.2, 0.4]), 0.6, 0.15, 30.0),
        (np.array([0.06, 0.12, 0.25, 0.5]), 0.3, 0.08, 10.0),
    ]
    draws = []
    for base, rho, tail, weight in models:
        n = int(weight * 20_000)
        wait = np.where(rng.random(n) < rho, rng.exponential(tail, n), 0.0)
        draws.append(rng.choice(base, n) + wait)
    expected = float(np.quantile(np.concatenate(draws), 0.99))
    assert mixture_quantile([], [], models, 0.99) == pytest.approx(expected, rel=0.02)


def test_the_model_p99_is_below_the_slowest_prompt_plus_the_waits_p99() -> None:
    """The slowest prompt rarely also waits the longest: the mixture's p99 is below the sum
    of the two tails' (what the simulator used to report, a sixth too high on long prompts),
    and above each part alone."""
    base, rho, tail = np.array([0.1, 0.2, 0.3, 0.6]), 0.6, 0.1
    stats = IntervalStats()
    stats.add_ttft_model(base, rho, tail, 50.0)
    p99 = stats.ttft_quantile()
    wait_p99 = tail * np.log(rho / 0.01)
    assert max(base.max(), wait_p99) < p99 < base.max() + wait_p99


def test_samples_and_models_count_together_and_an_empty_interval_has_none() -> None:
    """Exact-mode samples and aggregated-mode models share one weight; no weight, no p99."""
    stats = IntervalStats()
    assert np.isnan(stats.ttft_quantile())
    stats.add_ttft_model(np.array([0.1]), 0.0, 0.0, 99.0)
    stats.add_ttft(5.0, 2.0)  # 2% of the weight is slow: the p99 is theirs
    assert stats.ttft_quantile() == pytest.approx(5.0, rel=0.01)
    stats.reset(10.0)
    assert np.isnan(stats.ttft_quantile())
