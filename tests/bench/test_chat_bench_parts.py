"""The chat bench's parts without an engine: URL forms, config checks, prompt shaping, token
traces, the stream reader against a scripted event stream on a real loopback server, the
tally's definitions (TTFT, ITL, goodput, errors) and the rendering."""

from __future__ import annotations

import asyncio
import random
from array import array
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from aiscale.bench.chat_command import build_chat_config
from aiscale.bench.chat_config import chat_url, models_url
from aiscale.bench.chat_report import format_chat_snapshot, render_chat_result
from aiscale.bench.chat_results import ChatProgress, ChatTally
from aiscale.bench.chat_stream import ChatStreamClient, StreamOutcome
from aiscale.bench.chat_workloads import (
    Conversation,
    PromptShaper,
    load_token_trace,
    synthesize_text,
)
from aiscale.errors import InvalidInput
from tests.bench.conftest import LoopbackServer

URL = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:8000", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/", "http://h:8000/v1/chat/completions"),
        ("http://h/v1", "http://h/v1/chat/completions"),
        ("https://h/api/v1/", "https://h/api/v1/chat/completions"),
        ("http://h/v1/chat/completions", "http://h/v1/chat/completions"),
    ],
)
def test_chat_url_accepts_the_forms_people_paste(given: str, expected: str) -> None:
    """A base URL, its /v1, or the full chat completions path all name the same endpoint."""
    assert chat_url(given) == expected
    assert models_url(expected) == expected.replace("/chat/completions", "/models")


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"url": "ftp://h"}, "url", "url must be http"),
        ({"url": "http://h/v1/embeddings"}, "url", "--chat needs a server's base URL"),
        ({"concurrency": 0}, "concurrency", "--concurrency must be >= 1"),
        ({"prompt_tokens": 0}, "prompt_tokens", "--prompt-tokens must be >= 1"),
        ({"turns": 0}, "turns", "--turns must be >= 1"),
        ({"think_time": -1.0}, "think_time_s", "--think-time must be >= 0"),
        ({"slo_itl_ms": float("nan")}, "slo_itl_ms", "--slo-itl-ms must be > 0"),
        ({"max_context": 8}, "context_tokens", "--max-context must be >= 16"),
        ({"rate": 1.0, "trace": "__TRACE__"}, "rate", "either --rate or --trace"),
        ({"rate_scale": 2.0}, "trace", "apply to --trace only"),
        ({"model": " "}, "model", "--model must not be empty"),
        ({"requests": 0}, "requests", "--requests must be >= 1"),
    ],
)
def test_bad_config_raises_invalid_input(
    tmp_path: Path, kwargs: dict[str, Any], field: str, message: str
) -> None:
    """Each impossible value is refused before any request, naming its flag."""
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,5,5\n")
    kwargs = {k: (str(trace) if v == "__TRACE__" else v) for k, v in kwargs.items()}
    url = kwargs.pop("url", URL)
    with pytest.raises(InvalidInput, match=message) as info:
        build_chat_config(url, **kwargs)
    assert info.value.field == field


def test_workload_follows_the_flags(tmp_path: Path) -> None:
    """trace > rate > turns > closed; without --requests/--duration a default duration."""
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,5,5\n")
    assert build_chat_config(URL).workload == "closed"
    assert build_chat_config(URL).duration_s is not None
    assert build_chat_config(URL, rate=2.0).workload == "open"
    assert build_chat_config(URL, turns=3).workload == "multi_turn"
    assert build_chat_config(URL, trace=trace).workload == "trace"
    assert build_chat_config(URL, trace=trace).duration_s is None


def test_prompt_shaper_inverts_the_calibration() -> None:
    """From two probes (1 word: 25 tokens, 65 words: 89) the shaper finds 24 tokens of
    template and 1 token a word, and maps lengths both ways."""
    shaper = PromptShaper.calibrated(1, 25, 65, 89)
    assert (shaper.overhead_tokens, shaper.tokens_per_word) == (24.0, 1.0)
    assert shaper.words_for(124) == 100 and shaper.tokens_of(100) == 124
    assert shaper.words_for(3) == 1  # never an empty message
    with pytest.raises(InvalidInput, match="calibration failed"):
        PromptShaper.calibrated(1, 25, 65, 25)


def test_synthesized_prompts_differ_from_the_first_word() -> None:
    """Two prompts share no prefix by accident (each draws its own words), seeds repeat."""
    rng = random.Random(1)
    first, second = synthesize_text(50, rng), synthesize_text(50, rng)
    assert len(first.split()) == 50 and first.split()[:3] != second.split()[:3]
    assert synthesize_text(50, random.Random(1)) == first


def test_conversation_grows_turn_by_turn() -> None:
    """Each request carries the system prompt and the whole history, then the new question."""
    conversation = Conversation("be brief")
    first = conversation.ask("q1")
    assert first == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
    ]
    conversation.answered("q1", "a1", 40)
    second = conversation.ask("q2")
    assert [m["content"] for m in second] == ["be brief", "q1", "a1", "q2"]
    assert (conversation.num_turns, conversation.num_tokens) == (1, 40)


def test_token_trace_is_sorted_scaled_and_cut(tmp_path: Path) -> None:
    """Rows come back in arrival order with their sizes; scaling and the cut apply."""
    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:47.0,300,20\n"
        "2023-11-16 18:15:46.0,100,10\n"
        "2023-11-16 18:15:49.0,500,30\n"
    )
    rows = load_token_trace(trace)
    assert [(r.offset_s, r.context_tokens, r.generated_tokens) for r in rows] == [
        (0.0, 100, 10),
        (1.0, 300, 20),
        (3.0, 500, 30),
    ]
    fast = load_token_trace(trace, rate_scale=2.0, duration_s=1.0)
    assert [r.offset_s for r in fast] == [0.0, 0.5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TIMESTAMP,ContextTokens\n1.0,5\n", r"lacks the column\(s\) GeneratedTokens \("),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "has no rows"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,5,5\nnoon,5,5\n", "line 3"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,-5,5\n", "line 2"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,5\n", "line 2"),
    ],
)
def test_bad_token_traces_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    """A trace that cannot be replayed is refused saying which column or line is wrong."""
    trace = tmp_path / "t.csv"
    trace.write_text(text)
    with pytest.raises(InvalidInput, match=message) as info:
        load_token_trace(trace)
    assert info.value.field == "trace"


async def _stream(server: LoopbackServer, kind: str) -> StreamOutcome:
    client = ChatStreamClient(
        server.url(server.new_key(), f"/sse/{kind}/v1/chat/completions"),
        headers=(),
        max_connections=2,
        timeout_s=5.0,
    )
    try:
        return await client.stream(b"{}", started_s=0.0, keep_text=True)
    finally:
        await client.close()


def test_stream_reader_times_tokens_and_reads_usage(server: LoopbackServer) -> None:
    """Content chunks are token arrivals (the role-only chunk is not); usage, finish reason
    and the assembled text are read; tokens 20 ms apart give gaps of about 20 ms."""
    outcome = asyncio.run(_stream(server, "spaced"))
    assert outcome.error is None
    assert len(outcome.token_times_s) == 3 and outcome.text == "t0t1t2"
    assert (outcome.prompt_tokens, outcome.cached_tokens, outcome.completion_tokens) == (7, 2, 3)
    assert outcome.finish_reason == "length"
    gaps = [b - a for a, b in zip(outcome.token_times_s, outcome.token_times_s[1:], strict=False)]
    assert all(0.01 < gap < 0.5 for gap in gaps)


@pytest.mark.parametrize(
    ("kind", "error", "text"),
    [("error", "stream", "engine died"), ("cut", "stream", "before [DONE]"),
     ("503", "503", "no replica")],
)  # fmt: skip
def test_stream_failures_are_outcomes(
    server: LoopbackServer, kind: str, error: str, text: str
) -> None:
    """An error event, a stream cut before [DONE], or an error status: an outcome saying so."""
    outcome = asyncio.run(_stream(server, kind))
    assert outcome.error == error and text in outcome.error_text


def _outcome(ttft_s: float, gaps_s: list[float], *, error: str | None = None) -> StreamOutcome:
    times = array("d")
    at = 10.0 + ttft_s
    if error is None:
        times.append(at)
        for gap in gaps_s:
            at += gap
            times.append(at)
    usage = None if error else {"prompt_tokens": 10, "completion_tokens": len(times)}
    return StreamOutcome(10.0, error=error, error_text="boom" if error else "",
                         token_times_s=times, usage=usage, ended_s=at + 0.001)  # fmt: skip


def test_tally_definitions() -> None:
    """TTFT from the start, ITL gaps pooled, TPOT per request, goodput needs both SLOs,
    errors by kind with the first one's text, short outputs under ignore_eos."""
    tally = ChatTally(slo_ttft_s=0.5, slo_itl_s=0.05, ignore_eos=True)
    tally.record(_outcome(0.2, [0.01, 0.03]), 3)  # good
    tally.record(_outcome(0.8, [0.01, 0.01]), 3)  # TTFT over the SLO
    tally.record(_outcome(0.1, [0.2]), 4)  # ITL over the SLO, and one token short
    tally.record(_outcome(0.1, [], error="503"), 3)
    tally.record(_outcome(0.1, [], error="timeout"), 3)
    assert (tally.requests, tally.ok, tally.num_good, tally.num_short) == (5, 3, 1, 1)
    assert tally.errors == {"503": 1, "timeout": 1} and tally.first_error == "503: boom"
    assert sorted(round(x, 3) for x in tally.ttft_s) == [0.1, 0.2, 0.8]
    assert sorted(round(x, 3) for x in tally.itl_s) == [0.01, 0.01, 0.01, 0.03, 0.2]
    assert sorted(round(x, 3) for x in tally.tpot_s) == [0.01, 0.02, 0.2]
    assert (tally.output_tokens, tally.requested_tokens) == (3 + 3 + 2, 3 + 3 + 4)
    assert len(tally.e2e_s) == 3 and tally.prompt_tokens == 30


def test_steady_window_counts_every_request_s_tokens_inside_it() -> None:
    """The steady rate's numerator: tokens that arrived inside the window, from warm-up
    requests, failed ones and ones still running at its end alike; none from outside."""
    tally = ChatTally(slo_ttft_s=0.5, slo_itl_s=0.05, ignore_eos=True)
    started_before = _outcome(0.5, [1.0, 1.0, 1.0])  # tokens at 10.5, 11.5, 12.5, 13.5
    failed = _outcome(1.2, [0.1], error="stream")  # no tokens
    failed.token_times_s.extend([11.3, 11.4])  # streamed two, then broke
    running_past_end = _outcome(3.0, [1.0, 1.0])  # 13.0, 14.0, 15.0
    for outcome in (started_before, failed, running_past_end):
        tally.count_window_tokens(outcome, 11.0, 14.0)
    assert tally.window_tokens == 3 + 2 + 1  # 11.5, 12.5, 13.5; 11.3, 11.4; 13.0
    assert tally.requests == 0  # counting the window records no request


def test_an_empty_answer_is_ok_without_ttft() -> None:
    """A stream that finished with no token (the model stopped at once) is answered, not an
    error: no TTFT or ITL sample, short of its ignore_eos length, good within the TTFT SLO."""
    tally = ChatTally(slo_ttft_s=0.5, slo_itl_s=0.05, ignore_eos=True)
    empty = StreamOutcome(10.0, usage={"prompt_tokens": 5, "completion_tokens": 0},
                          ended_s=10.2)  # fmt: skip
    tally.record(empty, 8)
    assert (tally.requests, tally.ok, tally.num_good, tally.num_short) == (1, 1, 1, 1)
    assert tally.errors == {} and len(tally.ttft_s) == 0 and len(tally.e2e_s) == 1
    assert (tally.output_tokens, tally.prompt_tokens) == (0, 5)


def test_rendering_shows_the_numbers_and_notes(server: LoopbackServer) -> None:
    """The table carries throughput, TTFT/ITL, goodput, errors and notes; the progress line
    is one line."""
    from aiscale.bench.chat_results import ChatBenchResult, LatencySummary

    summary = LatencySummary(12.5, 20.0, 30.0, 14.0, 31.0)
    result = ChatBenchResult(
        workload="multi_turn", url=URL, model="m", requests=10, ok=9,
        errors_by_kind={"timeout": 1}, dropped_by_client=0, duration_s=2.0,
        requests_per_s=4.5, output_tokens=90, requested_output_tokens=90, prompt_tokens=400,
        cached_prompt_tokens=300, output_tokens_per_s=45.0, ttft=summary, itl=summary,
        tpot=summary, e2e=summary, slo_ttft_ms=100.0, slo_itl_ms=50.0, num_good=6,
        goodput_rps=3.0, max_tokens=10, ignore_eos=True, num_short_outputs=0,
        context_tokens=2048, num_prompts_capped=0, offered_rate_rps=None,
        client_cpu_share=0.1, notes=("a note",),
    )  # fmt: skip
    console = Console(record=True, width=140)
    console.print(render_chat_result(result))
    text = console.export_text()
    for expected in ("multi-turn", "45.00 tok/s", "TTFT p50", "12.5 ms", "errors timeout",
                     "goodput (TTFT <= 100 ms, ITL <= 50 ms)", "67% of ok", "a note"):  # fmt: skip
        assert expected in text, expected
    assert result.to_json()["cache_hit_share"] == 0.75
    line = format_chat_snapshot(
        ChatProgress(elapsed_s=1.0, is_warmup=False, requests=3, ok=3, errors=0,
                     dropped_by_client=1, outstanding=2, output_tokens_per_s=9.5,
                     requests_per_s=1.0, ttft_p50_ms=None, itl_p50_ms=4.0,
                     fraction_done=0.5)  # fmt: skip
    )
    assert "\n" not in line and "9.5 tok/s" in line and "ITL p50 4.0 ms" in line
    assert "dropped 1" in line
