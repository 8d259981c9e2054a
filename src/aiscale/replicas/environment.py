"""The model config and environment a replica runs with, wherever it runs.

One function serves local replica processes, Ray actors (which get only these variables, on
whichever node runs them) and ``aiscale profile``, so a profile measures what serving runs.
Reads the environment only when called, never at import.

A replica runs model code, so it never gets the gateway's whole environment: only the
variables :func:`is_passed_to_replicas` allows (the system basics, Python's own, and the
threading, accelerator and model-library knobs) plus those the settings add. Cloud
credentials (``AWS_SECRET_ACCESS_KEY``), ``AISCALE_*`` secrets, database URLs and tokens
stay with the gateway.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: libgomp busy-wait iterations before a waiting thread sleeps (default 300,000).
OPENMP_SPIN_COUNT = 10_000

#: Variables passed to replicas by exact name.
PASSED_NAMES = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "USER", "LOGNAME",
    "LD_LIBRARY_PATH", "XDG_CACHE_HOME", "VIRTUAL_ENV",
})  # fmt: skip
#: Variables passed to replicas by prefix: locale, Python, threading/BLAS, accelerators and
#: the model libraries' own settings (caches, offline mode).
PASSED_PREFIXES = (
    "LC_", "PYTHON", "OMP_", "MKL_", "OPENBLAS_", "GOMP_", "KMP_", "CUDA_", "NVIDIA_",
    "HF_", "TRANSFORMERS_", "TORCH_", "TOKENIZERS_",
)  # fmt: skip


def is_passed_to_replicas(name: str) -> bool:
    """Whether the gateway's environment variable ``name`` reaches replica processes."""
    return name in PASSED_NAMES or name.startswith(PASSED_PREFIXES)


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
    """The model config and the environment of a replica started from this process: the
    allowed part of ``os.environ`` (:func:`is_passed_to_replicas`) and what
    ``replica_settings`` adds."""
    passed = {k: v for k, v in os.environ.items() if is_passed_to_replicas(k)}
    config, extra = replica_settings(runtime, config, num_threads, passed)
    return config, {**passed, **extra}
