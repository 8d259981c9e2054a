"""Bad input on the LLM routes: each is a 400 in OpenAI's error shape naming the field, and
the engine never sees it (its own counters of prompt and generated tokens stay still)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.llm.conftest import LlmServer, engine_counters

USER = [{"role": "user", "content": "hi"}]
#: Words that each make one token or more: 1500 of them fill more than the 1024-token window.
LONG = "apple " * 1500
#: About 900 tokens: fits the window, but not beside 256 more.
MEDIUM = "apple " * 900

CHAT_CASES: list[tuple[Any, str]] = [
    ({"messages": USER}, "model"),
    ({"model": "chat"}, "messages"),
    ({"model": "chat", "messages": []}, "messages"),
    ({"model": "chat", "messages": "hi"}, "messages"),
    ({"model": "chat", "messages": USER * 1025}, "messages"),
    ({"model": "chat", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"model": "chat", "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"model": "chat", "messages": [*USER, {"role": "user"}]}, "messages.1.content"),
    (
        {
            "model": "chat",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        "messages.0.content.0.type",
    ),
    ({"model": "chat", "messages": [{"role": "user", "content": 7}]}, "messages.0.content"),
    (
        {"model": "chat", "messages": [{"role": "user", "content": "x", "colour": 1}]},
        "messages.0.colour",
    ),
    ({"model": "chat", "messages": USER, "n": 2}, "n"),
    (
        {"model": "chat", "messages": USER, "tools": [{"type": "function", "function": {}}]},
        "tools",
    ),
    ({"model": "chat", "messages": USER, "max_tokens": 257}, "max_tokens"),
    ({"model": "chat", "messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"model": "chat", "messages": USER, "max_completion_tokens": "9"}, "max_completion_tokens"),
    ({"model": "chat", "messages": USER, "temperature": 3}, "temperature"),
    ({"model": "chat", "messages": USER, "top_p": -0.1}, "top_p"),
    ({"model": "chat", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "chat", "messages": USER, "seed": "x"}, "seed"),
    ({"model": "chat", "messages": USER, "stream": "yes"}, "stream"),
    ({"model": "chat", "messages": USER, "stream_options": {"include_usage": True}},
     "stream_options"),
    ({"model": "chat", "messages": USER, "logprobs": True}, "logprobs"),
    ({"model": "chat", "messages": USER, "frobnicate": 1}, "frobnicate"),
    ({"model": "chat", "messages": USER, "top_k": "x"}, "top_k"),
    ({"model": "chat", "messages": USER, "repetition_penalty": 0}, "repetition_penalty"),
    ({"model": "chat", "messages": [{"role": "user", "content": LONG}]}, "messages"),
    (
        {"model": "chat", "messages": [{"role": "user", "content": MEDIUM}], "max_tokens": 256},
        "max_tokens",
    ),
]
COMPLETION_CASES: list[tuple[Any, str]] = [
    ({"model": "chat"}, "prompt"),
    ({"model": "chat", "prompt": ["a", "b"]}, "prompt"),
    ({"model": "chat", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "chat", "prompt": "x", "echo": True}, "echo"),
    ({"model": "chat", "prompt": "x", "suffix": "y"}, "suffix"),
    ({"model": "chat", "prompt": "x", "best_of": 2}, "best_of"),
    ({"model": "chat", "prompt": "x", "messages": USER}, "messages"),
    ({"model": "chat", "prompt": LONG}, "prompt"),
]
RAW_CASES: list[tuple[bytes, str]] = [
    (b'{"model": "chat", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "body"),
    (b"not json", "body"),
    (b"[1, 2]", "body"),
]


@pytest.fixture(scope="module")
def untouched(llm_server: LlmServer) -> Any:
    """The engine's token counters before the module's bad requests, checked after them."""
    [url] = llm_server.engine_urls()
    before = engine_counters(url)
    yield
    after = engine_counters(url)
    for name in ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total",
                 "llamacpp:n_decode_total"):
        assert after[name] == before[name], f"{name} moved: the engine saw a bad request"


def check_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == field, error
    assert error["code"] == "InvalidInput" and error["message"]


@pytest.mark.parametrize(("body", "field"), CHAT_CASES)
def test_bad_chat_bodies(
    llm_server: LlmServer, untouched: None, body: dict[str, Any], field: str
) -> None:
    """Each malformed or unsupported chat body is a 400 naming its field."""
    check_refused(httpx.post(f"{llm_server.url}/v1/chat/completions", json=body), field)


@pytest.mark.parametrize(("body", "field"), COMPLETION_CASES)
def test_bad_completion_bodies(
    llm_server: LlmServer, untouched: None, body: dict[str, Any], field: str
) -> None:
    """Each malformed or unsupported completion body is a 400 naming its field."""
    check_refused(httpx.post(f"{llm_server.url}/v1/completions", json=body), field)


@pytest.mark.parametrize(("content", "field"), RAW_CASES)
def test_bodies_that_are_not_json_objects(
    llm_server: LlmServer, untouched: None, content: bytes, field: str
) -> None:
    """Bytes that are not UTF-8, not JSON, or not an object: 400 naming the body."""
    response = httpx.post(
        f"{llm_server.url}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
    )
    check_refused(response, field)
    if content.startswith(b'{"model"'):
        assert "UTF-8" in response.json()["error"]["message"]


def test_sdk_raises_the_typed_errors(llm_server: LlmServer, untouched: None) -> None:
    """The SDK turns the answers into its typed errors with our message and field."""
    with openai.OpenAI(base_url=f"{llm_server.url}/v1", api_key="x", max_retries=0) as sdk:
        with pytest.raises(openai.BadRequestError, match="context window") as refused:
            sdk.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": LONG}], max_tokens=8
            )
        assert refused.value.param == "messages"
        with pytest.raises(openai.NotFoundError, match="no deployment named 'nope'"):
            sdk.chat.completions.create(model="nope", messages=USER)
