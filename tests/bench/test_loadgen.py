"""The load generator against a real server on loopback: counts, errors, rates, warm-up."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from aiscale.bench import BenchConfig, BenchResult, ProgressSnapshot, run_bench
from aiscale.bench.sentences import SENTENCES
from aiscale.errors import InvalidInput
from tests.bench.conftest import LoopbackServer


def _run(config: BenchConfig) -> BenchResult:
    return asyncio.run(run_bench(config))


@pytest.mark.parametrize("client", ["raw", "aiohttp"])
def test_closed_loop_counts_exactly_the_requested_number(
    server: LoopbackServer, client: str
) -> None:
    """N requests in closed loop: N sent, N counted, all ok, percentiles ordered."""
    key = server.new_key()
    result = _run(
        BenchConfig(
            url=server.url(key, "/v1/embeddings"),
            concurrency=8,
            num_requests=200,
            client=client,  # type: ignore[arg-type]
        )
    )
    assert len(server.seen[key].bodies) == 200
    assert (result.mode, result.requests, result.ok, result.errors_by_status) == (
        "closed",
        200,
        200,
        {},
    )
    assert server.seen[key].max_in_flight <= 8
    assert len(server.seen[key].client_ports) <= 8  # connections are kept alive and reused
    assert result.p50_ms is not None and result.max_ms is not None
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.p999_ms  # type: ignore[operator]
    assert result.p999_ms <= result.max_ms  # type: ignore[operator]
    assert result.throughput_rps == pytest.approx(200 / result.duration_s)
    assert result.offered_rate_rps is None


@pytest.mark.parametrize("client", ["raw", "aiohttp"])
def test_errors_are_counted_by_status(server: LoopbackServer, client: str) -> None:
    """Every third request gets 503: 60 requests give 40 ok and {503: 20}."""
    key = server.new_key()
    result = _run(
        BenchConfig(
            url=server.url(key, "/flaky"),
            concurrency=4,
            num_requests=60,
            body=b'{"x": 1}',
            client=client,  # type: ignore[arg-type]
        )
    )
    assert (result.requests, result.ok, result.errors_by_status) == (60, 40, {503: 20})
    assert result.to_json()["errors"] == 20
    assert result.to_json()["errors_by_status"] == {"503": 20}
    assert server.seen[key].bodies == [b'{"x": 1}'] * 60


def test_connection_errors_count_as_status_zero() -> None:
    """A server that hangs up on every connection yields errors under status 0, no latencies."""

    async def scenario() -> BenchResult:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        async with listener:
            return await run_bench(
                BenchConfig(url=f"http://127.0.0.1:{port}/v1/embeddings", num_requests=10)
            )

    result = asyncio.run(scenario())
    assert (result.requests, result.ok, result.errors_by_status) == (10, 0, {0: 10})
    assert result.p50_ms is None and result.throughput_rps == 0.0


@pytest.mark.parametrize("client", ["raw", "aiohttp"])
def test_timeouts_count_as_status_zero(server: LoopbackServer, client: str) -> None:
    """A request slower than timeout_s is an error with status 0, and the run goes on."""
    key = server.new_key()
    result = _run(
        BenchConfig(
            url=server.url(key, "/slow"),
            concurrency=2,
            num_requests=4,
            timeout_s=0.01,
            body=b"{}",
            client=client,  # type: ignore[arg-type]
        )
    )
    assert (result.requests, result.ok, result.errors_by_status) == (4, 0, {0: 4})


def test_open_loop_keeps_the_offered_rate(server: LoopbackServer) -> None:
    """200 req/s Poisson for 1 s: about 200 arrivals, all sent and answered, none dropped."""
    key = server.new_key()
    result = _run(
        BenchConfig(url=server.url(key, "/v1/embeddings"), rate_per_s=200.0, duration_s=1.0, seed=7)
    )
    assert result.mode == "open"
    assert result.dropped_by_client == 0
    assert result.requests == result.ok == len(server.seen[key].bodies)
    assert result.offered_rate_rps == pytest.approx(200.0, rel=0.15)
    assert 0.95 <= result.duration_s <= 1.5
    assert result.throughput_rps == pytest.approx(200.0, rel=0.2)


def test_open_loop_caps_outstanding_and_counts_drops(server: LoopbackServer) -> None:
    """With 50 ms replies, 200 req/s and a cap of 2 in flight, extra arrivals are dropped."""
    key = server.new_key()
    result = _run(
        BenchConfig(
            url=server.url(key, "/slow"),
            rate_per_s=200.0,
            num_requests=60,
            max_outstanding=2,
            body=b"{}",
        )
    )
    assert server.seen[key].max_in_flight <= 2
    assert result.dropped_by_client > 20
    assert result.requests + result.dropped_by_client == 60
    assert result.requests == result.ok == len(server.seen[key].bodies)
    assert result.p50_ms is not None and result.p50_ms >= 50.0


def test_open_loop_latency_counts_from_the_scheduled_time(server: LoopbackServer) -> None:
    """A client stalled for 100 ms sends late; those requests' latency includes the delay.

    The server answers in about a millisecond. A client that timed from its actual send would
    report a few ms for every request (coordinated omission); timed from the schedule, the
    arrivals due during the stall show about 100 ms.
    """
    key = server.new_key()
    stalls: list[float] = []

    def stall_once(snapshot: ProgressSnapshot) -> None:
        if not stalls:
            stalls.append(snapshot.elapsed_s)
            time.sleep(0.1)  # blocks the event loop on purpose: the client falls behind

    result = asyncio.run(
        run_bench(
            BenchConfig(
                url=server.url(key, "/v1/embeddings"),
                rate_per_s=200.0,
                duration_s=0.6,
                progress_interval_s=0.2,
            ),
            on_progress=stall_once,
        )
    )
    assert stalls and result.dropped_by_client == 0
    assert result.max_ms is not None and result.max_ms >= 80.0
    assert result.p50_ms is not None and result.p50_ms < 50.0


def test_warmup_requests_are_sent_but_not_counted(server: LoopbackServer) -> None:
    """The server fails its first 0.3 s; a 0.6 s warm-up hides those failures from the result."""
    key = server.new_key()
    result = _run(
        BenchConfig(
            url=server.url(key, "/warm"),
            concurrency=2,
            num_requests=50,
            warmup_s=0.6,
            body=b"{}",
        )
    )
    seen = server.seen[key]
    assert 503 in seen.statuses  # warm-up traffic did reach the server
    assert (result.requests, result.ok, result.errors_by_status) == (50, 50, {})
    assert len(seen.bodies) > 50


def test_bodies_follow_the_path_and_vary_deterministically(server: LoopbackServer) -> None:
    """/v1/embeddings gets {model, input}; sentences vary; the same seed sends the same ones."""
    sent: list[list[bytes]] = []
    for _ in range(2):
        key = server.new_key()
        _run(
            BenchConfig(url=server.url(key, "/v1/embeddings"), num_requests=40, model="m1", seed=3)
        )
        sent.append(server.seen[key].bodies)
    assert sent[0] == sent[1]
    decoded = [json.loads(b) for b in sent[0]]
    assert all(d["model"] == "m1" and d["input"] in SENTENCES for d in decoded)
    assert len({d["input"] for d in decoded}) >= 25


def test_oip_v2_path_gets_a_bytes_input(server: LoopbackServer) -> None:
    """/v2/models/{name}/infer gets one BYTES input named text with shape [1]."""
    key = server.new_key()
    _run(BenchConfig(url=server.url(key, "/v2/models/minilm/infer"), num_requests=5))
    for raw in server.seen[key].bodies:
        (tensor,) = json.loads(raw)["inputs"]
        assert (tensor["name"], tensor["shape"], tensor["datatype"]) == ("text", [1], "BYTES")
        assert tensor["data"][0] in SENTENCES


def test_headers_are_sent_with_every_request(server: LoopbackServer) -> None:
    """--header values reach the server on each request."""
    key = server.new_key()
    _run(
        BenchConfig(
            url=server.url(key, "/v1/embeddings"),
            num_requests=3,
            headers=(("Authorization", "Bearer s3cret"),),
        )
    )
    assert [h["authorization"] for h in server.seen[key].headers] == ["Bearer s3cret"] * 3


def test_trace_replay_sends_every_arrival_on_time(server: LoopbackServer, tmp_path: Path) -> None:
    """A 20-row trace spanning 0.38 s, time-scaled by 2: 20 requests over about 0.76 s."""
    trace = tmp_path / "trace.csv"
    rows = [f"2024-01-01 00:00:{i * 0.02:09.6f},1,1" for i in range(20)]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    key = server.new_key()
    result = _run(
        BenchConfig(url=server.url(key, "/v1/embeddings"), trace_path=trace, time_scale=2.0)
    )
    assert result.mode == "trace"
    assert result.requests == result.ok == 20 == len(server.seen[key].bodies)
    assert 0.76 <= result.duration_s < 1.5
    assert result.offered_rate_rps == pytest.approx(20 / 0.76, rel=0.01)


def test_raw_client_rejects_chunked_replies_clearly(server: LoopbackServer) -> None:
    """The built-in client reads Content-Length replies only and says so, naming the fix."""
    key = server.new_key()
    with pytest.raises(InvalidInput, match="chunked.*aiohttp"):
        _run(BenchConfig(url=server.url(key, "/chunked"), num_requests=3, body=b"{}"))
    result = _run(
        BenchConfig(url=server.url(key, "/chunked"), num_requests=3, body=b"{}", client="aiohttp")
    )
    assert result.ok == 3


def test_progress_reports_during_and_at_the_end(server: LoopbackServer) -> None:
    """on_progress is called while running and once at the end with fraction_done 1.0."""
    key = server.new_key()
    snapshots: list[ProgressSnapshot] = []
    result = asyncio.run(
        run_bench(
            BenchConfig(
                url=server.url(key, "/v1/embeddings"),
                rate_per_s=100.0,
                duration_s=0.5,
                progress_interval_s=0.1,
            ),
            on_progress=snapshots.append,
        )
    )
    assert len(snapshots) >= 3
    assert snapshots[-1].fraction_done == 1.0 and snapshots[-1].requests == result.requests
    fractions = [s.fraction_done for s in snapshots if s.fraction_done is not None]
    assert fractions == sorted(fractions)


def test_result_json_has_the_documented_fields() -> None:
    """to_json uses the documented names and is JSON-serialisable."""
    result = BenchResult(
        mode="closed", requests=3, ok=2, errors_by_status={0: 1}, dropped_by_client=0,
        duration_s=1.0, throughput_rps=2.0, p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, p999_ms=3.0,
        max_ms=3.0, mean_ms=1.5, offered_rate_rps=None,
    )  # fmt: skip
    data = result.to_json()
    assert json.loads(json.dumps(data)) == data
    assert {"requests", "ok", "errors", "throughput_rps", "p50_ms", "p90_ms", "p99_ms",
            "p999_ms", "max_ms", "mean_ms", "dropped_by_client", "offered_rate_rps",
            "duration_s", "mode"} <= data.keys()  # fmt: skip
    assert data["errors"] == 1 and data["errors_by_status"] == {"0": 1}
