"""The data flywheel: quality checks and drift detection on captured production data.

Everything exported here is pure (no I/O, no clock, no global randomness); capture, Parquet
and dataset export live in their own modules and are not imported by this package's root.
"""

from __future__ import annotations

from aiscale.data.drift import (
    CORRECTIONS,
    DriftReport,
    Embedder,
    FeatureDrift,
    adjust_p_values,
    detect_drift,
)
from aiscale.data.drift_values import KINDS, infer_kind
from aiscale.data.quality import (
    COLUMN_TYPES,
    ColumnExpectation,
    Example,
    Expectations,
    QualityCheck,
    QualityReport,
    check_quality,
)

__all__ = [
    "COLUMN_TYPES",
    "CORRECTIONS",
    "KINDS",
    "ColumnExpectation",
    "DriftReport",
    "Embedder",
    "Example",
    "Expectations",
    "FeatureDrift",
    "QualityCheck",
    "QualityReport",
    "adjust_p_values",
    "check_quality",
    "detect_drift",
    "infer_kind",
]
