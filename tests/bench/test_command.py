"""Argument validation of ``aiscale bench`` and the rendering of its results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from aiscale.bench import BenchResult, bench_command, build_config, render_result
from aiscale.bench.command import DEFAULT_DURATION_S
from aiscale.bench.loadgen import ProgressSnapshot
from aiscale.bench.report import format_snapshot
from aiscale.errors import InvalidInput
from tests.bench.conftest import LoopbackServer

URL = "http://127.0.0.1:9/v1/embeddings"


@pytest.mark.parametrize(
    ("url", "kwargs", "field", "message"),
    [
        ("not a url", {}, "url", "url must be http"),
        ("ftp://host/v1/embeddings", {}, "url", "url must be http"),
        ("http://host:99999/v1/embeddings", {}, "url", "invalid port"),
        ("https://host/v1/embeddings", {}, "url", "plain http:// only"),
        (URL, {"rate": 0.0}, "rate", "rate must be > 0"),
        (URL, {"rate": -3.0}, "rate", "rate must be > 0"),
        (URL, {"rate": 10.0, "trace": "__TRACE__"}, "rate", "either --rate or --trace"),
        (URL, {"concurrency": 0}, "concurrency", "concurrency must be >= 1"),
        (URL, {"requests": 0}, "requests", "requests must be >= 1"),
        (URL, {"duration": -1.0}, "duration_s", "duration_s must be > 0"),
        (URL, {"warmup": -1.0}, "warmup_s", "warmup_s must be >= 0"),
        (URL, {"rate_scale": 2.0}, "trace", "apply to --trace only"),
        (URL, {"trace": "__TRACE__", "rate_scale": 0.0}, "rate_scale", "must be > 0"),
        (URL, {"trace": "/no/such/trace.csv"}, "trace", "trace file not found"),
        (URL, {"body": "{not json"}, "body", "--body is not valid JSON"),
        (URL, {"body": "{}", "body_file": "x.json"}, "body", "either --body or --body-file"),
        (URL, {"body_file": "/no/such/body.json"}, "body_file", "cannot read --body-file"),
        (URL, {"headers": ["no colon"]}, "header", "must look like 'Name: value'"),
        (URL, {"headers": ["Bad Name: x"]}, "header", "must look like 'Name: value'"),
        (URL, {"headers": ["Content-Length: 5"]}, "header", "set by the load generator"),
        (URL, {"client": "curl"}, "client", "client must be"),
        ("http://127.0.0.1:9/predict", {}, "body", "cannot derive a request body"),
    ],
)
def test_bad_arguments_raise_invalid_input(
    tmp_path: Path, url: str, kwargs: dict[str, Any], field: str, message: str
) -> None:
    """Each bad argument fails before any request with InvalidInput naming the flag."""
    trace = tmp_path / "trace.csv"
    trace.write_text("TIMESTAMP\n1.0\n")
    kwargs = {k: (str(trace) if v == "__TRACE__" else v) for k, v in kwargs.items()}
    with pytest.raises(InvalidInput, match=message) as info:
        bench_command(url, **kwargs)
    assert info.value.field == field


def test_defaults_apply_a_duration_and_keep_the_body_bytes(tmp_path: Path) -> None:
    """Without --requests/--duration a closed loop runs DEFAULT_DURATION_S; bodies are exact."""
    body_file = tmp_path / "body.json"
    body_file.write_bytes(b'{"input": "caf\xc3\xa9"}')
    config = build_config(
        "http://127.0.0.1:9/predict", body_file=body_file, headers=["X-Team: a:b"]
    )
    assert config.duration_s == DEFAULT_DURATION_S and config.num_requests is None
    assert config.body == b'{"input": "caf\xc3\xa9"}'
    assert config.headers == (("X-Team", "a:b"),)
    assert config.mode == "closed"


def test_bench_command_runs_and_returns_the_result(server: LoopbackServer) -> None:
    """bench_command validates, runs on its own loop and returns the counted result."""
    key = server.new_key()
    result = bench_command(
        server.url(key, "/v1/embeddings"), concurrency=2, requests=30, headers=["X-A: 1"]
    )
    assert (result.requests, result.ok) == (30, 30)
    assert len(server.seen[key].bodies) == 30


def test_render_result_shows_counts_errors_and_latency() -> None:
    """The table lists requests, each error status, throughput and percentiles."""
    result = BenchResult(
        mode="open", requests=10, ok=7, errors_by_status={0: 1, 503: 2}, dropped_by_client=4,
        duration_s=2.0, throughput_rps=3.5, p50_ms=1.25, p90_ms=2.0, p99_ms=3.0, p999_ms=3.5,
        max_ms=4.0, mean_ms=1.5, offered_rate_rps=7.0, client_cpu_us_per_request=42.0,
    )  # fmt: skip
    console = Console(record=True, width=100)
    console.print(render_result(result))
    text = console.export_text()
    for expected in ("connection errors", "errors 503", "dropped by client", "3.5 req/s",
                     "1.25 ms", "7.0 req/s", "42 µs"):  # fmt: skip
        assert expected in text
    assert json.loads(json.dumps(result.to_json()))["dropped_by_client"] == 4


def test_format_snapshot_is_one_line_with_live_numbers() -> None:
    """The progress line carries throughput, p50, p99, errors and the warm-up phase."""
    snapshot = ProgressSnapshot(
        elapsed_s=1.0, is_warmup=True, requests=5, ok=4, errors=1, dropped_by_client=2,
        outstanding=3, throughput_rps=4.0, p50_ms=1.5, p99_ms=None, fraction_done=0.5,
    )  # fmt: skip
    line = format_snapshot(snapshot)
    assert "\n" not in line
    for expected in ("warm-up", "4.0 req/s", "p50 1.50 ms", "p99 -", "errors 1", "dropped 2"):
        assert expected in line


def test_bench_progress_feeds_a_live_bar(server: LoopbackServer) -> None:
    """bench_progress yields an on_progress callback that draws the live numbers."""
    from io import StringIO

    from aiscale.bench import bench_progress

    out = StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    key = server.new_key()
    with bench_progress(console, description="test") as on_progress:
        result = bench_command(
            server.url(key, "/v1/embeddings"), requests=20, on_progress=on_progress
        )
    assert result.ok == 20
    assert "20 req" in out.getvalue() and "test" in out.getvalue()
