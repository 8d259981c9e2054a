"""The model profile: how fast one replica of a model serves batches on one kind of hardware.

Stored as JSON (format version 2)::

    {"version": 2, "model": "all-MiniLM-L6-v2", "hardware": "CPU", "batch_sizes": [1, 8, 64],
     "latency_ms": [9.0, 30.0, 220.0], "throughput_per_s": [111, 266, 290],
     "memory_bytes": 400000000, "startup_s": 5.0, "estimated": false,
     "server": {"label": "measured", "overhead_levels": [0.0, 0.5, 0.9, 0.99, 0.999, 1.0],
                "overhead_ms": [1.1, 2.0, 3.1, 6.0, 9.0, 12.0], "overhead_growth_per_rps": 0.002,
                "model_slowdown": 1.2, "model_slowdown_per_rps": 0.001, "points": [...]}}

``latency_ms[i]`` is the time one batch of ``batch_sizes[i]`` takes in a process of its own
(the model alone). ``server`` (``ServerTerms``, or ``null``) is what a request spends around
the model when it goes through a real ``aiscale serve`` on the same machine, measured by
``aiscale profile`` (``plan/calibration.py``): the per-request time outside the replica's batch
(client, HTTP, gateway, IPC) as quantiles, how it grows with the request rate, and how much
slower the model runs inside the server than alone, at light load and per request/s (the
gateway and the load competing for the same cores). The simulator applies these terms
(``ServerTerms`` docstring).

Older files (version 1: no ``version`` key, no ``server``) still load, with ``server = None``:
the documented default is the model alone, no server terms (what the simulator did before).
A version-2 file must carry ``server`` (``null`` allowed); a bad or missing server field is a
``ConfigError`` naming ``server.<field>``. The simulator and the planner read profiles;
``aiscale profile`` and benchmarks write them. This module only reads and writes files it is
given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiscale.errors import ConfigError

#: The profile file format written by ``save_profile``; 1 (no ``version`` key) still loads.
PROFILE_VERSION = 2

_FIELDS = (
    "model",
    "hardware",
    "batch_sizes",
    "latency_ms",
    "throughput_per_s",
    "memory_bytes",
    "startup_s",
    "estimated",
)
_SERVER_FIELDS = (
    "label",
    "overhead_levels",
    "overhead_ms",
    "overhead_growth_per_rps",
    "model_slowdown",
    "model_slowdown_per_rps",
    "points",
)


@dataclass(frozen=True, slots=True)
class CalibrationPoint:
    """One load level of the server calibration, kept in the profile for the record.

    ``rate_per_s`` is the served request rate, ``mean_batch`` the mean batch size,
    ``model_ms`` the server's mean model time per batch (``/metrics``), ``alone_ms`` the
    profile's latency at that batch size, ``queue_ms`` the server's mean queue time,
    ``overhead_ms`` the mean client-measured latency minus the server's queue and model time,
    ``p50_ms``/``p99_ms`` the client's latencies, ``offered_per_s`` the open-loop rate
    asked for (0 for the closed-loop level).
    """

    rate_per_s: float
    mean_batch: float
    model_ms: float
    alone_ms: float
    queue_ms: float
    overhead_ms: float
    p50_ms: float
    p99_ms: float
    offered_per_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ServerTerms:
    """What a request spends around the model in a real server; all measured together.

    The simulator applies them as follows (both modes). ``r`` is the arrival rate per ready
    replica over the last second (a replica's host also runs its share of the gateway and
    the load, as ``aiscale serve`` on one machine does):

    - a batch of ``b`` occupies a replica ``latency(b) * (model_slowdown +
      model_slowdown_per_rps * r)`` seconds, not ``latency(b)``;
    - each request's latency gets a per-request overhead that does not occupy the replica:
      a draw from the quantiles ``overhead_ms`` at ``overhead_levels`` (linear between
      them), times ``1 + overhead_growth_per_rps * r``.

    ``label`` says where the figures come from: ``measured`` here, or ``estimated`` when the
    profile was derived for other hardware (``catalog.derive_profile``).
    """

    overhead_levels: tuple[float, ...]
    overhead_ms: tuple[float, ...]
    overhead_growth_per_rps: float
    model_slowdown: float
    model_slowdown_per_rps: float
    label: str = "measured"
    points: tuple[CalibrationPoint, ...] = ()

    def __post_init__(self) -> None:
        levels, values = self.overhead_levels, self.overhead_ms
        if len(levels) < 2 or len(levels) != len(values):
            raise ConfigError(
                "overhead_levels and overhead_ms need the same length, at least 2",
                field="server.overhead_ms",
            )
        if levels[0] != 0.0 or levels[-1] != 1.0 or list(levels) != sorted(set(levels)):
            raise ConfigError(
                "overhead_levels must rise strictly from 0 to 1", field="server.overhead_levels"
            )
        if not all(math.isfinite(v) and v >= 0 for v in values) or list(values) != sorted(values):
            raise ConfigError(
                "overhead_ms must be finite, >= 0 and non-decreasing", field="server.overhead_ms"
            )
        for name in ("overhead_growth_per_rps", "model_slowdown_per_rps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be finite and >= 0", field=f"server.{name}")
        if not (math.isfinite(self.model_slowdown) and self.model_slowdown > 0):
            raise ConfigError("model_slowdown must be > 0", field="server.model_slowdown")
        if self.label not in ("measured", "estimated"):
            raise ConfigError("label must be 'measured' or 'estimated'", field="server.label")

    def slowdown(self, rate_per_replica_s: float) -> float:
        """How many times longer a batch takes in the server than alone, at this rate."""
        return self.model_slowdown + self.model_slowdown_per_rps * max(rate_per_replica_s, 0.0)

    def overhead_scale(self, rate_per_replica_s: float) -> float:
        return 1.0 + self.overhead_growth_per_rps * max(rate_per_replica_s, 0.0)

    def overhead_at(self, levels: Any) -> Any:
        """Per-request overhead in seconds at quantile ``levels`` (a float or numpy array),
        before the rate scaling."""
        return np.interp(levels, self.overhead_levels, self.overhead_ms) / 1000.0

    @property
    def mean_overhead_s(self) -> float:
        """The mean of the overhead distribution (trapezoids over the quantile function)."""
        total = 0.0
        pairs = zip(self.overhead_levels, self.overhead_ms, strict=True)
        previous = next(pairs)
        for level, value in pairs:
            total += (level - previous[0]) * (value + previous[1]) / 2
            previous = (level, value)
        return total / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "overhead_levels": list(self.overhead_levels),
            "overhead_ms": list(self.overhead_ms),
            "overhead_growth_per_rps": self.overhead_growth_per_rps,
            "model_slowdown": self.model_slowdown,
            "model_slowdown_per_rps": self.model_slowdown_per_rps,
            "points": [asdict(point) for point in self.points],
        }

    @classmethod
    def from_dict(cls, data: Any) -> ServerTerms:
        if not isinstance(data, Mapping):
            raise ConfigError("server must be an object or null", field="server")
        unknown = sorted(set(data) - set(_SERVER_FIELDS))
        if unknown:
            raise ConfigError(
                f"unknown profile field 'server.{unknown[0]}'", field=f"server.{unknown[0]}"
            )
        missing = [name for name in _SERVER_FIELDS[1:-1] if name not in data]
        if missing:
            raise ConfigError(
                f"profile field 'server.{missing[0]}' is missing", field=f"server.{missing[0]}"
            )
        current = "server"
        try:
            current = "server.points"
            points = tuple(
                CalibrationPoint(**{k: float(v) for k, v in point.items()})
                for point in data.get("points", ())
            )
            values: dict[str, Any] = {}
            for name in ("overhead_levels", "overhead_ms"):
                current = f"server.{name}"
                values[name] = tuple(float(v) for v in data[name])
            for name in ("overhead_growth_per_rps", "model_slowdown", "model_slowdown_per_rps"):
                current = f"server.{name}"
                values[name] = float(data[name])
            current = "server.label"
            label = str(data.get("label", "measured"))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"bad profile value in {current}: {exc}", field=current) from exc
        return cls(label=label, points=points, **values)


@dataclass(frozen=True, slots=True)
class ModelProfile:
    model: str
    hardware: str
    batch_sizes: tuple[int, ...]
    latency_ms: tuple[float, ...]
    throughput_per_s: tuple[float, ...]
    memory_bytes: int
    startup_s: float
    estimated: bool = False
    #: Terms measured through a real server; ``None``: the model alone (version-1 files).
    server: ServerTerms | None = None

    def __post_init__(self) -> None:
        n = len(self.batch_sizes)
        if n == 0:
            raise ConfigError("at least one batch size is needed", field="batch_sizes")
        if len(self.latency_ms) != n or len(self.throughput_per_s) != n:
            raise ConfigError(
                "batch_sizes, latency_ms and throughput_per_s must have the same length",
                field="latency_ms",
            )
        if any(b < 1 for b in self.batch_sizes) or list(self.batch_sizes) != sorted(
            set(self.batch_sizes)
        ):
            raise ConfigError(
                "batch sizes must be >= 1, unique and increasing", field="batch_sizes"
            )
        if any(lat <= 0 for lat in self.latency_ms):
            raise ConfigError("latencies must be > 0", field="latency_ms")
        if self.startup_s < 0 or self.memory_bytes < 0:
            raise ConfigError("startup_s and memory_bytes must be >= 0", field="startup_s")

    def latency_s(self, batch_size: int | float) -> float:
        """Seconds one batch of ``batch_size`` takes: linear between measured sizes, and
        extended along the last (first) segment beyond them; never below 1 µs."""
        sizes, lats = self.batch_sizes, self.latency_ms
        if len(sizes) == 1:
            return lats[0] * max(batch_size, 1) / sizes[0] / 1000.0
        if batch_size <= sizes[0]:
            i = 0
        elif batch_size >= sizes[-1]:
            i = len(sizes) - 2
        else:
            i = next(k for k in range(len(sizes) - 1) if sizes[k + 1] >= batch_size)
        b0, b1, l0, l1 = sizes[i], sizes[i + 1], lats[i], lats[i + 1]
        value = l0 + (l1 - l0) * (batch_size - b0) / (b1 - b0)
        return max(value, 1e-3) / 1000.0

    def max_throughput_per_s(self, max_batch_size: int) -> float:
        """Requests/s one replica serves with full batches of ``max_batch_size``."""
        return max_batch_size / self.latency_s(max_batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "model": self.model,
            "hardware": self.hardware,
            "batch_sizes": list(self.batch_sizes),
            "latency_ms": list(self.latency_ms),
            "throughput_per_s": list(self.throughput_per_s),
            "memory_bytes": self.memory_bytes,
            "startup_s": self.startup_s,
            "estimated": self.estimated,
            "server": None if self.server is None else self.server.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelProfile:
        """Read either format version (module docstring); ``ConfigError`` names the field."""
        version = data.get("version", 1)
        if version not in (1, PROFILE_VERSION) or isinstance(version, bool):
            raise ConfigError(
                f"unsupported profile version {version!r} (this aiscale reads 1 and "
                f"{PROFILE_VERSION})",
                field="version",
            )
        known = set(_FIELDS) | ({"version", "server"} if version == PROFILE_VERSION else set())
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown profile field {unknown[0]!r}", field=unknown[0])
        required = [*_FIELDS[:-1], *(["server"] if version == PROFILE_VERSION else [])]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"profile field {missing[0]!r} is missing", field=missing[0])
        raw_server = data.get("server")
        server = None if raw_server is None else ServerTerms.from_dict(raw_server)
        try:
            return cls(
                model=str(data["model"]),
                hardware=str(data["hardware"]),
                batch_sizes=tuple(int(b) for b in data["batch_sizes"]),
                latency_ms=tuple(float(v) for v in data["latency_ms"]),
                throughput_per_s=tuple(float(v) for v in data["throughput_per_s"]),
                memory_bytes=int(data["memory_bytes"]),
                startup_s=float(data["startup_s"]),
                estimated=bool(data.get("estimated", False)),
                server=server,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad profile value: {exc}", field="profile") from exc


def profile_from_latencies(
    model: str,
    hardware: str,
    latency_ms_by_batch: Mapping[int, float],
    *,
    memory_bytes: int = 0,
    startup_s: float = 0.0,
    estimated: bool = False,
    server: ServerTerms | None = None,
) -> ModelProfile:
    """A profile whose throughput column follows from the latencies (batch / latency)."""
    sizes = tuple(sorted(latency_ms_by_batch))
    lats = tuple(float(latency_ms_by_batch[b]) for b in sizes)
    return ModelProfile(
        model,
        hardware,
        sizes,
        lats,
        tuple(b * 1000.0 / lat for b, lat in zip(sizes, lats, strict=True)),
        memory_bytes,
        startup_s,
        estimated,
        server,
    )


def load_profile(path: str | Path) -> ModelProfile:
    """Read a profile JSON file; raises ``ConfigError`` on a malformed file."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"profile {path} is not JSON: {exc}", field="profile") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path} must be a JSON object", field="profile")
    return ModelProfile.from_dict(data)


def save_profile(profile: ModelProfile, path: str | Path) -> None:
    Path(path).write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
