"""Chat and completions through the gateway, driven by the official ``openai`` SDK (sync,
async, streaming) against a real llama.cpp engine with the bundled SmolLM2."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiscale.config import DeploymentConfig
from aiscale.serving.specs import llm_version_of, spec_from_config
from tests.llm.conftest import LlmServer, start_llm_gateway

HELLO = [{"role": "user", "content": "Say hello."}]


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_and_completion_with_the_sdk(llm_server: LlmServer) -> None:
    """A chat answer and a completion come back whole, with the engine's usage and the
    deployment's name as the model."""
    with client(llm_server.url) as sdk:
        chat = sdk.chat.completions.create(model="chat", messages=HELLO, max_tokens=8, seed=1)
        assert chat.model == "chat" and chat.choices[0].message.role == "assistant"
        assert chat.choices[0].message.content
        assert chat.usage is not None and chat.usage.completion_tokens <= 8
        assert chat.usage.prompt_tokens > 5
        completion = sdk.completions.create(
            model="chat", prompt="The capital of France is", max_tokens=6, temperature=0
        )
        assert completion.choices[0].text and completion.usage is not None
        assert completion.usage.completion_tokens <= 6


def test_streaming_with_and_without_usage(llm_server: LlmServer) -> None:
    """A stream carries the usage chunk only when asked (``include_usage``); its text is the
    same as the deltas' and its completion tokens count them."""
    with client(llm_server.url) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="chat",
                messages=HELLO,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
        )
        usage = [c.usage for c in chunks if c.usage is not None]
        assert len(usage) == 1 and chunks[-1].usage is not None and chunks[-1].choices == []
        deltas = [c.choices[0].delta.content for c in chunks if c.choices]
        text = "".join(d for d in deltas if d)
        assert text and usage[0].completion_tokens == 12  # ignore_eos: all 12 made
        quiet = list(
            sdk.chat.completions.create(model="chat", messages=HELLO, max_tokens=4, stream=True)
        )
        assert all(c.usage is None for c in quiet) and quiet[-1].choices[0].finish_reason
        completion = list(
            sdk.completions.create(
                model="chat", prompt="Once upon a time", max_tokens=5, stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].text for c in completion if c.choices)
        assert completion[-1].usage is not None and completion[-1].usage.completion_tokens <= 5


def test_async_client_concurrent_streams(llm_server: LlmServer) -> None:
    """Four concurrent async streams (two engine slots) all finish with their usage."""

    async def one(sdk: openai.AsyncOpenAI, i: int) -> int:
        stream = await sdk.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": f"Count to {i}."}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        assert usage is not None
        return usage.completion_tokens

    async def main() -> list[int]:
        async with openai.AsyncOpenAI(
            base_url=f"{llm_server.url}/v1", api_key="unused", max_retries=0, timeout=60
        ) as sdk:
            return list(await asyncio.gather(*(one(sdk, i) for i in range(4))))

    assert all(1 <= n <= 6 for n in asyncio.run(main()))


def test_headers_models_and_health(llm_server: LlmServer) -> None:
    """Streams say no-cache and no proxy buffering; every answer names its version and
    request id; /v1/models lists the LLM with its context window; readiness covers it."""
    body = {"model": "chat", "messages": HELLO, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{llm_server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        assert r.headers["x-aiscale-version"] == "1" and r.headers["x-request-id"]
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    whole = httpx.post(
        f"{llm_server.url}/v1/chat/completions", json={**body, "stream": False}, timeout=60
    )
    assert whole.headers["x-aiscale-version"] == "1" and "x-request-id" in whole.headers
    models = httpx.get(f"{llm_server.url}/v1/models").json()["data"]
    assert [(m["id"], m["aiscale_kind"], m["max_model_len"]) for m in models] == [
        ("chat", "llm", 1024)
    ]
    assert httpx.get(f"{llm_server.url}/v2/health/ready").status_code == 200


def test_metrics_count_tokens_and_latencies(llm_server: LlmServer) -> None:
    """TTFT, ITL and token counters grow with a streamed request, per replica."""

    def samples() -> dict[str, float]:
        text = httpx.get(f"{llm_server.url}/metrics").text
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("aiscale_llm_") and sample.labels.get(
                    "deployment"
                ) == "chat":
                    key = sample.name
                    found[key] = found.get(key, 0.0) + sample.value
        return found

    before = samples()
    with client(llm_server.url) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="chat", messages=HELLO, max_tokens=5, stream=True,
                extra_body={"ignore_eos": True},
            )
        )
    after = samples()
    # Past an end-of-sequence token (ignore_eos) a sampled token may render as no text: an
    # inter-token gap is measured between chunks that carry text, as the client sees them.
    with_text = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert with_text >= 1

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert grew("aiscale_llm_generation_tokens_total") == 5
    assert grew("aiscale_llm_prompt_tokens_total") > 5
    assert grew("aiscale_llm_time_to_first_token_seconds_count") == 1
    assert grew("aiscale_llm_inter_token_latency_seconds_count") == with_text - 1
    assert grew("aiscale_llm_e2e_request_latency_seconds_count") == 1


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v2/models/chat/infer"])
def test_other_protocols_refuse_an_llm(llm_server: LlmServer, path: str) -> None:
    """An LLM deployment is not an embedding or tensor model: a 400 naming ``model``."""
    body = (
        {"model": "chat", "input": "x"}
        if path == "/v1/embeddings"
        else {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    )
    response = httpx.post(f"{llm_server.url}{path}", json=body)
    assert response.status_code == 400
    assert "LLM" in response.text


def test_openai_upstream_fronts_another_endpoint(llm_server: LlmServer) -> None:
    """An ``openai-upstream`` deployment fronts an existing OpenAI-compatible endpoint (here
    the first gateway): whole and streamed answers with usage pass through, bad input is
    still refused before the upstream is called."""
    config = DeploymentConfig.model_validate(
        {
            "name": "proxy",
            "model": "proxy",
            "engine": {
                "kind": "openai-upstream",
                "model": "chat",
                "urls": [f"{llm_server.url}/v1"],
                "context_window": 1024,
                "max_output_tokens": 64,
            },
        }
    )
    front = start_llm_gateway(spec_from_config(config, llm_version_of(config)))
    try:
        with client(front.url) as sdk:
            answer = sdk.chat.completions.create(model="proxy", messages=HELLO, max_tokens=4)
            assert answer.choices[0].message.content and answer.usage is not None
            chunks = list(
                sdk.chat.completions.create(
                    model="proxy", messages=HELLO, max_tokens=4, stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 4
            with pytest.raises(openai.BadRequestError) as refused:
                sdk.chat.completions.create(model="proxy", messages=HELLO, max_tokens=65)
            assert refused.value.param == "max_tokens"
    finally:
        front.stop()
