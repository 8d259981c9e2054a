"""Running the gateway on uvicorn (uvloop + httptools) on a socket we bind ourselves.

Binding first lets ``--port 0`` work: the bound port is known before uvicorn starts and is
reported once every deployment is ready. Shutdown follows uvicorn's order: stop accepting,
then the app's lifespan drains in-flight work and stops replicas.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass

import httpx
import uvicorn

from aiscale.serving.app import GatewayApp


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_uvicorn(app: GatewayApp, *, graceful_timeout_s: float) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(graceful_timeout_s) or None,
        backlog=2048,
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
    app: GatewayApp, *, host: str = "127.0.0.1", port: int = 0, ready_timeout_s: float = 120.0
) -> ThreadedServer:
    """Serve ``app`` on a fresh port in a thread; return once ``/v2/health/ready`` says so."""
    sock = bind_socket(host, port)
    server = make_uvicorn(app, graceful_timeout_s=app.gateway.settings.drain_timeout_s)
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
