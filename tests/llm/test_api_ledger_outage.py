"""A token ledger whose Redis goes away, seen from a client of the LLM API.

A real gateway with a real llama.cpp engine (the bundled SmolLM2) books every request in a
ledger on its own Redis (a unix socket of this test). When that Redis is killed the gateway
fails closed, as the ledger must (nothing is served that could not be counted), but the
client is told what it can do about it: 503 with ``Retry-After`` in OpenAI's error shape,
which OpenAI's SDKs retry, not a 502 that blames the client's upstream, nor a 500.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aiscale.llm.ledger import make_ledger
from aiscale.llm.ledger_config import LedgerConfig
from tests.llm.conftest import has_bundled_model, llm_spec, start_llm_gateway
from tests.llm.test_ledger_redis import _start_redis

CHAT = {"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello."}]}


def test_a_ledger_outage_is_a_retryable_503(tmp_path: Path) -> None:
    """Served while the ledger's Redis is up; 503 with Retry-After, in OpenAI's error shape
    and without reaching an engine, once it is down."""
    if not has_bundled_model():
        pytest.skip("the bundled LLM is not installed")
    socket_path = tmp_path / "redis.sock"
    redis_process = _start_redis(socket_path)
    ledger = make_ledger(LedgerConfig(), redis_url=f"unix://{socket_path}", key_prefix="o:",
                         timeout_s=0.25, metrics_registry=CollectorRegistry())  # fmt: skip
    server = start_llm_gateway(llm_spec(), ledger=ledger)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
            redis_process.kill()
            redis_process.wait(timeout=10)
            for _ in range(2):  # the failing call, then the ones while Redis is left alone
                refused = client.post("/v1/chat/completions", json=CHAT)
                assert refused.status_code == 503, refused.text
                assert int(refused.headers["retry-after"]) >= 1
                error = refused.json()["error"]
                assert "cannot be admitted" in error["message"]
                assert error["code"] == "Overloaded"
                assert set(error) == {"message", "type", "param", "code"}
    finally:
        server.stop()
        if redis_process.poll() is None:
            redis_process.kill()
