"""``aiscale bench`` fails loud: a server that cannot be reached stops the run in one line,
and a run whose requests mostly failed exits non-zero saying why."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner, Result

from aiscale.bench import BenchResult, bench_command
from aiscale.cli import app
from aiscale.errors import UpstreamUnavailable
from tests.bench.conftest import LoopbackServer


def bench(*args: str) -> Result:
    return CliRunner().invoke(app, ["bench", *args])


@pytest.mark.parametrize("mode", [["--concurrency", "4"], ["--rate", "500"]])
def test_refused_connection_stops_at_once(dead_address: str, mode: list[str]) -> None:
    """Against a port nobody listens on, the run stops after the first few connection
    errors (not after its 5 s): exit 1 and one line naming the address."""
    started = time.monotonic()
    result = bench(f"http://{dead_address}/v1/embeddings", *mode, "--duration", "5")
    assert time.monotonic() - started < 4.0
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    # (The progress bar, transient on a terminal, leaves its first frame in CliRunner's output.)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot connect to {dead_address}" in errors[0], result.output


def test_refused_connection_raises_upstream_unavailable(dead_address: str) -> None:
    """The library raises UpstreamUnavailable naming the url field, not a result of errors."""
    with pytest.raises(UpstreamUnavailable) as error:
        bench_command(f"http://{dead_address}/v1/embeddings", requests=1000)
    assert error.value.field == "url" and dead_address in error.value.message


def test_all_404_exits_non_zero_and_says_why(server: LoopbackServer) -> None:
    """Every request answered 404 (an unknown model or path): the table is printed, then one
    error line with the count and the status, and exit 1."""
    key = server.new_key()
    result = bench(server.url(key, "/unknown/v1/embeddings"), "--requests", "30")
    assert result.exit_code == 1, result.output
    assert "30 of 30 requests failed" in result.output
    assert "404 (unknown model or path?)" in result.output


def test_error_share_is_judged_against_max_error_rate(server: LoopbackServer) -> None:
    """A third of the replies are 503: over the default 1% that exits 1; with
    --max-error-rate 0.5 it passes; a share outside [0, 1] is refused before any request."""
    failed = bench(server.url(server.new_key(), "/flaky"), "--requests", "30", "--body", "{}")
    assert failed.exit_code == 1 and "10 of 30 requests failed" in failed.output
    passed = bench(
        server.url(server.new_key(), "/flaky"), "--requests", "30", "--body", "{}",
        "--max-error-rate", "0.5",
    )  # fmt: skip
    assert passed.exit_code == 0, passed.output
    key = server.new_key()
    refused = bench(server.url(key, "/flaky"), "--body", "{}", "--max-error-rate", "5")
    assert refused.exit_code == 1 and "--max-error-rate must be a share" in refused.output
    assert not server.seen[key].statuses


@pytest.mark.parametrize(
    ("requests", "errors", "rate", "is_failure"),
    [(100, {}, 0.01, False), (100, {503: 1}, 0.01, False), (100, {503: 2}, 0.01, True),
     (0, {}, 0.01, True), (10, {0: 10}, 1.0, False)],
)  # fmt: skip
def test_failure_reason_thresholds(
    requests: int, errors: dict[int, int], rate: float, is_failure: bool
) -> None:
    """More than the share fails; exactly the share passes; no finished request fails."""
    num_errors = sum(errors.values())
    result = BenchResult(
        mode="closed", requests=requests, ok=requests - num_errors, errors_by_status=errors,
        dropped_by_client=0, duration_s=1.0, throughput_rps=1.0, p50_ms=None, p90_ms=None,
        p99_ms=None, p999_ms=None, max_ms=None, mean_ms=None, offered_rate_rps=None,
    )  # fmt: skip
    assert (result.failure_reason(rate) is not None) is is_failure
