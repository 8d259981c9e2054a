"""LLM canaries in the analysis: TTFT, ITL, output length and feedback as metric tests,
relative materiality, and the rules recorded with a rollout so a resumed one keeps them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from aiscale.contracts.histogram import Histogram, latency_histogram
from aiscale.errors import ConfigError
from aiscale.rollout.analysis import (
    LLM_METRIC_RULES,
    OUTPUT_TOKENS_METRIC,
    TTFT_METRIC,
    AnalysisConfig,
    AnalysisState,
    CanaryObservation,
    MetricRule,
    RolloutStep,
    Verdict,
    VersionCounts,
    decide,
    with_llm_metrics,
)
from aiscale.rollout.controller import RolloutPlan
from aiscale.rollout.live import plan_config, plan_from_record

STEP = RolloutStep(index=0, canary_percent=50.0, started_s=0.0, min_duration_s=0.0)
TOKENS = Histogram.log_spaced(1.0, 131_072.0, 1.05)
LLM = with_llm_metrics(AnalysisConfig(min_requests=200, min_metric_samples=200))


def version(
    rng: np.random.Generator, *, ttft_scale: float = 1.0, mean_tokens: float = 200.0
) -> VersionCounts:
    """400 answered chats: e2e latency, TTFT (log-normal around 0.3 s) and output length."""
    num = 400
    ttft = rng.lognormal(np.log(0.3), 0.3, num) * ttft_scale
    tokens = np.maximum(1, rng.normal(mean_tokens, 20.0, num)).round()
    return VersionCounts(
        num_requests=num,
        num_errors=0,
        latency_s=latency_histogram().with_samples(ttft + tokens * 0.02),
        metrics={
            TTFT_METRIC: latency_histogram().with_samples(ttft),
            OUTPUT_TOKENS_METRIC: TOKENS.with_samples(tokens),
        },
    )


def judge(canary: VersionCounts, baseline: VersionCounts, config: AnalysisConfig = LLM
          ) -> tuple[Verdict, set[str]]:
    decision, _ = decide(CanaryObservation(baseline, canary, STEP, 10.0), AnalysisState(), config)
    return decision.verdict, {t.name for t in decision.tests if t.is_worse}


@pytest.mark.parametrize(
    ("canary_kwargs", "verdict", "worse"),
    [
        ({}, Verdict.PROMOTE, set()),
        ({"ttft_scale": 2.0}, Verdict.ROLLBACK, {"metric:ttft_s"}),
        ({"mean_tokens": 120.0}, Verdict.ROLLBACK, {"metric:output_tokens"}),  # stops early
        ({"mean_tokens": 260.0}, Verdict.PROMOTE, set()),  # longer answers are not worse
    ],
)
def test_an_llm_canary_is_judged_on_first_tokens_and_output_length(
    canary_kwargs: dict[str, float], verdict: Verdict, worse: set[str]
) -> None:
    """A canary twice as slow to its first token, or writing answers 40 % shorter, is
    rolled back by that metric's test; one like the baseline is promoted."""
    rng = np.random.default_rng(7)
    found, found_worse = judge(version(rng, **canary_kwargs), version(rng))
    assert found is verdict and found_worse == worse


def test_an_llm_rollout_judges_first_tokens_not_whole_answers() -> None:
    """Longer answers take longer whole; an LLM rollout does not count that against the
    canary (its request latency is not judged), a request/response rollout does."""
    rng = np.random.default_rng(11)
    longer, same = version(rng, mean_tokens=260.0), version(rng)
    assert judge(longer, same)[0] is Verdict.PROMOTE
    plain = AnalysisConfig(min_requests=200, min_metric_samples=200)
    verdict, worse = judge(longer, same, plain)
    assert verdict is Verdict.ROLLBACK and "latency_rank" in worse
    assert "latency_rank" not in LLM.test_names and "metric:ttft_s" in LLM.test_names


def test_a_relative_effect_below_its_share_of_the_baseline_is_not_material() -> None:
    """5 % slower first tokens, clearly significant over 20,000 requests, stay below the
    10 % that matters: no rollback; 30 % slower does roll back."""
    rng = np.random.default_rng(3)

    def many(scale: float) -> VersionCounts:
        ttft = rng.lognormal(np.log(0.3), 0.1, 20_000) * scale
        return VersionCounts(
            20_000, 0, latency_histogram().with_samples(ttft),
            {TTFT_METRIC: latency_histogram().with_samples(ttft)},
        )

    config = AnalysisConfig(
        min_requests=100,
        latency_p50_min_increase=1.0,
        latency_p99_min_increase=1.0,
        metrics=(MetricRule(TTFT_METRIC, is_higher_better=False, min_relative_effect=0.10),),
    )
    decision, _ = decide(
        CanaryObservation(many(1.0), many(1.05), STEP, 10.0), AnalysisState(), config
    )
    [ttft] = [t for t in decision.tests if t.name == "metric:ttft_s"]
    assert ttft.is_significant and not ttft.is_material
    assert decision.verdict is Verdict.PROMOTE
    assert judge(many(1.3), many(1.0), config)[0] is Verdict.ROLLBACK


def test_with_llm_metrics_keeps_the_operators_own_rules() -> None:
    """The LLM rules are added once, and a rule the operator named wins."""
    own = MetricRule(TTFT_METRIC, is_higher_better=False, min_relative_effect=0.5)
    config = with_llm_metrics(AnalysisConfig(metrics=(own,)))
    assert config.metrics[0] is own
    assert {r.name for r in config.metrics} == {r.name for r in LLM_METRIC_RULES}
    assert with_llm_metrics(config) is config
    with pytest.raises(ConfigError) as raised:
        AnalysisConfig(metrics=(MetricRule("x", False, min_relative_effect=-0.1),))
    assert raised.value.field == "metrics.0.min_relative_effect"


def test_a_resumed_rollout_judges_on_the_rules_it_started_with() -> None:
    """The plan's metric rules and test settings are recorded with the rollout."""
    plan = RolloutPlan(
        "chat", "1", "2",
        analysis=with_llm_metrics(
            AnalysisConfig(min_requests=30, min_metric_samples=25, rank_tau=0.2)
        ),
    )
    record = SimpleNamespace(
        deployment="chat", baseline_version="1", canary_version="2", steps=list(plan.steps),
        config=plan_config(plan),
    )
    assert plan_from_record(record).analysis == plan.analysis
