"""Token-aware policies by name, from one flat mapping of knobs (config files, CLI, benchmarks).

Names (``LLM_POLICY_NAMES``):

- ``llm-static``: a fixed fleet (``num_replicas``), the baseline;
- ``llm-target``: KEDA/HPA target tracking on waiting requests and KV-cache use
  (``llm_target.py``; knobs ``target_waiting_per_replica``, ``target_kv_cache_usage``,
  ``target_running_per_replica``, ``tolerance``);
- ``llm-slo``: the fewest replicas meeting TTFT/ITL p99 (``llm_slo.py``; knobs ``capacity``
  (an ``LlmCapacity`` or its fields as a dict), ``ttft_target_s``, ``itl_target_s``,
  ``target_utilization``, ``low_water``, ``decay``, ``min_correction``, ``max_correction``,
  ``max_step``, ``max_kv_cache_usage``, ``backlog_drain_s``);
- ``llm-predictive``: forecast prompt and output tokens/s (``llm_predictive.py``; the
  ``llm-slo`` knobs plus ``startup_s``, ``lookahead_s``, ``level_window_s``, ``season_s``,
  ``headroom``, ``burst_sigmas``, ``max_headroom``).

Every policy but ``llm-static`` also takes the damping knobs of ``WindowConfig``
(``min_replicas``, ``max_replicas``, ``upscale_stabilization_s``,
``downscale_stabilization_s``, ``scale_to_zero_delay_s``, ``max_step_up_fraction``,
``max_step_up_pods``). Unknown names or knobs raise ``ConfigError``. Pure: the standard
library only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import ScalingDecision
from aiscale.scaling.policies.llm_capacity import LlmCapacity
from aiscale.scaling.policies.llm_observation import LlmScalingObservation, LlmScalingPolicy
from aiscale.scaling.policies.llm_predictive import LlmPredictiveConfig, LlmPredictivePolicy
from aiscale.scaling.policies.llm_slo import LlmSloConfig, LlmSloPolicy
from aiscale.scaling.policies.llm_target import LlmTargetConfig, LlmTargetPolicy
from aiscale.scaling.policies.llm_window import WindowConfig

__all__ = ["LLM_POLICY_NAMES", "LlmStaticPolicy", "make_llm_policy"]

LLM_POLICY_NAMES = ("llm-static", "llm-target", "llm-slo", "llm-predictive")

_WINDOW_KNOBS = frozenset(f.name for f in fields(WindowConfig))
_PREDICTIVE_OWN = frozenset(f.name for f in fields(LlmPredictiveConfig)) - {"slo"}


@dataclass(frozen=True, slots=True)
class LlmStaticPolicy:
    """Always ``num_replicas``; its state is ``None``."""

    num_replicas: int = 1

    def __post_init__(self) -> None:
        if self.num_replicas < 0:
            raise ConfigError("must be >= 0", field="num_replicas")

    def initial_state(self) -> None:
        return None

    def decide(
        self, observation: LlmScalingObservation, state: None
    ) -> tuple[ScalingDecision, None]:
        return ScalingDecision(self.num_replicas, "static"), None


def _split(knobs: dict[str, Any], names: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        {k: v for k, v in knobs.items() if k in names},
        {k: v for k, v in knobs.items() if k not in names},
    )


def _slo_config(knobs: dict[str, Any], window: WindowConfig) -> LlmSloConfig:
    capacity = knobs.pop("capacity", None)
    if isinstance(capacity, dict):
        capacity = LlmCapacity(**capacity)
    if not isinstance(capacity, LlmCapacity):
        raise ConfigError("needs capacity (LlmCapacity or its fields)", field="capacity")
    return LlmSloConfig(capacity=capacity, window=window, **knobs)


def make_llm_policy(name: str, **knobs: Any) -> LlmScalingPolicy[Any]:
    """The policy ``name`` (module docstring) built from ``knobs``."""
    try:
        if name == "llm-static":
            return LlmStaticPolicy(**knobs)
        window_knobs, rest = _split(knobs, _WINDOW_KNOBS)
        if name == "llm-target":
            return LlmTargetPolicy(LlmTargetConfig(window=WindowConfig(**window_knobs), **rest))
        if name == "llm-slo":
            if "downscale_stabilization_s" not in window_knobs:
                window_knobs["downscale_stabilization_s"] = 120.0
            return LlmSloPolicy(_slo_config(rest, WindowConfig(**window_knobs)))
        if name == "llm-predictive":
            if "downscale_stabilization_s" not in window_knobs:
                window_knobs["downscale_stabilization_s"] = 120.0
            own, slo_knobs = _split(rest, _PREDICTIVE_OWN)
            slo = _slo_config(slo_knobs, WindowConfig(**window_knobs))
            return LlmPredictivePolicy(LlmPredictiveConfig(slo=slo, **own))
    except TypeError as exc:
        raise ConfigError(f"bad knobs for policy {name!r}: {exc}", field=name) from exc
    raise ConfigError(
        f"unknown LLM scaling policy {name!r}; expected one of {', '.join(LLM_POLICY_NAMES)}",
        field="policy",
    )
