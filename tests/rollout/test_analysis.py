"""Canary analysis policy: clear cases, materiality, evidence across steps, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from aiscale.contracts.histogram import Histogram, latency_histogram
from aiscale.errors import ConfigError, InvalidInput
from aiscale.rollout._stats import rank_evidence
from aiscale.rollout.analysis import (
    AnalysisConfig,
    AnalysisState,
    CanaryObservation,
    MetricRule,
    RolloutStep,
    Verdict,
    VersionCounts,
    decide,
)

SCORES = Histogram.empty([1.0, 2.0, 3.0, 4.0, 5.0])
STEP = RolloutStep(index=0, canary_percent=10.0, started_s=0.0, min_duration_s=600.0)


def traffic(
    rng: np.random.Generator,
    num: int,
    error_rate: float,
    *,
    latency_scale: float = 1.0,
    score_probs: tuple[float, ...] = (0.05, 0.1, 0.2, 0.35, 0.3),
) -> VersionCounts:
    latency = rng.lognormal(math.log(0.05), 0.5, num) * latency_scale
    scores = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], size=num // 5, p=score_probs)
    return VersionCounts(
        num_requests=num,
        num_errors=int(rng.binomial(num, error_rate)),
        latency_s=latency_histogram().with_samples(latency),
        metrics={"feedback": SCORES.with_samples(scores)},
    )


CONFIG = AnalysisConfig(metrics=(MetricRule("feedback", is_higher_better=True, min_effect=0.1),))
WORSE_FEEDBACK = (0.3, 0.3, 0.2, 0.1, 0.1)
BETTER_FEEDBACK = (0.0, 0.05, 0.15, 0.4, 0.4)


@pytest.mark.parametrize(
    ("canary_kwargs", "num_canary", "now_s", "verdict", "worse_test"),
    [
        ({"error_rate": 0.06}, 3000, 900.0, Verdict.ROLLBACK, "error_rate"),
        ({"error_rate": 0.01, "latency_scale": 2.0}, 3000, 900.0, Verdict.ROLLBACK, "latency_rank"),
        (
            {"error_rate": 0.01, "score_probs": WORSE_FEEDBACK},
            3000,
            900.0,
            Verdict.ROLLBACK,
            "metric:feedback",
        ),
        ({"error_rate": 0.01}, 3000, 900.0, Verdict.PROMOTE, None),
        ({"error_rate": 0.01, "score_probs": BETTER_FEEDBACK}, 3000, 900.0, Verdict.PROMOTE, None),
        ({"error_rate": 0.01, "latency_scale": 0.7}, 3000, 900.0, Verdict.PROMOTE, None),
        ({"error_rate": 0.01}, 3000, 300.0, Verdict.WAIT, None),
        ({"error_rate": 0.06}, 3000, 10.0, Verdict.ROLLBACK, "error_rate"),
        ({"error_rate": 0.01}, 120, 900.0, Verdict.NOT_ENOUGH_DATA, None),
    ],
)
def test_clear_cases(
    canary_kwargs: dict[str, object],
    num_canary: int,
    now_s: float,
    verdict: Verdict,
    worse_test: str | None,
) -> None:
    """+5 points of errors, 2x latency or worse feedback roll back (even before the minimum
    duration); identical or better canaries promote after it, wait before it; too few requests
    give not_enough_data."""
    rng = np.random.default_rng(42)
    baseline = traffic(rng, 27_000, 0.01)
    canary = traffic(rng, num_canary, **canary_kwargs)  # type: ignore[arg-type]
    decision, state = decide(
        CanaryObservation(baseline, canary, STEP, now_s), AnalysisState(), CONFIG
    )
    assert decision.verdict is verdict, decision.reason
    assert state.num_looks == 1
    worse = {t.name for t in decision.tests if t.is_worse}
    if worse_test is None:
        assert not worse
    else:
        assert worse_test in worse
        assert worse_test in decision.reason
    if verdict is not Verdict.NOT_ENOUGH_DATA:
        assert {t.name for t in decision.tests} == set(CONFIG.test_names)
        assert all(0.0 <= t.p_value <= 1.0 for t in decision.tests)


def test_not_enough_data_says_how_many_more_requests() -> None:
    """Below min_requests the decision names the version and how many more requests it needs."""
    rng = np.random.default_rng(0)
    obs = CanaryObservation(traffic(rng, 5000, 0.01), traffic(rng, 120, 0.01), STEP, 900.0)
    decision, _ = decide(obs, AnalysisState(), AnalysisConfig(min_requests=500))
    assert decision.verdict is Verdict.NOT_ENOUGH_DATA
    assert decision.num_requests_needed == 380
    assert "canary needs 380 more requests" in decision.reason


@pytest.mark.parametrize(
    ("error_rate", "latency_scale"),
    [(0.0118, 1.0), (0.01, 1.03)],
)
def test_tiny_differences_never_roll_back(error_rate: float, latency_scale: float) -> None:
    """With 400k requests a +0.18 point error rate or +3 % latency is significant but not
    material: the canary is promoted."""
    rng = np.random.default_rng(3)
    baseline = VersionCounts(
        400_000, 4000, latency_histogram().with_samples(rng.lognormal(math.log(0.05), 0.5, 400_000))
    )
    canary = VersionCounts(
        400_000,
        int(400_000 * error_rate),
        latency_histogram().with_samples(
            rng.lognormal(math.log(0.05), 0.5, 400_000) * latency_scale
        ),
    )
    decision, _ = decide(CanaryObservation(baseline, canary, STEP, 900.0), AnalysisState())
    assert decision.verdict is Verdict.PROMOTE, decision.reason
    assert any(t.is_significant for t in decision.tests)


def test_evidence_accumulates_across_steps() -> None:
    """The same counts seen in two steps give sqrt(2) times the z of one step."""
    hist = latency_histogram().with_samples([0.05])
    base = VersionCounts(10_000, 100, hist)
    can = VersionCounts(1_000, 14, hist)
    step0 = RolloutStep(0, 10.0, 0.0, 60.0)
    step1 = RolloutStep(1, 10.0, 100.0, 60.0)
    first, state = decide(CanaryObservation(base, can, step0, 50.0), AnalysisState())
    again, state = decide(CanaryObservation(base, can, step0, 70.0), state)
    second, state = decide(CanaryObservation(base, can, step1, 200.0), state)
    z = {t.name: t.z for t in first.tests}["error_rate"]
    assert {t.name: t.z for t in again.tests}["error_rate"] == pytest.approx(z)
    assert {t.name: t.z for t in second.tests}["error_rate"] == pytest.approx(z * math.sqrt(2))
    assert state.num_looks == 3
    with pytest.raises(InvalidInput) as caught:
        decide(CanaryObservation(base, can, step0, 300.0), state)
    assert caught.value.field == "step.index"


def test_bucketed_mann_whitney_matches_scipy() -> None:
    """On integer data (every value its own bucket) our z equals scipy's asymptotic U test."""
    rng = np.random.default_rng(9)
    base = rng.integers(0, 20, 700)
    can = rng.integers(1, 21, 300)
    bounds = [float(v) for v in range(21)]
    ev = rank_evidence(
        Histogram.empty(bounds).with_samples(base).counts,
        Histogram.empty(bounds).with_samples(can).counts,
    )
    result = stats.mannwhitneyu(
        can, base, alternative="greater", method="asymptotic", use_continuity=False
    )
    assert stats.norm.sf(ev.z) == pytest.approx(result.pvalue, rel=1e-9)


@pytest.mark.parametrize(
    ("counts", "field"),
    [
        ((100, 101), "canary.num_errors"),
        ((-1, 0), "canary.num_errors"),
    ],
)
def test_inconsistent_counts_are_rejected(counts: tuple[int, int], field: str) -> None:
    """More errors than requests, or negative counts: InvalidInput naming the field."""
    hist = latency_histogram()
    obs = CanaryObservation(VersionCounts(100, 1, hist), VersionCounts(*counts, hist), STEP, 0.0)
    with pytest.raises(InvalidInput) as caught:
        decide(obs, AnalysisState())
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"min_requests": 0}, "min_requests"),
        ({"latency_p99_min_increase": -0.1}, "latency_p99_min_increase"),
        ({"relative_risks": (0.5,)}, "relative_risks"),
        ({"tail_quantile": 1.0}, "tail_quantile"),
        ({"metrics": (MetricRule("a", True), MetricRule("a", False))}, "metrics.0.name"),
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, object], field: str) -> None:
    """Invalid analysis settings raise ConfigError with the field's name."""
    with pytest.raises(ConfigError) as caught:
        AnalysisConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
