"""The smaller ways in, closed at the gateway: slow and idle clients are cut off, ``/metrics``
can require a key, and replica processes do not inherit the gateway's secrets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from aiscale.serving.server import ConnectionLimits, ThreadedServer
from tests.serving.conftest import ServerFactory, python_spec


@pytest.fixture
def strict_server() -> Iterator[ThreadedServer]:
    """An echo gateway with a 0.5 s body timeout and a 0.5 s header timeout."""
    gateway = Gateway(
        GatewaySettings(drain_timeout_s=5.0, body_timeout_s=0.5),
        [python_spec("echo", "Echo")],
        metrics_registry=CollectorRegistry(),
    )
    server = start_in_thread(GatewayApp(gateway), limits=ConnectionLimits(header_timeout_s=0.5))
    yield server
    server.stop()


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (10 s at most)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_slow_body_is_cut_off_with_408(strict_server: ThreadedServer) -> None:
    """A body trickling in at a few bytes per second gets 408 and a closed connection once
    the body timeout passes, not after the whole body."""
    body = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}'
    sock = _connect(strict_server.url)
    started = time.monotonic()
    sock.sendall(
        b"POST /v2/models/echo/infer HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\n\r\n"
    )  # fmt: skip
    answer = b""
    for i in range(0, len(body), 4):  # 4 bytes every 0.2 s: 16 s for the whole body
        try:
            sock.sendall(body[i : i + 4])
        except OSError:  # closed by the server: its answer is waiting
            break
        sock.settimeout(0.2)
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            continue
        break
    sock.settimeout(10)
    answer += _read_all(sock)
    elapsed_s = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"x-aiscale-error-type: RequestTimeout" in answer  # OIP v2: JSON body, type in a header
    assert b'{"error":"the body did not arrive within 0.5 s"}' in answer
    assert elapsed_s < 5.0


def test_an_idle_connection_is_closed_with_408(strict_server: ThreadedServer) -> None:
    """A connection that sends nothing, or only part of its headers, is answered 408 and
    closed after the header timeout; a prompt request on a new connection still works."""
    idle = _connect(strict_server.url)
    partial = _connect(strict_server.url)
    partial.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: 127.0")
    started = time.monotonic()
    assert _read_all(idle).startswith(b"HTTP/1.1 408")
    assert _read_all(partial).startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 5.0
    idle.close()
    partial.close()
    assert httpx.get(f"{strict_server.url}/v2/health/live").status_code == 200


def test_metrics_can_require_a_key_with_the_metrics_scope(tmp_path: Path) -> None:
    """With the option on, an anonymous scrape gets 401 and an inference key 403, both JSON;
    a key with the metrics scope scrapes."""
    registry = SqlRegistry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    scraper, _ = registry.create_key("prometheus", frozenset({"metrics"}))
    client_key, _ = registry.create_key("app", frozenset({"inference"}))
    gateway = Gateway(
        GatewaySettings(drain_timeout_s=5.0, is_metrics_key_required=True),
        [python_spec("echo", "Echo")],
        metrics_registry=CollectorRegistry(),
        control=RegistryControl(registry, FsspecArtifactStore(tmp_path / "artifacts")),
    )
    server = start_in_thread(GatewayApp(gateway))
    try:
        anonymous = httpx.get(f"{server.url}/metrics")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["field"] == "authorization"
        wrong = httpx.get(
            f"{server.url}/metrics", headers={"authorization": f"Bearer {client_key}"}
        )
        assert wrong.status_code == 403 and "metrics" in wrong.json()["error"]["message"]
        scraped = httpx.get(f"{server.url}/metrics", headers={"authorization": f"Bearer {scraper}"})
        assert scraped.status_code == 200 and "aiscale_" in scraped.text
    finally:
        server.stop()
        registry.close()


def test_replicas_do_not_see_the_gateways_secrets(
    serve: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Model code reads neither cloud credentials nor AISCALE_* settings of the gateway's
    environment; what it needs (PATH, thread settings) still reaches it."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-aws")
    monkeypatch.setenv("AISCALE_REDIS_CACHE_SECRET", "planted-aiscale")
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:planted@db/x")
    server = serve(python_spec("env", "EnvValue"))
    names = ["AWS_SECRET_ACCESS_KEY", "AISCALE_REDIS_CACHE_SECRET", "DATABASE_URL", "PATH",
             "OMP_NUM_THREADS"]  # fmt: skip
    response = httpx.post(
        f"{server.url}/v2/models/env/infer",
        json={"inputs": [{"name": "text", "shape": [len(names)], "datatype": "BYTES",
                          "data": names}]},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    values = dict(zip(names, response.json()["outputs"][0]["data"], strict=True))
    assert values["AWS_SECRET_ACCESS_KEY"] == ""
    assert values["AISCALE_REDIS_CACHE_SECRET"] == ""
    assert values["DATABASE_URL"] == ""
    assert values["PATH"] and values["OMP_NUM_THREADS"] == "1"
