"""Pure autoscaling policies: static, reactive (Ray Serve), KPA (Knative), predictive, oracle.

Every policy is ``decide(observation, state) -> (decision, state)`` with its knobs in a frozen
config; see ``base.py``. Nothing here may import outside the standard library and
``aiscale.errors``: a test loads this package in a fresh interpreter to check.
"""

from __future__ import annotations

from typing import Any

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import (
    ScalingDecision,
    ScalingObservation,
    ScalingPolicy,
    clamp_replicas,
)
from aiscale.scaling.policies.kpa import KpaConfig, KpaPolicy, KpaState
from aiscale.scaling.policies.oracle import OracleConfig, OraclePolicy, oracle_schedule
from aiscale.scaling.policies.predictive import (
    PredictiveConfig,
    PredictivePolicy,
    PredictiveState,
    forecast_peak_rate,
)
from aiscale.scaling.policies.reactive import (
    ReactiveConfig,
    ReactivePolicy,
    ReactiveState,
    desired_replicas,
)
from aiscale.scaling.policies.static import StaticConfig, StaticPolicy

__all__ = [
    "KpaConfig",
    "KpaPolicy",
    "KpaState",
    "OracleConfig",
    "OraclePolicy",
    "PredictiveConfig",
    "PredictivePolicy",
    "PredictiveState",
    "ReactiveConfig",
    "ReactivePolicy",
    "ReactiveState",
    "ScalingDecision",
    "ScalingObservation",
    "ScalingPolicy",
    "StaticConfig",
    "StaticPolicy",
    "clamp_replicas",
    "desired_replicas",
    "forecast_peak_rate",
    "make_policy",
    "oracle_schedule",
]

POLICY_NAMES = ("static", "reactive", "kpa", "predictive", "oracle")


def make_policy(name: str, **knobs: Any) -> ScalingPolicy[Any]:
    """Build a policy by name from its config's knobs; unknown names or knobs raise
    ``ConfigError``. For ``predictive``, a ``reactive`` knob may be a dict of reactive knobs."""
    try:
        if name == "static":
            return StaticPolicy(StaticConfig(**knobs))
        if name == "reactive":
            return ReactivePolicy(ReactiveConfig(**knobs))
        if name == "kpa":
            return KpaPolicy(KpaConfig(**knobs))
        if name == "predictive":
            if isinstance(knobs.get("reactive"), dict):
                knobs = {**knobs, "reactive": ReactiveConfig(**knobs["reactive"])}
            return PredictivePolicy(PredictiveConfig(**knobs))
        if name == "oracle":
            if "rates_per_s" in knobs:
                knobs = {**knobs, "rates_per_s": tuple(float(r) for r in knobs["rates_per_s"])}
            return OraclePolicy(OracleConfig(**knobs))
    except TypeError as exc:
        raise ConfigError(f"bad knobs for policy {name!r}: {exc}", field=name) from exc
    raise ConfigError(
        f"unknown scaling policy {name!r}; expected one of {', '.join(POLICY_NAMES)}",
        field="policy",
    )
