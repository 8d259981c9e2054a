"""The engine client and kept-alive connections an engine closes under a request.

llama.cpp's HTTP server closes some connections right after a streamed answer; a request
sent on one at that moment gets "server disconnected without sending a response". The
client sends it again once on a fresh connection instead of failing the replica. Here a
small HTTP server on loopback (a stand-in for an engine's socket, not one of our parts)
drops the second request of each connection on purpose.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from aiscale.errors import ReplicaUnavailable
from aiscale.serving.llm.engine_client import EngineClient

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@dataclass
class Target:
    url: str
    headers: dict[str, str] = field(default_factory=dict)


class DroppingServer:
    """Answers the first ``answered_per_connection`` requests of each connection, then
    closes it under the next one without a byte of answer."""

    def __init__(self, answered_per_connection: int) -> None:
        self.answered_per_connection = answered_per_connection
        self.num_requests = 0
        self.num_dropped = 0
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(connection,), daemon=True).start()

    def _connection(self, connection: socket.socket) -> None:
        with connection:
            answered = 0
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += connection.recv(65536)
                buffer = buffer[length:]
                self.num_requests += 1
                if answered >= self.answered_per_connection:
                    self.num_dropped += 1
                    return  # closed under the request: no answer at all
                connection.sendall(ANSWER)
                answered += 1

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def dropping() -> Iterator[DroppingServer]:
    server = DroppingServer(answered_per_connection=1)
    yield server
    server.close()


def test_a_request_on_a_connection_the_engine_closed_goes_again_once(
    dropping: DroppingServer,
) -> None:
    """The second request reuses the kept-alive connection, which the engine closes
    without answering: it is sent again on a fresh connection and answered."""

    async def scenario() -> list[int]:
        client = EngineClient()
        try:
            statuses = []
            for _ in range(3):
                response = await client.open(
                    Target(dropping.url), "/v1/completions", b"{}", read_timeout_s=5.0
                )
                await response.aread()
                await response.aclose()
                statuses.append(response.status_code)
            return statuses
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [200, 200, 200]
    assert dropping.num_dropped == 2 and dropping.num_requests == 5


def test_an_engine_that_never_answers_is_unavailable_after_the_retry() -> None:
    """An engine that closes every connection unanswered fails the request (the caller
    then tries another replica): one send and one retry, no more."""
    server = DroppingServer(answered_per_connection=0)

    async def scenario() -> None:
        client = EngineClient()
        try:
            await client.open(Target(server.url), "/v1/completions", b"{}", read_timeout_s=5.0)
        finally:
            await client.aclose()

    try:
        with pytest.raises(ReplicaUnavailable, match="without sending a response"):
            asyncio.run(scenario())
        assert server.num_requests == 2
    finally:
        server.close()
