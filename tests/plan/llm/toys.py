"""Small, fast LLM profiles and workloads shared by the LLM planning tests."""

from __future__ import annotations

import numpy as np

from aiscale.plan.llm.profile import LlmProfile, Provenance
from aiscale.plan.llm.workload import TokenRequests


def toy_profile(**changes: object) -> LlmProfile:
    """An engine fast enough to simulate in milliseconds: 10 ms steps, 8 slots."""
    values: dict[str, object] = {
        "model": "toy",
        "hardware": "CPU",
        "step_base_s": 0.010,
        "decode_per_seq_s": 0.001,
        "decode_per_context_token_s": 1e-7,
        "prefill_per_token_s": 1e-4,
        "prefill_per_token_context_s": 0.0,
        "kv_capacity_tokens": 8192,
        "max_num_seqs": 8,
        "max_batched_tokens": 512,
        "max_context_tokens": 2048,
        "weight_load_s": 2.0,
        "warmup_s": 3.0,
        "gateway_overhead_s": 0.001,
        "provenance": Provenance("test", "2025", is_estimate=True),
    }
    values.update(changes)
    return LlmProfile(**values)  # type: ignore[arg-type]


def poisson_requests(
    rate_per_s: float,
    duration_s: float,
    *,
    seed: int = 0,
    prompt: tuple[int, int] = (50, 400),
    output: tuple[int, int] = (10, 120),
) -> TokenRequests:
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(rate_per_s * duration_s))
    times = np.sort(rng.uniform(0.0, duration_s, n))
    return TokenRequests(
        times,
        rng.integers(prompt[0], prompt[1] + 1, n),
        rng.integers(output[0], output[1] + 1, n),
        duration_s,
    )
