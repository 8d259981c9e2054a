"""The SLO policy: keep TTFT and ITL p99 under their targets with the fewest replicas.

After NVIDIA Dynamo's SLA planner: the engine's profile says how many prompt and output
tokens per second one replica sustains while meeting TTFT and ITL (``LlmCapacity``); the
fleet is the observed token load divided by that (``replicas_for_tokens``), at a high
utilisation because the capacity is already the SLO's. Two more terms keep it honest:

* **feedback**: the observed p99s against their targets move a correction factor on the
  model's answer. A p99 over its target raises the factor by the overshoot, at most
  ``max_step`` per decision and ``max_correction`` in all; p99s under target (below
  ``low_water`` of it: 0.9, so that a workload whose p99 sits near its target, long prompts'
  TTFT for one, still lets a correction come back down) let it decay by ``decay`` per
  decision toward ``min_correction``
  (1: never below the model, because an LLM's latency is flat until the engine saturates
  and then explodes, so low latency says nothing about how much capacity is spare). A
  profile measured on a quieter machine, or prompts longer than the profile assumed, are
  corrected in a few intervals instead of missing the SLO all day;
* **backlog and cache**: requests already waiting need prefill beyond the arrival rate,
  drained within ``backlog_drain_s`` (``waiting * mean prompt / (prefill rate * drain)``
  replicas; set it to the start-up time: a replica asked for now helps only once ready, and
  asking to drain a burst's queue within one TTFT target buys a fleet ten times too big),
  and a fleet whose KV caches are fuller than ``max_kv_cache_usage`` is growing toward
  preemption, so it asks for at least ``kv sum / max_kv_cache_usage`` replicas.

The correction holds while replicas are starting: a p99 missed then is the start-up's lag
(the model already asked for them), not the model's error, and multiplying the fleet for it
would overshoot every burst.

The wish is then damped as every LLM policy is (``llm_window.py``: scale up at once, down
after a stabilisation window, scale to zero after an idle cooldown).

Pure: no clock, no I/O, no randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import ScalingDecision
from aiscale.scaling.policies.llm_capacity import LlmCapacity, replicas_for_tokens
from aiscale.scaling.policies.llm_observation import LlmScalingObservation
from aiscale.scaling.policies.llm_window import WindowConfig, WindowState, settle

__all__ = ["LlmSloConfig", "LlmSloPolicy", "LlmSloState", "next_correction", "slo_wish"]


@dataclass(frozen=True, slots=True)
class LlmSloConfig:
    """Targets, the replica's capacity at them, and the feedback's knobs."""

    capacity: LlmCapacity
    ttft_target_s: float = 1.0
    itl_target_s: float = 0.1
    target_utilization: float = 0.9
    low_water: float = 0.9
    decay: float = 0.05
    min_correction: float = 1.0
    max_correction: float = 2.0
    max_step: float = 1.25
    max_kv_cache_usage: float = 0.9
    backlog_drain_s: float = 60.0
    window: WindowConfig = WindowConfig(downscale_stabilization_s=120.0)

    def __post_init__(self) -> None:
        for name in ("ttft_target_s", "itl_target_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError("must be a finite number > 0", field=name)
        if not 0 < self.target_utilization <= 1:
            raise ConfigError("must be in (0, 1]", field="target_utilization")
        if not 0 < self.low_water < 1 or not 0 <= self.decay < 1:
            raise ConfigError("low_water in (0, 1), decay in [0, 1)", field="low_water")
        if not 0 < self.min_correction <= 1 <= self.max_correction:
            raise ConfigError(
                "need 0 < min_correction <= 1 <= max_correction", field="min_correction"
            )
        if not (self.backlog_drain_s > 0 and math.isfinite(self.backlog_drain_s)):
            raise ConfigError("must be a finite number > 0", field="backlog_drain_s")
        if not self.max_step >= 1:
            raise ConfigError("must be >= 1", field="max_step")
        if not 0 < self.max_kv_cache_usage <= 1:
            raise ConfigError("must be in (0, 1]", field="max_kv_cache_usage")


@dataclass(frozen=True, slots=True)
class LlmSloState:
    correction: float = 1.0
    window: WindowState = WindowState()


def next_correction(config: LlmSloConfig, obs: LlmScalingObservation, correction: float) -> float:
    if obs.num_starting > 0:
        return correction
    ratios = [
        p99 / target
        for p99, target in (
            (obs.ttft_p99_s, config.ttft_target_s),
            (obs.itl_p99_s, config.itl_target_s),
        )
        if p99 is not None
    ]
    if not ratios:
        return correction
    worst = max(ratios)
    if worst > 1.0:
        return min(config.max_correction, correction * min(worst, config.max_step))
    if worst < config.low_water:
        return max(config.min_correction, correction * (1.0 - config.decay))
    return correction


def slo_wish(
    config: LlmSloConfig, obs: LlmScalingObservation, correction: float
) -> tuple[int, str]:
    """``(replicas wanted before damping, why)`` for ``correction`` on the capacity model."""
    model = replicas_for_tokens(
        config.capacity,
        obs.prompt_tokens_per_s,
        obs.output_tokens_per_s,
        target_utilization=config.target_utilization,
    )
    mean_prompt = (
        obs.prompt_tokens_per_s / obs.arrival_rate_per_s if obs.arrival_rate_per_s else 0.0
    )
    backlog = (
        obs.num_waiting
        * mean_prompt
        / (config.capacity.prompt_tokens_per_s * config.backlog_drain_s)
    )
    kv = obs.kv_cache_usage_sum / config.max_kv_cache_usage
    terms = {"tokens": model * correction, "backlog": model * correction + backlog, "kv": kv}
    name = max(terms, key=lambda k: terms[k])
    # The small epsilon keeps float noise (2.0000000001) from adding a replica.
    wish = max(0, math.ceil(terms[name] - 1e-9))
    return wish, f"{name} {terms[name]:.2f} (x{correction:.2f})"


@dataclass(frozen=True, slots=True)
class LlmSloPolicy:
    """The fewest replicas whose token capacity meets TTFT and ITL, corrected by the p99s."""

    config: LlmSloConfig

    def initial_state(self) -> LlmSloState:
        return LlmSloState()

    def decide(
        self, observation: LlmScalingObservation, state: LlmSloState
    ) -> tuple[ScalingDecision, LlmSloState]:
        correction = next_correction(self.config, observation, state.correction)
        wish, why = slo_wish(self.config, observation, correction)
        decision, window = settle(self.config.window, observation, wish, state.window, why)
        return decision, replace(state, correction=correction, window=window)
