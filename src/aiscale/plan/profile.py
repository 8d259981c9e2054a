"""The model profile: how fast one replica of a model serves batches on one kind of hardware.

Stored as JSON (format version 2)::

    {"version": 2, "model": "all-MiniLM-L6-v2", "hardware": "CPU", "batch_sizes": [1, 8, 64],
     "latency_ms": [9.0, 30.0, 220.0], "throughput_per_s": [111, 266, 290],
     "memory_bytes": 400000000, "startup_s": 5.0, "estimated": false,
     "server": {"label": "measured", "overhead_levels": [0.0, 0.5, 0.9, 0.99, 0.999, 1.0],
                "overhead_ms": [1.1, 2.0, 3.1, 6.0, 9.0, 12.0], "overhead_growth_per_rps": 0.002,
                "model_slowdown": 1.2, "model_slowdown_per_rps": 0.001, "points": [...],
                "overhead_rates_per_s": [0, 50, 110], "overhead_mean_ms": [1.8, 6.1, 5.9],
                "slowdown_rates_per_s": [0, 50, 320], "slowdown_values": [1.2, 1.2, 1.05],
                "speed_drift": 1.03, "cpu_steal_share": 0.0},
     "spread": {"levels": [0.0, 0.5, 1.0], "ratios": [0.75, 1.0, 1.7]},
     "repeats": {"count": 3, "figures": [{"name": "latency_ms at batch 1", "median": 9.0,
                 "low": 8.8, "high": 9.3, "checked": true}, ...]},
     "measured_on": "AMD EPYC, 2 cores"}

``latency_ms[i]`` is the time one batch of ``batch_sizes[i]`` takes in a process of its own
(the model alone): the median over batches drawn like live ones. ``spread`` (optional,
``ServiceSpread``: ``{"levels": [...], "ratios": [...]}``) is how one batch's time is spread
around that median by its composition (a text batch takes as long as its longest item), as
quantiles of the ratio; the machine's own jitter is left to the server terms, whose
overhead quantiles are measured around served requests; without it every batch of a size takes
the same time (files written before it existed).

``server`` (``ServerTerms``, or ``null``) is what a request spends around
the model when it goes through a real ``aiscale serve`` on the same machine, measured by
``aiscale profile`` (``plan/calibration.py``): the per-request time outside the replica's batch
(client, HTTP, gateway, IPC) as quantiles, how it grows with the request rate, and how much
slower the model runs inside the server than alone, at light load and per request/s (the
gateway and the load competing for the same cores). The simulator applies these terms
(``ServerTerms`` docstring). ``speed_drift`` and ``cpu_steal_share`` (optional) record how
steady the machine was while they were measured (``ServerTerms.unsteadiness``).

``repeats`` (optional, ``RepeatRecord`` in ``plan/repeats.py``) is how far the interleaved
repeats of one ``aiscale profile`` run agreed, per figure: each stored figure is the median of
its repeats, and the record keeps their range. Files without it (written before repeats)
load with ``repeats = None``: their steadiness is unknown.

Older files (version 1: no ``version`` key, no ``server``) still load, with ``server = None``:
the documented default is the model alone, no server terms (what the simulator did before).
A version-2 file must carry ``server`` (``null`` allowed); a bad or missing server field is a
``ConfigError`` naming ``server.<field>``. The simulator and the planner read profiles;
``aiscale profile`` and benchmarks write them. This module only reads and writes files it is
given.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiscale.errors import ConfigError
from aiscale.plan.repeats import RepeatRecord

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
#: The rate-0 mean overhead the measured curve is divided by is never taken below this, so
#: that a server whose closed-loop overhead rounds to 0 does not scale by infinity.
_MIN_BASE_OVERHEAD_MS = 0.1
#: Quantile levels of ``ServiceSpread`` as ``aiscale profile`` measures it.
SPREAD_LEVELS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)

#: A calibration whose model speed moved by more than this is flagged (``unsteadiness``).
STEADY_SPEED_DRIFT = 0.10
#: A calibration during which the hypervisor took more of the CPU than this is flagged.
STEADY_CPU_STEAL = 0.05

_SERVER_FIELDS = (
    "label",
    "overhead_levels",
    "overhead_ms",
    "overhead_growth_per_rps",
    "model_slowdown",
    "model_slowdown_per_rps",
    "points",
    "overhead_rates_per_s",
    "overhead_mean_ms",
    "speed_drift",
    "cpu_steal_share",
    "disk",
    "slowdown_rates_per_s",
    "slowdown_values",
)
#: What a server object must name; the label, the points and the overhead curve may be
#: absent (files written before them).
_REQUIRED_SERVER_FIELDS = (
    "overhead_levels",
    "overhead_ms",
    "overhead_growth_per_rps",
    "model_slowdown",
    "model_slowdown_per_rps",
)


@dataclass(frozen=True, slots=True)
class CalibrationPoint:
    """One load level of the server calibration, kept in the profile for the record.

    ``rate_per_s`` is the served request rate, ``mean_batch`` the mean batch size,
    ``model_ms`` the server's mean model time per batch (``/metrics``), ``alone_ms`` the
    profile's latency at that batch size, ``queue_ms`` the server's mean queue time,
    ``overhead_ms`` the mean client-measured latency minus the server's queue and model time,
    ``p50_ms``/``p99_ms`` the client's latencies, ``offered_per_s`` the open-loop rate
    asked for (0 for a closed-loop level), ``concurrency`` a closed loop's clients (1: one
    request at a time; 64: full batches; 0 for an open loop, and for the closed loops of
    files written before it, which ran at concurrency 1).
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
    #: The server's mean wait for the capture log's commit per request (0: capture off, or
    #: a file from before it was measured); left out of ``overhead_ms``.
    capture_ms: float = 0.0
    concurrency: float = 0.0

    @property
    def is_open_loop(self) -> bool:
        return self.offered_per_s > 0

    @property
    def is_one_at_a_time(self) -> bool:
        """A closed loop of one client: nothing overlaps, every batch holds one request."""
        return not self.is_open_loop and self.concurrency <= 1


@dataclass(frozen=True, slots=True)
class DiskTerms:
    """How long the capture log's group commit (one write and one fdatasync) takes on the
    disk the server writes to, measured by ``calibration.probe_disk``.

    ``sync_ms`` are the quantiles (at ``sync_levels``) of an ordinary commit. On a virtual
    machine's storage an fdatasync sometimes stalls for hundreds of milliseconds (seen on this
    project's machine: p50 0.5 ms; in some 15-20 s probes 0.3-0.7 stalls/s of 20-830 ms, in
    others none); a stall holds every commit that
    overlaps it, so under load it delays every response that waits meanwhile, which
    independent per-request draws cannot show. Stalls are a process in time: they start at
    ``stall_rate_per_s`` (Poisson) and last one of the durations ``stall_ms`` that were
    measured, each equally likely.
    """

    sync_levels: tuple[float, ...]
    sync_ms: tuple[float, ...]
    stall_rate_per_s: float = 0.0
    stall_ms: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_quantile_function(
            self.sync_levels, self.sync_ms, "disk.sync_levels", "disk.sync_ms"
        )
        if not (math.isfinite(self.stall_rate_per_s) and self.stall_rate_per_s >= 0):
            raise ConfigError(
                "stall_rate_per_s must be finite and >= 0", field="disk.stall_rate_per_s"
            )
        if not all(math.isfinite(v) and v > 0 for v in self.stall_ms):
            raise ConfigError("stall_ms must be finite and > 0", field="disk.stall_ms")
        if self.stall_rate_per_s > 0 and not self.stall_ms:
            raise ConfigError("a stall rate needs stall durations", field="disk.stall_ms")

    def sync_at(self, levels: Any) -> Any:
        """Seconds of an ordinary commit at quantile ``levels`` (float or numpy array)."""
        return np.interp(levels, self.sync_levels, self.sync_ms) / 1000.0

    @property
    def mean_wait_s(self) -> float:
        """A response's mean wait for the commit at light load: an ordinary commit, plus the
        rest of a stall it arrives in (rate x mean of the squared duration / 2)."""
        stall_s = np.asarray(self.stall_ms) / 1000.0
        residual = self.stall_rate_per_s * float(np.mean(stall_s**2)) / 2 if stall_s.size else 0.0
        return _quantile_mean(self.sync_levels, self.sync_ms) / 1000.0 + residual

    def wait_points(self, num_stall_points: int = 3) -> tuple[Any, Any]:
        """The commit wait at light load as a few weighted points ``(seconds, weights)``:
        the ordinary commit's mean with the chance of not landing in a stall, then
        ``num_stall_points`` quantile midpoints of the rest of a stall one lands in (a stall
        of length L is landed in in proportion to L, and the rest of it is uniform on
        [0, L]). Their mean is ``mean_wait_s``; the aggregated mode mixes them in."""
        ordinary_s = _quantile_mean(self.sync_levels, self.sync_ms) / 1000.0
        lengths = np.asarray(self.stall_ms, dtype=float) / 1000.0
        in_stall = min(self.stall_rate_per_s * float(lengths.sum() / max(lengths.size, 1)), 1.0)
        if lengths.size == 0 or in_stall <= 0:
            return np.array([ordinary_s]), np.array([1.0])
        weights = lengths / lengths.sum()
        grid = np.linspace(0.0, float(lengths.max()), 2001)
        # P(rest <= r | in a stall): each length's uniform law, weighted by its length.
        cdf = np.sum(weights[:, None] * np.minimum(grid[None, :] / lengths[:, None], 1.0), axis=0)
        levels = (np.arange(num_stall_points) + 0.5) / num_stall_points
        rests = np.interp(levels, cdf, grid)
        # Keep the mixture's mean exact: scale the points to the rest's mean, E[L^2] / 2E[L].
        mean_rest = float(np.sum(lengths**2) / (2 * lengths.sum()))
        rests = rests * (mean_rest / float(np.mean(rests))) if np.mean(rests) > 0 else rests
        values = np.concatenate([[ordinary_s], ordinary_s + rests])
        probs = np.concatenate(
            [[1.0 - in_stall], np.full(num_stall_points, in_stall / num_stall_points)]
        )
        return values, probs

    def to_dict(self) -> dict[str, Any]:
        return {
            "sync_levels": list(self.sync_levels),
            "sync_ms": list(self.sync_ms),
            "stall_rate_per_s": self.stall_rate_per_s,
            "stall_ms": list(self.stall_ms),
        }

    @classmethod
    def from_dict(cls, data: Any) -> DiskTerms:
        if not isinstance(data, Mapping):
            raise ConfigError("disk must be an object or null", field="server.disk")
        unknown = sorted(set(data) - {"sync_levels", "sync_ms", "stall_rate_per_s", "stall_ms"})
        if unknown:
            raise ConfigError(
                f"unknown profile field 'server.disk.{unknown[0]}'", field=f"disk.{unknown[0]}"
            )
        try:
            return cls(
                sync_levels=tuple(float(v) for v in data["sync_levels"]),
                sync_ms=tuple(float(v) for v in data["sync_ms"]),
                stall_rate_per_s=float(data.get("stall_rate_per_s", 0.0)),
                stall_ms=tuple(float(v) for v in data.get("stall_ms", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad profile value in server.disk: {exc}", field="disk") from exc


@dataclass(frozen=True, slots=True)
class ServerTerms:
    """What a request spends around the model in a real server; all measured together.

    The simulator applies them as follows (both modes). ``r`` is the arrival rate per ready
    replica over the last few seconds (``_exact.CONTENTION_WINDOW_S``; in the aggregated mode
    its smoothed step rate). A replica's host also runs its share of the gateway and the
    load, as ``aiscale serve`` on one machine does:

    - a batch of ``b`` occupies a replica ``latency(b) * slowdown(r)`` seconds, not
      ``latency(b)``: the measured in-server slowdown (model time in the server over the
      model alone at the same batch size), linear between the calibration's levels
      ``slowdown_rates_per_s`` (first 0: concurrency 1; last: the closed loop at full
      batches, so that the served capacity is the one measured) with values
      ``slowdown_values``, flat past the last; files without that curve use the line
      ``model_slowdown + model_slowdown_per_rps * r``;
    - each request's latency gets a per-request overhead that does not occupy the replica:
      a draw from the quantiles ``overhead_ms`` at ``overhead_levels`` (linear between
      them), times ``overhead_scale(r)``: the measured mean overhead at ``r`` over the one
      at rate 0, linear between the calibration's steady levels ``overhead_rates_per_s``
      (first 0: the closed-loop level) with means ``overhead_mean_ms``, flat past the last
      one. Files without that curve (written before it) scale by
      ``1 + overhead_growth_per_rps * r``, the line the curve replaced: the mean overhead
      jumps as soon as requests overlap, which a line through the closed-loop level cannot
      follow (at 95 req/s it put the mean at 11 ms against 7.5 ms measured).

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
    overhead_rates_per_s: tuple[float, ...] = ()
    overhead_mean_ms: tuple[float, ...] = ()
    #: The in-server model time per batch at concurrency 1 at the end of the calibration over
    #: the one at its start (1.0: the machine kept its speed); None in older files.
    speed_drift: float | None = None
    #: The share of CPU time the hypervisor gave to other guests during the calibration
    #: (``/proc/stat``; 0 where there is none); None in older files.
    cpu_steal_share: float | None = None
    #: The capture log's commit on this disk (None: not measured; then the commit's time is
    #: part of the overhead, as in files written before).
    disk: DiskTerms | None = None
    #: The measured slowdown curve (class docstring); empty in files written before it.
    slowdown_rates_per_s: tuple[float, ...] = ()
    slowdown_values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("speed_drift", "cpu_steal_share"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be finite and >= 0", field=f"server.{name}")
        rates, values = self.slowdown_rates_per_s, self.slowdown_values
        if len(rates) != len(values) or (rates and rates[0] != 0.0):
            raise ConfigError(
                "slowdown_rates_per_s and slowdown_values need the same length, the first rate 0",
                field="server.slowdown_rates_per_s",
            )
        if list(rates) != sorted(set(rates)) or not all(math.isfinite(v) and v > 0 for v in values):
            raise ConfigError(
                "slowdown_rates_per_s must rise strictly; slowdown_values must be > 0",
                field="server.slowdown_values",
            )
        rates, means = self.overhead_rates_per_s, self.overhead_mean_ms
        if len(rates) != len(means) or (rates and rates[0] != 0.0):
            raise ConfigError(
                "overhead_rates_per_s and overhead_mean_ms need the same length, the first rate 0",
                field="server.overhead_rates_per_s",
            )
        if list(rates) != sorted(set(rates)) or not all(math.isfinite(v) and v >= 0 for v in means):
            raise ConfigError(
                "overhead_rates_per_s must rise strictly; overhead_mean_ms must be >= 0",
                field="server.overhead_mean_ms",
            )
        _check_quantile_function(
            self.overhead_levels, self.overhead_ms, "server.overhead_levels", "server.overhead_ms"
        )
        for name in ("overhead_growth_per_rps", "model_slowdown_per_rps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be finite and >= 0", field=f"server.{name}")
        if not (math.isfinite(self.model_slowdown) and self.model_slowdown > 0):
            raise ConfigError("model_slowdown must be > 0", field="server.model_slowdown")
        if self.label not in ("measured", "estimated"):
            raise ConfigError("label must be 'measured' or 'estimated'", field="server.label")

    def unsteadiness(self) -> str | None:
        """Why these terms may not describe this machine at another time, or None: the
        machine's speed moved by more than ``STEADY_SPEED_DRIFT`` during the calibration,
        or the hypervisor took more than ``STEADY_CPU_STEAL`` of the CPU. On a shared
        virtual machine both happen within minutes, and the simulator's answers with such a
        profile differ from one measured a little later by more than the drift itself."""
        reasons = []
        if self.speed_drift is not None and abs(self.speed_drift - 1.0) > STEADY_SPEED_DRIFT:
            reasons.append(
                f"the model ran {abs(self.speed_drift - 1.0):.0%} "
                f"{'slower' if self.speed_drift > 1.0 else 'faster'} at the end of the "
                "calibration than at its start"
            )
        if self.cpu_steal_share is not None and self.cpu_steal_share > STEADY_CPU_STEAL:
            reasons.append(
                f"the hypervisor took {self.cpu_steal_share:.0%} of the CPU while it ran"
            )
        return "; ".join(reasons) if reasons else None

    def slowdown(self, rate_per_replica_s: Any) -> Any:
        """How many times longer a batch takes in the server than alone, at this rate (a
        float, or a numpy array of rates): the measured curve, else the line."""
        if isinstance(rate_per_replica_s, float | int):
            rate = max(float(rate_per_replica_s), 0.0)
            if not self.slowdown_rates_per_s:
                return self.model_slowdown + self.model_slowdown_per_rps * rate
            return _interp_one(rate, self.slowdown_rates_per_s, self.slowdown_values)
        rates = np.maximum(rate_per_replica_s, 0.0)
        if not self.slowdown_rates_per_s:
            return self.model_slowdown + self.model_slowdown_per_rps * rates
        return np.interp(rates, self.slowdown_rates_per_s, self.slowdown_values)

    def overhead_scale(self, rate_per_replica_s: Any) -> Any:
        """How many times the rate-0 overhead a request gets at this rate (a float or a
        numpy array of rates)."""
        if isinstance(rate_per_replica_s, float | int):
            return self._overhead_scale_at(float(rate_per_replica_s))
        rate = np.maximum(rate_per_replica_s, 0.0)
        if not self.overhead_rates_per_s:
            scale = 1.0 + self.overhead_growth_per_rps * rate
        else:
            base = max(self.overhead_mean_ms[0], _MIN_BASE_OVERHEAD_MS)
            means = np.maximum(self.overhead_mean_ms, _MIN_BASE_OVERHEAD_MS)
            scale = np.interp(rate, self.overhead_rates_per_s, means) / base
        return float(scale) if np.ndim(scale) == 0 else scale

    def _overhead_scale_at(self, rate_per_replica_s: float) -> float:
        """``overhead_scale`` of one rate in plain Python: the exact simulator asks once per
        batch, where numpy's per-call cost would be most of the work."""
        rate = max(rate_per_replica_s, 0.0)
        if not self.overhead_rates_per_s:
            return 1.0 + self.overhead_growth_per_rps * rate
        rates = self.overhead_rates_per_s
        means = [max(mean, _MIN_BASE_OVERHEAD_MS) for mean in self.overhead_mean_ms]
        base = max(self.overhead_mean_ms[0], _MIN_BASE_OVERHEAD_MS)
        return _interp_one(rate, rates, means) / base

    def overhead_at(self, levels: Any) -> Any:
        """Per-request overhead in seconds at quantile ``levels`` (a float or numpy array),
        before the rate scaling."""
        return np.interp(levels, self.overhead_levels, self.overhead_ms) / 1000.0

    @property
    def mean_overhead_s(self) -> float:
        """The mean of the overhead distribution (trapezoids over the quantile function)."""
        return _quantile_mean(self.overhead_levels, self.overhead_ms) / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "overhead_levels": list(self.overhead_levels),
            "overhead_ms": list(self.overhead_ms),
            "overhead_growth_per_rps": self.overhead_growth_per_rps,
            "model_slowdown": self.model_slowdown,
            "model_slowdown_per_rps": self.model_slowdown_per_rps,
            "points": [asdict(point) for point in self.points],
            "overhead_rates_per_s": list(self.overhead_rates_per_s),
            "overhead_mean_ms": list(self.overhead_mean_ms),
            "speed_drift": self.speed_drift,
            "cpu_steal_share": self.cpu_steal_share,
            "disk": None if self.disk is None else self.disk.to_dict(),
            "slowdown_rates_per_s": list(self.slowdown_rates_per_s),
            "slowdown_values": list(self.slowdown_values),
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
        missing = [name for name in _REQUIRED_SERVER_FIELDS if name not in data]
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
            for name in (
                "overhead_rates_per_s",
                "overhead_mean_ms",
                "slowdown_rates_per_s",
                "slowdown_values",
            ):
                current = f"server.{name}"
                values[name] = tuple(float(v) for v in data.get(name, ()))
            for name in ("overhead_growth_per_rps", "model_slowdown", "model_slowdown_per_rps"):
                current = f"server.{name}"
                values[name] = float(data[name])
            for name in ("speed_drift", "cpu_steal_share"):
                current = f"server.{name}"
                found = data.get(name)
                values[name] = None if found is None else float(found)
            current = "server.label"
            label = str(data.get("label", "measured"))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"bad profile value in {current}: {exc}", field=current) from exc
        raw_disk = data.get("disk")
        disk = None if raw_disk is None else DiskTerms.from_dict(raw_disk)
        return cls(label=label, points=points, disk=disk, **values)


@dataclass(frozen=True, slots=True)
class ServiceSpread:
    """How one batch's time varies around the profile's latency: the quantile function of
    the ratio (batch time over the median at its size), pooled over the sizes measured.

    The exact simulator draws one ratio per batch (seeded); the aggregated mode uses the
    mean ratio, so both keep the mean service time, i.e. the capacity, the draws imply."""

    levels: tuple[float, ...]
    ratios: tuple[float, ...]

    def __post_init__(self) -> None:
        _check_quantile_function(
            self.levels, self.ratios, "spread.levels", "spread.ratios", is_positive=True
        )

    def ratio_at(self, levels: Any) -> Any:
        """The ratio at quantile ``levels`` (a float or numpy array), linear between them."""
        return np.interp(levels, self.levels, self.ratios)

    @property
    def mean_ratio(self) -> float:
        """The mean of the ratio (trapezoids over the quantile function)."""
        return _quantile_mean(self.levels, self.ratios)

    def to_dict(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "ratios": list(self.ratios)}

    @classmethod
    def from_dict(cls, data: Any) -> ServiceSpread:
        if not isinstance(data, Mapping) or set(data) != {"levels", "ratios"}:
            raise ConfigError(
                "spread must be null or an object with 'levels' and 'ratios'", field="spread"
            )
        try:
            levels = tuple(float(v) for v in data["levels"])
            ratios = tuple(float(v) for v in data["ratios"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad profile value in spread: {exc}", field="spread") from exc
        return cls(levels, ratios)


def _check_quantile_function(
    levels: Any, values: Any, levels_field: str, values_field: str, *, is_positive: bool = False
) -> None:
    """A quantile function as the profile stores one: levels rising strictly from 0 to 1,
    values finite, non-decreasing and >= 0 (> 0 with ``is_positive``); ``ConfigError``
    naming the field otherwise."""
    if len(levels) < 2 or len(levels) != len(values):
        raise ConfigError(
            f"{levels_field} and {values_field} need the same length, at least 2",
            field=values_field,
        )
    if levels[0] != 0.0 or levels[-1] != 1.0 or list(levels) != sorted(set(levels)):
        raise ConfigError(f"{levels_field} must rise strictly from 0 to 1", field=levels_field)
    is_above_floor = all(v > 0 if is_positive else v >= 0 for v in values)
    if not (all(math.isfinite(v) for v in values) and is_above_floor) or list(values) != sorted(
        values
    ):
        bound = "> 0" if is_positive else ">= 0"
        raise ConfigError(
            f"{values_field} must be finite, {bound} and non-decreasing", field=values_field
        )


def _interp_one(x: float, xs: tuple[float, ...], ys: Sequence[float]) -> float:
    """``np.interp`` of one value in plain Python (flat outside ``xs``): the exact simulator
    asks once per batch, where numpy's per-call cost would be most of the work."""
    if x <= xs[0]:
        return float(ys[0])
    if x >= xs[-1]:
        return float(ys[-1])
    right = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[right - 1], xs[right], ys[right - 1], ys[right]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def _quantile_mean(levels: Any, values: Any) -> float:
    """The mean of a distribution given by its quantile function at ``levels`` (linear)."""
    total = 0.0
    for k in range(1, len(levels)):
        total += (levels[k] - levels[k - 1]) * (values[k] + values[k - 1]) / 2
    return total


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
    #: How one batch's time varies around ``latency_ms``; ``None``: it does not.
    spread: ServiceSpread | None = None
    #: The machine it was measured on (CPU model and cores): two machines of one catalog
    #: kind can differ (an Intel Xeon and an AMD EPYC with 2 cores each were about 1.3x
    #: apart at batch 64); ``None`` where not recorded.
    measured_on: str | None = None
    #: How far the interleaved repeats agreed per figure; ``None``: not recorded (older
    #: files, or profiles not measured here), steadiness unknown.
    repeats: RepeatRecord | None = None

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

    def mean_latency_s(self, batch_size: int | float) -> float:
        """The mean time of a batch of ``batch_size``: ``latency_s`` (a median) times the
        spread's mean ratio; what capacity follows from."""
        ratio = 1.0 if self.spread is None else self.spread.mean_ratio
        return self.latency_s(batch_size) * ratio

    def max_throughput_per_s(self, max_batch_size: int) -> float:
        """Requests/s one replica serves with full batches of ``max_batch_size``."""
        return max_batch_size / self.mean_latency_s(max_batch_size)

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
            "spread": None if self.spread is None else self.spread.to_dict(),
            "measured_on": self.measured_on,
            "repeats": None if self.repeats is None else self.repeats.to_dict(),
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
        known = set(_FIELDS) | (
            {"version", "server", "spread", "measured_on", "repeats"}
            if version == PROFILE_VERSION
            else set()
        )
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown profile field {unknown[0]!r}", field=unknown[0])
        required = [*_FIELDS[:-1], *(["server"] if version == PROFILE_VERSION else [])]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"profile field {missing[0]!r} is missing", field=missing[0])
        raw_server = data.get("server")
        server = None if raw_server is None else ServerTerms.from_dict(raw_server)
        raw_spread = data.get("spread")
        spread = None if raw_spread is None else ServiceSpread.from_dict(raw_spread)
        raw_repeats = data.get("repeats")
        repeats = None if raw_repeats is None else RepeatRecord.from_dict(raw_repeats)
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
                spread=spread,
                measured_on=None if data.get("measured_on") is None else str(data["measured_on"]),
                repeats=repeats,
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
    spread: ServiceSpread | None = None,
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
        spread,
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
