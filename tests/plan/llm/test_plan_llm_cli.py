"""``aiscale plan --llm`` as a user runs it: one phase per user count with every architecture
and strategy, the cost ratio, a report folder; bad arguments are one line and exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aiscale.cli import app


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def test_plan_llm_prints_phases_and_writes_the_report(tmp_path: Path, wide: None) -> None:
    report = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        ["plan", "--llm", "--users", "10000,100000", "--hardware", "L4,H100", "--step-s", "120",
         "--report", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "10,000" in result.output and "100,000" in result.output
    assert "llm-slo" in result.output and "static at peak" in result.output
    page = (report / "llm_report.md").read_text()
    assert "Costliest architecture meeting the SLO" in page or "No architecture met" in page
    assert (report / "llm_report.html").exists() and (report / "llm_cost.png").exists()
    plan = json.loads((report / "llm_plan.json").read_text())
    assert [p["num_users"] for p in plan["phases"]] == [10000, 100000]
    phase = plan["phases"][1]
    assert {o["hardware"] for o in phase["outcomes"]} == {"L4", "H100"}
    assert phase["cost_ratio"] is None or phase["cost_ratio"] >= 1.0


def test_plan_llm_json(wide: None) -> None:
    result = CliRunner().invoke(
        app,
        ["plan", "--llm", "--users", "10000", "--hardware", "H100", "--step-s", "120", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "llama-3-8b"
    assert data["phases"][0]["outcomes"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users", "lots"], "--users must be whole numbers"),
        (["--users", "1000", "--model", "gpt-9"], "unknown model"),
        (["--users", "1000", "--hardware", "TPU"], "unknown hardware"),
        (["--users", "1000", "--ttft-ms", "0"], "must be > 0"),
        (["--users", "1000", "--trace", "/nonexistent.csv"], "trace"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_1(args: list[str], message: str, wide: None) -> None:
    result = CliRunner().invoke(app, ["plan", "--llm", *args])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_plan_without_llm_still_needs_its_profile(wide: None) -> None:
    result = CliRunner().invoke(app, ["plan", "--users", "1000"])
    assert result.exit_code == 1
    assert "--profile" in result.output
