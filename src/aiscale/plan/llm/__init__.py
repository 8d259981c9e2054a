"""LLM planning: engine profiles, the LLM hardware catalog, token workloads, the simulator
(exact per engine step, aggregated as a token fluid), the LLM oracle and the capacity plan.

Pure computation on simulated time; the only I/O is reading a profile or trace and writing
a profile or report to the paths given. ``profiling.py`` (measuring a running engine) is
not imported here: it needs the engine stack.
"""

from __future__ import annotations

from aiscale.plan.llm.catalog import ACCELERATORS, MODELS, architectures, roofline_profile
from aiscale.plan.llm.oracle import LlmOracleResult, SchedulePolicy, search_llm_oracle
from aiscale.plan.llm.profile import (
    LlmProfile,
    Provenance,
    load_llm_profile,
    save_llm_profile,
    smollm2_cpu_profile,
)
from aiscale.plan.llm.simconfig import ROUTING_POLICIES, LlmSimConfig, LlmSimResult
from aiscale.plan.llm.simulate import LlmModeComparison, TokenDay, compare_llm_modes, simulate_llm
from aiscale.plan.llm.sizing import build_llm_policy, capacity_at_slo
from aiscale.plan.llm.workload import (
    TokenMix,
    TokenRequests,
    multi_turn_chat,
    read_token_trace,
    requests_from_counts,
    token_day,
)

__all__ = [
    "ACCELERATORS",
    "MODELS",
    "ROUTING_POLICIES",
    "LlmModeComparison",
    "LlmOracleResult",
    "LlmProfile",
    "LlmSimConfig",
    "LlmSimResult",
    "Provenance",
    "SchedulePolicy",
    "TokenDay",
    "TokenMix",
    "TokenRequests",
    "architectures",
    "build_llm_policy",
    "capacity_at_slo",
    "compare_llm_modes",
    "load_llm_profile",
    "multi_turn_chat",
    "read_token_trace",
    "requests_from_counts",
    "roofline_profile",
    "save_llm_profile",
    "search_llm_oracle",
    "simulate_llm",
    "smollm2_cpu_profile",
    "token_day",
]
