"""The LLM oracle meets the SLO it was asked for, pays no less than the engine-time bound, and
pays less than keeping the peak fleet all day."""

from __future__ import annotations

import numpy as np

from aiscale.plan.llm.oracle import SchedulePolicy, search_llm_oracle
from aiscale.plan.llm.planner import default_chat_mix
from aiscale.plan.llm.simconfig import LlmSimConfig
from aiscale.plan.llm.simulate import TokenDay, simulate_llm
from aiscale.plan.traffic import ArrivalCounts
from tests.plan.llm.toys import toy_profile


def test_oracle_meets_the_slo_above_the_bound_and_below_static_peak() -> None:
    """Two hours with a quiet and a busy hour (1/s, then 6/s)."""
    profile = toy_profile(max_context_tokens=8192, kv_capacity_tokens=100_000, max_num_seqs=32)
    mix = default_chat_mix(0)
    rng = np.random.default_rng(0)
    rate = np.concatenate([np.full(3600, 1.0), np.full(3600, 6.0)])
    day = TokenDay(ArrivalCounts(rng.poisson(rate).astype(np.int64), 1.0), mix)
    config = LlmSimConfig(
        profile=profile, ttft_slo_s=2.0, itl_slo_s=0.1, mode="aggregated", slo_target=0.99
    )
    found = search_llm_oracle(day, config, num_bisections=3)
    assert found.result.slo_attainment >= 0.99
    assert found.result.replica_hours >= found.bound_replica_hours
    assert found.optimality_gap >= 1.0
    peak = max(found.schedule)
    static = simulate_llm(
        day, SchedulePolicy((peak,), config.decision_interval_s),
        LlmSimConfig(profile=profile, ttft_slo_s=2.0, itl_slo_s=0.1, mode="aggregated",
                     initial_replicas=peak),
    )  # fmt: skip
    assert found.result.replica_hours < static.replica_hours
