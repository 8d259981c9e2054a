"""Profiling a real tiny model in a subprocess, and the derived (estimated) profiles."""

from __future__ import annotations

import os
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
    # The machine it was measured on: the CPU model and the cores.
    assert profile.measured_on is not None
    assert profile.measured_on.endswith(f", {os.cpu_count()} cores")
    assert profile.memory_bytes > 10_000_000  # a Python process with numpy loaded
    assert profile.startup_s >= 0
    assert profile.latency_ms[-1] > profile.latency_ms[0]
    assert profile.throughput_per_s[-1] == pytest.approx(128_000 / profile.latency_ms[-1])
    # The spread of one batch's time around the median at its size: a quantile function.
    assert profile.spread is not None
    ratios = profile.spread.ratios
    assert list(ratios) == sorted(ratios) and ratios[0] <= 1.0 <= ratios[-1]
    assert float(profile.spread.ratio_at(0.5)) == pytest.approx(1.0, rel=0.25)
    # Three interleaved repeats by default: each latency is the median of its repeats, and
    # the record keeps their range, checked (the capacity follows from it) from 1 ms up:
    # Sum's microsecond batches are all timer jitter.
    assert profile.repeats is not None and profile.repeats.count == 3
    figures = {figure.name: figure for figure in profile.repeats.figures}
    assert set(figures) == {f"latency_ms at batch {size}" for size in (1, 8, 32, 128)}
    for size, latency_ms in zip(profile.batch_sizes, profile.latency_ms, strict=True):
        figure = figures[f"latency_ms at batch {size}"]
        assert figure.median == pytest.approx(latency_ms)
        assert figure.low <= latency_ms <= figure.high
        assert figure.is_checked is (latency_ms >= 1.0)


def test_batches_are_drawn_like_live_traffic() -> None:
    """A seeded batch draws its texts at random from the load generator's sentences (a live
    batch's time follows its longest text); the same seed gives the same batch, and without
    a seed the batch is the first sentences in order."""
    from aiscale.bench.sentences import SENTENCES
    from aiscale.plan.profiling import sample_batch
    from tests.models import Echo

    model = Echo()
    drawn = sample_batch(model, 16, seed=3)
    assert drawn == sample_batch(model, 16, seed=3) != sample_batch(model, 16, seed=4)
    assert set(drawn) <= set(SENTENCES) and drawn != list(SENTENCES[:16])
    assert sample_batch(model, 4) == list(SENTENCES[:4])


def test_the_profile_runs_the_model_as_a_replica_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The profiler and the replica pool build the model's threads and environment with one
    function: a threads knob for runtimes that take it, OMP_NUM_THREADS for all, and the
    short OpenMP spin unless the caller chose a wait policy."""
    from aiscale.replicas.environment import OPENMP_SPIN_COUNT, replica_environment

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the benchmarks set it: not the replica's
    config, env = replica_environment("minilm", {}, 2)
    assert config == {"num_threads": 2} and env["OMP_NUM_THREADS"] == "2"
    assert env["GOMP_SPINCOUNT"] == str(OPENMP_SPIN_COUNT)
    config, env = replica_environment("python", {"num_threads": 3}, 2)
    assert config == {"num_threads": 3} and env["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert "GOMP_SPINCOUNT" not in replica_environment("minilm", {}, 2)[1]


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


def test_the_replica_thread_count_is_a_profile_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--num-threads profiles the model as replicas with that many threads run it; a count
    below 1 is refused with a message naming the option and a non-zero exit."""
    import subprocess
    import sys

    monkeypatch.chdir(ROOT)
    out = tmp_path / "sum.json"
    profile = profile_command(
        "tests.models:Sum", out, batch_sizes=(1, 8), seconds_per_size=0.0, num_threads=1
    )
    assert load_profile(out) == profile
    done = subprocess.run(
        [sys.executable, "-m", "aiscale.cli", "profile", "tests.models:Sum", "--out",
         str(tmp_path / "bad.json"), "--no-server", "--num-threads", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "--num-threads must be >= 1" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "bad.json").exists()


def test_repeats_below_one_are_refused_in_one_line(tmp_path: Path) -> None:
    """--repeats 0 exits non-zero with one line naming the option, and writes nothing."""
    from typer.testing import CliRunner

    from aiscale.cli import app

    out = tmp_path / "bad.json"
    result = CliRunner().invoke(
        app, ["profile", "tests.models:Sum", "--out", str(out), "--no-server", "--repeats", "0"]
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: --repeats must be >= 1, got 0 [repeats]"
    ]
    assert not out.exists()
