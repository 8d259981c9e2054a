"""Monitoring: metric history, SLOs, forecasts, anomaly detection, alerts and actions.

Re-exports the public names of the anomaly detectors (``aiscale.monitor.anomaly``), the metric
history (``history``, ``scrape``), SLOs (``slo``), forecasts and capacity warnings
(``forecast``, ``capacity``), alerts (``alerts``) and the audit entry (``audit``). The
notifiers (``aiscale.monitor.notifiers``, the only part here that does I/O) are imported from
their module, so importing ``aiscale.monitor`` stays free of HTTP clients.
"""

from __future__ import annotations

from aiscale.monitor.alerts import (
    ACTIONS,
    ActionDecision,
    Alert,
    AlertEngine,
    AlertInputs,
    AlertRule,
    AlertState,
    AlertStep,
    Notification,
    Signal,
    Silence,
    anomaly_signal,
    capacity_signal,
    slo_signals,
)
from aiscale.monitor.anomaly import (
    DETECTOR_NAMES,
    RecordSurpriseDetector,
    StreamingDetector,
    detect_csv,
    make_detector,
    parse_timestamp,
    score_series,
)
from aiscale.monitor.audit import AuditEntry
from aiscale.monitor.capacity import CapacityWarning, capacity_warning, trend_warning
from aiscale.monitor.forecast import Forecast, ForecastConfig, ForecastPoint, SeasonalForecaster
from aiscale.monitor.history import DEFAULT_TIERS, InMemoryMetricsStore, MetricsStore, Tier
from aiscale.monitor.scrape import Scrape, parse_exposition, scrape_points
from aiscale.monitor.slo import (
    DEFAULT_BURN_RULES,
    BurnRule,
    RollingCounts,
    Slo,
    SloStatus,
    WindowCounts,
    evaluate,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_BURN_RULES",
    "DEFAULT_TIERS",
    "DETECTOR_NAMES",
    "ActionDecision",
    "Alert",
    "AlertEngine",
    "AlertInputs",
    "AlertRule",
    "AlertState",
    "AlertStep",
    "AuditEntry",
    "BurnRule",
    "CapacityWarning",
    "Forecast",
    "ForecastConfig",
    "ForecastPoint",
    "InMemoryMetricsStore",
    "MetricsStore",
    "Notification",
    "RecordSurpriseDetector",
    "RollingCounts",
    "Scrape",
    "SeasonalForecaster",
    "Signal",
    "Silence",
    "Slo",
    "SloStatus",
    "StreamingDetector",
    "Tier",
    "WindowCounts",
    "anomaly_signal",
    "capacity_signal",
    "capacity_warning",
    "detect_csv",
    "evaluate",
    "make_detector",
    "parse_exposition",
    "parse_timestamp",
    "score_series",
    "scrape_points",
    "slo_signals",
    "trend_warning",
]
