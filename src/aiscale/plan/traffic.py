"""Arrival processes for the simulator and planner: real traces and a synthetic user model.

Traces: the ``TIMESTAMP`` column of a CSV (the Azure LLM inference traces), shifted to start at
zero and stretched by ``time_scale``. ``rate_scale`` changes the volume one of two ways
(``scale_trace``): by default (``poisson``) the trace's rate is estimated per minute of its own
time and a non-homogeneous Poisson process is drawn over it (``poisson_counts``): many
independent users following the trace's shape, as the autoscaling benchmark's day model
(``day_counts``) has always done; ``copy`` copies each request (thins below 1), which turns
a trace scaled x2,000 into bursts of 2,000 requests at each original instant and is kept only
as an explicit choice. Synthetic: N users making R requests a day each, shaped by a daily
cycle, a weekly cycle and random bursts, drawn as a non-homogeneous Poisson process with
per-step counts. Everything random takes a seed.

Reads only the files it is given; never touches the network or the global random state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pacsv

from aiscale.errors import ConfigError, InvalidInput

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
#: Bin of a trace's *own* time over which its rate is estimated before it is scaled: a
#: minute holds enough requests that the estimate is the trace's pattern, not its counting
#: noise.
RATE_BIN_S = 60.0
#: How ``scale_trace`` changes a trace's volume (module docstring).
SCALE_MODES: tuple[str, ...] = ("poisson", "copy")


@dataclass(frozen=True, slots=True, eq=False)
class Arrivals:
    """Sorted arrival times in seconds from 0, within ``[0, duration_s)``."""

    times_s: FloatArray
    duration_s: float

    @property
    def num_requests(self) -> int:
        return int(self.times_s.size)

    def counts(self, step_s: float) -> ArrivalCounts:
        """Arrivals per step of ``step_s`` seconds."""
        num_steps = max(1, math.ceil(self.duration_s / step_s - 1e-9))
        index = np.minimum((self.times_s // step_s).astype(np.int64), num_steps - 1)
        return ArrivalCounts(np.bincount(index, minlength=num_steps).astype(np.int64), step_s)


@dataclass(frozen=True, slots=True, eq=False)
class ArrivalCounts:
    """``counts[i]`` arrivals in ``[i * step_s, (i + 1) * step_s)``."""

    counts: IntArray
    step_s: float

    @property
    def duration_s(self) -> float:
        return float(self.counts.size * self.step_s)

    @property
    def num_requests(self) -> int:
        return int(self.counts.sum())

    def to_arrivals(self, seed: int = 0) -> Arrivals:
        """Times spread uniformly inside each step (exact for piecewise-constant rates)."""
        rng = np.random.default_rng(seed)
        starts = np.repeat(np.arange(self.counts.size, dtype=np.float64) * self.step_s, self.counts)
        times = np.sort(starts + rng.random(starts.size) * self.step_s)
        return Arrivals(times, self.duration_s)


def read_trace_times(path: str | Path) -> FloatArray:
    """Seconds since the first request, sorted, from a CSV with a ``TIMESTAMP`` column."""
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                include_columns=["TIMESTAMP"], column_types={"TIMESTAMP": pa.timestamp("ns")}
            ),
        )
    except (pa.ArrowInvalid, KeyError) as exc:
        raise InvalidInput(
            f"trace {path} has no readable TIMESTAMP column: {exc}", field="TIMESTAMP"
        ) from exc
    ns = table.column("TIMESTAMP").to_numpy().astype("datetime64[ns]").astype(np.int64)
    if ns.size == 0:
        raise InvalidInput(f"trace {path} is empty", field="TIMESTAMP")
    ns = np.sort(ns)
    seconds: FloatArray = (ns - ns[0]).astype(np.float64) / 1e9
    return seconds


def scale_times(
    times_s: FloatArray,
    *,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    duration_s: float | None = None,
    jitter_s: float = 1.0,
    seed: int = 0,
) -> Arrivals:
    """Stretch, thin or copy, and tile a sorted arrival-time array (``scale_by="copy"``).

    ``time_scale`` multiplies every time (2.0: the same requests over twice the span).
    ``rate_scale`` keeps each request with probability ``rate_scale`` when below 1; above 1 it
    adds ``floor(rate_scale) - 1`` copies plus a thinned one, each request moved by a uniform
    jitter of ``jitter_s`` so copies do not land on the same instant. ``duration_s`` cuts the
    result or repeats the pattern end to end until it is that long.
    """
    if rate_scale <= 0 or time_scale <= 0:
        raise ConfigError("rate_scale and time_scale must be > 0", field="rate_scale")
    rng = np.random.default_rng(seed)
    base = np.asarray(times_s, dtype=np.float64) * time_scale
    span = float(math.ceil(base[-1] + 1e-9)) if base.size else 0.0
    whole, frac = int(rate_scale), rate_scale - int(rate_scale)
    parts: list[FloatArray] = [base] if whole >= 1 else []
    for _ in range(max(whole - 1, 0)):
        parts.append(base + rng.uniform(-jitter_s / 2, jitter_s / 2, base.size))
    if frac > 1e-12:
        kept = base[rng.random(base.size) < frac]
        if whole >= 1:
            kept = kept + rng.uniform(-jitter_s / 2, jitter_s / 2, kept.size)
        parts.append(kept)
    times = np.concatenate(parts) if parts else np.empty(0)
    if span > 0:
        times = np.clip(times, 0.0, np.nextafter(span, 0.0))
    total_s = span if duration_s is None else float(duration_s)
    if duration_s is not None and span > 0 and duration_s > span:
        repeats = math.ceil(duration_s / span)
        times = np.concatenate([times + k * span for k in range(repeats)])
    times = np.sort(times[times < total_s]) if total_s > 0 else np.sort(times)
    return Arrivals(times, max(total_s, float(times[-1]) + 1e-9 if times.size else 0.0))


def poisson_counts(
    times_s: FloatArray,
    *,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    duration_s: float | None = None,
    rate_bin_s: float = RATE_BIN_S,
    step_s: float = 1.0,
    seed: int = 0,
) -> ArrivalCounts:
    """Poisson counts per ``step_s`` following a trace's rate, ``rate_scale`` times its volume.

    The rate is estimated in ``rate_bin_s`` bins of the trace's own time, stretched by
    ``time_scale``, interpolated linearly between bin centres (flat beyond the first and last)
    and normalised so that one pass of the stretched trace expects ``rate_scale * len(trace)``
    requests; each step's count is drawn from a Poisson law of its mean. ``duration_s`` cuts
    the result or repeats the pattern end to end (default: one pass). The shared traffic
    model of ``aiscale simulate --rate-scale`` and the autoscaling benchmark (``day_counts``).
    """
    times = np.asarray(times_s, dtype=np.float64)
    if rate_scale <= 0 or time_scale <= 0:
        raise ConfigError("rate_scale and time_scale must be > 0", field="rate_scale")
    return _rate_counts(
        times, time_scale, rate_scale * times.size, duration_s, rate_bin_s, step_s, seed,
        rate_scale=rate_scale,
    )  # fmt: skip


def day_counts(
    times_s: FloatArray,
    requests_per_day: float,
    *,
    day_s: float = DAY_S,
    rate_bin_s: float = RATE_BIN_S,
    seed: int = 0,
) -> tuple[ArrivalCounts, float, float]:
    """One day of per-second Poisson counts following a trace's rate (``poisson_counts``).

    The trace's time axis is stretched by ``time_scale = day_s / span`` (the span rounded up
    to whole ``rate_bin_s``) and its volume scaled by ``rate_scale = requests_per_day /
    len(trace)``: many independent users follow the trace's pattern with the randomness of a
    population that size, not each original request copied ``rate_scale`` times. Returns
    ``(counts, time_scale, rate_scale)``; the autoscaling benchmark's day model, moved here
    unchanged (the same seed gives the same counts) so that the CLI scales traces alike.
    """
    times = np.asarray(times_s, dtype=np.float64)
    if times.size == 0:
        raise InvalidInput("the trace is empty", field="TIMESTAMP")
    if requests_per_day <= 0 or day_s <= 0:
        raise InvalidInput("requests per day and the day must be > 0", field="requests_per_day")
    span = _binned_span(times, rate_bin_s)
    time_scale = day_s / span
    rate_scale = requests_per_day / times.size
    counts = _rate_counts(
        times, time_scale, requests_per_day, day_s, rate_bin_s, 1.0, seed, rate_scale=rate_scale
    )
    return counts, time_scale, rate_scale


def _binned_span(times: FloatArray, rate_bin_s: float) -> float:
    """The trace's span rounded up to whole rate bins (at least one)."""
    last = float(times[-1]) if times.size else 0.0
    return float(max(math.ceil(last / rate_bin_s), 1) * rate_bin_s)


def _rate_counts(
    times: FloatArray,
    time_scale: float,
    total_per_pass: float,
    duration_s: float | None,
    rate_bin_s: float,
    step_s: float,
    seed: int,
    *,
    rate_scale: float,
) -> ArrivalCounts:
    """The Poisson counts of ``poisson_counts``; one pass expects ``total_per_pass``.

    The arithmetic follows the autoscaling benchmark's original day model operation by
    operation, so that its results stay comparable (``day_counts``)."""
    if rate_bin_s <= 0 or step_s <= 0:
        raise ConfigError("rate_bin_s and step_s must be > 0", field="rate_bin_s")
    span = _binned_span(times, rate_bin_s)
    num_bins = int(span // rate_bin_s)
    period_s = span * time_scale
    num_steps = max(1, math.ceil(period_s / step_s - 1e-9))
    if times.size == 0:
        rate = np.zeros(num_steps)
    else:
        per_bin = np.bincount(
            np.minimum((times // rate_bin_s).astype(np.int64), num_bins - 1), minlength=num_bins
        ).astype(np.float64)
        centres = (np.arange(num_bins) + 0.5) * rate_bin_s * time_scale
        mids = (np.arange(num_steps, dtype=np.float64) + 0.5) * step_s
        rate = np.interp(mids, centres, per_bin / (rate_bin_s * time_scale)) * rate_scale
        if step_s != 1.0:
            rate = rate * step_s  # expected arrivals per step
        rate *= total_per_pass / rate.sum()  # the interpolation keeps the total only nearly
    if duration_s is not None:
        wanted = max(1, math.ceil(duration_s / step_s - 1e-9))
        rate = np.resize(rate, wanted)  # cut, or repeat the pattern end to end
    rng = np.random.default_rng(seed)
    return ArrivalCounts(rng.poisson(rate).astype(np.int64), step_s)


def scale_trace(
    times_s: FloatArray,
    *,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    duration_s: float | None = None,
    scale_by: str = "poisson",
    jitter_s: float = 1.0,
    seed: int = 0,
) -> Arrivals:
    """A trace's arrivals, stretched by ``time_scale`` and scaled by ``rate_scale``.

    With ``rate_scale`` 1 the trace's own arrivals are kept (stretched, cut or tiled to
    ``duration_s``): what a replay of the trace sends. Otherwise ``scale_by`` says how
    (module docstring): ``poisson`` draws ``poisson_counts`` and spreads each second's
    arrivals uniformly inside it; ``copy`` is ``scale_times``. Raises ``InvalidInput``
    (field ``scale_by``) for another mode.
    """
    if scale_by not in SCALE_MODES:
        raise InvalidInput(
            f"unknown scaling {scale_by!r}; expected one of {', '.join(SCALE_MODES)}",
            field="scale_by",
        )
    if scale_by == "copy" or rate_scale == 1.0:
        return scale_times(
            times_s,
            rate_scale=rate_scale,
            time_scale=time_scale,
            duration_s=duration_s,
            jitter_s=jitter_s,
            seed=seed,
        )
    counts = poisson_counts(
        times_s, rate_scale=rate_scale, time_scale=time_scale, duration_s=duration_s, seed=seed
    )
    arrivals = counts.to_arrivals(seed)
    if duration_s is None:
        return arrivals
    times = arrivals.times_s[arrivals.times_s < duration_s]
    return Arrivals(times, float(duration_s))


def load_trace(
    path: str | Path,
    *,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    duration_s: float | None = None,
    scale_by: str = "poisson",
    jitter_s: float = 1.0,
    seed: int = 0,
) -> Arrivals:
    """A trace file's arrivals, scaled (see ``scale_trace``)."""
    return scale_trace(
        read_trace_times(path),
        rate_scale=rate_scale,
        time_scale=time_scale,
        duration_s=duration_s,
        scale_by=scale_by,
        jitter_s=jitter_s,
        seed=seed,
    )


@dataclass(frozen=True, slots=True)
class SyntheticTraffic:
    """N users, R requests per user per day on average over a week, with shape and bursts.

    The rate is ``mean * daily(t) * weekly(t) * burst(t)``: ``daily`` is a cosine peaking at
    ``peak_hour`` whose max/min ratio is ``peak_to_trough`` (mean 1 over a day); ``weekly``
    multiplies Saturday and Sunday by ``weekend_factor`` and is normalised to mean 1 over a
    week; bursts start as a Poisson process (``bursts_per_day``) and multiply the rate by
    ``burst_multiplier`` for ``burst_duration_s``. ``t = 0`` is midnight of ``start_weekday``
    (0 = Monday).
    """

    num_users: int
    requests_per_user_per_day: float
    peak_to_trough: float = 4.0
    peak_hour: float = 14.0
    weekend_factor: float = 0.7
    start_weekday: int = 0
    bursts_per_day: float = 2.0
    burst_multiplier: float = 3.0
    burst_duration_s: float = 300.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_users < 0 or self.requests_per_user_per_day < 0:
            raise ConfigError("users and requests must be >= 0", field="num_users")
        if self.peak_to_trough < 1:
            raise ConfigError("must be >= 1", field="peak_to_trough")
        if self.weekend_factor <= 0 or self.burst_multiplier < 1:
            raise ConfigError("bad weekly or burst factor", field="weekend_factor")

    @property
    def mean_rate_per_s(self) -> float:
        return self.num_users * self.requests_per_user_per_day / DAY_S

    def bursts(self, duration_s: float) -> FloatArray:
        """Burst start times in ``[0, duration_s)`` (seeded; the same for every call)."""
        rng = np.random.default_rng([self.seed, 1])
        num = rng.poisson(self.bursts_per_day * duration_s / DAY_S)
        return np.sort(rng.uniform(0.0, duration_s, num))

    def rate_per_s(self, t_s: FloatArray, bursts: FloatArray | None = None) -> FloatArray:
        """The expected arrival rate at times ``t_s``."""
        t = np.asarray(t_s, dtype=np.float64)
        amplitude = (self.peak_to_trough - 1) / (self.peak_to_trough + 1)
        hour = (t % DAY_S) / 3600.0
        daily = 1.0 + amplitude * np.cos(2 * np.pi * (hour - self.peak_hour) / 24.0)
        weekday = ((t // DAY_S).astype(np.int64) + self.start_weekday) % 7
        norm = 7.0 / (5.0 + 2.0 * self.weekend_factor)
        weekly = np.where(weekday >= 5, self.weekend_factor, 1.0) * norm
        rate = self.mean_rate_per_s * daily * weekly
        if bursts is not None and bursts.size:
            idx = np.searchsorted(bursts, t, side="right") - 1
            inside = (idx >= 0) & (t - bursts[np.maximum(idx, 0)] < self.burst_duration_s)
            rate = np.where(inside, rate * self.burst_multiplier, rate)
        return rate

    def counts(self, duration_s: float, step_s: float = 1.0) -> ArrivalCounts:
        """Poisson counts per step, from the rate at each step's midpoint."""
        num_steps = max(1, math.ceil(duration_s / step_s - 1e-9))
        mids = (np.arange(num_steps, dtype=np.float64) + 0.5) * step_s
        expected = self.rate_per_s(mids, self.bursts(duration_s)) * step_s
        rng = np.random.default_rng([self.seed, 2])
        return ArrivalCounts(rng.poisson(expected).astype(np.int64), step_s)

    def arrivals(self, duration_s: float, step_s: float = 1.0) -> Arrivals:
        """Arrival times (per-step Poisson counts, uniform inside each step)."""
        return self.counts(duration_s, step_s).to_arrivals(self.seed)
