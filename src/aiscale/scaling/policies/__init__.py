"""Pure autoscaling policies: static, reactive (Ray Serve), KPA (Knative), predictive, oracle.

Every policy is ``decide(observation, state) -> (decision, state)`` with its knobs in a frozen
config; see ``base.py``. The platform runs ``reactive``, ``kpa`` and ``predictive`` under its
guard (``guard.py``: demand ceiling, backlog-aware scale-up, rate-limited steps);
``ray-serve-rule`` and ``knative-rule`` are the same rules unguarded, as the products run
them (baselines). Nothing here may import outside the standard library and
``aiscale.errors``: a test loads this package in a fresh interpreter to check.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import (
    ScalingDecision,
    ScalingObservation,
    ScalingPolicy,
    clamp_replicas,
)
from aiscale.scaling.policies.ceiling import DEFAULT_HEADROOM, demand_ceiling
from aiscale.scaling.policies.guard import (
    GUARD_KNOBS,
    DemandAssessment,
    GuardConfig,
    GuardedPolicy,
    GuardState,
    assess_demand,
    guard_target,
)
from aiscale.scaling.policies.kpa import KpaConfig, KpaPolicy, KpaState
from aiscale.scaling.policies.oracle import (
    OracleConfig,
    OraclePolicy,
    ScheduleConfig,
    SchedulePolicy,
    oracle_schedule,
)
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
    "DEFAULT_HEADROOM",
    "GUARD_KNOBS",
    "POLICY_NAMES",
    "DemandAssessment",
    "GuardConfig",
    "GuardState",
    "GuardedPolicy",
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
    "ScheduleConfig",
    "SchedulePolicy",
    "StaticConfig",
    "StaticPolicy",
    "assess_demand",
    "clamp_replicas",
    "demand_ceiling",
    "desired_replicas",
    "forecast_peak_rate",
    "guard_target",
    "make_policy",
    "oracle_schedule",
]

POLICY_NAMES = (
    "static",
    "reactive",
    "kpa",
    "predictive",
    "oracle",
    "ray-serve-rule",
    "knative-rule",
)


def _split_guard_knobs(
    knobs: dict[str, Any], inner_config: type[ReactiveConfig | KpaConfig]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(the inner policy's knobs, the guard's knobs)`` of one flat mapping. A knob both
    take (KPA's ``target_utilization``) goes to both: it means the same thing to each."""
    own = {f.name for f in fields(inner_config)}
    inner = {k: v for k, v in knobs.items() if k in own or k not in GUARD_KNOBS}
    guard = {k: v for k, v in knobs.items() if k in GUARD_KNOBS}
    return inner, guard


def make_policy(name: str, **knobs: Any) -> ScalingPolicy[Any]:
    """Build a policy by name from its config's knobs; unknown names or knobs raise
    ``ConfigError``.

    ``reactive`` and ``kpa`` take their rule's knobs plus the guard's (``GUARD_KNOBS``:
    ``capacity_per_replica_per_s``, ``target_utilization``, ``startup_s``,
    ``ceiling_headroom``, ``rate_window_s``, ``max_step_up_fraction``; the guard's bounds
    are the rule's ``min_replicas``/``max_replicas``). ``ray-serve-rule`` and
    ``knative-rule`` take the rule's knobs only. ``predictive`` takes its own knobs (a
    ``reactive`` knob may be a dict of reactive knobs) plus ``ceiling_headroom``,
    ``rate_window_s`` and ``max_step_up_fraction`` for its guard.
    """
    try:
        if name == "static":
            return StaticPolicy(StaticConfig(**knobs))
        if name in ("reactive", "kpa"):
            inner_knobs, guard_knobs = _split_guard_knobs(
                knobs, ReactiveConfig if name == "reactive" else KpaConfig
            )
            inner: ReactivePolicy | KpaPolicy = (
                ReactivePolicy(ReactiveConfig(**inner_knobs))
                if name == "reactive"
                else KpaPolicy(KpaConfig(**inner_knobs))
            )
            guard = GuardConfig(
                **guard_knobs,
                min_replicas=inner.config.min_replicas,
                max_replicas=inner.config.max_replicas,
            )
            return GuardedPolicy(inner, guard)
        if name == "ray-serve-rule":
            return ReactivePolicy(ReactiveConfig(**knobs))
        if name == "knative-rule":
            return KpaPolicy(KpaConfig(**knobs))
        if name == "predictive":
            if isinstance(knobs.get("reactive"), dict):
                knobs = {**knobs, "reactive": ReactiveConfig(**knobs["reactive"])}
            own = {"capacity_per_replica_per_s", "target_utilization", "startup_s"}
            guard_knobs = {k: knobs.pop(k) for k in list(knobs) if k in GUARD_KNOBS - own}
            # The guard's capacity, start-up and bounds are the predictive config's own.
            return PredictivePolicy(PredictiveConfig(**knobs, guard=GuardConfig(**guard_knobs)))
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
