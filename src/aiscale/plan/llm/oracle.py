"""The LLM oracle: the fewest replica-hours meeting the TTFT/ITL SLO, by search in the simulator.

Knowing every interval's prompt and output tokens ahead, which replica schedule meets
``slo_target`` with the fewest replica-hours? The search is over a one-parameter family
scaled from the capacity model, judged by the simulator itself:

1. **Need per interval.** ``need[j](f) = ceil(f * replicas_for_tokens(capacity, P_j, O_j))``
   (at full utilisation of the capacity at the SLO, ``sizing.capacity_at_slo``, with the
   prefill share its TTFT bound allows), at least one replica, for the interval's token
   rates ``P_j``, ``O_j``.
2. **Start-up.** A replica asked for at decision ``i`` is ready ``s = ceil(startup /
   interval)`` intervals later, so the schedule pays ``max(need[i .. i + s])`` at ``i``.
3. **Judged by the simulator.** ``f`` is raised from 1 until the replay meets the target,
   then bisected down (``num_bisections``), keeping the cheapest schedule that met it.

**Bound and gap.** No schedule meeting the SLO pays less than the engine time the tokens
need at the best rates the SLO allows: prompt tokens at the pure prefill rate (no
attention term) and output tokens at the largest batch whose decode-only step is within the
ITL target (and whose contexts fit the cache), with perfect packing, no queueing and no
start-up: ``sum_j interval * (P_j / prefill + O_j / decode)``. It ignores the 1 - target
share of requests allowed to miss, which could in principle be served slower.
``optimality_gap = oracle replica-hours / bound``; a one-parameter family leaves room
between them (per-interval slack is not searched), so the gap states how far the oracle
may be from the true minimum, not that it is that far. The oracle is therefore not a true
minimum, and the bound is loosest where prompts queue for prefill: with long prompts the
TTFT target caps the share of time a replica may prefill (``sizing.max_prefill_share``),
which the bound ignores, so most of a prefill-heavy day's gap is the bound's, not the
oracle's.

Pure computation: no clock, no I/O; progress goes to an injected callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from aiscale.plan.llm.simconfig import LlmSimConfig, LlmSimResult
from aiscale.plan.llm.simulate import TokenDay, simulate_llm, step_inputs
from aiscale.plan.llm.sizing import capacity_at_slo
from aiscale.plan.llm.workload import TokenRequests
from aiscale.plan.traffic import FloatArray, IntArray
from aiscale.scaling.policies.base import ScalingDecision
from aiscale.scaling.policies.llm_capacity import replicas_for_tokens
from aiscale.scaling.policies.llm_observation import LlmScalingObservation

__all__ = [
    "LlmOracleResult",
    "SchedulePolicy",
    "interval_token_rates",
    "search_llm_oracle",
    "token_bound_replica_hours",
]


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    """Pays ``schedule[i]`` replicas from decision ``i`` on (``interval_s`` apart)."""

    schedule: tuple[int, ...]
    interval_s: float

    def initial_state(self) -> None:
        return None

    def decide(
        self, observation: LlmScalingObservation, state: None
    ) -> tuple[ScalingDecision, None]:
        index = min(int(observation.now_s / self.interval_s + 1e-9), len(self.schedule) - 1)
        return ScalingDecision(self.schedule[max(index, 0)], "schedule"), None


@dataclass(frozen=True, slots=True)
class LlmOracleResult:
    schedule: tuple[int, ...]
    result: LlmSimResult
    factor: float
    bound_replica_hours: float
    num_simulations: int

    @property
    def optimality_gap(self) -> float:
        if self.bound_replica_hours <= 0:
            return math.nan
        return self.result.replica_hours / self.bound_replica_hours


def interval_token_rates(
    workload: TokenRequests | TokenDay, config: LlmSimConfig
) -> tuple[FloatArray, FloatArray]:
    """Prompt and output tokens/s per decision interval."""
    inputs = step_inputs(workload, config)
    group = max(1, round(config.decision_interval_s / config.step_s))
    n = math.ceil(inputs.num_steps / group)
    out = []
    for values in (inputs.prompt, inputs.output):
        padded = np.zeros(n * group)
        padded[: values.size] = values
        out.append(padded.reshape(n, group).sum(axis=1) / (group * config.step_s))
    return out[0], out[1]


def token_bound_replica_hours(workload: TokenRequests | TokenDay, config: LlmSimConfig) -> float:
    """The engine-time bound of the module docstring, in replica-hours."""
    profile = config.profile
    inputs = step_inputs(workload, config)
    context = inputs.mean_prompt + inputs.mean_output / 2
    fit = max(1, int(profile.kv_capacity_tokens // max(context, 1.0)))
    best = 1
    for n in range(1, max(1, min(profile.max_num_seqs, fit)) + 1):
        if profile.step_s(n, n * context) <= config.itl_slo_s:
            best = n
    decode = best / profile.step_s(best, best * context)
    seconds = (
        float(inputs.prompt.sum()) * profile.prefill_per_token_s
        + float(inputs.output.sum()) / decode
    )
    return seconds / 3600.0


def _schedule(
    prompt: FloatArray,
    output: FloatArray,
    factor: float,
    config: LlmSimConfig,
    mean_prompt: float,
    mean_output: float,
    prompt_tokens: IntArray,
) -> tuple[int, ...]:
    capacity = capacity_at_slo(
        config.profile,
        itl_slo_s=config.itl_slo_s,
        mean_prompt=mean_prompt,
        mean_output=mean_output,
        ttft_slo_s=config.ttft_slo_s,
        prompt_tokens=prompt_tokens,
    )
    need = [
        max(1, math.ceil(factor * replicas_for_tokens(capacity, p, o, target_utilization=1.0)))
        for p, o in zip(prompt, output, strict=True)
    ]
    ahead = math.ceil(config.profile.startup_s / config.decision_interval_s - 1e-9)
    return tuple(max(need[i : i + ahead + 1]) for i in range(len(need)))


def search_llm_oracle(
    workload: TokenRequests | TokenDay,
    config: LlmSimConfig,
    *,
    slo_target: float | None = None,
    num_bisections: int = 6,
    max_factor: float = 8.0,
    on_progress: Callable[[str], None] | None = None,
) -> LlmOracleResult:
    """Search the schedule family (module docstring) in ``config.mode``."""
    target = config.slo_target if slo_target is None else slo_target
    prompt, output = interval_token_rates(workload, config)
    inputs = step_inputs(workload, config)
    simulations = 0
    found: tuple[float, tuple[int, ...], LlmSimResult] | None = None

    def run(factor: float) -> tuple[tuple[int, ...], LlmSimResult]:
        nonlocal simulations
        schedule = _schedule(
            prompt, output, factor, config, inputs.mean_prompt, inputs.mean_output,
            inputs.prompt_sample,
        )  # fmt: skip
        cfg = replace(config, initial_replicas=schedule[0])
        result = simulate_llm(workload, SchedulePolicy(schedule, config.decision_interval_s), cfg)
        simulations += 1
        if on_progress is not None:
            on_progress(
                f"factor {factor:.3f}: {result.replica_hours:.1f} replica-h, "
                f"{result.slo_attainment:.4f} in SLO"
            )
        return schedule, result

    low, high = 0.0, 1.0
    while True:
        schedule, result = run(high)
        if result.meets(target):
            found = (high, schedule, result)
            break
        low = high
        if high >= max_factor:
            break
        high = min(high * 1.5, max_factor)
    if found is None:  # nothing met the target: the largest factor tried, reported as is
        found = (high, schedule, result)
    else:
        low = max(low, high / 1.5 if high > 1.0 else 0.3)
        for _ in range(num_bisections):
            middle = (low + high) / 2
            schedule, result = run(middle)
            if result.meets(target):
                high = middle
                if result.replica_hours < found[2].replica_hours:
                    found = (middle, schedule, result)
            else:
                low = middle
    factor, schedule, result = found
    return LlmOracleResult(
        schedule=schedule,
        result=result,
        factor=factor,
        bound_replica_hours=token_bound_replica_hours(workload, config),
        num_simulations=simulations,
    )
