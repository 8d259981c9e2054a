"""Measure what the simulator would otherwise leave out: the model served by a real server.

``calibrate_server`` starts ``aiscale serve MODEL`` (one replica, the serving defaults, on
127.0.0.1 with a port the OS picks, in a temporary data folder), drives it with the load
generator ``aiscale bench`` — the very tool a trace replay uses — and reads the server's
``/metrics`` before and after each load level. It runs ``passes`` passes, each:

1. (``before_pass``, while the server idles) the model alone measured again, so that every
   pass compares the server with the model alone of the same minutes: the repeats are
   interleaved, and a slow minute hits both alike;
2. closed loop at concurrency 1 (every batch holds one request);
3. open loop (Poisson) at ``fractions`` of the capacity the model-alone profile and the
   first pass's level 2 imply (at most ``MAX_RATE_OVER_LIGHT`` times that level's rate), in
   alternating order from pass to pass;
4. closed loop at ``saturation_concurrency`` (64): full batches, the throughput the replica
   sustains and its in-server slowdown there (the capacity the planner sizes with);

then closed loop at concurrency 1 once more: its model time over the first one's is the
terms' ``speed_drift``, and the CPU stolen meanwhile their ``cpu_steal_share``
(``ServerTerms.unsteadiness`` flags a calibration that should be run again). The spread of
each figure over the passes is ``repeat_figures``.

Before the levels, ``probe_disk`` times write + fdatasync in the server's data folder: the
capture log's commit, which every captured response waits for (``ServerTerms.disk``; the
exact simulator replays the group commit and the disk's stalls, ``_commit.py``).

At each level the client's mean latency minus the server's mean queue time, mean model
time per batch and mean capture commit wait (``aiscale_capture_append_seconds``) is the
per-request overhead (client, HTTP, gateway, IPC), and the server's mean
model time per batch over the profile's latency at the mean batch size is the in-server
slowdown. ``ServerTerms`` is fitted from these points: the overhead quantiles from level 1's
latency percentiles, the mean overhead against the open-loop rate as measured
(``overhead_curve``; the closed-loop level counts as rate 0, ``overlap_rate``) and a line
through the slowdowns against that rate, both through the
levels the server kept up with (``is_saturated``), robust (Theil-Sen) and with slopes clipped
at 0, and the slowdown as measured per level (``slowdown_curve``: median per level, through
the full-batch closed loop). The points themselves go into the profile for the record.

Nothing here fits to a trace: only synthetic load at rates derived from the profile. The
server and load processes are children of this one and are always stopped (terminate, then
kill after a deadline). Subprocess output is parsed, never printed.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from aiscale.errors import ModelLoadError
from aiscale.plan.live_server import run_bench, scrape_histograms, served
from aiscale.plan.profile import CalibrationPoint, DiskTerms, ModelProfile, ServerTerms
from aiscale.plan.repeats import FigureSpread, figure_of

#: Quantile levels of the overhead; the load generator reports p50, p90, p99 and p99.9.
OVERHEAD_LEVELS: tuple[float, ...] = (0.0, 0.5, 0.9, 0.99, 0.999, 1.0)
#: Open-loop rates as fractions of the estimated in-server capacity.
DEFAULT_FRACTIONS: tuple[float, ...] = (0.15, 0.35, 0.6, 0.8)
#: How often each open-loop level is measured (``calibrate_server``).
DEFAULT_PASSES = 3
#: Seconds the disk is probed for the capture commit (``probe_disk``): stalls come about
#: every few seconds on a virtual machine's storage.
DEFAULT_DISK_SECONDS = 15.0
#: The serving default the calibration runs with (``aiscale serve``'s ``--max-batch-size``).
SERVED_MAX_BATCH = 64
#: Clients of the closed loop that keeps the replica's batches full (one per batch slot).
SATURATION_CONCURRENCY = SERVED_MAX_BATCH
#: Open-loop rates stay under this multiple of the concurrency-1 rate: for a model much
#: faster than the gateway, the model-bound capacity says nothing about what can be served.
MAX_RATE_OVER_LIGHT = 4.0
#: A level served below this share of its offered rate did not keep up (``is_saturated``).
SATURATED_SHARE = 0.9

_HISTOGRAMS = (
    "aiscale_batcher_batch_size",
    "aiscale_batcher_queue_seconds",
    "aiscale_replica_model_seconds",
    "aiscale_capture_append_seconds",
)
#: A probe sync this many times the median, and at least ``STALL_MIN_MS``, is a disk stall.
STALL_OVER_MEDIAN = 10.0
STALL_MIN_MS = 20.0


@dataclass(frozen=True, slots=True)
class _Level:
    """One load level's numbers, before fitting."""

    rate_per_s: float
    mean_batch: float
    model_s: float
    queue_s: float
    bench: Mapping[str, Any]
    #: The open-loop rate asked for; 0 for the closed loop.
    asked: float = 0.0
    #: Mean wait per request for the capture log's commit.
    capture_s: float = 0.0
    #: A closed loop's clients; 0 for an open loop.
    concurrency: int = 0


def calibrate_server(
    model: str,
    alone: ModelProfile,
    *,
    path: str = "/v1/embeddings",
    seconds_per_level: float = 5.0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    passes: int = DEFAULT_PASSES,
    num_threads: int | None = None,
    disk_seconds: float = DEFAULT_DISK_SECONDS,
    start_timeout_s: float = 120.0,
    cwd: str | Path | None = None,
    before_pass: Callable[[int], ModelProfile] | None = None,
    saturation_concurrency: int = SATURATION_CONCURRENCY,
    data_parent: str | Path | None = None,
) -> ServerTerms:
    """Measure ``ServerTerms`` for ``model`` (a ``aiscale serve`` MODEL argument) against its
    model-alone profile ``alone``; ``path`` is the inference URL path the load generator
    derives its bodies for; ``num_threads`` goes to ``aiscale serve --num-threads`` (default:
    its own); ``disk_seconds`` of disk probing (0: none, the commit stays in the overhead).
    ``before_pass(k)``, when given, measures the model alone again before pass ``k`` (the
    server idle meanwhile) and that pass's points compare with it; otherwise every pass
    compares with ``alone``. ``saturation_concurrency`` (0: none) is the closed loop at full
    batches. The server's data folder is a temporary one made in ``data_parent`` (default:
    the system's temporary folder): put it where the served replicas will write (a tmpfs,
    say), as the disk probe measures that disk. Raises ``ModelLoadError`` when the server or
    a load run fails."""
    workdir = Path(cwd) if cwd is not None else Path.cwd()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(workdir), env.get("PYTHONPATH", "")) if p)
    if passes < 1:
        raise ModelLoadError("the calibration needs at least one pass", field="passes")
    points: list[CalibrationPoint] = []
    lights: list[Mapping[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="aiscale-calibration-", dir=data_parent) as data_dir,
        served(model, data_dir, workdir, env, start_timeout_s, num_threads) as url,
    ):
        target = url + path
        run_bench(target, ["--concurrency", "1", "--duration", "1"], workdir, env)  # warm up
        steal_before = cpu_steal_reading()
        disk = probe_disk(Path(data_dir), disk_seconds) if disk_seconds > 0 else None
        closed_loop = ["--concurrency", "1", "--duration", f"{seconds_per_level:g}"]
        saturated = [
            "--concurrency", str(saturation_concurrency), "--duration",
            f"{seconds_per_level:g}", "--warmup", "1",
        ]  # fmt: skip
        rates: list[float] = []
        first: _Level | None = None
        last: ModelProfile | None = None
        for index in range(passes):
            reference = before_pass(index) if before_pass is not None else alone
            light = replace(_measure_level(url, target, closed_loop, workdir, env), concurrency=1)
            points.append(_point(reference, light))
            lights.append(light.bench)
            if first is None:
                first = light
                rates = _offered_rates(reference, light, fractions)
            # Every level once per pass, in alternating order: on a shared machine the speed
            # drifts within a minute, and one disturbed level must not set the curve.
            for rate in rates if index % 2 == 0 else list(reversed(rates)):
                flags = [
                    "--rate", f"{rate:.3f}", "--duration", f"{seconds_per_level:g}",
                    "--warmup", "1",
                ]  # fmt: skip
                level = replace(_measure_level(url, target, flags, workdir, env), asked=rate)
                points.append(_point(reference, level))
            if saturation_concurrency > 0:
                full = _measure_level(url, target, saturated, workdir, env)
                points.append(_point(reference, replace(full, concurrency=saturation_concurrency)))
            last = reference
        # The closed loop again at the end: how far the machine's speed moved meanwhile.
        end = replace(_measure_level(url, target, closed_loop, workdir, env), concurrency=1)
        assert first is not None and last is not None
        points.append(_point(last, end))
    terms = fit_server_terms(lights, points)
    return replace(
        terms,
        speed_drift=end.model_s / first.model_s,
        cpu_steal_share=steal_share(steal_before, cpu_steal_reading()),
        disk=disk,
    )


def _offered_rates(alone: ModelProfile, light: _Level, fractions: Sequence[float]) -> list[float]:
    """The open-loop rates: ``fractions`` of the capacity the model alone and the
    concurrency-1 level imply (its slowdown applied to every batch), capped at
    ``MAX_RATE_OVER_LIGHT`` times that level's rate."""
    slowdown = light.model_s / alone.mean_latency_s(max(light.mean_batch, 1.0))
    capacity = max(
        b / (alone.mean_latency_s(b) * slowdown)
        for b in (*alone.batch_sizes, SERVED_MAX_BATCH)
        if b <= SERVED_MAX_BATCH
    )
    return [
        max(min(fraction * capacity, MAX_RATE_OVER_LIGHT * light.rate_per_s), 1.0)
        for fraction in fractions
    ]


def probe_disk(
    directory: Path, seconds: float, interval_s: float = 0.01, write_bytes: int = 2048
) -> DiskTerms:
    """Time ``pwrite`` + ``fdatasync`` of ``write_bytes`` (about one capture record) every
    ``interval_s`` for ``seconds`` in a preallocated file in ``directory``, as the capture
    log commits. Syncs over ``STALL_OVER_MEDIAN`` times the median (and ``STALL_MIN_MS``)
    are stalls: their rate per second of probing and their durations; the rest give the
    ordinary commit's quantiles. The file is removed afterwards."""
    span = 4 << 20
    path = directory / ".aiscale-disk-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    times_ms: list[float] = []
    try:
        os.pwrite(fd, bytes(span), 0)
        os.fsync(fd)
        chunk = b"x" * write_bytes
        begun = time.perf_counter()
        offset = 0
        while time.perf_counter() - begun < seconds or len(times_ms) < 10:
            started = time.perf_counter()
            os.pwrite(fd, chunk, offset)
            os.fdatasync(fd)
            times_ms.append((time.perf_counter() - started) * 1000.0)
            offset = (offset + write_bytes) % (span - write_bytes)
            time.sleep(interval_s)  # a plain process between syncs, as requests arrive apart
        probed_s = time.perf_counter() - begun
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    found = np.asarray(times_ms)
    threshold = max(STALL_MIN_MS, STALL_OVER_MEDIAN * float(np.median(found)))
    stalls = found[found > threshold]
    ordinary = found[found <= threshold]
    return DiskTerms(
        sync_levels=OVERHEAD_LEVELS,
        sync_ms=tuple(float(v) for v in np.quantile(ordinary, OVERHEAD_LEVELS)),
        stall_rate_per_s=stalls.size / probed_s,
        stall_ms=tuple(float(v) for v in np.sort(stalls)),
    )


def cpu_steal_reading() -> tuple[float, float]:
    """``(stolen, total)`` CPU time of all cores so far (``/proc/stat`` jiffies; zeros
    where there is none), for ``steal_share``."""
    try:
        line = Path("/proc/stat").read_text().split("\n", 1)[0]
        fields = [float(v) for v in line.split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    if len(fields) < 8:
        return 0.0, 0.0
    return fields[7], sum(fields)


def steal_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The share of CPU time the hypervisor gave to other guests between two readings
    (``cpu_steal_reading``): on a shared virtual machine the server's speed moves with it."""
    total = after[1] - before[1]
    return max(after[0] - before[0], 0.0) / total if total > 0 else 0.0


def fit_server_terms(
    light: Mapping[str, Any] | Sequence[Mapping[str, Any]], points: Sequence[CalibrationPoint]
) -> ServerTerms:
    """``ServerTerms`` from calibration points (the first one the light, concurrency-1 level
    whose load-generator result is ``light``: ``p50_ms``, ``p90_ms``, ``p99_ms``,
    ``p999_ms``, ``max_ms``). With several passes ``light`` is one result per pass, paired in
    order with the concurrency-1 points (``CalibrationPoint.is_one_at_a_time``), and each
    overhead quantile is their median. Pure: used by ``calibrate_server`` and the tests."""
    lights = [light] if isinstance(light, Mapping) else list(light)
    singles = [p for p in points if p.is_one_at_a_time][: len(lights)] or [points[0]]
    quantiles = np.median(
        [_overhead_quantiles(bench, point) for bench, point in zip(lights, singles, strict=False)],
        axis=0,
    )
    values = np.maximum.accumulate(np.maximum(quantiles, 0.0))
    s0, s1, growth = _fit_lines(points)
    rates, means = overhead_curve(points)
    slowdown_rates, slowdowns = slowdown_curve(points)
    return ServerTerms(
        overhead_levels=OVERHEAD_LEVELS,
        overhead_ms=tuple(float(v) for v in values),
        overhead_growth_per_rps=growth,
        model_slowdown=s0,
        model_slowdown_per_rps=s1,
        label="measured",
        points=tuple(points),
        overhead_rates_per_s=rates,
        overhead_mean_ms=means,
        slowdown_rates_per_s=slowdown_rates,
        slowdown_values=slowdowns,
    )


def _overhead_quantiles(light: Mapping[str, Any], point: CalibrationPoint) -> list[float]:
    """The overhead at ``OVERHEAD_LEVELS`` from one concurrency-1 level: the client's
    percentiles minus the mean time inside the queue, the model and the capture commit
    (which the simulator models itself); their jitter is left in the overhead."""
    inside_ms = point.queue_ms + point.model_ms + point.capture_ms
    upper = [float(light[name]) - inside_ms for name in ("p50_ms", "p90_ms", "p99_ms", "p999_ms")]
    upper.append(float(light["max_ms"]) - inside_ms)
    lowest = min(upper[0], 2 * upper[0] - upper[1])  # mirror the p50-p90 spread below the median
    return [lowest, *upper]


def refit_server_terms(terms: ServerTerms) -> ServerTerms:
    """The same terms with the lines fitted again from their own calibration points (the
    quantiles stay): how a profile written by an older fit is brought to this one."""
    if not terms.points:
        return terms
    s0, s1, growth = _fit_lines(terms.points)
    rates, means = overhead_curve(terms.points)
    slowdown_rates, slowdowns = slowdown_curve(terms.points)
    return replace(
        terms,
        model_slowdown=s0,
        model_slowdown_per_rps=s1,
        overhead_growth_per_rps=growth,
        overhead_rates_per_s=rates,
        overhead_mean_ms=means,
        slowdown_rates_per_s=slowdown_rates,
        slowdown_values=slowdowns,
    )


def overhead_curve(
    points: Sequence[CalibrationPoint],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(rates, mean overheads)`` through the closed-loop level (at rate 0) and the steady
    open-loop levels, in rising rate: the curve ``ServerTerms.overhead_scale`` follows.

    Measured points, not a line: the overhead jumps from its closed-loop value as soon as
    requests overlap (the client, the gateway and the model then share the cores) and
    climbs steeply only near the knee. Levels of one kind (the same offered rate, or the same
    closed-loop concurrency: the passes of ``calibrate_server``) give one point: the median
    of their rates and of their overheads, so that one pass hit by a burst of load from
    elsewhere does not set the curve. Rate 0 is the median of the concurrency-1 levels."""
    return _level_curve(points, lambda p: p.overhead_ms)


def slowdown_curve(
    points: Sequence[CalibrationPoint],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(rates, slowdowns)`` as ``overhead_curve`` makes its curve, of the in-server model
    time over the model alone's at the level's mean batch: the curve ``ServerTerms.slowdown``
    follows. Its last point is the closed loop at full batches where one was measured, so
    the capacity the simulator and the planner give is the one the server sustained (a line
    through the light levels put it 10-30% low: the slowdown measured on small batches is
    not the one of full batches)."""
    return _level_curve(points, lambda p: p.model_ms / p.alone_ms)


def _level_curve(
    points: Sequence[CalibrationPoint], figure: Callable[[CalibrationPoint], float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Rate 0: the median ``figure`` of the concurrency-1 levels; then the median rate and
    ``figure`` of each kind of steady overlapping level, in rising rate."""
    singles = [p for p in points if p.is_one_at_a_time] or [points[0]]
    by_kind: dict[tuple[float, float], list[CalibrationPoint]] = {}
    for point in points:
        if point.is_one_at_a_time or is_saturated(point) or overlap_rate(point) <= 0:
            continue
        by_kind.setdefault((round(point.offered_per_s, 3), point.concurrency), []).append(point)
    curve = sorted(
        (
            float(np.median([overlap_rate(p) for p in group])),
            float(np.median([figure(p) for p in group])),
        )
        for group in by_kind.values()
    )
    rates, values = [0.0], [float(np.median([figure(p) for p in singles]))]
    for rate, value in curve:
        if rate > rates[-1]:
            rates.append(rate)
            values.append(value)
    return tuple(rates), tuple(values)


def _fit_lines(points: Sequence[CalibrationPoint]) -> tuple[float, float, float]:
    """``(slowdown at rate 0, slowdown per req/s, overhead growth per req/s)``.

    The x of each level is ``overlap_rate``. The overhead line is kept for the record and
    for files without ``overhead_curve``. A level the server did not keep up with
    measures its backlog, not contention: the lines go through the steady levels only (the
    first one always counts). They are Theil-Sen lines (median of pairwise slopes, then the
    median intercept), so that one level hit by a burst of load from elsewhere on a shared
    machine does not set them; slopes are clipped at 0.
    """
    first = points[0]
    steady = [first, *(p for p in points[1:] if not is_saturated(p))]
    rates = np.array([overlap_rate(p) for p in steady])
    slowdowns = np.array([p.model_ms / p.alone_ms for p in steady])
    overheads = np.array([p.overhead_ms for p in steady])
    s0, s1 = _line(rates, slowdowns)
    o0, o1 = _line(rates, overheads)
    growth = o1 / o0 if o0 > 0 else 0.0
    return max(s0, 0.05), max(s1, 0.0), max(growth, 0.0)


def overlap_rate(point: CalibrationPoint) -> float:
    """The rate the contention lines are fitted against: the served rate of an open-loop
    level or of a closed loop of many clients, 0 for the closed loop of one. At concurrency 1
    no request overlaps another (the next is sent when the last returns), so nothing
    competes with the model however fast the loop goes; the simulator's rate is the
    open-loop arrival rate, which a closed loop at full batches serves at its rate."""
    return 0.0 if point.is_one_at_a_time else point.rate_per_s


def is_saturated(point: CalibrationPoint) -> bool:
    """Whether an open-loop level ran past what the server serves: it answered under 90% of
    the offered rate, or requests queued longer than two batches take (a growing backlog).
    A closed loop never is: its clients wait for their answers, so its queue is bounded by
    its concurrency and it measures the server at that load, full batches included."""
    if not point.is_open_loop:
        return False
    if point.rate_per_s < SATURATED_SHARE * point.offered_per_s:
        return True
    return point.queue_ms > 2 * point.model_ms


def _line(x: Any, y: Any) -> tuple[float, float]:
    """Theil-Sen ``(intercept, slope)`` with the slope clipped at 0 before the intercept is
    taken; a flat line through the median for one point."""
    pairs = [
        (y[j] - y[i]) / (x[j] - x[i])
        for i in range(len(x))
        for j in range(i + 1, len(x))
        if x[j] != x[i]
    ]
    slope = max(float(np.median(pairs)), 0.0) if pairs else 0.0
    return float(np.median(y - slope * x)), slope


def _point(alone: ModelProfile, level: _Level) -> CalibrationPoint:
    """One level's ``CalibrationPoint`` against the model alone ``alone``."""
    bench = level.bench
    mean_ms = float(bench["mean_ms"])
    model_ms = level.model_s * 1000.0
    capture_ms = level.capture_s * 1000.0
    return CalibrationPoint(
        rate_per_s=level.rate_per_s,
        mean_batch=level.mean_batch,
        model_ms=model_ms,
        alone_ms=alone.mean_latency_s(max(level.mean_batch, 1.0)) * 1000.0,
        queue_ms=level.queue_s * 1000.0,
        overhead_ms=max(mean_ms - level.queue_s * 1000.0 - model_ms - capture_ms, 0.0),
        p50_ms=float(bench["p50_ms"]),
        p99_ms=float(bench["p99_ms"]),
        offered_per_s=level.asked,
        capture_ms=capture_ms,
        concurrency=float(level.concurrency),
    )


def repeat_figures(terms: ServerTerms) -> list[FigureSpread]:
    """The spread over the passes of each server figure, from the terms' points: the
    throughput at full batches (checked: the capacity follows from it), and, recorded only,
    the in-server slowdown and the mean overhead of each kind of level (``repeats.py``)."""
    figures = []
    saturated = [p for p in terms.points if p.concurrency > 1]
    if saturated:
        clients = int(saturated[0].concurrency)
        figures.append(
            figure_of(
                f"served req/s at concurrency {clients}",
                [p.rate_per_s for p in saturated],
                is_checked=True,
            )
        )
    kinds: dict[str, list[CalibrationPoint]] = {}
    for point in terms.points:
        if point.is_open_loop:
            kind = f"{point.offered_per_s:.0f} req/s offered"
        else:
            kind = f"concurrency {max(point.concurrency, 1.0):.0f}"
        kinds.setdefault(kind, []).append(point)
    for kind, group in kinds.items():
        figures.append(
            figure_of(
                f"in-server slowdown at {kind}",
                [p.model_ms / p.alone_ms for p in group],
                is_checked=False,
            )
        )
        figures.append(
            figure_of(
                f"overhead mean ms at {kind}", [p.overhead_ms for p in group], is_checked=False
            )
        )
    return figures


def _measure_level(
    url: str, target: str, flags: list[str], workdir: Path, env: Mapping[str, str]
) -> _Level:
    before = scrape_histograms(url, _HISTOGRAMS)
    result = run_bench(target, flags, workdir, env)
    after = scrape_histograms(url, _HISTOGRAMS)
    delta = {
        name: (after[name][0] - before[name][0], after[name][1] - before[name][1])
        for name in _HISTOGRAMS
    }
    batches_sum, num_batches = delta["aiscale_batcher_batch_size"]
    queue_sum, num_queued = delta["aiscale_batcher_queue_seconds"]
    model_sum, num_models = delta["aiscale_replica_model_seconds"]
    capture_sum, num_captured = delta["aiscale_capture_append_seconds"]
    if num_batches <= 0 or num_models <= 0 or not result.get("ok"):
        raise ModelLoadError(f"calibration load {flags} served nothing", field="model")
    return _Level(
        rate_per_s=float(result["throughput_rps"]),
        mean_batch=batches_sum / num_batches,
        model_s=model_sum / num_models,
        queue_s=queue_sum / max(num_queued, 1.0),
        bench=result,
        capture_s=capture_sum / num_captured if num_captured > 0 else 0.0,
    )
