"""Monitoring: metric history, SLOs, forecasts, anomaly detection, alerts and actions.

Re-exports the public names of the anomaly detectors (``aiscale.monitor.anomaly``).
"""

from __future__ import annotations

from aiscale.monitor.anomaly import (
    DETECTOR_NAMES,
    RecordSurpriseDetector,
    StreamingDetector,
    detect_csv,
    make_detector,
    parse_timestamp,
    score_series,
)

__all__ = [
    "DETECTOR_NAMES",
    "RecordSurpriseDetector",
    "StreamingDetector",
    "detect_csv",
    "make_detector",
    "parse_timestamp",
    "score_series",
]
