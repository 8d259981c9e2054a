"""A webhook's URL may carry its token (Slack's does, in the path): a failed delivery names
only its scheme and host, never the path, query or password."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aiscale.monitor.alerts import Notification
from aiscale.monitor.notifiers import NotificationFailed, WebhookNotifier, safe_url

TOKEN = "T0K3N-in-path"


class _Refuse(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def failing_receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _notification() -> Notification:
    return Notification(group="echo", at_s=0.0, alerts=())


def _fail(url: str) -> str:
    async def send() -> str:
        async with WebhookNotifier(url) as notifier:
            with pytest.raises(NotificationFailed) as failed:
                await notifier.send(_notification())
        return failed.value.message

    return asyncio.run(send())


@pytest.fixture
def closed() -> Iterator[str]:
    """A loopback URL whose port is bound but never listened on: connections are refused,
    and nothing else can take the port meanwhile."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{holder.getsockname()[1]}"
    holder.close()


def test_a_failed_webhook_names_only_scheme_and_host(failing_receiver: str, closed: str) -> None:
    """A 500 answer and a refused connection: the message has the host, not the token."""
    answered = _fail(f"{failing_receiver}/hooks/{TOKEN}?token=s3cret")
    assert failing_receiver in answered and "500" in answered
    refused = _fail(f"{closed}/hooks/{TOKEN}?token=s3cret")
    assert closed in refused
    for message in (answered, refused):
        assert TOKEN not in message and "s3cret" not in message and "/hooks" not in message


def test_safe_url_drops_credentials_path_and_query() -> None:
    assert safe_url("https://user:pw@hooks.example.com:8443/a/b?c=d") == (
        "https://hooks.example.com:8443"
    )
    assert safe_url("http://[::1]/x") == "http://[::1]"
