"""Metric history read from a real Prometheus through its HTTP API (the scale-out store).

What it does: when ``monitor.prometheus_url`` is set, a Prometheus server scrapes every
gateway's ``/metrics`` and keeps the history; ``PrometheusReader`` reads it back with
``/api/v1/query_range`` (and ``/api/v1/query``). ``history`` asks for the same series the
embedded store keeps (``rps``, ``p50_ms``, ``p99_ms``, ``error_rate``, ``batch_size``,
``replicas``, ``queue_depth``) of one deployment, or of one version, written in PromQL over
the gateway's metric names (``promql_for``), so the admin API answers the same question from
either store. Summed over every gateway Prometheus scrapes, which is what a fleet of
stateless gateways needs.

What it must never do: block the event loop (async httpx, one request per call, under an
explicit timeout), retry on its own, or pass a value it was not given: NaN (0/0, e.g. no
traffic) is dropped, and a Prometheus error is raised as ``PrometheusError`` with its message.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from aiscale.errors import InvalidInput, UpstreamUnavailable
from aiscale.monitor.config import SERIES

__all__ = ["PrometheusError", "PrometheusReader", "promql_for"]

Points = list[tuple[float, float]]


class PrometheusError(UpstreamUnavailable):
    """Prometheus could not be reached, or answered with an error."""


def _selector(deployment: str, version: str, extra: str = "") -> str:
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    parts = [f"deployment={quoted(deployment)}"]
    if version != "*":
        parts.append(f"version={quoted(version)}")
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def promql_for(series: str, deployment: str, version: str = "*",
               rate_window_s: float = 60.0) -> str:
    """The PromQL of one stored series; ``version="*"`` adds up every version.

    Raises ``InvalidInput`` for an unknown series.
    """
    sel = _selector(deployment, version)
    w = f"[{max(1, math.ceil(rate_window_s))}s]"
    requests = f"sum(rate(aiscale_gateway_requests_total{sel}{w}))"
    if series == "rps":
        return requests
    if series == "error_rate":
        bad = _selector(deployment, version, 'status=~"5.."')
        return f"(sum(rate(aiscale_gateway_requests_total{bad}{w})) or vector(0)) / {requests}"
    if series in ("p50_ms", "p99_ms"):
        q = 0.5 if series == "p50_ms" else 0.99
        return (f"1000 * histogram_quantile({q}, sum by (le) "
                f"(rate(aiscale_gateway_request_seconds_bucket{sel}{w})))")
    if series == "batch_size":
        return (f"sum(rate(aiscale_batcher_batch_size_sum{sel}{w})) / "
                f"sum(rate(aiscale_batcher_batch_size_count{sel}{w}))")
    if series == "replicas":
        ready = _selector(deployment, version, 'state="ready"')
        return f"sum(aiscale_replicas{ready})"
    if series == "queue_depth":
        return f"sum(aiscale_batcher_queue_depth{sel})"
    raise InvalidInput(f"unknown series {series!r}; known: {', '.join(SERIES)}", field="series")


class PrometheusReader:
    """Reads one Prometheus server. ``client``: share one (the caller closes it)."""

    def __init__(self, url: str, *, rate_window_s: float = 60.0,
                 timeout: httpx.Timeout | None = None,
                 client: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self.rate_window_s = rate_window_s
        self.timeout = timeout if timeout is not None else httpx.Timeout(10.0)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=self.timeout)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        try:
            response = await self._client.get(f"{self.url}{path}", params=params,
                                               timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise PrometheusError(
                f"cannot reach Prometheus at {self.url} (monitor.prometheus_url): "
                f"{type(exc).__name__}: {exc or 'no answer'}; is it running and listening "
                "there?", field="prometheus_url") from exc
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(f"prometheus at {self.url} answered {response.status_code} "
                                  "without JSON", field="prometheus_url") from None
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"prometheus: {body.get('errorType', response.status_code)}: "
                                  f"{body.get('error', '')}", field="query")
        return body["data"]

    async def query_range(self, promql: str, start_s: float, end_s: float,
                          step_s: float) -> list[tuple[dict[str, str], Points]]:
        """Each matrix series: its labels and finite ``(t, value)`` points."""
        if step_s <= 0 or end_s < start_s:
            raise InvalidInput("need step_s > 0 and end_s >= start_s", field="step_s")
        data = await self._get("/api/v1/query_range", {
            "query": promql, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}",
            "step": f"{step_s:g}"})
        return [(dict(r["metric"]), _points(r["values"])) for r in data["result"]]

    async def query(self, promql: str, t_s: float | None = None) -> list[tuple[dict[str, str],
                                                                                float]]:
        """An instant vector: each series' labels and value (non-finite ones dropped)."""
        params = {"query": promql}
        if t_s is not None:
            params["time"] = f"{t_s:.3f}"
        data = await self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            value = float(data["result"][1])
            return [({}, value)] if math.isfinite(value) else []
        out = []
        for r in data["result"]:
            value = float(r["value"][1])
            if math.isfinite(value):
                out.append((dict(r["metric"]), value))
        return out

    async def history(self, series: str, deployment: str, version: str, start_s: float,
                      end_s: float, step_s: float) -> Points:
        """One stored series of a deployment (or version) from Prometheus."""
        promql = promql_for(series, deployment, version, max(self.rate_window_s, step_s))
        result = await self.query_range(promql, start_s, end_s, step_s)
        return result[0][1] if result else []


def _points(values: list[list[Any]]) -> Points:
    out = []
    for t, v in values:
        value = float(v)
        if math.isfinite(value):
            out.append((float(t), value))
    return out
