"""Safe releases: traffic split with sticky users, shadowing, and the canary analysis policy.

The pure parts live here; the live rollout controller feeds them real counts on a real clock.
"""

from __future__ import annotations

from aiscale.contracts.histogram import Histogram, latency_histogram
from aiscale.contracts.split import TrafficSplit, canary_split, choose_version, should_shadow
from aiscale.rollout.analysis import (
    AnalysisConfig,
    AnalysisState,
    CanaryDecision,
    CanaryObservation,
    MetricRule,
    RolloutStep,
    TestResult,
    Verdict,
    VersionCounts,
    decide,
)

__all__ = [
    "AnalysisConfig",
    "AnalysisState",
    "CanaryDecision",
    "CanaryObservation",
    "Histogram",
    "MetricRule",
    "RolloutStep",
    "TestResult",
    "TrafficSplit",
    "Verdict",
    "VersionCounts",
    "canary_split",
    "choose_version",
    "decide",
    "latency_histogram",
    "should_shadow",
]
