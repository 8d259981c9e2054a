"""Replay LLM traffic through engine replicas under a token-aware scaling policy.

``simulate_llm`` runs ``config.mode``: ``exact`` (per request, per engine step:
``plan/llm/exact.py``) or ``aggregated`` (a token fluid per time step:
``plan/llm/aggregated.py``). The workload is either ``TokenRequests`` (rows) or a
``TokenDay`` (per-step counts and a token mix: a day of tens of millions of requests that is
never materialised; aggregated mode only, or drawn into rows for the exact mode).
``compare_llm_modes`` runs both on the same rows and reports the aggregated mode's error.

The policies are the live ones (``aiscale.scaling.policies.llm_*``). No clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from aiscale.errors import ConfigError
from aiscale.plan.llm.aggregated import StepInputs, run_aggregated
from aiscale.plan.llm.exact import run_exact
from aiscale.plan.llm.simconfig import LlmSimConfig, LlmSimResult
from aiscale.plan.llm.workload import TokenMix, TokenRequests, requests_from_counts
from aiscale.plan.traffic import ArrivalCounts
from aiscale.scaling.policies.llm_observation import LlmScalingPolicy

__all__ = ["LlmModeComparison", "TokenDay", "compare_llm_modes", "simulate_llm", "step_inputs"]


@dataclass(frozen=True, slots=True, eq=False)
class TokenDay:
    """Arrivals as per-step counts with their token mix (``workload.token_day``)."""

    counts: ArrivalCounts
    mix: TokenMix

    @property
    def num_requests(self) -> int:
        return self.counts.num_requests


def step_inputs(workload: TokenRequests | TokenDay, config: LlmSimConfig) -> StepInputs:
    """The aggregated mode's per-step input for ``workload`` at ``config.step_s``."""
    max_context = config.profile.max_context_tokens
    if isinstance(workload, TokenRequests):
        fits = workload.prompt_tokens + workload.output_tokens <= max_context
        kept = TokenRequests(
            workload.times_s[fits],
            workload.prompt_tokens[fits],
            workload.output_tokens[fits],
            workload.duration_s,
            None if workload.session is None else workload.session[fits],
            None if workload.reusable_tokens is None else workload.reusable_tokens[fits],
        )
        counts, prompt, output, reusable = kept.per_step(config.step_s)
        num_steps = counts.size
        index = np.minimum((workload.times_s // config.step_s).astype(np.int64), num_steps - 1)
        rejected = np.bincount(index[~fits], minlength=num_steps).astype(np.float64)
        mix = workload.mix()
        return StepInputs(
            counts.astype(np.float64), prompt, output, reusable, rejected, mix,
            config.step_s, max_context,
        )  # fmt: skip
    day_counts = workload.counts
    ratio = config.step_s / day_counts.step_s
    group = round(ratio)
    if group < 1 or not math.isclose(ratio, group):
        raise ConfigError("step_s must be a whole multiple of the counts' step", field="step_s")
    raw = day_counts.counts.astype(np.float64)
    num_steps = math.ceil(raw.size / group)
    padded = np.zeros(num_steps * group)
    padded[: raw.size] = raw
    per_step = padded.reshape(num_steps, group).sum(axis=1)
    mix = workload.mix
    fits = mix.prompt_tokens + mix.output_tokens <= max_context
    share = float(fits.mean())
    prompt_mean = float(mix.prompt_tokens[fits].mean()) if fits.any() else 0.0
    output_mean = float(mix.output_tokens[fits].mean()) if fits.any() else 0.0
    admitted = per_step * share
    return StepInputs(
        admitted, admitted * prompt_mean, admitted * output_mean, np.zeros(num_steps),
        per_step * (1 - share), mix, config.step_s, max_context,
    )  # fmt: skip


def simulate_llm(
    workload: TokenRequests | TokenDay, policy: LlmScalingPolicy[Any], config: LlmSimConfig
) -> LlmSimResult:
    """Run ``config.mode`` over ``workload`` with ``policy`` (module docstring). A
    ``TokenDay`` in exact mode is first drawn into rows (seed ``config.seed``)."""
    if config.mode == "exact":
        if isinstance(workload, TokenDay):
            workload = requests_from_counts(workload.counts, workload.mix, seed=config.seed)
        return run_exact(workload, policy, config)
    return run_aggregated(step_inputs(workload, config), policy, config)


@dataclass(frozen=True, slots=True)
class LlmModeComparison:
    """The aggregated mode against the exact mode on one input: relative errors (absolute
    for SLO attainment, a difference of shares)."""

    exact: LlmSimResult
    aggregated: LlmSimResult
    errors: dict[str, float]

    @property
    def worst(self) -> tuple[str, float]:
        name = max(
            self.errors, key=lambda k: -1.0 if math.isnan(self.errors[k]) else self.errors[k]
        )
        return name, self.errors[name]


def _relative(approx: float, exact: float) -> float:
    if math.isnan(approx) or math.isnan(exact):
        return math.nan
    return abs(approx - exact) / max(abs(exact), 1e-12)


def compare_llm_modes(
    requests: TokenRequests,
    make_policy: Callable[[], LlmScalingPolicy[Any]],
    config: LlmSimConfig,
) -> LlmModeComparison:
    """Both modes on ``requests`` (a fresh policy each)."""
    if requests.num_requests == 0:
        raise ConfigError("nothing to compare: no requests", field="requests")
    exact = run_exact(requests, make_policy(), replace(config, mode="exact"))
    aggregated = run_aggregated(
        step_inputs(requests, config), make_policy(), replace(config, mode="aggregated")
    )
    errors = {
        name: _relative(getattr(aggregated, name), getattr(exact, name))
        for name in (
            "ttft_p50_s",
            "ttft_p99_s",
            "itl_p50_s",
            "itl_p99_s",
            "tpot_p50_s",
            "tpot_p99_s",
            "replica_hours",
            "output_tokens_per_s",
        )
    }
    errors["slo_attainment"] = abs(aggregated.slo_attainment - exact.slo_attainment)
    return LlmModeComparison(exact=exact, aggregated=aggregated, errors=errors)
