"""``aiscale bench --chat`` against a real llama.cpp engine (xllamacpp, the bundled SmolLM2).

Tiny runs (a few requests, a few output tokens) of each workload: closed loop, open loop,
token trace replay (``ignore_eos`` must give exactly the asked output lengths) and multi-turn
conversations (later turns resend the history, which the engine serves from its cache).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from aiscale.bench.chat_command import build_chat_config, chat_bench_command
from aiscale.bench.chat_results import ChatBenchResult
from aiscale.bench.chat_workloads import synthesize_text
from aiscale.cli import app
from tests.bench.llm_engine import Engine


def run(engine: Engine, **arguments: Any) -> ChatBenchResult:
    arguments.setdefault("max_tokens", 6)
    arguments.setdefault("prompt_tokens", 40)
    return chat_bench_command(build_chat_config(engine.url, **arguments))


def assert_sane(result: ChatBenchResult, num_requests: int) -> None:
    """Every request succeeded and every figure is present and consistent."""
    assert (result.requests, result.ok, result.num_errors) == (num_requests, num_requests, 0)
    assert result.duration_s > 0 and result.requests_per_s > 0
    assert result.output_tokens_per_s > 0 and result.output_tokens > 0
    assert result.ttft.p50_ms is not None and result.ttft.p50_ms > 0
    assert result.ttft.p99_ms is not None and result.ttft.p99_ms >= result.ttft.p50_ms
    assert result.itl.p50_ms is not None and result.itl.p99_ms is not None
    assert result.itl.p99_ms >= result.itl.p50_ms >= 0
    assert result.e2e.p50_ms is not None and result.e2e.p50_ms >= result.ttft.p50_ms
    assert result.prompt_tokens > 0 and result.model.endswith(".gguf")
    assert 0 <= result.num_good <= result.ok
    assert result.client_cpu_share is not None and 0 <= result.client_cpu_share < 2
    flat = result.to_json()
    for name in (
        "ttft_p50_ms",
        "ttft_p99_ms",
        "itl_p50_ms",
        "itl_p99_ms",
        "e2e_p50_ms",
        "output_tokens_per_s",
        "requests_per_s",
        "goodput_rps",
        "errors",
    ):
        assert name in flat
    json.dumps(flat)


def test_closed_loop_streams_and_reports(llm_engine: Engine) -> None:
    """A closed loop of 2 clients: exactly max_tokens per request with ignore_eos, the
    model and context window read from /v1/models, and goodput = ok under a lax SLO."""
    result = run(llm_engine, concurrency=2, requests=4, slo_ttft_ms=1e7, slo_itl_ms=1e7)
    assert_sane(result, 4)
    assert result.workload == "closed"
    assert (result.output_tokens, result.requested_output_tokens) == (24, 24)
    assert result.num_short_outputs == 0
    assert result.context_tokens == llm_engine.context_tokens // llm_engine.num_slots
    assert result.num_good == 4 and result.goodput_rps > 0
    # The calibrated prompts are within a few tokens of the asked length.
    assert abs(result.prompt_tokens / 4 - 40) <= 4


def test_a_timed_run_reports_its_steady_output_rate(llm_engine: Engine) -> None:
    """A run ended by its duration reports the tokens that arrived in its window per second
    (warm-up requests' tokens included); a run ended by its request count has no window."""
    timed = run(llm_engine, concurrency=2, duration=1.5, warmup=0.5, max_tokens=8)
    assert timed.steady_output_tokens_per_s is not None
    assert timed.steady_output_tokens_per_s > 0
    assert timed.to_json()["steady_output_tokens_per_s"] == timed.steady_output_tokens_per_s
    counted = run(llm_engine, concurrency=2, requests=2)
    assert counted.steady_output_tokens_per_s is None


def test_open_loop_schedules_poisson_arrivals(llm_engine: Engine) -> None:
    """An open loop sends its arrivals on schedule and reports the offered rate."""
    result = run(llm_engine, rate=20.0, requests=3, max_tokens=4, prompt_tokens=24)
    assert_sane(result, 3)
    assert result.workload == "open" and result.dropped_by_client == 0
    assert result.offered_rate_rps is not None and result.offered_rate_rps > 0
    assert result.output_tokens == 12


def test_trace_replay_forces_the_traced_output_lengths(llm_engine: Engine, tmp_path: Path) -> None:
    """Each trace row gets ContextTokens of prompt and exactly GeneratedTokens of output
    (ignore_eos), capped by --max-tokens; a prompt longer than the context is shortened
    and said so."""
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.0000000,30,5\n"
        "2023-11-16 18:15:46.1000000,60,9\n"
        "2023-11-16 18:15:46.2000000,45,3\n"
    )
    result = run(llm_engine, trace=trace, max_tokens=7)
    assert_sane(result, 3)
    assert result.workload == "trace"
    assert (result.output_tokens, result.requested_output_tokens) == (5 + 7 + 3, 15)
    assert result.num_short_outputs == 0 and result.num_prompts_capped == 0
    assert abs(result.prompt_tokens - (30 + 60 + 45)) <= 9

    # A 48-token window with 4 output tokens and the 8-token margin leaves 36 for a prompt:
    # the rows of 60 and 45 are shortened, the row of 30 is not.
    capped = run(llm_engine, trace=trace, max_tokens=4, max_context=48)
    assert capped.ok == 3 and capped.num_prompts_capped == 2
    assert capped.prompt_tokens <= 30 + 36 + 36 + 3
    assert any("2 prompt(s) shortened to fit the context window of 48" in n for n in capped.notes)


def test_multi_turn_conversations_reuse_their_prefix(llm_engine: Engine) -> None:
    """Users hold 3-turn conversations: later turns resend the history (longer prompts than
    one turn's) and the engine serves most of it from its prefix cache."""
    result = run(
        llm_engine,
        turns=3,
        concurrency=2,
        requests=6,
        think_time=0.01,
        prompt_tokens=20,
        max_tokens=5,
    )
    assert_sane(result, 6)
    assert result.workload == "multi_turn"
    # Turns 1-3 have about 20, 45 and 70 prompt tokens: the mean is well above one turn's.
    assert result.prompt_tokens / result.requests > 30
    assert result.cache_hit_share is not None and result.cache_hit_share > 0.3


def test_synthesized_words_are_one_token_each(llm_engine: Engine) -> None:
    """The prompt words are single tokens for the bundled model, so lengths are exact."""
    text = synthesize_text(200, random.Random(3))
    assert llm_engine.count_tokens(text) == 200


def bench(*args: str) -> Result:
    return CliRunner().invoke(app, ["bench", *args])


def test_cli_json_output(llm_engine: Engine) -> None:
    """`aiscale bench URL --chat --json` prints one JSON object with the report's fields;
    --no-calibrate sends no probe and says that prompts were not calibrated."""
    result = bench(
        f"{llm_engine.url}/v1",
        "--chat",
        "--requests",
        "2",
        "--max-tokens",
        "3",
        "--prompt-tokens",
        "16",
        "--json",
        "--no-calibrate",
    )
    assert result.exit_code == 0, result.output
    line = [x for x in result.stdout.splitlines() if x.startswith("{")][-1]
    report = json.loads(line)
    assert report["workload"] == "closed" and report["ok"] == 2
    assert report["output_tokens"] == 6 and report["ttft_p50_ms"] > 0
    assert any("not calibrated" in note for note in report["notes"])
    # 16 words, one token each, plus the chat template's own tokens (not subtracted).
    assert report["prompt_tokens"] > 2 * 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--turns", "2", "--rate", "3"], "--turns (multi-turn conversations) runs closed-loop"),
        (["--max-tokens", "0"], "--max-tokens must be >= 1"),
        (["--rate", "-1"], "--rate must be > 0"),
        (["--body", "{}"], "--body does not apply to --chat"),
        (["--think-time", "1"], "--think-time applies to conversations"),
        (["--system-tokens", "8"], "--system-tokens applies to conversations"),
        (["--slo-ttft-ms", "0"], "--slo-ttft-ms must be > 0"),
        (["--trace", "/no/such.csv"], "trace file not found"),
        (["--header", "bad header"], "must look like 'Name: value'"),
    ],
)
def test_bad_arguments_fail_in_one_line(args: list[str], message: str) -> None:
    """Each bad argument: exit 1, one error line naming the flag, no traceback, no request
    (the URL's port has no server: nothing may be sent)."""
    result = bench("http://127.0.0.1:9", "--chat", "--requests", "1", *args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output


def test_chat_flags_without_chat_fail() -> None:
    """A chat-only flag on the request bench is refused, not ignored."""
    result = bench("http://127.0.0.1:9/v1/embeddings", "--max-tokens", "3")
    assert result.exit_code == 1 and "--max-tokens applies to --chat only" in result.output


def test_trace_without_token_columns_fails(tmp_path: Path) -> None:
    """A trace lacking ContextTokens/GeneratedTokens is refused naming the columns (before
    any request: the URL's port has no server)."""
    trace = tmp_path / "times.csv"
    trace.write_text("TIMESTAMP\n1.0\n")
    result = bench("http://127.0.0.1:9", "--chat", "--trace", str(trace))
    assert result.exit_code == 1
    assert "lacks the column(s) ContextTokens, GeneratedTokens" in result.output


def test_wrong_path_and_unreachable_server_fail(llm_engine: Engine, dead_address: str) -> None:
    """A URL that is no chat endpoint, or a server nobody runs, ends in one clear line."""
    wrong = bench(f"{llm_engine.url}/v1/embeddings", "--chat", "--requests", "1")
    assert wrong.exit_code == 1 and "--chat needs a server's base URL" in wrong.output
    gone = bench(f"http://{dead_address}", "--chat", "--requests", "1")
    assert gone.exit_code == 1 and f"cannot reach http://{dead_address}/v1/models" in gone.output
    assert "Traceback" not in gone.output
