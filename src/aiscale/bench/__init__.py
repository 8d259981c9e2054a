"""Load generator for ``aiscale bench URL``: closed loop, open loop and trace replay over HTTP;
with ``--chat``, streamed chat completions (``chat*.py``): TTFT, ITL, tokens/s and goodput.

Names are re-exported lazily (PEP 562) so that ``import aiscale.bench.traces``, which the
simulator uses, does not pay for importing aiohttp and rich (about 0.8 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiscale.bench.chat import run_chat_bench
    from aiscale.bench.chat_command import build_chat_config, chat_bench_command
    from aiscale.bench.chat_config import ChatBenchConfig
    from aiscale.bench.chat_results import ChatBenchResult, ChatProgress
    from aiscale.bench.command import bench_command, build_config
    from aiscale.bench.loadgen import BenchConfig, BenchResult, ProgressSnapshot, run_bench
    from aiscale.bench.report import bench_progress, render_progress, render_result
    from aiscale.bench.traces import load_arrivals, poisson_arrivals

_WHERE = {
    "ChatBenchConfig": "chat_config",
    "ChatBenchResult": "chat_results",
    "ChatProgress": "chat_results",
    "build_chat_config": "chat_command",
    "chat_bench_command": "chat_command",
    "run_chat_bench": "chat",
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
    "ChatBenchConfig",
    "ChatBenchResult",
    "ChatProgress",
    "ProgressSnapshot",
    "bench_command",
    "bench_progress",
    "build_chat_config",
    "build_config",
    "chat_bench_command",
    "load_arrivals",
    "poisson_arrivals",
    "render_progress",
    "render_result",
    "run_bench",
    "run_chat_bench",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'aiscale.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"aiscale.bench.{module}"), name)
