"""The aggregated mode (a token fluid per time step) against the exact mode (every request and
engine step) on the same arrivals: within a stated tolerance at the loads a plan runs at."""

from __future__ import annotations

import numpy as np
import pytest

from aiscale.plan.llm.catalog import roofline_profile
from aiscale.plan.llm.planner import default_chat_mix
from aiscale.plan.llm.simconfig import LlmSimConfig
from aiscale.plan.llm.simulate import TokenDay, compare_llm_modes, simulate_llm
from aiscale.plan.llm.sizing import build_llm_policy
from aiscale.plan.llm.workload import requests_from_counts
from aiscale.plan.traffic import ArrivalCounts
from aiscale.scaling.policies.llm_factory import make_llm_policy

#: The tolerance this test holds the aggregated mode to (relative; SLO attainment absolute).
#: Tails (p99) are looser than medians: the fluid models them, the exact mode samples them.
TOLERANCE = {
    "ttft_p50_s": 0.35,
    "ttft_p99_s": 0.5,
    "itl_p50_s": 0.15,
    "tpot_p50_s": 0.2,
    "slo_attainment": 0.02,
    "replica_hours": 1e-9,
    "output_tokens_per_s": 1e-9,
}


@pytest.mark.parametrize("rate_per_s", [8.0, 20.0])
def test_aggregated_is_within_tolerance_of_exact(rate_per_s: float) -> None:
    """Llama-3-8B on 2 H100s (roofline profile), a chat mix, 40% and 80% of capacity."""
    profile = roofline_profile("llama-3-8b", "H100", 1)
    assert profile is not None
    mix = default_chat_mix(0)
    rng = np.random.default_rng(5)
    counts = ArrivalCounts(rng.poisson(rate_per_s, 120).astype(np.int64), 1.0)
    requests = requests_from_counts(counts, mix, seed=5)
    config = LlmSimConfig(profile=profile, initial_replicas=2)
    comparison = compare_llm_modes(
        requests, lambda: make_llm_policy("llm-static", num_replicas=2), config
    )
    for name, bound in TOLERANCE.items():
        assert comparison.errors[name] <= bound, (name, comparison.errors[name])


def test_aggregated_day_runs_on_counts_and_is_deterministic() -> None:
    """A day given as per-second counts and a token mix (never materialised row by row)
    simulates, and twice gives the same answer."""
    profile = roofline_profile("llama-3-8b", "H100", 1)
    assert profile is not None
    mix = default_chat_mix(1)
    rng = np.random.default_rng(1)
    counts = ArrivalCounts(rng.poisson(30.0, 3600).astype(np.int64), 1.0)
    config = LlmSimConfig(profile=profile, mode="aggregated", initial_replicas=3)

    def policy():  # type: ignore[no-untyped-def]
        return build_llm_policy(
            "llm-slo", profile, ttft_slo_s=1.0, itl_slo_s=0.1,
            mean_prompt=mix.mean_prompt, mean_output=mix.mean_output,
        )  # fmt: skip

    first = simulate_llm(TokenDay(counts, mix), policy(), config)
    second = simulate_llm(TokenDay(counts, mix), policy(), config)
    assert first.requests == counts.num_requests
    assert first.to_dict() == second.to_dict()
    assert first.slo_attainment >= 0.99
