"""``aiscale simulate`` and ``aiscale plan`` with profiles that say how steady their machine
was: refused in one line with a non-zero exit when the repeats spread past the threshold
(unless --accept-unsteady), used with one warning line when steadiness is unknown."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from aiscale.cli import app
from aiscale.plan import load_profile, profile_from_latencies, save_profile
from aiscale.plan.repeats import STEADY_REPEAT_SPREAD, FigureSpread, RepeatRecord

LATENCIES = {1: 8.0, 8: 30.0, 64: 220.0}


def _figures(latency_spread: float, overhead_spread: float = 0.05) -> tuple[FigureSpread, ...]:
    """Checked latency figures spread by ``latency_spread`` at batch 64 (0.02 elsewhere) and
    one unchecked overhead figure spread by ``overhead_spread`` (relative, around the
    median)."""
    figures = [
        FigureSpread(
            f"latency_ms at batch {size}",
            median=ms,
            low=ms * (1 - spread / 2),
            high=ms * (1 + spread / 2),
            is_checked=True,
        )
        for size, ms in LATENCIES.items()
        for spread in [latency_spread if size == 64 else 0.02]
    ]
    figures.append(
        FigureSpread(
            "overhead mean ms at concurrency 1",
            median=2.0,
            low=2.0 * (1 - overhead_spread / 2),
            high=2.0 * (1 + overhead_spread / 2),
            is_checked=False,
        )
    )
    return tuple(figures)


def _profile(tmp_path: Path, repeats: RepeatRecord | None, name: str = "profile.json") -> Path:
    path = tmp_path / name
    profile = profile_from_latencies("minilm", "CPU", LATENCIES, memory_bytes=300_000_000)
    save_profile(replace(profile, repeats=repeats), path)
    return path


def simulate(profile: Path, *extra: str) -> Result:
    return CliRunner().invoke(
        app,
        ["simulate", "--profile", str(profile), "--users", "200", "--requests-per-user", "20",
         "--duration", "600", "--json", *extra],
    )  # fmt: skip


def plan(profile: Path, *extra: str) -> Result:
    return CliRunner().invoke(
        app, ["plan", "--profile", str(profile), "--users", "100", "--requests-per-user", "5",
              "--json", *extra],
    )  # fmt: skip


def test_repeats_round_trip_in_the_profile_file(tmp_path: Path) -> None:
    """The record saves as {count, figures: [{name, median, low, high, checked}]} and loads
    back equal."""
    record = RepeatRecord(3, _figures(0.04))
    path = _profile(tmp_path, record)
    data = json.loads(path.read_text())
    assert data["repeats"]["count"] == 3
    assert set(data["repeats"]["figures"][0]) == {"name", "median", "low", "high", "checked"}
    assert load_profile(path).repeats == record


def test_simulate_refuses_a_spread_past_the_threshold_in_one_line(tmp_path: Path) -> None:
    """Latency at batch 64 spread 30% over 3 repeats (over the 15% threshold): exit 1, one
    line on stderr naming the figure and --accept-unsteady, nothing on stdout."""
    assert STEADY_REPEAT_SPREAD < 0.30
    path = _profile(tmp_path, RepeatRecord(3, _figures(0.30)))
    refused = simulate(path)
    assert refused.exit_code == 1
    assert refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "latency_ms at batch 64" in lines[0] and "--accept-unsteady" in lines[0]
    assert "Traceback" not in refused.output


def test_accept_unsteady_simulates_with_one_warning(tmp_path: Path) -> None:
    """--accept-unsteady: exit 0, the JSON on stdout (with the warning in it) and one
    warning line on stderr."""
    path = _profile(tmp_path, RepeatRecord(3, _figures(0.30)))
    accepted = simulate(path, "--accept-unsteady")
    assert accepted.exit_code == 0, accepted.output
    data = json.loads(accepted.stdout)
    assert data["requests"] > 0 and len(data["warnings"]) == 1
    assert accepted.stderr.count("warning:") == 1 and "unsteady machine" in accepted.stderr


def test_steady_repeats_simulate_without_warnings(tmp_path: Path) -> None:
    """Checked figures within the threshold, even with an unchecked overhead figure spread
    80% (latency figures are recorded, not checked): exit 0, no warning."""
    path = _profile(tmp_path, RepeatRecord(3, _figures(0.05, overhead_spread=0.8)))
    result = simulate(path)
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and json.loads(result.stdout)["warnings"] == []


@pytest.mark.parametrize(
    ("repeats", "said"),
    [(None, "records no repeats"), (RepeatRecord(1, _figures(0.0)), "measured 1 time")],
)
def test_unknown_steadiness_is_used_with_one_warning_line(
    tmp_path: Path, repeats: RepeatRecord | None, said: str
) -> None:
    """A profile without repeats (written before them) or from one repeat: simulated, with
    one warning line that says its steadiness is unknown and why."""
    result = simulate(_profile(tmp_path, repeats))
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "steadiness" in lines[0] and said in lines[0]


def test_plan_refuses_the_same_profile_and_accepts_it_with_the_flag(tmp_path: Path) -> None:
    """plan applies the same check: exit 1 in one line; --accept-unsteady plans and warns."""
    path = _profile(tmp_path, RepeatRecord(3, _figures(0.30)))
    refused = plan(path)
    assert refused.exit_code == 1
    assert len(refused.output.strip().splitlines()) == 1 and "--accept-unsteady" in refused.output
    accepted = plan(path, "--accept-unsteady")
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.stdout)["warnings"]
    assert "unsteady machine" in accepted.stderr
