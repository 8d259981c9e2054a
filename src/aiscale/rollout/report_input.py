"""Validation of the deployment stats JSON the A/B report reads (``report.build_report``).

The input is what ``GET /admin/deployments/{name}/stats`` returns (``serving.admin.counts_json``
per version). Anything that does not fit raises ``InvalidInput`` naming the dotted path of the
bad field (``versions.v2.num_errors``); nothing is coerced silently. A metric's ``mean`` may be
null or NaN (an empty histogram) and an optional ``std`` is accepted for future stats that carry
it. This module never does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiscale.contracts.histogram import Histogram
from aiscale.errors import InvalidInput

__all__ = ["ParsedMetric", "ParsedVersion", "parse_stats"]


@dataclass(frozen=True, slots=True)
class ParsedMetric:
    """A custom metric as the stats give it."""

    mean: float | None
    num_samples: int
    std: float | None


@dataclass(frozen=True, slots=True)
class ParsedVersion:
    """One version's counts, its latency histogram (seconds) and its metrics."""

    name: str
    num_requests: int
    num_errors: int
    latency_s: Histogram
    metrics: Mapping[str, ParsedMetric]


def parse_stats(stats: Mapping[str, Any]) -> tuple[str, dict[str, ParsedVersion]]:
    """Validate the stats JSON; return the deployment name and versions in name order."""
    if not isinstance(stats, Mapping):
        raise InvalidInput("stats must be a JSON object", field="stats")
    deployment = stats.get("deployment", "")
    if not isinstance(deployment, str):
        raise InvalidInput("deployment must be a string", field="deployment")
    versions = stats.get("versions")
    if not isinstance(versions, Mapping) or not versions:
        raise InvalidInput("stats need a non-empty 'versions' object", field="versions")
    parsed: dict[str, ParsedVersion] = {}
    for name in sorted(versions):
        if not isinstance(name, str) or not name:
            raise InvalidInput("version names must be non-empty strings", field="versions")
        parsed[name] = _parse_version(name, versions[name], f"versions.{name}")
    return deployment, parsed


def _parse_version(name: str, raw: Any, path: str) -> ParsedVersion:
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{path} must be an object", field=path)
    num_requests = _count(raw, "num_requests", path)
    num_errors = _count(raw, "num_errors", path)
    if num_errors > num_requests:
        raise InvalidInput(
            f"{path}.num_errors ({num_errors}) exceeds num_requests ({num_requests})",
            field=f"{path}.num_errors",
        )
    hist_raw = raw.get("latency_histogram")
    hist_path = f"{path}.latency_histogram"
    if not isinstance(hist_raw, Mapping):
        raise InvalidInput(f"{hist_path} must be an object", field=hist_path)
    bounds = _numbers(hist_raw.get("upper_bounds_s"), f"{hist_path}.upper_bounds_s")
    counts = _numbers(hist_raw.get("counts"), f"{hist_path}.counts")
    if not all(float(c).is_integer() for c in counts):
        raise InvalidInput("histogram counts must be integers", field=f"{hist_path}.counts")
    try:
        latency = Histogram(tuple(float(b) for b in bounds), tuple(int(c) for c in counts))
    except InvalidInput as error:
        suffix = "upper_bounds_s" if error.field == "upper_bounds" else "counts"
        raise InvalidInput(error.message, field=f"{hist_path}.{suffix}") from error
    metrics_raw = raw.get("metrics", {})
    if not isinstance(metrics_raw, Mapping):
        raise InvalidInput(f"{path}.metrics must be an object", field=f"{path}.metrics")
    metrics = {
        str(metric): _parse_metric(value, f"{path}.metrics.{metric}")
        for metric, value in metrics_raw.items()
    }
    return ParsedVersion(name, num_requests, num_errors, latency, metrics)


def _parse_metric(raw: Any, path: str) -> ParsedMetric:
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{path} must be an object", field=path)
    num_samples = _count(raw, "num_samples", path)
    mean = _optional_number(raw.get("mean"), f"{path}.mean")
    std = _optional_number(raw.get("std"), f"{path}.std")
    if std is not None and std < 0.0:
        raise InvalidInput(f"{path}.std must be >= 0", field=f"{path}.std")
    return ParsedMetric(mean, num_samples, std)


def _count(raw: Mapping[str, Any], key: str, path: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(
            f"{path}.{key} must be a non-negative integer, not {value!r}", field=f"{path}.{key}"
        )
    return value


def _numbers(value: Any, path: str) -> list[float]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise InvalidInput(f"{path} must be a list of finite numbers", field=path)
    return [float(v) for v in value]


def _optional_number(value: Any, path: str) -> float | None:
    """A finite number, or ``None`` for null / NaN (an empty histogram's mean)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{path} must be a number or null", field=path)
    if math.isnan(value):
        return None
    if not math.isfinite(value):
        raise InvalidInput(f"{path} must be finite", field=path)
    return float(value)
