"""Planning: model profiles, the hardware and price catalog, traffic, and the simulator that
drives the same scaling policies as the live controller on simulated time."""

from __future__ import annotations

from aiscale.plan.catalog import HardwareSpec, SourcedFigure, derive_profile, load_catalog
from aiscale.plan.profile import (
    CalibrationPoint,
    ModelProfile,
    ServerTerms,
    load_profile,
    profile_from_latencies,
    save_profile,
)
from aiscale.plan.simulator import (
    ModeComparison,
    SimulationConfig,
    SimulationResult,
    compare_modes,
    simulate,
)
from aiscale.plan.traffic import (
    ArrivalCounts,
    Arrivals,
    SyntheticTraffic,
    day_counts,
    load_trace,
    poisson_counts,
    read_trace_times,
    scale_times,
    scale_trace,
)

__all__ = [
    "ArrivalCounts",
    "Arrivals",
    "CalibrationPoint",
    "HardwareSpec",
    "ModeComparison",
    "ModelProfile",
    "SimulationConfig",
    "ServerTerms",
    "SimulationResult",
    "SourcedFigure",
    "SyntheticTraffic",
    "compare_modes",
    "day_counts",
    "derive_profile",
    "load_catalog",
    "load_profile",
    "load_trace",
    "poisson_counts",
    "profile_from_latencies",
    "read_trace_times",
    "save_profile",
    "scale_times",
    "scale_trace",
    "simulate",
]
