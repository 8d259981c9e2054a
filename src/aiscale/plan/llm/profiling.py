"""Measure an LLM profile from a real llama.cpp engine here (``aiscale profile smollm2``).

Starts one engine replica through the engines' own backend (``LlamaCppBackend``: the same
process, threads and settings a deployment runs), then asks llama.cpp's native
``/completion`` for exact prompt tokens (ids from its ``/tokenize``) with the prompt cache
off and end-of-sequence ignored, and reads the engine's own ``timings`` (``prompt_ms``,
``predicted_ms``): the prefill time of each prompt length alone and of ``n`` prompts sent
together (which llama.cpp prefills in one batch: the slowest one's ``prompt_ms`` is the
batch's time), and the per-token decode time at each number of sequences running together,
with short and long contexts. Least squares fit the profile's coefficients
(``LlmProfile.step_s``):

* prefill of ``n`` prompts of ``L`` tokens:
  ``prompt_s = per_token * n * L + per_token_context * n * L * (L - 1) / 2``;
* decode: ``step_s = base + per_seq * n + per_context_token * n * context``.

Start-up is split as the engine reports it: ``load_s`` (weights read and mapped) is the
weight load; the first request's extra time over the same request repeated is the warm-up.
The KV cache is the engine's configured size (``context_window * parallel`` tokens: every
slot holds a whole window).

What the gateway adds (``gateway_overhead_s``) is measured against the engine's own clock:
the same short chat (one output token) is sent ``GATEWAY_SAMPLES`` times to the profiled
engine directly, then to a real ``aiscale serve MODEL`` (a child process, its own engine of
the same settings, data in a temporary folder); each answer's latency at the client minus
the engine's ``timings`` (prefill and decode) is the time spent outside the engine. The
overhead is the median through the gateway minus the median direct (HTTP on loopback is in
both), at least 0. An explicit ``gateway_overhead_s`` skips that step.

Never downloads anything; the model is found by ``aiscale.engines.models.locate_model``.
Timings on a shared or loaded machine are not results: profile on a quiet one.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from aiscale.engines.llamacpp import LlamaCppBackend
from aiscale.engines.models import locate_model
from aiscale.engines.spec import EngineSpec
from aiscale.errors import ConfigError, ModelLoadError
from aiscale.plan.live_server import served
from aiscale.plan.llm.profile import LlmProfile, Provenance

__all__ = ["EngineTimings", "fit_profile", "measure_llamacpp", "profile_llamacpp"]

_TIMEOUT = httpx.Timeout(300.0, connect=10.0)
#: Requests sent each way (direct, through the gateway) to measure what the gateway adds.
GATEWAY_SAMPLES = 25


@dataclass(frozen=True, slots=True)
class EngineTimings:
    """What was measured: ``(sequences, prompt tokens each, prefill s)`` and ``(sequences,
    context tokens, decode s per token)`` points, and the start-up parts."""

    prefill: tuple[tuple[int, int, float], ...]
    decode: tuple[tuple[int, float, float], ...]
    weight_load_s: float
    warmup_s: float


async def _tokens(client: httpx.AsyncClient, count: int) -> list[int]:
    reply = await client.post("/tokenize", json={"content": "the quick brown fox " * count})
    reply.raise_for_status()
    tokens = [int(t) for t in reply.json()["tokens"]]
    if len(tokens) < count:
        raise ModelLoadError(f"could not build a prompt of {count} tokens")
    return tokens[:count]


async def _complete(
    client: httpx.AsyncClient, prompt: list[int], n_predict: int
) -> dict[str, float]:
    body = {
        "prompt": prompt,
        "n_predict": n_predict,
        "ignore_eos": True,
        "cache_prompt": False,
        "temperature": 0.0,
    }
    reply = await client.post("/completion", json=body)
    reply.raise_for_status()
    timings: dict[str, float] = reply.json()["timings"]
    return timings


async def measure_llamacpp(
    url: str,
    *,
    prompt_lengths: Sequence[int] = (64, 256, 1024),
    concurrencies: Sequence[int] = (1, 2, 4),
    decode_tokens: int = 32,
    long_context: int = 1024,
    repeats: int = 2,
) -> tuple[list[tuple[int, int, float]], list[tuple[int, float, float]], float]:
    """Prefill points (every prompt length alone; the shortest at each concurrency, as one
    batch) and decode points from a running engine at ``url``, and the first request's extra
    time over its repeats (the warm-up)."""
    async with httpx.AsyncClient(base_url=url, timeout=_TIMEOUT) as client:
        short = await _tokens(client, 32)
        first = await _complete(client, short, 2)
        again = [await _complete(client, short, 2) for _ in range(2)]
        total = [t["prompt_ms"] + t["predicted_ms"] for t in again]
        warmup_s = max(0.0, (first["prompt_ms"] + first["predicted_ms"] - min(total)) / 1000)
        prefill = []
        for length in prompt_lengths:
            prompt = await _tokens(client, length)
            times = [(await _complete(client, prompt, 1))["prompt_ms"] for _ in range(repeats)]
            prefill.append((1, length, statistics.median(times) / 1000))
        shortest = await _tokens(client, min(prompt_lengths))
        for n in (c for c in concurrencies if c > 1):
            batch_ms = []
            for _ in range(repeats):
                runs = await asyncio.gather(*(_complete(client, shortest, 1) for _ in range(n)))
                batch_ms.append(max(t["prompt_ms"] for t in runs))
            prefill.append((n, len(shortest), statistics.median(batch_ms) / 1000))
        decode = []
        for context in sorted({32, long_context}):
            prompt = await _tokens(client, context)
            for n in concurrencies:
                per_token = []
                for _ in range(repeats):
                    runs = await asyncio.gather(
                        *(_complete(client, prompt, decode_tokens) for _ in range(n))
                    )
                    per_token += [t["predicted_ms"] / max(t["predicted_n"], 1) for t in runs]
                mean_context = context + decode_tokens / 2
                decode.append((n, float(mean_context), statistics.median(per_token) / 1000))
    return prefill, decode, warmup_s


def _nonnegative_lstsq(design: np.ndarray[Any, Any], target: np.ndarray[Any, Any]) -> list[float]:
    """Least squares, then any negative coefficient dropped and the rest refitted (a
    negative cost per token is noise, not physics)."""
    keep = list(range(design.shape[1]))
    coefs = np.zeros(design.shape[1])
    while keep:
        solution, *_ = np.linalg.lstsq(design[:, keep], target, rcond=None)
        if (solution >= 0).all():
            coefs[keep] = solution
            break
        keep = [k for k, c in zip(keep, solution, strict=True) if c >= 0]
    return [float(c) for c in coefs]


def fit_profile(
    timings: EngineTimings,
    *,
    model: str,
    hardware: str,
    kv_capacity_tokens: int,
    max_num_seqs: int,
    max_batched_tokens: int,
    max_context_tokens: int,
    gateway_overhead_s: float,
    measured_on: str,
    gateway_note: str = "gateway overhead given, not measured",
) -> LlmProfile:
    """The profile whose step times best fit ``timings`` (module docstring)."""
    sequences = np.array([p[0] for p in timings.prefill], dtype=np.float64)
    lengths = np.array([p[1] for p in timings.prefill], dtype=np.float64)
    prompt_s = np.array([p[2] for p in timings.prefill])
    per_token, per_token_context = _nonnegative_lstsq(
        np.column_stack([sequences * lengths, sequences * lengths * (lengths - 1) / 2]), prompt_s
    )
    n = np.array([d[0] for d in timings.decode], dtype=np.float64)
    context = np.array([d[1] for d in timings.decode])
    step = np.array([d[2] for d in timings.decode])
    base, per_seq, per_context = _nonnegative_lstsq(
        np.column_stack([np.ones_like(n), n, n * context]), step
    )
    if base + per_seq <= 0:  # noise left only the context term: a step still costs its floor
        base = float(step.min())
    return LlmProfile(
        model=model,
        hardware=hardware,
        step_base_s=base,
        decode_per_seq_s=per_seq,
        decode_per_context_token_s=per_context,
        prefill_per_token_s=max(per_token, 1e-9),
        prefill_per_token_context_s=per_token_context,
        kv_capacity_tokens=kv_capacity_tokens,
        max_num_seqs=max_num_seqs,
        max_batched_tokens=max_batched_tokens,
        max_context_tokens=max_context_tokens,
        weight_load_s=timings.weight_load_s,
        warmup_s=timings.warmup_s,
        gateway_overhead_s=gateway_overhead_s,
        provenance=Provenance(
            source=f"aiscale profile (llama.cpp timings) on {measured_on}",
            date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
            is_estimate=False,
            notes=f"prefill points {list(timings.prefill)}; decode points "
            f"{list(timings.decode)}; {gateway_note}",
        ),
    )


async def profile_llamacpp(
    model: str = "smollm2",
    *,
    parallel: int = 4,
    threads: int | None = None,
    context_window: int = 2048,
    hardware: str = "CPU",
    prompt_lengths: Sequence[int] = (64, 256, 1024),
    concurrencies: Sequence[int] = (1, 2, 4),
    decode_tokens: int = 32,
    repeats: int = 2,
    gateway_overhead_s: float | None = None,
    measured_on: str = "this machine",
) -> LlmProfile:
    """Start one engine of ``model``, measure it, stop it, and fit its profile; then, unless
    ``gateway_overhead_s`` is given, measure what ``aiscale serve`` adds (module docstring)."""
    spec = EngineSpec(
        kind="llamacpp",
        model=str(locate_model(model)),
        served_model_name=model,
        context_window=context_window,
        parallel=parallel,
        threads=threads,
        max_output_tokens=min(max(decode_tokens + 1, 2), context_window - 1),
    )
    fitting = [c for c in prompt_lengths if c + decode_tokens < context_window]
    if not fitting:
        raise ConfigError(
            f"a context window of {context_window} tokens holds none of the prompt lengths "
            f"{list(prompt_lengths)} plus {decode_tokens} output tokens",
            field="context_window",
        )
    backend = LlamaCppBackend(spec)
    handle, info = await backend.spawn(0, num_replicas=1, lease=None)
    try:
        prefill, decode, warmup_s = await measure_llamacpp(
            handle.url,
            prompt_lengths=[c for c in prompt_lengths if c < context_window],
            concurrencies=[c for c in concurrencies if c <= parallel],
            decode_tokens=decode_tokens,
            long_context=max(fitting),
            repeats=repeats,
        )
        direct = (
            await asyncio.to_thread(_outside_engine_s, handle.url, spec.served_model_name)
            if gateway_overhead_s is None else []
        )  # fmt: skip
    finally:
        await backend.stop(handle, 30.0)
        await backend.wait_dead(handle)
    gateway_note = "gateway overhead given, not measured"
    if gateway_overhead_s is None:
        through = await asyncio.to_thread(_outside_gateway_s, model, threads)
        gateway_overhead_s = max(0.0, statistics.median(through) - statistics.median(direct))
        gateway_note = (
            f"gateway overhead measured: outside the engine {statistics.median(through) * 1e3:.2f}"
            f" ms through aiscale serve, {statistics.median(direct) * 1e3:.2f} ms direct "
            f"(medians of {len(through)} and {len(direct)} requests)"
        )
    timings = EngineTimings(tuple(prefill), tuple(decode), info.load_s, warmup_s)
    return fit_profile(
        timings,
        model=model,
        hardware=hardware,
        kv_capacity_tokens=spec.total_context_tokens,
        max_num_seqs=parallel,
        max_batched_tokens=2048,
        max_context_tokens=context_window,
        gateway_overhead_s=gateway_overhead_s,
        measured_on=measured_on,
        gateway_note=gateway_note,
    )


def _outside_engine_s(url: str, model: str, samples: int = GATEWAY_SAMPLES) -> list[float]:
    """Per request: seconds at the client minus the engine's own prefill and decode time,
    for a short chat with one output token (each one different, so nothing is cached)."""
    spent = []
    with httpx.Client(base_url=url, timeout=_TIMEOUT) as client:
        for index in range(samples + 1):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"Request {index}: say yes."}],
                "max_tokens": 1,
            }
            started = time.perf_counter()
            answer = client.post("/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - started
            answer.raise_for_status()
            timings = answer.json().get("timings") or {}
            engine_s = (timings.get("prompt_ms", 0.0) + timings.get("predicted_ms", 0.0)) / 1e3
            if index:  # the first one warms connections and the engine up
                spent.append(elapsed - engine_s)
    return spent


def _outside_gateway_s(model: str, threads: int | None) -> list[float]:
    """``_outside_engine_s`` through a real ``aiscale serve MODEL`` in a child process."""
    with (
        tempfile.TemporaryDirectory(prefix="aiscale-llm-profile-") as folder,
        served(model, folder, Path(folder), os.environ, 120.0, num_threads=threads) as url,
    ):
        listed = httpx.get(f"{url}/v1/models", timeout=10.0).json()["data"]
        names = [m["id"] for m in listed]
        if not names:
            raise ModelLoadError(f"aiscale serve {model} lists no model at {url}/v1/models")
        return _outside_engine_s(url, names[0])
