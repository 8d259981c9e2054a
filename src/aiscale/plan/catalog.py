"""The hardware catalog: memory, relative speed and hourly prices, each figure with its source.

``catalog.yaml`` (next to this module) holds the data; this module reads it and derives an
estimated ``ModelProfile`` for hardware that was not measured, by scaling a measured profile
by the ratio of relative speeds. It never fetches prices from the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from aiscale.errors import ConfigError, InvalidInput, NotFound
from aiscale.plan.profile import ModelProfile

PriceKind = Literal["on_demand", "spot", "reserved"]


@dataclass(frozen=True, slots=True)
class SourcedFigure:
    """A number and where it came from; ``is_uncertain`` marks estimates and moving prices."""

    value: float
    source: str
    date: str
    is_uncertain: bool


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    name: str
    instance: str
    memory_bytes: int
    relative_speed: SourcedFigure
    on_demand: SourcedFigure
    spot: SourcedFigure
    reserved: SourcedFigure

    def price_per_hour(self, kind: PriceKind = "on_demand") -> float:
        figure: SourcedFigure = getattr(self, kind)
        return figure.value


def _figure(data: Any, path: str) -> SourcedFigure:
    if not isinstance(data, Mapping) or "value" not in data or "source" not in data:
        raise ConfigError("a figure needs value and source", field=path)
    return SourcedFigure(
        value=float(data["value"]),
        source=str(data["source"]),
        date=str(data.get("date", "")),
        is_uncertain=bool(data.get("uncertain", data.get("estimated", False))),
    )


def load_catalog(path: str | Path | None = None) -> dict[str, HardwareSpec]:
    """The catalog by hardware name (the bundled ``catalog.yaml`` unless ``path`` is given)."""
    if path is None:
        text = resources.files("aiscale.plan").joinpath("catalog.yaml").read_text()
    else:
        text = Path(path).read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, Mapping) or not isinstance(data.get("hardware"), Mapping):
        raise ConfigError("catalog needs a 'hardware' mapping", field="hardware")
    catalog: dict[str, HardwareSpec] = {}
    for name, entry in data["hardware"].items():
        where = f"hardware.{name}"
        try:
            catalog[str(name)] = HardwareSpec(
                name=str(name),
                instance=str(entry["instance"]),
                memory_bytes=int(entry["memory_bytes"]),
                relative_speed=_figure(entry["relative_speed"], f"{where}.relative_speed"),
                on_demand=_figure(entry["on_demand"], f"{where}.on_demand"),
                spot=_figure(entry["spot"], f"{where}.spot"),
                reserved=_figure(entry["reserved"], f"{where}.reserved"),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"catalog entry {name} is incomplete: {exc}", field=where) from exc
    return catalog


def derive_profile(
    measured: ModelProfile, target: str, catalog: Mapping[str, HardwareSpec]
) -> ModelProfile:
    """An estimated profile on ``target`` hardware from one measured on other hardware.

    Latencies scale by the inverse ratio of relative speeds (throughput by the ratio); the
    start-up time and memory stay. Server terms (``ServerTerms``), when present, keep the
    measured per-request overhead (HTTP, gateway and IPC run on host CPUs either way) but
    drop the contention terms (slowdown 1, no growth with the rate): on other hardware the
    model does not share the gateway's cores, and a fleet that size runs gateways of its
    own; they are labelled ``estimated``. Raises ``NotFound`` for hardware not in the catalog and
    ``InvalidInput`` when the model does not fit the target's memory.
    """
    for name in (measured.hardware, target):
        if name not in catalog:
            raise NotFound(f"hardware {name!r} is not in the catalog", field="hardware")
    spec = catalog[target]
    if measured.memory_bytes > spec.memory_bytes:
        raise InvalidInput(
            f"model needs {measured.memory_bytes} bytes; {target} has {spec.memory_bytes}",
            field="memory_bytes",
        )
    if target == measured.hardware:
        return measured
    ratio = spec.relative_speed.value / catalog[measured.hardware].relative_speed.value
    server = measured.server
    if server is not None:
        server = replace(
            server,
            overhead_growth_per_rps=0.0,
            overhead_rates_per_s=(),
            overhead_mean_ms=(),
            model_slowdown=1.0,
            model_slowdown_per_rps=0.0,
            slowdown_rates_per_s=(),
            slowdown_values=(),
            label="estimated",
        )
    return replace(
        measured,
        hardware=target,
        latency_ms=tuple(lat / ratio for lat in measured.latency_ms),
        throughput_per_s=tuple(tp * ratio for tp in measured.throughput_per_s),
        estimated=True,
        server=server,
    )
