"""HTTP clients for the load generator: one POST to one URL, as cheap in CPU as possible.

The load generator runs on the same small machine as the server it measures, so every
microsecond of client CPU is taken from the server. Two clients share the ``HttpClient``
protocol:

* ``RawHttpClient`` (the default): a minimal HTTP/1.1 keep-alive client on
  ``asyncio.Protocol``, about a third of aiohttp's CPU per request. It speaks plain ``http://``
  only and reads ``Content-Length`` replies only; a chunked or length-less reply fails the run
  with ``InvalidInput`` saying so, never a silent miscount;
* ``AiohttpClient``: one aiohttp session with one keep-alive ``TCPConnector``; handles
  everything HTTP can send back (chunked, TLS).

A client never retries, never follows redirects and never interprets the status: it returns it.
Connection failures and timeouts raise ``OSError`` or ``TimeoutError``; a connection that
could not be opened at all (refused, unknown host) raises ``ConnectFailed``, an ``OSError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, cast
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from aiscale.errors import InvalidInput

__all__ = [
    "AiohttpClient",
    "ClientKind",
    "ConnectFailed",
    "HttpClient",
    "RawHttpClient",
    "open_client",
]

ClientKind = Literal["raw", "aiohttp"]

_MAX_HEAD_BYTES = 64 * 1024
_MAX_CACHED_REQUESTS = 4096


class ConnectFailed(OSError):
    """No connection could be opened to the server (refused, unreachable, unknown host)."""


class HttpClient(Protocol):
    """POSTs pre-encoded bodies to one URL over kept-alive connections."""

    async def post(self, body: bytes) -> int:
        """Send ``body``, read the whole reply, and return its status code.

        Raises ``OSError`` on connection failure and ``TimeoutError`` past the timeout.
        """
        ...

    async def close(self) -> None:
        """Close every connection. The client is unusable afterwards."""
        ...


class AiohttpClient:
    """``HttpClient`` on aiohttp: one session, ``max_connections`` kept-alive connections."""

    def __init__(
        self,
        url: str,
        *,
        headers: Sequence[tuple[str, str]],
        max_connections: int,
        timeout_s: float,
    ) -> None:
        self._url = URL(url)
        self._headers = {"Content-Type": "application/json", **dict(headers)}
        connector = aiohttp.TCPConnector(
            limit=max_connections, keepalive_timeout=max(60.0, timeout_s), ttl_dns_cache=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def post(self, body: bytes) -> int:
        try:
            async with self._session.post(
                self._url, data=body, headers=self._headers, allow_redirects=False
            ) as response:
                await response.read()
                return response.status
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._session.close()


class RawHttpClient:
    """``HttpClient`` on ``asyncio.Protocol``: HTTP/1.1, keep-alive, Content-Length replies only.

    At most ``max_connections`` requests are in flight; each takes an idle connection or opens
    one. A connection is never reused after a timeout, an error or ``Connection: close``. The
    full request bytes (head and body) are built once per distinct body and cached.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Sequence[tuple[str, str]],
        max_connections: int,
        timeout_s: float,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise InvalidInput(
                f"the built-in client speaks plain http:// only, got {url!r}; "
                "use the aiohttp client for https",
                field="url",
            )
        self._host = parts.hostname
        self._port = parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        names = {name.lower() for name, _ in headers}
        lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}"]
        if "content-type" not in names:
            lines.append("Content-Type: application/json")
        lines += [f"{name}: {value}" for name, value in headers]
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._requests: dict[bytes, bytes] = {}
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    def _request_bytes(self, body: bytes) -> bytes:
        data = self._requests.get(body)
        if data is None:
            data = self._head + str(len(body)).encode() + b"\r\n\r\n" + body
            if len(self._requests) < _MAX_CACHED_REQUESTS:
                self._requests[body] = data
        return data

    async def post(self, body: bytes) -> int:
        data = self._request_bytes(body)
        async with self._slots, asyncio.timeout(self._timeout_s):
            connection = await self._acquire()
            try:
                status = await connection.exchange(data)
            except BaseException:
                connection.close()
                raise
            if connection.is_reusable:
                self._idle.append(connection)
            else:
                connection.close()
            return status

    async def _acquire(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.is_reusable:
                return connection
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(_Connection, self._host, self._port)
        except OSError as exc:
            raise ConnectFailed(str(exc)) from exc
        self._all.add(connection)
        connection.on_lost = self._all.discard
        return connection

    async def close(self) -> None:
        for connection in list(self._all):
            connection.close()
        self._idle.clear()


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    __slots__ = (
        "_body_left",
        "_buffer",
        "_is_open",
        "_must_close",
        "_status",
        "_transport",
        "_waiter",
        "on_lost",
    )

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self._status = -1  # -1 while the response head is incomplete
        self._body_left = 0
        self._is_open = False
        self._must_close = False
        self.on_lost: Callable[[_Connection], None] | None = None

    @property
    def is_reusable(self) -> bool:
        return self._is_open and not self._must_close and self._waiter is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence the cast.
        self._transport = cast(asyncio.Transport, transport)
        self._is_open = True

    def exchange(self, data: bytes) -> asyncio.Future[int]:
        """Write one request; the future resolves to the status once the body is read."""
        assert self._transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._status = -1
        self._transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self._fail(ConnectionError("server sent bytes with no request outstanding"))
            return
        buffer = self._buffer
        buffer += data
        while self._status < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD_BYTES:
                    self._fail(ConnectionError("response head over 64 KiB"))
                return
            try:
                self._parse_head(bytes(buffer[:end]))
            except ValueError:
                self._fail(ConnectionError(f"bad response head: {bytes(buffer[:80])!r}"))
                return
            except (InvalidInput, ConnectionError) as exc:
                self._fail(exc)
                return
            del buffer[: end + 4]
        if len(buffer) < self._body_left:
            return
        if len(buffer) > self._body_left:
            self._fail(ConnectionError("server sent more bytes than Content-Length"))
            return
        buffer.clear()
        waiter, self._waiter = self._waiter, None
        if not waiter.done():
            waiter.set_result(self._status)

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ConnectionError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        try:
            status = int(rest[:3])
        except ValueError:
            raise ConnectionError(f"bad status line: {lines[0][:80]!r}") from None
        if 100 <= status < 200:
            return  # interim response: the real one follows
        length: int | None = None
        self._must_close = version == "HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                raise InvalidInput(
                    f"server replied with Transfer-Encoding: {value.strip()}; the built-in "
                    "client reads Content-Length replies only; use the aiohttp client",
                    field="url",
                )
            elif name == "connection":
                token = value.strip().lower()
                self._must_close = token == "close" or (self._must_close and token != "keep-alive")
        if status in (204, 304):
            length = 0
        if length is None:
            raise InvalidInput(
                f"server replied {status} without Content-Length; the built-in client reads "
                "Content-Length replies only; use the aiohttp client",
                field="url",
            )
        self._status = status
        self._body_left = length

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self._is_open = False
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._is_open = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("server closed the connection"))
        if self.on_lost is not None:
            self.on_lost(self)


def open_client(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    max_connections: int,
    timeout_s: float,
    kind: ClientKind = "raw",
) -> HttpClient:
    """Return a ``kind`` client for ``url``; must be called inside a running event loop.

    Raises ``InvalidInput`` for an https URL with the raw client.
    """
    if kind == "aiohttp":
        return AiohttpClient(
            url, headers=headers, max_connections=max_connections, timeout_s=timeout_s
        )
    return RawHttpClient(url, headers=headers, max_connections=max_connections, timeout_s=timeout_s)
