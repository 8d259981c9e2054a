"""An existing OpenAI-compatible endpoint as replicas: one per URL, ready when ``GET
/v1/models`` answers with our key, lost after failed checks in a row; the key comes from
the environment and never shows in a repr or an error. The endpoint here is a small real
HTTP server on loopback that checks the key (a stand-in for a hosted API)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aiscale.engines.process import EngineHandle
from aiscale.engines.spec import EngineSpec
from aiscale.engines.upstream import UpstreamBackend, base_url_of
from aiscale.errors import ModelLoadError
from aiscale.replicas.pool import ReplicaPool
from tests.engines.conftest import LoopThread
from tests.polling import wait_for

KEY = "sk-test-7f3a9c"


class HostedApi:
    """A loopback OpenAI-style endpoint that wants ``Bearer KEY`` and can be taken down."""

    def __init__(self) -> None:
        self.is_down = False
        self.num_checks = 0

        async def models(request: Request) -> JSONResponse:
            self.num_checks += 1
            if request.headers.get("authorization") != f"Bearer {KEY}":
                given = request.headers.get("authorization", "")
                return JSONResponse({"error": {"message": f"Incorrect API key: {given}"}}, 401)
            if self.is_down:
                return JSONResponse({"error": {"message": "overloaded"}}, 503)
            return JSONResponse({"object": "list", "data": [{"id": "gpt-x", "object": "model"}]})

        self.app = Starlette(routes=[Route("/v1/models", models)])
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))


@pytest.fixture(scope="module")
def hosted(loop_thread: LoopThread) -> Iterator[HostedApi]:
    api = HostedApi()
    serving = asyncio.run_coroutine_threadsafe(api.server.serve([api.socket]), loop_thread.loop)
    wait_for(lambda: api.server.started, 10.0, "the stand-in API to start")
    yield api
    api.server.should_exit = True
    serving.result(10.0)
    api.socket.close()


def _spec(urls: tuple[str, ...], **overrides: Any) -> EngineSpec:
    settings: dict[str, Any] = {
        "kind": "openai-upstream", "model": "gpt-x", "served_model_name": "team-chat",
        "upstream_urls": urls, "api_key_env": "UPSTREAM_KEY", "startup_timeout_s": 2.0,
    }  # fmt: skip
    settings.update(overrides)
    return EngineSpec(**settings)


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", KEY)


@pytest.mark.parametrize(
    ("given", "base"),
    [("https://api.example.com/v1/", "https://api.example.com"),
     ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
     ("https://gw.example.com/team/v1", "https://gw.example.com/team")],
)
def test_a_configured_url_becomes_the_base_url_the_gateway_extends(given: str, base: str) -> None:
    assert base_url_of(given) == base


def test_an_upstream_replica_is_its_url_with_our_key(
    hosted: HostedApi, loop_thread: LoopThread, api_key: None
) -> None:
    """Ready once ``/v1/models`` answers 200 with the key; the handle carries the base URL,
    the upstream's model name and the key as a header, which its repr never shows."""
    backend = UpstreamBackend(_spec((f"{hosted.url}/v1/",)))
    handle, info = loop_thread.run(backend.spawn(0, num_replicas=1, lease=None))
    assert handle.url == hosted.url and handle.model_name == "gpt-x"
    assert handle.headers == {"Authorization": f"Bearer {KEY}"}
    assert KEY not in repr(handle) and handle.process is None
    assert info.schema["model"] == "team-chat" and info.node == hosted.url.removeprefix("http://")
    with httpx.Client(headers=dict(handle.headers)) as client:
        assert client.get(f"{handle.url}/v1/models").json()["data"][0]["id"] == "gpt-x"
    loop_thread.run(backend.stop(handle, 1.0))
    assert "was stopped" in loop_thread.run(backend.wait_dead(handle))


def test_a_wrong_or_missing_key_is_refused_without_showing_the_key(
    hosted: HostedApi, loop_thread: LoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key the endpoint refuses: ``ModelLoadError`` with its 401, the key redacted even
    where the endpoint echoes it; no variable: the error names the variable."""
    backend = UpstreamBackend(_spec((hosted.url,)))
    with pytest.raises(ModelLoadError, match="UPSTREAM_KEY is not set"):
        loop_thread.run(backend.spawn(0, num_replicas=1, lease=None))
    monkeypatch.setenv("UPSTREAM_KEY", "sk-wrong-0001")
    with pytest.raises(ModelLoadError, match="answered 401") as caught:
        loop_thread.run(backend.spawn(0, num_replicas=1, lease=None))
    assert "sk-wrong-0001" not in str(caught.value) and "[REDACTED]" in str(caught.value)


def test_replicas_are_one_per_url_and_a_failing_url_is_lost(
    hosted: HostedApi, loop_thread: LoopThread, api_key: None
) -> None:
    """With one URL a second replica is refused naming why; when the endpoint fails its
    checks in a row the pool loses the replica (and its replacement fails while it is down);
    once it is back, scaling up brings a replica back."""
    backend = UpstreamBackend(_spec((hosted.url,)), check_interval_s=0.05)
    pool: ReplicaPool[EngineHandle] = ReplicaPool(backend.spec.replica_spec(), backend)
    try:
        with pytest.raises(ModelLoadError, match="at most one replica per URL"):
            loop_thread.run(pool.start(2))
        wait_for(lambda: pool.num_ready == 1, 10.0, "the replica that got the URL")
        hosted.is_down = True
        wait_for(lambda: pool.num_ready == 0 and pool.num_replaced == 1, 20.0, "the loss")
        # The replacement probes for its startup timeout (2 s), then gives up.
        wait_for(lambda: pool.num_starting == 0, 20.0, "the replacement to give up")
        assert pool.num_ready == 0
        hosted.is_down = False
        loop_thread.run(pool.scale(1))
        assert pool.num_ready == 1 and pool.replicas()[0].handle.url == hosted.url
    finally:
        hosted.is_down = False
        loop_thread.run(pool.stop(drain_timeout_s=1.0))
