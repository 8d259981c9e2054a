"""Profiling a real tiny model in a subprocess, and the derived (estimated) profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiscale.errors import InvalidInput, ModelLoadError
from aiscale.plan import load_profile
from aiscale.plan.commands import profile_command
from aiscale.plan.profiling import profile_model, resolve_model

ROOT = Path(__file__).resolve().parents[2]


def test_profile_of_a_real_model_round_trips_with_sane_latency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Profiling tests.models:Sum measures the batch sizes asked for, writes the documented
    JSON that loads back equal, and bigger batches take longer (monotone-ish)."""
    monkeypatch.chdir(ROOT)  # the import path resolves against the working folder
    out = tmp_path / "sum.json"
    profile = profile_command(
        "tests.models:Sum", out, batch_sizes=(1, 8, 32, 128), seconds_per_size=0.05
    )
    assert load_profile(out) == profile
    assert profile.batch_sizes == (1, 8, 32, 128)
    assert profile.hardware == "CPU" and not profile.estimated
    assert profile.memory_bytes > 10_000_000  # a Python process with numpy loaded
    assert profile.startup_s >= 0
    assert profile.latency_ms[-1] > profile.latency_ms[0]
    assert profile.throughput_per_s[-1] == pytest.approx(128_000 / profile.latency_ms[-1])


def test_profile_for_absent_hardware_is_derived_and_labelled() -> None:
    """Asking for a GPU not on this machine scales the measurement by the catalog and marks
    the profile as an estimate."""
    profile = profile_model(
        "tests.models:Sum", batch_sizes=(1, 4), min_seconds_per_size=0.0, hardware="T4", cwd=ROOT
    )
    assert profile.hardware == "T4" and profile.estimated


def test_unknown_models_fail_loudly() -> None:
    """A MODEL that is neither minilm nor an import path is InvalidInput; an import path that
    does not exist fails the worker with ModelLoadError naming the model."""
    with pytest.raises(InvalidInput) as error:
        resolve_model("no-such-thing")
    assert error.value.field == "model"
    with pytest.raises(ModelLoadError) as failure:
        profile_model("tests.models:Missing", batch_sizes=(1,), min_seconds_per_size=0.0)
    assert failure.value.field == "model"
