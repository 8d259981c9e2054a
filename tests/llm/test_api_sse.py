"""The SSE relay's bookkeeping over bytes as they arrive: events pass on whole and at once,
``[DONE]`` is held back, the usage chunk reaches only a client that asked, llama.cpp's
``error:`` events become ones OpenAI's SDK reads, and TTFT and ITL come from the clock."""

from __future__ import annotations

import itertools

import orjson
import pytest

from aiscale.serving.llm.stream import MAX_EVENT_BYTES, SseRelay


def chunk(text: str | None = None, *, finish: str | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"


def relay(include_usage: bool = False, gaps: list[float] | None = None) -> SseRelay:
    ticks = itertools.count(1)
    return SseRelay(
        "chat",
        include_usage=include_usage,
        started_s=0.0,
        clock=lambda: float(next(ticks)),
        on_gap=None if gaps is None else gaps.append,
    )


def test_events_pass_on_whole_as_soon_as_complete() -> None:
    """An event split over reads waits for its end only; several in one read go together."""
    sse = relay()
    first = chunk("Hel")
    assert sse.feed(first[:10]) == b""
    assert sse.feed(first[10:]) == first
    both = chunk("lo") + chunk(" world")
    assert sse.feed(both) == both
    assert sse.tally.text == "Hello world" and sse.tally.num_token_chunks == 3


def test_usage_only_for_a_client_that_asked_and_done_held_back() -> None:
    gaps: list[float] = []
    quiet, asked = relay(gaps=gaps), relay(include_usage=True)
    stream = chunk("a") + chunk("b") + chunk(finish="length") + USAGE + DONE
    assert quiet.feed(stream) == chunk("a") + chunk("b") + chunk(finish="length")
    assert asked.feed(stream) == stream[: -len(DONE)]
    for sse in (quiet, asked):
        tally = sse.tally
        assert tally.usage == {"prompt_tokens": 7, "completion_tokens": 2}
        assert tally.is_done and tally.finish_reason == "length"
    assert quiet.tally.ttft_s == 1.0 and gaps == [1.0] and quiet.tally.mean_itl_s == 1.0


def test_crlf_framing_comments_and_llamacpp_errors() -> None:
    sse = relay()
    out = sse.feed(b"data: " + chunk("x")[6:-2] + b"\r\n\r\n: ping\r\n\r\n")
    assert out == chunk("x") + b": ping\n\n"
    error = sse.feed(b'error: {"code":500,"message":"boom","type":"server_error"}\n\n')
    assert orjson.loads(error[6:])["error"]["message"] == "boom"
    assert sse.tally.error == {"code": 500, "message": "boom", "type": "server_error"}


def test_an_endless_event_is_refused() -> None:
    sse = relay()
    with pytest.raises(ValueError, match="size limit"):
        for _ in range(MAX_EVENT_BYTES // 65536 + 2):
            sse.feed(b"x" * 65536)
