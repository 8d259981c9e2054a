"""Target tracking on waiting requests and KV-cache use: the rule llm-d and KServe run with KEDA.

KServe's LLM autoscaling and the vLLM production stack scale a vLLM deployment with a KEDA
``ScaledObject`` whose Prometheus triggers read the engines' ``vllm:num_requests_waiting``
and KV-cache use (``vllm:gpu_cache_usage_perc`` / ``kv_cache_usage_perc``); each trigger's
metric type is ``AverageValue``, so KEDA's HPA asks for ``ceil(sum over pods / target)``
replicas per trigger and takes the largest. We read the same two sums (optionally also
running requests, KServe's example trigger) and damp the result as HPA does
(``llm_window.py``: tolerance, stabilisation windows, scale-up limit, KEDA's scale to zero).

Why both signals: with continuous batching a replica admits requests until its KV cache is
full, so its queue stays empty until the cache is; KV use is the early signal, waiting
requests the late one that catches a burst of long prompts. The targets are the operator's
(the cited docs leave them open); the defaults here, 2 waiting per replica and 80% of the
cache, are ours.

Pure: no clock, no I/O, no randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import ScalingDecision
from aiscale.scaling.policies.llm_observation import LlmScalingObservation
from aiscale.scaling.policies.llm_window import WindowConfig, WindowState, settle

__all__ = ["LlmTargetConfig", "LlmTargetPolicy", "target_wish"]


@dataclass(frozen=True, slots=True)
class LlmTargetConfig:
    """Per-replica targets of each trigger; ``None`` leaves a trigger out."""

    target_waiting_per_replica: float | None = 2.0
    target_kv_cache_usage: float | None = 0.8
    target_running_per_replica: float | None = None
    #: HPA's tolerance: no change while the wish is within this share of the current count.
    tolerance: float = 0.1
    window: WindowConfig = WindowConfig()

    def __post_init__(self) -> None:
        targets = (
            self.target_waiting_per_replica,
            self.target_kv_cache_usage,
            self.target_running_per_replica,
        )
        if all(t is None for t in targets):
            raise ConfigError("at least one trigger is needed", field="target_kv_cache_usage")
        for name, value in zip(
            ("target_waiting_per_replica", "target_kv_cache_usage", "target_running_per_replica"),
            targets,
            strict=True,
        ):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError("must be a finite number > 0 or None", field=name)
        if self.target_kv_cache_usage is not None and self.target_kv_cache_usage > 1:
            raise ConfigError("a share of the cache: at most 1", field="target_kv_cache_usage")
        if not 0 <= self.tolerance < 1:
            raise ConfigError("must be in [0, 1)", field="tolerance")


def target_wish(config: LlmTargetConfig, observation: LlmScalingObservation) -> tuple[int, str]:
    """``(ceil of the largest trigger's sum / target, which trigger)`` before damping."""
    raw: list[tuple[float, str]] = []
    if config.target_waiting_per_replica is not None:
        raw.append((observation.num_waiting / config.target_waiting_per_replica, "waiting"))
    if config.target_kv_cache_usage is not None:
        raw.append((observation.kv_cache_usage_sum / config.target_kv_cache_usage, "kv"))
    if config.target_running_per_replica is not None:
        raw.append((observation.num_running / config.target_running_per_replica, "running"))
    value, name = max(raw)
    current = observation.num_replicas
    if current > 0 and abs(value / current - 1.0) <= config.tolerance:
        return current, f"{name} within tolerance"
    # The small epsilon keeps float noise (2.0000000001) from adding a replica.
    return max(0, math.ceil(value - 1e-9)), f"{name} {value:.2f} replicas' worth"


@dataclass(frozen=True, slots=True)
class LlmTargetPolicy:
    """KEDA/HPA target tracking on the engines' waiting requests and KV-cache use."""

    config: LlmTargetConfig = LlmTargetConfig()

    def initial_state(self) -> WindowState:
        return WindowState()

    def decide(
        self, observation: LlmScalingObservation, state: WindowState
    ) -> tuple[ScalingDecision, WindowState]:
        wish, why = target_wish(self.config, observation)
        return settle(self.config.window, observation, wish, state, why)
