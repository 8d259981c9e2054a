"""Values shared by the two simulator modes: config, result, the history view, the batch rule.

Internal to ``plan``; the public names are re-exported by ``plan.simulator``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, overload

import numpy as np

from aiscale.errors import ConfigError
from aiscale.plan.profile import ModelProfile, ServiceSpread
from aiscale.plan.traffic import ArrivalCounts, FloatArray, IntArray

Mode = Literal["exact", "aggregated"]


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """One deployment's serving settings and the simulation's own knobs.

    ``max_queue`` bounds the deployment queue as the live batcher does: a request arriving to a
    full queue is dropped (the gateway's 503) and counted. ``startup_s`` defaults to the
    profile's. ``prior_counts`` are arrivals before ``t = 0`` in bins of ``history_bin_s``
    (for example the previous week), shown to policies in ``arrival_history``. ``seed``
    draws the per-request server overhead (``profile.server``) in the exact mode.
    """

    profile: ModelProfile
    max_batch_size: int = 64
    max_batch_delay_s: float = 0.010
    max_queue: int = 2048
    initial_replicas: int = 1
    startup_s: float | None = None
    decision_interval_s: float = 10.0
    slo_p99_ms: float = 500.0
    price_per_replica_hour: float = 0.0
    mode: Mode = "exact"
    step_s: float = 1.0
    history_bin_s: float = 60.0
    drain_timeout_s: float = 600.0
    seed: int = 0
    prior_counts: ArrivalCounts | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError("must be >= 1", field="max_batch_size")
        if self.max_batch_delay_s < 0 or self.max_queue < 1 or self.initial_replicas < 0:
            raise ConfigError("bad batching or replica settings", field="max_queue")
        if self.decision_interval_s <= 0 or self.step_s <= 0 or self.history_bin_s <= 0:
            raise ConfigError("intervals must be > 0", field="decision_interval_s")
        if self.mode not in ("exact", "aggregated"):
            raise ConfigError(f"unknown mode {self.mode!r}", field="mode")
        if self.prior_counts is not None and not math.isclose(
            self.prior_counts.step_s, self.history_bin_s
        ):
            raise ConfigError("prior_counts must use history_bin_s bins", field="prior_counts")

    @property
    def replica_startup_s(self) -> float:
        return self.profile.startup_s if self.startup_s is None else self.startup_s

    def latency_table(self) -> list[float]:
        """Seconds per batch for sizes 0..max_batch_size (index = size; 0 is unused)."""
        return [0.0] + [self.profile.latency_s(b) for b in range(1, self.max_batch_size + 1)]


class SpreadDraws:
    """Per-batch ratios drawn from a profile's ``ServiceSpread``, seeded, a block at a time
    (one numpy call per block instead of one per batch: the exact mode's inner loop)."""

    _BLOCK = 65536

    def __init__(self, spread: ServiceSpread, seed: int) -> None:
        self._spread = spread
        # A stream of its own, so that the overhead draws keep their values.
        self._rng = np.random.default_rng([seed, 1])
        self._block: list[float] = []
        self._next = 0

    def draw(self) -> float:
        if self._next == len(self._block):
            levels = self._rng.random(self._BLOCK)
            self._block = [float(v) for v in self._spread.ratio_at(levels)]
            self._next = 0
        value = self._block[self._next]
        self._next += 1
        return value


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """What a simulated run gives. Latencies are of completed requests; ``slo_attainment`` is
    the share of all arrivals answered within ``slo_p99_ms`` (dropped ones count as misses)."""

    mode: Mode
    requests: int
    completed: int
    dropped: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    slo_p99_ms: float
    slo_attainment: float
    replica_hours: float
    cost_usd: float
    num_events: int
    duration_s: float
    #: ``(t_s, replicas paid for, replicas ready)`` at each decision.
    timeline: tuple[tuple[float, int, int], ...]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timeline"] = [list(point) for point in self.timeline]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


class CountsHistory(Sequence[tuple[float, float]]):
    """A read-only ``(bin_start_s, count)`` view over binned arrivals, cut at ``now``.

    The simulator bins every arrival up front; this view shows policies only the bins that
    are complete at the current time, so no future arrival leaks into a decision.
    """

    def __init__(self, counts: FloatArray | IntArray, bin_s: float, start_s: float) -> None:
        self._counts = counts
        self._bin_s = bin_s
        self._start_s = start_s
        self._length = 0

    def advance(self, now_s: float) -> None:
        complete = int(math.floor((now_s - self._start_s) / self._bin_s + 1e-9))
        self._length = max(0, min(complete, len(self._counts)))

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> tuple[float, float]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[float, float]]: ...
    def __getitem__(
        self, index: int | slice
    ) -> tuple[float, float] | Sequence[tuple[float, float]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        return (self._start_s + index * self._bin_s, float(self._counts[index]))

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return (self[i] for i in range(self._length))


def make_history(config: SimulationConfig, counts: ArrivalCounts) -> CountsHistory:
    """Bins of ``history_bin_s`` from ``counts`` (any step dividing the bin), with the
    configured prior bins in front."""
    ratio = config.history_bin_s / counts.step_s
    group = max(1, round(ratio))
    if not math.isclose(ratio, group):
        raise ConfigError("history_bin_s must be a multiple of the step", field="history_bin_s")
    num_bins = math.ceil(counts.counts.size / group)
    padded = np.zeros(num_bins * group, dtype=np.int64)
    padded[: counts.counts.size] = counts.counts
    binned = padded.reshape(num_bins, group).sum(axis=1)
    start = 0.0
    if config.prior_counts is not None:
        binned = np.concatenate([config.prior_counts.counts.astype(np.int64), binned])
        start = -config.prior_counts.duration_s
    return CountsHistory(binned, config.history_bin_s, start)


def summarize(
    config: SimulationConfig,
    *,
    latencies_s: FloatArray,
    requests: int,
    dropped: int,
    replica_seconds: float,
    num_events: int,
    duration_s: float,
    timeline: list[tuple[float, int, int]],
) -> SimulationResult:
    """Build the result from per-request latencies (the exact mode's path)."""
    completed = int(latencies_s.size)
    if completed:
        p50, p99 = (float(v) for v in np.percentile(latencies_s, [50, 99]))
        mean = float(latencies_s.mean())
        within = int(np.count_nonzero(latencies_s <= config.slo_p99_ms / 1000.0))
    else:
        p50 = p99 = mean = math.nan
        within = 0
    hours = replica_seconds / 3600.0
    return SimulationResult(
        mode=config.mode,
        requests=requests,
        completed=completed,
        dropped=dropped,
        p50_ms=p50 * 1000,
        p99_ms=p99 * 1000,
        mean_ms=mean * 1000,
        slo_p99_ms=config.slo_p99_ms,
        slo_attainment=within / requests if requests else 1.0,
        replica_hours=hours,
        cost_usd=hours * config.price_per_replica_hour,
        num_events=num_events,
        duration_s=duration_s,
        timeline=tuple(timeline),
    )
