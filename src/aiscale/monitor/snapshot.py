"""The monitor's JSON views: the dashboard snapshot, alerts and the audit log.

What it does: ``build_snapshot`` reads a ``LiveMonitor`` and its fleet into the
``GET /admin/monitor/snapshot`` document (the dashboard draws from it, so its names are a
contract): per deployment its versions, series over the window, the latest interval's
values (the cards' figures), anomaly marks, the arrival
forecast with its band, the capacity warning, SLOs with error budget and burn rates, the
rollout (through the ``rollout_of`` callback the admin layer passes) and the estimated cost
per hour; then the gateway's own counts (requests naming an unknown model), the alerts
and the recent actions.

What it must never do: change the monitor, or write a non-finite number (JSON has none).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from aiscale.contracts.fleet import FleetSnapshot
from aiscale.monitor.audit import AuditEntry
from aiscale.monitor.config import SERIES
from aiscale.monitor.live import LiveMonitor

__all__ = ["alerts_json", "audit_json", "build_snapshot", "window_label"]


def window_label(seconds: float) -> str:
    """``300 -> "5m"``, ``3600 -> "1h"``, ``259200 -> "3d"``, ``10 -> "10s"``."""
    for unit, size in (("d", 86_400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@functools.cache
def _price_per_hour(hardware: str, kind: str) -> float:
    from aiscale.plan.catalog import load_catalog

    return load_catalog()[hardware].price_per_hour(kind)  # type: ignore[arg-type]


def _step_for(window_s: float, interval_s: float) -> float:
    """About 300 points per series, never finer than the sampling interval."""
    raw = max(interval_s, window_s / 300.0)
    for nice in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 21_600, 86_400):
        if nice >= raw:
            return float(nice)
    return raw


#: Series an interval has only when it served requests: an idle card shows none of them.
_BUSY_ONLY = ("p50_ms", "p99_ms", "batch_size")


def _latest(values: dict[str, float] | None) -> dict[str, float | None] | None:
    """The cards' figures: each series' value in the latest interval, ``None`` where that
    interval had none. An idle interval (no requests) has no latency or batch size, so the
    card shows a dash rather than the last busy interval's figures (issue 18)."""
    if values is None:
        return None
    latest = {s: round(values[s], 6) if s in values else None for s in SERIES}
    if not latest["rps"]:
        latest.update(dict.fromkeys(_BUSY_ONLY))
    return latest


def _deployment(monitor: LiveMonitor, name: str, fleet: list[FleetSnapshot], now: float,
                window_s: float, step_s: float,
                rollout_of: Callable[[str], dict[str, Any] | None]) -> dict[str, Any]:
    start = now - window_s
    series = {s: [[t, round(v, 6)] for t, v in monitor.history(s, name, "*", start, now + 1,
                                                               step_s)]
              for s in SERIES}
    threshold = monitor.config.anomaly.threshold
    anomalies = {}
    for s in monitor.config.anomaly.series:
        marks = [[t, round(v, 4)] for t, v in monitor.history(
            f"anomaly_score:{s}", name, "*", start, now + 1, step_s) if v >= threshold]
        if marks:
            anomalies[s] = marks
    forecast: dict[str, Any] | None = None
    capacity: dict[str, Any] = {"saturates_in_s": None, "message": None}
    state = monitor.deployment_state(name)
    if state is not None:
        forecaster, warning = state
        if forecaster.num_bins_seen > 0:
            f = monitor.config.forecast
            points = forecaster.forecast(f.horizon_s, f.coverage).points
            forecast = {"t": [p.t_s for p in points],
                        "mean": [p.rate_per_s for p in points],
                        "lower": [p.lower_per_s for p in points],
                        "upper": [p.upper_per_s for p in points],
                        "coverage": f.coverage, "step_s": forecaster.config.step_s}
        if warning is not None:
            in_s = warning.saturates_in_s
            when = f"{in_s / 60:.0f} minutes" if in_s >= 120 else f"{in_s:.0f} seconds"
            capacity = {
                "saturates_in_s": in_s,
                "message": f"at this {'trend' if warning.basis == 'trend' else 'forecast'} "
                           f"the queue saturates in {when} ({warning.rate_per_s:.1f} req/s "
                           f"against a capacity of {warning.capacity_per_s:.1f})"}
    slos = []
    for config, status in monitor.slo_statuses(name):
        slo = config.to_slo()
        slos.append({
            "name": config.label, "kind": slo.kind, "objective": slo.objective,
            "window_s": slo.window_s,
            "latency_threshold_ms": config.latency_threshold_ms,
            "budget_remaining": None if status is None else _finite(status.budget_remaining),
            "burn_rates": {} if status is None else {
                window_label(w): _finite(b) for w, b in sorted(status.burn_rates.items())},
            "alerting": status is not None and bool(status.alerts),
            "severity": None if status is None else status.severity})
    versions = [{"version": v.version, "weight": v.traffic_percent, "replicas": v.num_replicas,
                 "ready": v.num_ready, "is_primary": v.is_primary} for v in fleet]
    num_replicas = sum(v.num_replicas for v in fleet)
    price = _price_per_hour(monitor.config.hardware, monitor.config.price_kind)
    return {
        "name": name, "model": fleet[0].model, "versions": versions,
        "series": series, "latest": _latest(monitor.latest_values(name)),
        "anomalies": anomalies, "forecast": forecast, "capacity": capacity,
        "slos": slos, "rollout": rollout_of(name),
        "shedding": any(v.is_shedding for v in fleet),
        "cost_per_hour_usd": round(num_replicas * price, 4),
    }


def alerts_json(monitor: LiveMonitor) -> list[dict[str, Any]]:
    return [r.to_json() for r in monitor.alerts.all()]


def _action_json(entry: AuditEntry) -> dict[str, Any]:
    result = f"{entry.outcome}: {entry.detail}" if entry.detail else entry.outcome
    return {"time": entry.decided_at_s, "action": entry.action, "deployment": entry.deployment,
            "rule": entry.rule, "cause": entry.cause, "result": result,
            "outcome": entry.outcome, "recorded_at": entry.recorded_at}


def audit_json(monitor: LiveMonitor, limit: int = 200) -> list[dict[str, Any]]:
    """The newest ``limit`` audit entries, newest first."""
    entries = list(monitor.actions.entries)[-limit:]
    return [_action_json(e) for e in reversed(entries)]


def build_snapshot(monitor: LiveMonitor, window_s: float,
                   rollout_of: Callable[[str], dict[str, Any] | None], *,
                   step_s: float | None = None) -> dict[str, Any]:
    now = monitor.wall_time()
    # A young monitor has less history than the window: its step follows the span it has,
    # so the first minutes are drawn at the sampling interval rather than as two points.
    started = monitor.started_at_s
    span_s = window_s if started is None else min(window_s, max(now - started, 1.0))
    step = step_s if step_s is not None else _step_for(span_s, monitor.config.interval_s)
    by_name: dict[str, list[FleetSnapshot]] = {}
    for version in monitor.fleet.snapshot():
        by_name.setdefault(version.deployment, []).append(version)
    deployments = [
        _deployment(monitor, name, versions, now, window_s, step, rollout_of)
        for name, versions in sorted(by_name.items())]
    # Requests naming a model no deployment serves (404s): ``None`` where not counted.
    gateway = {"unknown_model_requests": monitor.num_unknown_model_requests_last,
               "unknown_model_requests_in_window": monitor.num_unknown_model_requests(
                   now - window_s, now + 1)}
    return {"time": now, "window_s": window_s, "step_s": step, "interval_s":
            monitor.config.interval_s, "deployments": deployments, "gateway": gateway,
            "alerts": alerts_json(monitor), "actions": audit_json(monitor, 50)}
