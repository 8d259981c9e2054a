"""The model profile: how fast one replica of a model serves batches on one kind of hardware.

Stored as JSON::

    {"model": "all-MiniLM-L6-v2", "hardware": "CPU", "batch_sizes": [1, 8, 64],
     "latency_ms": [9.0, 30.0, 220.0], "throughput_per_s": [111, 266, 290],
     "memory_bytes": 400000000, "startup_s": 5.0, "estimated": false}

``latency_ms[i]`` is the time one batch of ``batch_sizes[i]`` takes. The simulator and the
planner read it; benchmarks write it. This module only reads and writes files it is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiscale.errors import ConfigError

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
            "model": self.model,
            "hardware": self.hardware,
            "batch_sizes": list(self.batch_sizes),
            "latency_ms": list(self.latency_ms),
            "throughput_per_s": list(self.throughput_per_s),
            "memory_bytes": self.memory_bytes,
            "startup_s": self.startup_s,
            "estimated": self.estimated,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelProfile:
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"unknown profile field {unknown[0]!r}", field=unknown[0])
        missing = [name for name in _FIELDS[:-1] if name not in data]
        if missing:
            raise ConfigError(f"profile field {missing[0]!r} is missing", field=missing[0])
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
