"""HTTP to engine replicas: one pooled client per gateway, with explicit timeouts.

Every engine (llama.cpp, vLLM, an OpenAI upstream) speaks OpenAI's API at its base URL; the
two local engines also count tokens (llama.cpp: ``/apply-template`` then ``/tokenize``; vLLM:
``/tokenize`` with the messages) and report ``/metrics``. Requests go out with the handle's
own headers (an upstream's key). A connection that fails before any answer raises
``ReplicaUnavailable`` naming the replica, so that the caller may try another one; nothing
here picks a replica.

One retry happens here: a kept-alive connection that the engine closed as it was being
reused (llama.cpp's HTTP server closes some connections right after a streamed answer; a
request sent at that moment gets "server disconnected without sending a response") is not
the engine failing, so the request goes again, once, on a fresh connection, rather than
being counted against the replica.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx
import orjson

from aiscale.errors import ReplicaUnavailable

__all__ = ["EngineClient", "EngineTarget", "path_of"]

#: Connecting to an engine: loopback or a nearby fleet, so a slow connect means it is gone.
CONNECT_TIMEOUT_S = 5.0
#: Token counts and metrics: small answers, never worth waiting long for.
PROBE_TIMEOUT_S = 5.0
#: Open connections kept to all engines together (streams hold one each while they run).
MAX_CONNECTIONS = 4096
#: Sends of one request over a kept-alive connection the engine had closed (see above).
MAX_STALE_CONNECTION_TRIES = 2


class EngineTarget(Protocol):
    """What the client needs of an engine replica (``aiscale.engines.process.EngineHandle``)."""

    @property
    def url(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def path_of(base_url: str, endpoint: str) -> str:
    """``endpoint`` (``/v1/...``) under an engine's base URL, which may end in ``/v1``."""
    base = base_url.rstrip("/")
    if base.endswith("/v1") and endpoint.startswith("/v1/"):
        return base + endpoint[3:]
    return base + endpoint


class EngineClient:
    """Sends requests to engine replicas over pooled keep-alive connections."""

    def __init__(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(PROBE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS, max_keepalive_connections=256
            ),
        )

    async def open(
        self, target: EngineTarget, endpoint: str, body: bytes, *, read_timeout_s: float
    ) -> httpx.Response:
        """POST ``body`` and return once the engine's status and headers are in; the body is
        read by the caller (``aiter_raw``), which must close the response. ``read_timeout_s``
        bounds each wait for more bytes (a hung engine ends the request, never hangs it).
        ``ReplicaUnavailable`` when the engine cannot be reached or drops the connection
        before answering."""
        request = self._client.build_request(
            "POST",
            path_of(target.url, endpoint),
            content=body,
            headers={"content-type": "application/json", **target.headers},
            timeout=httpx.Timeout(read_timeout_s, connect=CONNECT_TIMEOUT_S),
        )
        for attempt in range(1, MAX_STALE_CONNECTION_TRIES + 1):
            try:
                return await self._client.send(request, stream=True)
            except httpx.RemoteProtocolError as exc:
                # The pool dropped the closed connection: the next try opens a fresh one.
                if attempt < MAX_STALE_CONNECTION_TRIES and _is_stale_connection(exc):
                    continue
                raise ReplicaUnavailable(
                    f"engine {target.url} did not answer: {type(exc).__name__}: {exc}"
                ) from None
            except httpx.HTTPError as exc:
                raise ReplicaUnavailable(
                    f"engine {target.url} did not answer: {type(exc).__name__}: {exc}"
                ) from None
        raise AssertionError("unreachable: the last try returns or raises")

    async def count_prompt_tokens(
        self,
        target: EngineTarget,
        kind: str,
        *,
        engine_kind: str,
        model: str,
        messages: Sequence[Mapping[str, Any]] | None,
        prompt: str | None,
    ) -> int:
        """The prompt's exact token count by the engine's own tokenizer and chat template.
        ``ReplicaUnavailable`` when the engine cannot say."""
        try:
            if engine_kind == "vllm":
                body: dict[str, Any] = {"model": model}
                if kind == "chat":
                    body["messages"] = list(messages or ())
                else:
                    body["prompt"] = prompt
                answer = await self._post(target, "/tokenize", body)
                return int(answer["count"])
            if kind == "chat":
                rendered = await self._post(
                    target, "/apply-template", {"messages": list(messages or ())}
                )
                text, is_special_added = str(rendered["prompt"]), False
            else:
                text, is_special_added = str(prompt), True
            answer = await self._post(
                target,
                "/tokenize",
                {"content": text, "add_special": is_special_added, "parse_special": True},
            )
            return len(answer["tokens"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReplicaUnavailable(
                f"engine {target.url} gave no token count: {type(exc).__name__}: {exc}"
            ) from None

    async def scrape_metrics(self, target: EngineTarget) -> str:
        """The engine's Prometheus ``/metrics`` text; ``ReplicaUnavailable`` if it fails."""
        try:
            response = await self._client.get(
                path_of(target.url, "/metrics"), headers=dict(target.headers)
            )
        except httpx.HTTPError as exc:
            raise ReplicaUnavailable(f"engine {target.url} metrics: {exc!r}") from None
        if response.status_code != 200:
            raise ReplicaUnavailable(
                f"engine {target.url} metrics answered {response.status_code}"
            )
        return response.text

    async def post_json(
        self, target: EngineTarget, endpoint: str, body: bytes, *, timeout_s: float
    ) -> tuple[int, bytes]:
        """A whole non-streamed exchange: status and body bytes."""
        response = await self.open(target, endpoint, body, read_timeout_s=timeout_s)
        try:
            content = await response.aread()
        except httpx.HTTPError as exc:
            raise ReplicaUnavailable(
                f"engine {target.url} dropped the answer: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            await response.aclose()
        return response.status_code, content

    async def _post(self, target: EngineTarget, endpoint: str, body: Any) -> Any:
        try:
            response = await self._client.post(
                path_of(target.url, endpoint),
                content=orjson.dumps(body),
                headers={"content-type": "application/json", **target.headers},
            )
        except httpx.HTTPError as exc:
            raise ReplicaUnavailable(f"engine {target.url} {endpoint}: {exc!r}") from None
        if response.status_code != 200:
            raise ReplicaUnavailable(
                f"engine {target.url} {endpoint} answered {response.status_code}"
            )
        return orjson.loads(response.content)

    async def aclose(self) -> None:
        await self._client.aclose()


def _is_stale_connection(exc: httpx.RemoteProtocolError) -> bool:
    """Whether the engine closed the connection before answering anything (httpcore's
    words for a kept-alive connection closed under a request)."""
    return "without sending a response" in str(exc)
