"""The LLM capacity plan: per phase of users, each architecture's fleet, cost and SLO.

For each phase (a number of users making ``requests_per_user`` chat requests a day), a day
of traffic (a trace's shape stretched to the day, or the synthetic daily cycle with
bursts) is replayed in the aggregated simulator against every *architecture* (hardware x
tensor-parallel degree from ``catalog.architectures``, each with its profile) under each
*strategy*: ``static at peak`` (the fleet the capacity model wants at the busiest interval,
at 90% of the capacity at the SLO, all day), and the token-aware policies ``llm-target``,
``llm-slo``, ``llm-predictive`` (never below 2 replicas, for availability). An
outcome meets the SLO when at least ``slo_target`` of the requests got their first token
within the TTFT target and their tokens at the ITL target (``LlmSimResult``). The phase's
**cost ratio** is the costliest outcome meeting the SLO over the cheapest: what choosing the
architecture and the strategy is worth.

Monthly cost = replica-hours per day x 730 / 24 x the replica's hourly price (its devices'
share of the instance). Profiles derived by roofline and prices marked uncertain make an
outcome an estimate (``is_estimate``). Pure computation apart from the callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from aiscale.errors import ConfigError
from aiscale.plan.llm.catalog import Architecture, architectures
from aiscale.plan.llm.oracle import SchedulePolicy, interval_token_rates
from aiscale.plan.llm.profile import LlmProfile
from aiscale.plan.llm.simconfig import LlmSimConfig
from aiscale.plan.llm.simulate import TokenDay, simulate_llm
from aiscale.plan.llm.sizing import TARGET_UTILIZATION, build_llm_policy, capacity_at_slo
from aiscale.plan.llm.workload import TokenMix
from aiscale.plan.traffic import DAY_S, ArrivalCounts, FloatArray, SyntheticTraffic, day_counts
from aiscale.scaling.policies.llm_capacity import replicas_for_tokens

__all__ = [
    "STRATEGIES",
    "LlmOutcome",
    "LlmPhasePlan",
    "LlmPlanResult",
    "default_chat_mix",
    "plan_llm",
]

STRATEGIES = ("static at peak", "llm-target", "llm-slo", "llm-predictive")
HOURS_PER_MONTH = 730.0
#: Every autoscaled fleet keeps two replicas (one lost must not take the service down),
#: as the request/response planner does from 10,000 users on (all LLM phases are).
MIN_REPLICAS = 2


@dataclass(frozen=True, slots=True)
class LlmOutcome:
    """One architecture under one strategy in one phase."""

    hardware: str
    tensor_parallel: int
    instance: str
    strategy: str
    min_replicas: int
    max_replicas: int
    replica_hours_per_day: float
    price_per_replica_hour: float
    monthly_cost_usd: float
    slo_attainment: float
    meets_slo: bool
    ttft_p99_s: float
    tpot_p99_s: float
    is_estimate: bool
    timeline: tuple[tuple[float, int, int], ...] = field(default=(), repr=False)

    @property
    def architecture(self) -> str:
        suffix = "" if self.tensor_parallel == 1 else f" x{self.tensor_parallel}"
        return f"{self.hardware}{suffix}, {self.strategy}"


@dataclass(frozen=True, slots=True)
class LlmPhasePlan:
    num_users: int
    requests_per_day: float
    peak_rate_per_s: float
    outcomes: tuple[LlmOutcome, ...]
    rate_per_minute: tuple[float, ...] = field(default=(), repr=False)

    def meeting(self) -> list[LlmOutcome]:
        return [o for o in self.outcomes if o.meets_slo]

    @property
    def cheapest(self) -> LlmOutcome | None:
        return min(self.meeting(), key=lambda o: o.monthly_cost_usd, default=None)

    @property
    def costliest(self) -> LlmOutcome | None:
        return max(self.meeting(), key=lambda o: o.monthly_cost_usd, default=None)

    @property
    def cost_ratio(self) -> float | None:
        low, high = self.cheapest, self.costliest
        if low is None or high is None or low.monthly_cost_usd <= 0:
            return None
        return high.monthly_cost_usd / low.monthly_cost_usd


@dataclass(frozen=True, slots=True)
class LlmPlanResult:
    model: str
    ttft_slo_s: float
    itl_slo_s: float
    slo_target: float
    requests_per_user: float
    traffic: str
    mean_prompt_tokens: float
    mean_output_tokens: float
    phases: tuple[LlmPhasePlan, ...]
    warnings: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for phase, raw in zip(self.phases, data["phases"], strict=True):
            raw["cost_ratio"] = phase.cost_ratio
            raw["cheapest"] = None if phase.cheapest is None else phase.cheapest.architecture
            raw["costliest"] = None if phase.costliest is None else phase.costliest.architecture
            for outcome in raw["outcomes"]:
                outcome.pop("timeline", None)
            raw.pop("rate_per_minute", None)
        return data


def default_chat_mix(seed: int = 0, size: int = 20_000) -> TokenMix:
    """A chat workload when no trace is given (an assumption, stated in the report):
    prompts log-normal around 700 tokens (system prompt and history), answers around 150,
    both capped to an 8K context."""
    rng = np.random.default_rng([seed, 11])
    prompt = np.clip(np.round(rng.lognormal(math.log(700), 0.9, size)), 16, 7000)
    output = np.clip(np.round(rng.lognormal(math.log(150), 0.8, size)), 1, 1000)
    return TokenMix(prompt.astype(np.int64), output.astype(np.int64))


def _phase_counts(
    num_users: int, requests_per_user: float, trace_times: FloatArray | None, seed: int
) -> ArrivalCounts:
    per_day = num_users * requests_per_user
    if trace_times is not None:
        counts, _, _ = day_counts(trace_times, per_day, seed=seed)
        return counts
    traffic = SyntheticTraffic(
        num_users=num_users, requests_per_user_per_day=requests_per_user, seed=seed
    )
    return traffic.counts(DAY_S)


def _static_peak(day: TokenDay, config: LlmSimConfig, mix: TokenMix) -> int:
    prompt, output = interval_token_rates(day, config)
    capacity = capacity_at_slo(
        config.profile,
        itl_slo_s=config.itl_slo_s,
        mean_prompt=mix.mean_prompt,
        mean_output=mix.mean_output,
        ttft_slo_s=config.ttft_slo_s,
        prompt_tokens=mix.prompt_tokens,
    )
    peak = max(
        (
            replicas_for_tokens(capacity, p, o, target_utilization=TARGET_UTILIZATION)
            for p, o in zip(prompt, output, strict=True)
        ),
        default=1.0,
    )
    return max(1, math.ceil(peak - 1e-9))


def _outcome(
    arch: Architecture, strategy: str, day: TokenDay, config: LlmSimConfig, mix: TokenMix
) -> LlmOutcome:
    profile = arch.profile
    static = max(_static_peak(day, config, mix), MIN_REPLICAS)
    if strategy == "static at peak":
        policy: Any = SchedulePolicy((static,), config.decision_interval_s)
    else:
        policy = build_llm_policy(
            strategy,
            profile,
            ttft_slo_s=config.ttft_slo_s,
            itl_slo_s=config.itl_slo_s,
            mean_prompt=mix.mean_prompt,
            mean_output=mix.mean_output,
            min_replicas=min(MIN_REPLICAS, static),
            prompt_tokens=mix.prompt_tokens,
        )
    cfg = replace(
        config, initial_replicas=static, price_per_replica_hour=arch.price_per_replica_hour
    )
    result = simulate_llm(day, policy, cfg)
    paid = [p for _, p, _ in result.timeline] or [static]
    per_day = result.replica_hours * DAY_S / max(result.duration_s, 1e-9)
    return LlmOutcome(
        hardware=arch.hardware,
        tensor_parallel=arch.tensor_parallel,
        instance=arch.instance,
        strategy=strategy,
        min_replicas=min(paid),
        max_replicas=max(paid),
        replica_hours_per_day=per_day,
        price_per_replica_hour=arch.price_per_replica_hour,
        monthly_cost_usd=per_day * HOURS_PER_MONTH / 24.0 * arch.price_per_replica_hour,
        slo_attainment=result.slo_attainment,
        meets_slo=result.meets(config.slo_target),
        ttft_p99_s=result.ttft_p99_s,
        tpot_p99_s=result.tpot_p99_s,
        is_estimate=profile.provenance.is_estimate or arch.is_price_uncertain,
        timeline=result.timeline,
    )


def plan_llm(
    users: Sequence[int],
    requests_per_user: float,
    model: str,
    *,
    ttft_slo_s: float = 1.0,
    itl_slo_s: float = 0.1,
    slo_target: float = 0.99,
    mix: TokenMix | None = None,
    trace_times: FloatArray | None = None,
    traffic_label: str = "synthetic daily cycle with bursts",
    hardware: tuple[str, ...] | None = None,
    strategies: Sequence[str] = STRATEGIES,
    profile: LlmProfile | None = None,
    step_s: float = 2.0,
    tensor_parallel_variants: int = 1,
    seed: int = 0,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> LlmPlanResult:
    """Plan every phase (module docstring). Raises ``ConfigError`` for bad arguments and
    ``NotFound`` for a model or hardware not in the catalog."""
    if not users or any(u < 1 for u in users):
        raise ConfigError("users must be positive counts", field="users")
    if not requests_per_user > 0:
        raise ConfigError("must be > 0", field="requests_per_user")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ConfigError(
            f"unknown strategy {unknown[0]!r}; expected some of {', '.join(STRATEGIES)}",
            field="strategies",
        )
    archs = architectures(
        model, hardware=hardware, profile=profile, variants=tensor_parallel_variants
    )
    warnings: list[str] = []
    if not archs:
        raise ConfigError(f"{model} fits no hardware in the catalog", field="hardware")
    mix = mix or default_chat_mix(seed)
    if trace_times is None:
        warnings.append(
            "no trace given: token lengths are an assumed chat mix "
            f"(mean prompt {mix.mean_prompt:.0f}, mean output {mix.mean_output:.0f} tokens)"
        )
    total = len(users) * len(archs) * len(strategies)
    done = 0
    phases = []
    for num_users in sorted(users):
        counts = _phase_counts(num_users, requests_per_user, trace_times, seed)
        day = TokenDay(counts, mix)
        outcomes = []
        for arch in archs:
            config = LlmSimConfig(
                profile=arch.profile,
                ttft_slo_s=ttft_slo_s,
                itl_slo_s=itl_slo_s,
                slo_target=slo_target,
                mode="aggregated",
                step_s=step_s,
                history_bin_s=max(60.0, step_s),
                decision_interval_s=max(10.0, step_s),
                seed=seed,
            )
            for strategy in strategies:
                if on_progress is not None:
                    on_progress(done, total, f"{num_users:,} users: {arch.label}, {strategy}")
                outcomes.append(_outcome(arch, strategy, day, config, mix))
                done += 1
        per_minute = counts.counts[: (counts.counts.size // 60) * 60].reshape(-1, 60).sum(axis=1)
        phases.append(
            LlmPhasePlan(
                num_users=num_users,
                requests_per_day=float(counts.num_requests),
                peak_rate_per_s=float(per_minute.max() / 60.0) if per_minute.size else 0.0,
                outcomes=tuple(outcomes),
                rate_per_minute=tuple(float(v) / 60.0 for v in per_minute),
            )
        )
    if on_progress is not None:
        on_progress(total, total, "done")
    return LlmPlanResult(
        model=model,
        ttft_slo_s=ttft_slo_s,
        itl_slo_s=itl_slo_s,
        slo_target=slo_target,
        requests_per_user=requests_per_user,
        traffic=traffic_label,
        mean_prompt_tokens=mix.mean_prompt,
        mean_output_tokens=mix.mean_output,
        phases=tuple(phases),
        warnings=tuple(warnings),
    )
