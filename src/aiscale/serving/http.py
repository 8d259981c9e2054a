"""One HTTP request as the handlers see it, and the answer they give: the ASGI edge's types.

``app.py`` builds a ``Request`` per HTTP request and routes it; ``admin.py`` and the protocol
handlers read it and return a ``Response``. Kept apart from ``app.py`` so a handler module
can name these types without importing the app that imports it. Nothing here knows a route.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs

import orjson
from pydantic import BaseModel, ValidationError

from aiscale.errors import InvalidInput, PayloadTooLarge, RequestTimeout

__all__ = ["Receive", "Request", "Response", "Scope", "Send", "validated_body"]

_ModelT = TypeVar("_ModelT", bound=BaseModel)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: Status, body and headers.
Response = tuple[int, bytes, list[tuple[bytes, bytes]]]


class Request:
    """What handlers need of one HTTP request; the body is read on demand, with the size limit."""

    __slots__ = (
        "scope", "receive", "headers", "request_id", "client_request_id", "_max_body_bytes",
        "_body_timeout_s",
    )  # fmt: skip

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        max_body_bytes: int,
        body_timeout_s: float | None = None,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        # The server's own id (``serving/request_ids.py``: the app replaces it by an owned one
        # once the caller is known); the client's ``x-request-id`` only travels along.
        self.request_id = uuid.uuid4().hex
        incoming = self.headers.get(b"x-request-id")
        self.client_request_id = incoming.decode("latin-1")[:128] if incoming else None
        self._max_body_bytes = max_body_bytes
        self._body_timeout_s = body_timeout_s

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return value.decode("latin-1") if value is not None else None

    def query(self) -> dict[str, str]:
        """The query parameters; a repeated one keeps its last value, a blank one is ``""``."""
        raw = self.scope.get("query_string", b"").decode("latin-1")
        return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    async def body(self) -> bytes:
        """The whole body; ``PayloadTooLarge`` past the size limit, ``RequestTimeout`` when it
        has not all arrived within ``body_timeout_s`` of the first read (a slow client)."""
        if self._body_timeout_s is None:
            return await self._read_body()
        try:
            async with asyncio.timeout(self._body_timeout_s):
                return await self._read_body()
        except TimeoutError:
            raise RequestTimeout(
                f"the body did not arrive within {self._body_timeout_s:g} s", field="body"
            ) from None

    async def _read_body(self) -> bytes:
        limit = self._max_body_bytes
        declared = self.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(
                f"body of {int(declared)} bytes exceeds the {limit}-byte limit", field="body"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise InvalidInput("client disconnected before the body was sent", field="body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the {limit}-byte limit", field="body")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def validated_body(model: type[_ModelT], body: bytes) -> _ModelT:
    """A JSON body as ``model``; ``InvalidInput`` names the dotted path of the first bad
    field (``body`` when it is not JSON at all)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{path}: {first['msg']}", field=path) from None
