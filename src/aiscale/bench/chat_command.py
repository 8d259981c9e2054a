"""``aiscale bench URL --chat``: command-line values in, a ``ChatBenchResult`` out.

``build_chat_config`` validates the arguments (``InvalidInput`` naming the flag, before any
request); ``chat_bench_command`` runs the chat bench on a fresh event loop (uvloop when
installed) and returns the result; the Typer command only wires flags and prints. This module
never prints and never exits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from aiscale.bench.chat import run_chat_bench
from aiscale.bench.chat_config import ChatBenchConfig
from aiscale.bench.chat_results import ChatBenchResult, ChatProgress
from aiscale.bench.command import DEFAULT_DURATION_S, parse_header
from aiscale.errors import InvalidInput

__all__ = ["build_chat_config", "chat_bench_command"]


def build_chat_config(
    url: str,
    *,
    concurrency: int = 1,
    rate: float | None = None,
    trace: str | Path | None = None,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    requests: int | None = None,
    duration: float | None = None,
    warmup: float = 0.0,
    model: str | None = None,
    headers: Sequence[str] = (),
    seed: int = 0,
    timeout: float = 60.0,
    max_outstanding: int = 256,
    max_tokens: int = 64,
    prompt_tokens: int = 128,
    ignore_eos: bool = True,
    turns: int = 1,
    think_time: float = 1.0,
    system_tokens: int = 0,
    slo_ttft_ms: float = 1000.0,
    slo_itl_ms: float = 100.0,
    max_context: int | None = None,
    calibrate: bool = True,
) -> ChatBenchConfig:
    """Validate the arguments and return the run's config (raises ``InvalidInput``).

    Without --requests and --duration, closed loop, open loop and conversations run for
    ``DEFAULT_DURATION_S``; a trace runs to its end.
    """
    if trace is None and requests is None and duration is None:
        duration = DEFAULT_DURATION_S
    if model is not None and not model.strip():
        raise InvalidInput("--model must not be empty", field="model")
    return ChatBenchConfig(
        url=url,
        concurrency=concurrency,
        rate_per_s=rate,
        trace_path=None if trace is None else Path(trace),
        rate_scale=rate_scale,
        time_scale=time_scale,
        num_requests=requests,
        duration_s=duration,
        warmup_s=warmup,
        model=model,
        headers=tuple(parse_header(h) for h in headers),
        seed=seed,
        timeout_s=timeout,
        max_outstanding=max_outstanding,
        max_tokens=max_tokens,
        prompt_tokens=prompt_tokens,
        ignore_eos=ignore_eos,
        turns=turns,
        think_time_s=think_time,
        system_tokens=system_tokens,
        slo_ttft_ms=slo_ttft_ms,
        slo_itl_ms=slo_itl_ms,
        context_tokens=max_context,
        is_calibrated=calibrate,
    )


def chat_bench_command(
    config: ChatBenchConfig, *, on_progress: Callable[[ChatProgress], None] | None = None
) -> ChatBenchResult:
    """Run ``config`` (from ``build_chat_config``) on a new event loop; return its result.

    Must not be called from inside a running loop (use ``run_chat_bench`` there).
    """
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(run_chat_bench(config, on_progress=on_progress))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
