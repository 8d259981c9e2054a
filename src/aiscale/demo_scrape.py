"""What ``aiscale demo`` reads from the gateway's ``/metrics``: batch sizes, queue, replicas.

``parse_reading`` turns Prometheus text into a ``GatewayReading`` (pure: no I/O, no clock);
``GatewayMonitor`` fetches ``/metrics`` with httpx, at most once per poll interval, and keeps
the latest reading. A failed scrape is not an error of the demo: the reading stays ``None``
and the view shows a dash. This module never sends inference traffic and never prints.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx

__all__ = ["GatewayMonitor", "GatewayReading", "mean_batch_size", "parse_reading"]

logger = logging.getLogger(__name__)

_BATCH_SUM = "aiscale_batcher_batch_size_sum"
_BATCH_COUNT = "aiscale_batcher_batch_size_count"
_QUEUE_DEPTH = "aiscale_batcher_queue_depth"
_REPLICAS = "aiscale_replicas"


@dataclass(frozen=True, slots=True)
class GatewayReading:
    """One scrape of one deployment's metrics (sums over its versions).

    ``num_batch_items`` and ``num_batches`` are cumulative counters (the batch-size histogram's
    sum and count); the other fields are gauges at scrape time.
    """

    num_batch_items: float
    num_batches: float
    queue_depth: float
    num_replicas_ready: float
    num_replicas_wanted: float


def _labels_of(line: str) -> dict[str, str]:
    """The labels of one sample line ``name{a="x",b="y"} value`` (our values hold no quotes)."""
    start, end = line.find("{"), line.rfind("}")
    if start < 0 or end < start:
        return {}
    labels: dict[str, str] = {}
    for part in line[start + 1 : end].split(","):
        key, _, value = part.partition("=")
        if key:
            labels[key.strip()] = value.strip().strip('"')
    return labels


def parse_reading(text: str, deployment: str) -> GatewayReading:
    """Sum the samples of ``deployment`` in Prometheus exposition ``text``; absent ones are 0."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("aiscale_"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name not in (_BATCH_SUM, _BATCH_COUNT, _QUEUE_DEPTH, _REPLICAS):
            continue
        labels = _labels_of(line)
        if labels.get("deployment") != deployment:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        key = f"{name}:{labels['state']}" if name == _REPLICAS and "state" in labels else name
        totals[key] = totals.get(key, 0.0) + value
    return GatewayReading(
        num_batch_items=totals.get(_BATCH_SUM, 0.0),
        num_batches=totals.get(_BATCH_COUNT, 0.0),
        queue_depth=totals.get(_QUEUE_DEPTH, 0.0),
        num_replicas_ready=totals.get(f"{_REPLICAS}:ready", 0.0),
        num_replicas_wanted=totals.get(f"{_REPLICAS}:wanted", 0.0),
    )


def mean_batch_size(before: GatewayReading | None, after: GatewayReading | None) -> float | None:
    """Mean items per batch between two readings; ``None`` without both or without batches."""
    if before is None or after is None:
        return None
    num_batches = after.num_batches - before.num_batches
    if num_batches <= 0:
        return None
    return (after.num_batch_items - before.num_batch_items) / num_batches


class GatewayMonitor:
    """Scrapes ``{url}/metrics`` for one deployment; owned by the demo's event loop.

    ``latest`` is the newest successful reading and ``previous`` the one before it, so that
    ``mean_batch_size(previous, latest)`` is the mean over the last poll interval.
    """

    def __init__(self, client: httpx.AsyncClient, url: str, deployment: str) -> None:
        self._client = client
        self._metrics_url = f"{url}/metrics"
        self._deployment = deployment
        self.latest: GatewayReading | None = None
        self.previous: GatewayReading | None = None

    async def read(self) -> GatewayReading | None:
        """Scrape now; return the reading, or ``None`` when the gateway did not answer."""
        try:
            response = await self._client.get(self._metrics_url)
        except httpx.HTTPError as exc:
            logger.debug("scraping %s failed: %s", self._metrics_url, exc)
            return None
        if response.status_code != 200:
            return None
        reading = parse_reading(response.text, self._deployment)
        self.previous, self.latest = self.latest, reading
        return reading

    async def poll_forever(self, interval_s: float) -> None:
        """Scrape every ``interval_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.read()
