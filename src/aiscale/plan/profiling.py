"""Measure a model on this machine: batch latency and throughput, memory, start-up time.

``profile_model`` runs the model in a fresh Python subprocess (``python -m
aiscale.plan.profiling``) through the same runtime code the replicas use
(``aiscale.runtimes.load_model``), so the measurement owns its process: start-up time is the
runtime's build plus ``load()``, and memory is the process's resident set after loading. For
each batch size it calls ``predict`` until both a minimum count and a minimum time are reached
(in rounds over all sizes, so that outside load hits every size alike) and keeps the median.
Inputs are built from the model's declared schema (realistic sentences for text inputs).
Hardware not present here is derived from the catalog (``catalog.derive_profile``) and marked
``estimated``.

The parent side only starts the subprocess and parses its one JSON line; it never loads a
model itself. The worker prints only that line (a subprocess protocol, not user output).
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aiscale.bench.sentences import SENTENCES
from aiscale.errors import InvalidInput, ModelLoadError
from aiscale.plan.catalog import HardwareSpec, derive_profile, load_catalog
from aiscale.plan.profile import SPREAD_LEVELS, ModelProfile, ServiceSpread, profile_from_latencies
from aiscale.plan.repeats import FigureSpread, figure_of
from aiscale.replicas.environment import replica_environment

#: Batch sizes measured by default: powers of two from 1 to 128.
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
#: The catalog entry this machine's CPU measurements are filed under.
MEASURED_HARDWARE = "CPU"
#: Seconds of calls per batch size in each round of the measurement.
_SLICE_S = 0.05
#: Batch compositions timed per size (drawn at random, seeded, from the sample pool).
_COMPOSITIONS = 8
#: Calls at least per composition, so that each has a median of its own.
_CALLS_PER_COMPOSITION = 2
#: Items a random batch is drawn from: the load generator's sentences (for text inputs).
_SAMPLE_POOL = len(SENTENCES)


def resolve_model(model: str, runtime: str | None = None) -> tuple[str, str]:
    """``(runtime, uri)`` for a MODEL argument: ``minilm`` (the bundled default), an import
    path ``package.module:Class`` (the python runtime), or any uri with an explicit runtime."""
    if runtime is not None:
        return runtime, model
    if model == "minilm":
        return "minilm", "bundled"
    if ":" in model:
        return "python", model
    raise InvalidInput(
        f"model {model!r} is neither 'minilm' nor an import path 'package.module:Class'; "
        "give --runtime for other kinds",
        field="model",
    )


def profile_model(
    model: str,
    *,
    runtime: str | None = None,
    config: Mapping[str, Any] | None = None,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    min_seconds_per_size: float = 0.5,
    min_calls_per_size: int = 5,
    num_threads: int | None = None,
    hardware: str | None = None,
    catalog: Mapping[str, HardwareSpec] | None = None,
    timeout_s: float = 600.0,
    cwd: str | Path | None = None,
) -> ModelProfile:
    """Measure ``model`` in a subprocess and return its profile.

    ``hardware`` other than ``CPU`` (this machine) gives the measured profile scaled to that
    catalog entry, labelled ``estimated``. Raises ``InvalidInput`` for bad arguments,
    ``NotFound`` for hardware not in the catalog and ``ModelLoadError`` when the worker fails.
    The worker runs with the threads and environment a replica gets (``replica_environment``):
    ``num_threads``, default all cores, as ``aiscale serve`` gives its one replica.
    """
    sizes = sorted(set(int(b) for b in batch_sizes))
    if not sizes or sizes[0] < 1:
        raise InvalidInput("batch sizes must be >= 1", field="batch_sizes")
    if min_seconds_per_size < 0 or min_calls_per_size < 1:
        raise InvalidInput("need >= 1 call and >= 0 s per size", field="min_seconds_per_size")
    runtime_name, uri = resolve_model(model, runtime)
    worker_config, env = replica_environment(
        runtime_name, config or {}, num_threads or os.cpu_count() or 1
    )
    request = {
        "runtime": runtime_name,
        "uri": uri,
        "config": worker_config,
        "batch_sizes": sizes,
        "min_seconds": min_seconds_per_size,
        "min_calls": min_calls_per_size,
    }
    workdir = Path(cwd) if cwd is not None else Path.cwd()
    # An import-path model (``tests.models:Sum``) resolves against the caller's folder.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(workdir), env.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "aiscale.plan.profiling", json.dumps(request)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=workdir,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(f"profiling {model} took over {timeout_s} s", field="model") from exc
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"profiling {model} failed: {detail}", field="model")
    measured = json.loads(lines[-1])
    if "error" in measured:
        raise ModelLoadError(f"profiling {model} failed: {measured['error']}", field="model")
    profile = profile_from_latencies(
        model,
        MEASURED_HARDWARE,
        {int(b): float(ms) for b, ms in measured["latency_ms"].items()},
        memory_bytes=int(measured["memory_bytes"]),
        startup_s=float(measured["startup_s"]),
        spread=ServiceSpread(SPREAD_LEVELS, tuple(float(v) for v in measured["spread"])),
    )
    profile = replace(profile, measured_on=machine_description())
    if hardware is None or hardware == MEASURED_HARDWARE:
        return profile
    return derive_profile(profile, hardware, catalog if catalog is not None else load_catalog())


def median_profile(runs: Sequence[ModelProfile]) -> ModelProfile:
    """One profile from repeated measurements of the same model and sizes: per batch size
    the median latency, the composition spread's median per quantile, the median memory
    and start-up time. A single run is returned as it is."""
    if not runs:
        raise ValueError("no profile runs to combine")
    first = runs[0]
    if len(runs) == 1:
        return first
    latencies = np.median([run.latency_ms for run in runs], axis=0)
    spreads = [run.spread for run in runs if run.spread is not None]
    spread = first.spread
    if spread is not None and len(spreads) == len(runs):
        ratios = np.median([s.ratios for s in spreads], axis=0)
        rising = np.maximum.accumulate(ratios)
        spread = ServiceSpread(spread.levels, tuple(float(v) for v in rising))
    combined = profile_from_latencies(
        first.model,
        first.hardware,
        dict(zip(first.batch_sizes, (float(v) for v in latencies), strict=True)),
        memory_bytes=int(statistics.median(run.memory_bytes for run in runs)),
        startup_s=float(statistics.median(run.startup_s for run in runs)),
        estimated=first.estimated,
        spread=spread,
    )
    return replace(combined, measured_on=first.measured_on)


#: A batch faster than this is left unchecked (``alone_figures``).
CHECKED_LATENCY_MS = 1.0


def alone_figures(runs: Sequence[ModelProfile]) -> list[FigureSpread]:
    """The spread over repeated runs of each batch size's model-alone latency (``repeats.py``):
    checked, as the capacity follows from it, where a batch takes ``CHECKED_LATENCY_MS`` or
    more; a faster one is all timer and scheduler jitter in relative terms, and its replica's
    capacity is set by the server around it, not by the model."""
    figures = []
    for index, size in enumerate(runs[0].batch_sizes):
        values = [run.latency_ms[index] for run in runs]
        is_checked = statistics.median(values) >= CHECKED_LATENCY_MS
        figures.append(figure_of(f"latency_ms at batch {size}", values, is_checked=is_checked))
    return figures


def cpu_model() -> str:
    """This machine's CPU model (``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """This machine's CPU model and core count, as a profile records it."""
    return f"{cpu_model()}, {os.cpu_count() or 1} cores"


# ----------------------------------------------------------------- the worker (subprocess)


def _sample_item(spec_datatype: str, shape: tuple[int, ...], index: int) -> Any:
    """One realistic item for an input of ``datatype`` and per-item ``shape``."""
    if spec_datatype == "BYTES":
        return SENTENCES[index % len(SENTENCES)]
    dims = [16 if d < 0 else d for d in shape]

    def fill(level: int) -> Any:
        if level == len(dims):
            return float((index * 7 + level) % 10) / 10.0
        return [fill(level + 1) for _ in range(dims[level])]

    if spec_datatype == "BOOL":
        return True if not dims else fill(0)
    return fill(0)


def sample_batch(model: Any, size: int, *, seed: int | None = None) -> list[Any]:
    """``size`` items fitting ``model.schema`` (a dict per item when it has several inputs).

    With a ``seed``, the items are drawn at random (with replacement) from the same pool the
    load generator picks its sentences from, as a batch formed from live traffic is; without
    one, the first ``size`` items of the pool in order."""
    inputs = model.schema.inputs
    rng = random.Random(seed) if seed is not None else None
    items: list[Any] = []
    for i in range(size):
        index = i if rng is None else rng.randrange(_SAMPLE_POOL)
        if len(inputs) == 1:
            items.append(_sample_item(inputs[0].datatype, inputs[0].shape, index))
        else:
            items.append(
                {spec.name: _sample_item(spec.datatype, spec.shape, index) for spec in inputs}
            )
    return items


def _rss_bytes() -> int:
    """Resident memory of this process (Linux ``/proc``; ``ru_maxrss`` elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def measure(
    request: Mapping[str, Any], clock: Callable[[], float] = time.perf_counter
) -> dict[str, Any]:
    """Load and time the model described by ``request`` in this process (the worker's job)."""
    from aiscale.runtimes import load_model

    started = clock()
    model = load_model(str(request["runtime"]), str(request["uri"]), request.get("config"))
    model.load()
    startup_s = clock() - started
    memory_bytes = _rss_bytes()
    min_seconds = float(request["min_seconds"])
    min_calls = int(request["min_calls"])
    sizes = [int(size) for size in request["batch_sizes"]]
    # Several compositions per size, drawn like live batches: the time of a text batch
    # follows its longest item (padding), so one fixed batch per size would be biased.
    batches = {
        size: [sample_batch(model, size, seed=size * 1000 + k) for k in range(_COMPOSITIONS)]
        for size in sizes
    }
    for variants in batches.values():
        outputs = model.predict(variants[0])  # warm-up, and a check of the contract
        if len(outputs) != len(variants[0]):
            raise ModelLoadError(f"predict returned {len(outputs)} outputs for {len(variants[0])}")
    # Round robin over the sizes, a short slice of calls each, so that a burst of load from
    # elsewhere on a shared machine slows every size alike instead of skewing one of them;
    # within a size, the compositions take turns.
    samples: dict[int, list[list[float]]] = {
        size: [[] for _ in range(_COMPOSITIONS)] for size in sizes
    }
    wanted_calls = max(min_calls, _CALLS_PER_COMPOSITION * _COMPOSITIONS)
    calls = dict.fromkeys(sizes, 0)
    begun = clock()
    while any(count < wanted_calls for count in calls.values()) or (
        clock() - begun < min_seconds * len(sizes)
    ):
        for size in sizes:
            slice_begun = clock()
            while True:
                variant = calls[size] % _COMPOSITIONS
                t0 = clock()
                model.predict(batches[size][variant])
                done = clock()
                calls[size] += 1
                samples[size][variant].append(done - t0)
                if done - slice_begun >= _SLICE_S:
                    break
    # Per composition the median of its calls (the machine's jitter left out: the server
    # calibration measures that where it matters, around a served request); per size the
    # median over compositions, and the spread is the compositions around it.
    by_composition = {
        size: [statistics.median(found) for found in variants if found]
        for size, variants in samples.items()
    }
    medians = {size: max(statistics.median(found), 1e-9) for size, found in by_composition.items()}
    ratios = np.array([t / medians[size] for size, found in by_composition.items() for t in found])
    return {
        "latency_ms": {str(size): median * 1000.0 for size, median in medians.items()},
        "spread": [float(v) for v in np.quantile(ratios, SPREAD_LEVELS)],
        "memory_bytes": memory_bytes,
        "startup_s": startup_s,
    }


def _worker_main(argv: Sequence[str]) -> None:
    try:
        result = measure(json.loads(argv[0]))
    except Exception as exc:  # the process boundary: report the failure to the parent
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
