"""``aiscale plan`` as a user runs it: any number of phases, a table and a recommendation in
the terminal (JSON only with --json), the recommendation atop the report, and an unsteady
profile refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from aiscale.cli import app
from aiscale.plan import ServerTerms, profile_from_latencies, save_profile


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def _profile(tmp_path: Path, speed_drift: float | None = None) -> Path:
    server = None
    if speed_drift is not None:
        server = ServerTerms(
            overhead_levels=(0.0, 1.0),
            overhead_ms=(1.0, 2.0),
            overhead_growth_per_rps=0.0,
            model_slowdown=1.0,
            model_slowdown_per_rps=0.0,
            speed_drift=speed_drift,
        )
    path = tmp_path / "profile.json"
    save_profile(
        profile_from_latencies(
            "minilm", "CPU", {1: 8.0, 8: 30.0, 64: 220.0}, memory_bytes=300_000_000, server=server
        ),
        path,
    )
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["plan", *args])


@pytest.mark.usefixtures("wide")
def test_five_phases_print_a_recommendation_and_a_table(tmp_path: Path) -> None:
    """Five phases (once a traceback from cut JSON) end with exit 0: the recommendation first,
    then one table row per phase and strategy, no JSON; the report starts with the same
    recommendation."""
    result = run(
        "--users", "100,200,300,400,500", "--requests-per-user", "5",
        "--profile", str(_profile(tmp_path)), "--report", str(tmp_path / "report"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert result.stdout.lstrip().startswith("For 500 users buy ")
    assert "strategy" in result.stdout and "USD/mo" in result.stdout
    for strategy in ("static at peak", "spot mix", "reserved base", "scale to zero"):
        assert result.stdout.count(strategy) >= 5, strategy
    assert not result.stdout.lstrip().startswith("{")
    # A profile with no recorded repeats: planned, with one line saying so on stderr.
    assert result.stderr.count("steadiness") == 1 and "unknown" in result.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    head = markdown.split("\n## 100 users")[0]
    assert "## Recommendation" in head and "For 500 users buy " in head


def test_json_only_with_the_flag(tmp_path: Path) -> None:
    """--json prints one whole JSON object, every phase in it."""
    result = run(
        "--users", "100,200,300,400,500,600", "--requests-per-user", "5",
        "--profile", str(_profile(tmp_path)), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [p["users"] for p in data["phases"]] == [100, 200, 300, 400, 500, 600]


@pytest.mark.usefixtures("wide")
@pytest.mark.parametrize("flag", ["--accept-unsteady", "--allow-unsteady-profile"])
def test_unsteady_profile_exits_non_zero_in_one_line(tmp_path: Path, flag: str) -> None:
    """A profile taken while the model's speed drifted 25% is refused: exit 1, one line that
    names the flag to override it; with the flag (or its older name) the plan is made and
    warns."""
    profile = str(_profile(tmp_path, speed_drift=1.25))
    refused = run("--users", "100", "--requests-per-user", "5", "--profile", profile)
    assert refused.exit_code == 1, refused.output
    assert "Traceback" not in refused.output
    assert "--accept-unsteady" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    allowed = run("--users", "100", "--requests-per-user", "5", "--profile", profile, flag)
    assert allowed.exit_code == 0, allowed.output
    assert "warning:" in allowed.stderr and "unsteady machine" in allowed.stderr
