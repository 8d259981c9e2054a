"""An existing OpenAI-compatible endpoint as replicas: another team's vLLM or SGLang fleet,
or a hosted API, fronted by aiscale with its own key.

``UpstreamBackend`` is a ``ReplicaBackend`` whose replicas are the configured URLs, one
each: ``spawn`` takes the first URL no live replica holds and returns once ``GET
/v1/models`` answers 200 with the key; ``wait_dead`` watches the same endpoint and reports
the replica lost after ``MAX_FAILED_CHECKS`` failed checks in a row (the pool then replaces
it, which probes the URL again); ``stop`` only lets the URL go, since aiscale does not run
the endpoint and has nothing there to drain. The key is read from the environment variable
the config names when a replica starts, sent only as ``Authorization: Bearer``, and never
logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from aiscale.engines.process import EngineHandle, batches_refused
from aiscale.engines.spec import EngineSpec
from aiscale.errors import ModelLoadError
from aiscale.replicas.backend import ReplicaInfo, ReplicaLease
from aiscale.replicas.ipc import BatchReply

__all__ = ["UpstreamBackend", "base_url_of"]

logger = logging.getLogger(__name__)

#: How often a live upstream replica is checked (seconds).
CHECK_INTERVAL_S = 5.0
#: Failed checks in a row after which the replica counts as lost.
MAX_FAILED_CHECKS = 3
#: One check (``GET /v1/models``).
CHECK_TIMEOUT = httpx.Timeout(5.0)


def base_url_of(url: str) -> str:
    """The base URL the gateway appends ``/v1/...`` to: without a trailing ``/`` or ``/v1``
    (``https://api.example.com/v1/`` → ``https://api.example.com``)."""
    base = url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


@dataclass(slots=True, eq=False)
class _Replica:
    url: str
    headers: dict[str, str] = field(repr=False)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


class UpstreamBackend:
    """Replicas that are existing OpenAI-compatible endpoints, one per configured URL."""

    def __init__(
        self, spec: EngineSpec, *, check_interval_s: float = CHECK_INTERVAL_S
    ) -> None:
        if spec.kind != "openai-upstream" or not spec.upstream_urls:
            raise ValueError("UpstreamBackend needs an openai-upstream spec with URLs")
        self.spec = spec
        self._urls = [base_url_of(url) for url in spec.upstream_urls]
        self._check_interval_s = check_interval_s
        self._live: dict[int, _Replica] = {}
        self._starting: set[str] = set()

    async def spawn(
        self, replica_id: int, *, num_replicas: int, lease: ReplicaLease | None
    ) -> tuple[EngineHandle, ReplicaInfo]:
        """Take a free URL and return once it answers ``GET /v1/models`` with 200.
        ``ModelLoadError`` (the key never in it) when every URL is taken, the key's
        variable is unset, or the endpoint refuses or does not answer in time."""
        held = {replica.url for replica in self._live.values()} | self._starting
        free = [url for url in self._urls if url not in held]
        if not free:
            raise ModelLoadError(
                f"all {len(self._urls)} upstream URLs already serve a replica; an "
                "openai-upstream deployment has at most one replica per URL"
            )
        url = free[0]
        headers = self._headers()
        started = time.monotonic()
        # Held while it is checked, so that replicas started together take different URLs.
        self._starting.add(url)
        try:
            failure = await _check(url, headers, timeout_s=self.spec.startup_timeout_s)
        finally:
            self._starting.discard(url)
        if failure is not None:
            raise ModelLoadError(f"upstream {url} is not ready: {_redacted(failure, headers)}")
        self._live[replica_id] = _Replica(url, headers)
        handle = EngineHandle(replica_id, url, 0, self.spec.model, dict(headers), None)
        node = urlsplit(url).netloc
        info = ReplicaInfo(0, node, self.spec.schema(), time.monotonic() - started)
        return handle, info

    def send(
        self, handle: EngineHandle, items: list[Any], trace_context: str | None = None
    ) -> asyncio.Future[BatchReply]:
        """Upstreams take HTTP requests at ``handle.url``, not batches."""
        raise batches_refused(handle)

    async def stop(self, handle: EngineHandle, timeout_s: float) -> None:
        """Let the URL go (another replica may take it); ``wait_dead`` returns."""
        replica = self._live.pop(handle.replica_id, None)
        if replica is not None:
            replica.stopped.set()

    async def wait_dead(self, handle: EngineHandle) -> str:
        """Check the endpoint every ``check_interval_s``; return when it has failed
        ``MAX_FAILED_CHECKS`` checks in a row, or when the replica was stopped."""
        replica = self._live.get(handle.replica_id)
        if replica is None:
            return f"upstream replica {handle.replica_id} ({handle.url}) was stopped"
        failures = 0
        while True:
            try:
                await asyncio.wait_for(replica.stopped.wait(), self._check_interval_s)
            except TimeoutError:
                pass
            if replica.stopped.is_set():
                return f"upstream replica {handle.replica_id} ({replica.url}) was stopped"
            failure = await _check(replica.url, replica.headers, timeout_s=0.0)
            failures = 0 if failure is None else failures + 1
            if failures:
                logger.warning(
                    "upstream %s failed check %d of %d: %s",
                    replica.url, failures, MAX_FAILED_CHECKS, _redacted(failure, replica.headers),
                )  # fmt: skip
            if failures >= MAX_FAILED_CHECKS:
                self._live.pop(handle.replica_id, None)
                return (
                    f"upstream replica {handle.replica_id} ({replica.url}) failed "
                    f"{failures} checks in a row: {_redacted(failure, replica.headers)}"
                )

    def _headers(self) -> dict[str, str]:
        name = self.spec.api_key_env
        if name is None:
            return {}
        key = os.environ.get(name)
        if not key:
            raise ModelLoadError(f"the upstream's API key variable {name} is not set")
        return {"Authorization": f"Bearer {key}"}


async def _check(url: str, headers: dict[str, str], *, timeout_s: float) -> str | None:
    """``None`` if ``GET {url}/v1/models`` answers 200, else what went wrong. Retries until
    ``timeout_s`` has passed (once when it is 0)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=CHECK_TIMEOUT, headers=headers) as client:
        while True:
            try:
                response = await client.get(f"{url}/v1/models")
                if response.status_code == 200:
                    return None
                failure = f"GET /v1/models answered {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline or failure.startswith("GET /v1/models answered 4"):
                return failure  # a 4xx (a wrong key) will not get better by waiting
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _redacted(text: str | None, headers: dict[str, str]) -> str:
    """``text`` with the key removed, should the endpoint have echoed it."""
    text = text or ""
    key = headers.get("Authorization", "").removeprefix("Bearer ")
    return text.replace(key, "[REDACTED]") if key else text
