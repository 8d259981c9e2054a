"""Autoscaling: pure policies (``scaling.policies``); the controller and replica runtimes
that apply their decisions live beside them and are the only callers on a real clock."""

from __future__ import annotations

from aiscale.scaling.policies import (
    ScalingDecision,
    ScalingObservation,
    ScalingPolicy,
    make_policy,
)

__all__ = ["ScalingDecision", "ScalingObservation", "ScalingPolicy", "make_policy"]
