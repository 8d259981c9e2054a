"""The model config and environment a replica runs with, wherever it runs.

One function serves local replica processes, Ray actors (which get only these variables, on
whichever node runs them) and ``aiscale profile``, so a profile measures what serving runs.
Reads the environment only when called, never at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: libgomp busy-wait iterations before a waiting thread sleeps (default 300,000).
OPENMP_SPIN_COUNT = 10_000

#: Runtimes whose model config takes ``num_threads``; others get the thread count by environment.
THREADED_RUNTIMES = frozenset({"minilm", "sentence-transformers", "onnx"})


def replica_settings(
    runtime: str, config: Mapping[str, Any], num_threads: int, env: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The model config a replica runs with (``num_threads`` unless the config names its own)
    and the environment variables to set for it on top of ``env``, the environment of the
    process that will run it: one function for local replicas, Ray actors (which get only
    these variables, on whichever node runs them) and ``aiscale profile``."""
    config = dict(config)
    num_threads = int(config.get("num_threads") or num_threads)
    if runtime in THREADED_RUNTIMES:
        config.setdefault("num_threads", num_threads)
    # Read by torch/OpenMP/BLAS at import in the replica, for runtimes without the knob too.
    extra = {"OMP_NUM_THREADS": str(num_threads)}
    # OpenMP workers that spin for long (libgomp's default) collapse throughput as soon as
    # another process (the gateway, a load generator) needs a core: minilm at batch 64 on
    # 2 cores beside one busy process fell from ~180 to 125 sentences/s. A short spin keeps
    # the quiet-machine speed and sleeps when a peer thread is preempted.
    if "OMP_WAIT_POLICY" not in env and "GOMP_SPINCOUNT" not in env:
        extra["GOMP_SPINCOUNT"] = str(OPENMP_SPIN_COUNT)
    for name, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        if name not in env:
            extra[name] = value
    return config, extra


def replica_environment(
    runtime: str, config: Mapping[str, Any], num_threads: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """The model config and the whole process environment of a replica started from this
    process (``replica_settings`` over ``os.environ``)."""
    config, extra = replica_settings(runtime, config, num_threads, os.environ)
    return config, {**os.environ, **extra}
