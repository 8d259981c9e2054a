"""Load generator for ``aiscale bench URL``: closed loop, open loop and trace replay over HTTP.

Names are re-exported lazily (PEP 562) so that ``import aiscale.bench.traces``, which the
simulator uses, does not pay for importing aiohttp and rich (about 0.8 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiscale.bench.command import bench_command, build_config
    from aiscale.bench.loadgen import BenchConfig, BenchResult, ProgressSnapshot, run_bench
    from aiscale.bench.report import bench_progress, render_progress, render_result
    from aiscale.bench.traces import load_arrivals, poisson_arrivals

_WHERE = {
    "BenchConfig": "loadgen",
    "BenchResult": "loadgen",
    "ProgressSnapshot": "loadgen",
    "run_bench": "loadgen",
    "bench_command": "command",
    "build_config": "command",
    "bench_progress": "report",
    "render_progress": "report",
    "render_result": "report",
    "load_arrivals": "traces",
    "poisson_arrivals": "traces",
}

__all__ = [
    "BenchConfig",
    "BenchResult",
    "ProgressSnapshot",
    "bench_command",
    "bench_progress",
    "build_config",
    "load_arrivals",
    "poisson_arrivals",
    "render_progress",
    "render_result",
    "run_bench",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'aiscale.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"aiscale.bench.{module}"), name)
