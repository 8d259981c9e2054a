"""Measure what the simulator would otherwise leave out: the model served by a real server.

``calibrate_server`` starts ``aiscale serve MODEL`` (one replica, the serving defaults, on
127.0.0.1 with a port the OS picks, in a temporary data folder), drives it with the load
generator ``aiscale bench`` — the very tool a trace replay uses — and reads the server's
``/metrics`` before and after each load level:

1. closed loop at concurrency 1 (every batch holds one request);
2. open loop (Poisson) at ``fractions`` of the capacity the model-alone profile and level 1
   imply (at most ``MAX_RATE_OVER_LIGHT`` times level 1's rate);
3. closed loop at concurrency 1 again: its model time over level 1's is the terms'
   ``speed_drift``, and the CPU stolen meanwhile their ``cpu_steal_share``
   (``ServerTerms.unsteadiness`` flags a calibration that should be run again).

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
at 0. The points themselves go into the profile for the record.

Nothing here fits to a trace: only synthetic load at rates derived from the profile. The
server and load processes are children of this one and are always stopped (terminate, then
kill after a deadline). Subprocess output is parsed, never printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from aiscale.errors import ModelLoadError
from aiscale.plan.profile import CalibrationPoint, DiskTerms, ModelProfile, ServerTerms

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
) -> ServerTerms:
    """Measure ``ServerTerms`` for ``model`` (a ``aiscale serve`` MODEL argument) against its
    model-alone profile ``alone``; ``path`` is the inference URL path the load generator
    derives its bodies for; ``num_threads`` goes to ``aiscale serve --num-threads`` (default:
    its own); ``disk_seconds`` of disk probing (0: none, the commit stays in the overhead).
    Raises ``ModelLoadError`` when the server or a load run fails."""
    workdir = Path(cwd) if cwd is not None else Path.cwd()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(workdir), env.get("PYTHONPATH", "")) if p)
    with (
        tempfile.TemporaryDirectory(prefix="aiscale-calibration-") as data_dir,
        _served(model, data_dir, workdir, env, start_timeout_s, num_threads) as url,
    ):
        target = url + path
        _bench(target, ["--concurrency", "1", "--duration", "1"], workdir, env)  # warm up
        steal_before = cpu_steal_reading()
        disk = probe_disk(Path(data_dir), disk_seconds) if disk_seconds > 0 else None
        closed_loop = ["--concurrency", "1", "--duration", f"{seconds_per_level:g}"]
        levels = [_measure_level(url, target, closed_loop, workdir, env)]
        first = levels[0]
        slowdown = first.model_s / alone.mean_latency_s(max(first.mean_batch, 1.0))
        capacity = max(
            b / (alone.mean_latency_s(b) * slowdown)
            for b in (*alone.batch_sizes, SERVED_MAX_BATCH)
            if b <= SERVED_MAX_BATCH
        )
        # Every level ``passes`` times, the passes in alternating order: on a shared machine
        # the speed drifts within a minute, and one disturbed level must not set the curve.
        order = [
            fraction
            for index in range(passes)
            for fraction in (fractions if index % 2 == 0 else tuple(reversed(fractions)))
        ]
        for fraction in order:
            rate = max(min(fraction * capacity, MAX_RATE_OVER_LIGHT * first.rate_per_s), 1.0)
            flags = [
                "--rate",
                f"{rate:.3f}",
                "--duration",
                f"{seconds_per_level:g}",
                "--warmup",
                "1",
            ]
            levels.append(replace(_measure_level(url, target, flags, workdir, env), asked=rate))
        # The closed loop again at the end: how far the machine's speed moved meanwhile.
        last = _measure_level(url, target, closed_loop, workdir, env)
        levels.append(last)
    terms = fit_server_terms(levels[0].bench, _points(alone, levels))
    return replace(
        terms,
        speed_drift=last.model_s / first.model_s,
        cpu_steal_share=steal_share(steal_before, cpu_steal_reading()),
        disk=disk,
    )


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


def fit_server_terms(light: Mapping[str, Any], points: Sequence[CalibrationPoint]) -> ServerTerms:
    """``ServerTerms`` from calibration points (the first one the light, concurrency-1 level
    whose load-generator result is ``light``: ``p50_ms``, ``p90_ms``, ``p99_ms``,
    ``p999_ms``, ``max_ms``). Pure: used by ``calibrate_server`` and the tests."""
    first = points[0]
    # The client's percentiles minus the mean time inside the queue, the model and the
    # capture commit (which the simulator models itself); their jitter is left in the
    # overhead.
    inside_ms = first.queue_ms + first.model_ms + first.capture_ms
    upper = [float(light[name]) - inside_ms for name in ("p50_ms", "p90_ms", "p99_ms", "p999_ms")]
    upper.append(float(light["max_ms"]) - inside_ms)
    lowest = min(upper[0], 2 * upper[0] - upper[1])  # mirror the p50-p90 spread below the median
    values = np.maximum.accumulate(np.maximum([lowest, *upper], 0.0))
    s0, s1, growth = _fit_lines(points)
    rates, means = overhead_curve(points)
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
    )


def refit_server_terms(terms: ServerTerms) -> ServerTerms:
    """The same terms with the lines fitted again from their own calibration points (the
    quantiles stay): how a profile written by an older fit is brought to this one."""
    if not terms.points:
        return terms
    s0, s1, growth = _fit_lines(terms.points)
    rates, means = overhead_curve(terms.points)
    return replace(
        terms,
        model_slowdown=s0,
        model_slowdown_per_rps=s1,
        overhead_growth_per_rps=growth,
        overhead_rates_per_s=rates,
        overhead_mean_ms=means,
    )


def overhead_curve(
    points: Sequence[CalibrationPoint],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(rates, mean overheads)`` through the closed-loop level (at rate 0) and the steady
    open-loop levels, in rising rate: the curve ``ServerTerms.overhead_scale`` follows.

    Measured points, not a line: the overhead jumps from its closed-loop value as soon as
    requests overlap (the client, the gateway and the model then share the cores) and
    climbs steeply only near the knee. Levels asked for at the same rate (the passes of
    ``calibrate_server``) give one point: the median of their rates and of their overheads,
    so that one pass hit by a burst of load from elsewhere does not set the curve."""
    first = points[0]
    by_offer: dict[float, list[CalibrationPoint]] = {}
    for point in points[1:]:
        if is_saturated(point) or overlap_rate(point) <= 0:
            continue
        by_offer.setdefault(round(point.offered_per_s, 3), []).append(point)
    curve = sorted(
        (
            float(np.median([overlap_rate(p) for p in group])),
            float(np.median([p.overhead_ms for p in group])),
        )
        for group in by_offer.values()
    )
    rates, means = [0.0], [first.overhead_ms]
    for rate, mean in curve:
        if rate > rates[-1]:
            rates.append(rate)
            means.append(mean)
    return tuple(rates), tuple(means)


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
    level, 0 for the closed-loop one. At concurrency 1 no request overlaps another (the
    next is sent when the last returns), so nothing competes with the model however fast
    the loop goes; the simulator's rate is the open-loop arrival rate."""
    return point.rate_per_s if point.offered_per_s > 0 else 0.0


def is_saturated(point: CalibrationPoint) -> bool:
    """Whether a load level ran past what the server serves: it answered under 90% of the
    offered rate, or requests queued longer than two batches take (a growing backlog)."""
    if point.offered_per_s > 0 and point.rate_per_s < SATURATED_SHARE * point.offered_per_s:
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


def _points(alone: ModelProfile, levels: Sequence[_Level]) -> list[CalibrationPoint]:
    points = []
    for level in levels:
        bench = level.bench
        mean_ms = float(bench["mean_ms"])
        model_ms = level.model_s * 1000.0
        capture_ms = level.capture_s * 1000.0
        points.append(
            CalibrationPoint(
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
            )
        )
    return points


def _measure_level(
    url: str, target: str, flags: list[str], workdir: Path, env: Mapping[str, str]
) -> _Level:
    before = _scrape(url)
    result = _bench(target, flags, workdir, env)
    after = _scrape(url)
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


def _scrape(url: str) -> dict[str, tuple[float, float]]:
    """``(sum, count)`` of each histogram in ``_HISTOGRAMS``, summed over its label sets."""
    text = httpx.get(url + "/metrics", timeout=10.0).text
    out = {}
    for name in _HISTOGRAMS:
        total = sum(float(v) for v in re.findall(rf"^{name}_sum{{[^}}]*}} (\S+)$", text, re.M))
        count = sum(float(v) for v in re.findall(rf"^{name}_count{{[^}}]*}} (\S+)$", text, re.M))
        out[name] = (total, count)
    return out


def _bench(target: str, flags: list[str], workdir: Path, env: Mapping[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "aiscale.cli", "bench", target, *flags, "--json"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=300, cwd=workdir, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(f"calibration load {flags} timed out", field="model") from exc
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"calibration load failed: {detail}", field="model")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@contextlib.contextmanager
def _served(
    model: str,
    data_dir: str,
    workdir: Path,
    env: Mapping[str, str],
    timeout_s: float,
    num_threads: int | None = None,
) -> Iterator[str]:
    """Run ``aiscale serve MODEL`` until the block ends; yields its base URL once ready."""
    command = [
        sys.executable, "-m", "aiscale.cli", "serve", model,
        "--port", "0", "--replicas", "1", "--data-dir", data_dir,
        *(["--num-threads", str(num_threads)] if num_threads is not None else []),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=workdir,
        env=dict(env),
    )
    try:
        url = _read_url(process, timeout_s)
        _wait_ready(url, timeout_s)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _read_url(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(deadline - time.monotonic(), 0.0)):
                break
            line = process.stdout.readline()
            if not line:
                break
            found = re.search(r"aiscale serving on (http://\S+)", line)
            if found:
                return found.group(1)
    raise ModelLoadError("aiscale serve did not start for the calibration", field="model")


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if client.get(url + "/v2/health/ready").status_code == 200:
                    return
            time.sleep(0.1)  # a polled health endpoint with a deadline, in a plain process
    raise ModelLoadError("aiscale serve never became ready for the calibration", field="model")
