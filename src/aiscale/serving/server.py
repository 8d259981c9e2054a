"""Running the gateway on uvicorn (uvloop + httptools) on a socket we bind ourselves.

Binding first lets ``--port 0`` work: the bound port is known before uvicorn starts and is
reported once every deployment is ready. Shutdown follows uvicorn's order: stop accepting,
then the app's lifespan drains in-flight work and stops replicas.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aiscale.serving.app import GatewayApp

if TYPE_CHECKING:
    from aiscale.config import ServerConfig


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:  # e.g. "Address already in use": say which address and port
        sock.close()
        raise OSError(exc.errno, f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    # Not inheritable (PEP 446 default): replica and engine processes must never hold the
    # gateway's listening socket (a child that outlives the gateway would keep its port).
    sock.set_inheritable(False)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a client may take and how many connections it may hold (slow-client and
    idle-connection defence). The body timeout is the app's (``Request.body``, 408)."""

    #: Headers of a request not all received this long after the connection opened (or the
    #: request's first byte): 408 and close. An idle new connection is closed the same way.
    header_timeout_s: float = 10.0
    #: An idle kept-alive connection is closed after this many seconds (uvicorn's own timer).
    keep_alive_timeout_s: float = 5.0
    #: Connections, or requests in progress, beyond this are answered 503 (uvicorn).
    max_connections: int = 2048
    #: Largest request line plus headers, in bytes (h11; httptools has its own 80 KiB cap).
    max_header_bytes: int = 64 * 1024

    @classmethod
    def of(cls, server: ServerConfig) -> ConnectionLimits:
        """The limits a server config asks for (the CLI and ``aiscale.serve`` alike)."""
        return cls(
            header_timeout_s=server.header_timeout_s,
            keep_alive_timeout_s=server.keep_alive_timeout_s,
            max_connections=server.max_connections,
        )


_TIMEOUT_BODY = (
    b'{"error": {"type": "RequestTimeout", "message": "the request headers did not arrive '
    b'in time", "field": "headers"}}'
)
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close"
    b"\r\ncontent-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class _HeaderTimedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers.

    uvicorn times out only idle kept-alive connections; a connection that never sends a
    request, or sends its headers a byte at a time, would be held forever. The deadline
    starts when the connection opens (or a request's first byte arrives) and ends when the
    headers are complete. Set ``header_timeout_s`` on a subclass (``make_uvicorn`` does).

    Why a per-connection check every quarter of the timeout rather than a timer per request:
    arming and cancelling a loop timer for every request cost about 9% of a no-op model's
    throughput; a request now only stores one float. A late request is cut off between
    1 and 1.25 times the timeout."""

    header_timeout_s: float = 10.0
    #: When the current request's headers started (loop time); ``None`` between requests.
    _header_started_s: float | None = None
    _header_check: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_started_s = self.loop.time()
        self._schedule_header_check()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_started_s is None:
            self._header_started_s = self.loop.time()

    def on_headers_complete(self) -> None:
        self._header_started_s = None
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_check is not None:
            self._header_check.cancel()
            self._header_check = None
        super().connection_lost(exc)

    def _schedule_header_check(self) -> None:
        self._header_check = self.loop.call_later(self.header_timeout_s / 4, self._check_headers)

    def _check_headers(self) -> None:
        self._header_check = None
        if self.transport.is_closing():
            return
        started = self._header_started_s
        if started is not None and self.loop.time() - started >= self.header_timeout_s:
            self.transport.write(_TIMEOUT_ANSWER)
            self.transport.close()
            return
        self._schedule_header_check()


def make_uvicorn(
    app: GatewayApp, *, graceful_timeout_s: float, limits: ConnectionLimits | None = None
) -> uvicorn.Server:
    limits = limits or ConnectionLimits()
    protocol = type(
        "HeaderTimedProtocol",
        (_HeaderTimedProtocol,),
        {"header_timeout_s": limits.header_timeout_s},
    )
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=protocol,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(graceful_timeout_s) or None,
        backlog=2048,
        timeout_keep_alive=max(1, round(limits.keep_alive_timeout_s)),
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=limits.max_header_bytes,
    )
    return uvicorn.Server(config)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class ThreadedServer:
    """A gateway served by uvicorn in a background thread of this process (tests, demo)."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def start_in_thread(
    app: GatewayApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_timeout_s: float = 120.0,
    limits: ConnectionLimits | None = None,
) -> ThreadedServer:
    """Serve ``app`` on a fresh port in a thread; return once ``/v2/health/ready`` says so."""
    sock = bind_socket(host, port)
    server = make_uvicorn(
        app, graceful_timeout_s=app.gateway.settings.drain_timeout_s, limits=limits
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = url_of(sock)
    wait_ready(url, ready_timeout_s, is_alive=thread.is_alive)
    return ThreadedServer(url, server, thread)


def wait_ready(url: str, timeout_s: float, *, is_alive: object = None) -> None:
    """Poll ``/v2/health/ready`` until 200 or the deadline; raise ``TimeoutError`` then."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if callable(is_alive) and not is_alive():
                raise RuntimeError("the server stopped before it was ready")
            try:
                if client.get(f"{url}/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            threading.Event().wait(0.05)
    raise TimeoutError(f"{url} was not ready within {timeout_s}s")
