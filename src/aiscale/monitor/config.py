"""The ``monitor`` section of the configuration: sampling, history, SLOs, rules and actions.

What it does: a frozen pydantic tree (``extra="forbid"``) that ``ServerConfig.monitor`` holds
and ``LiveMonitor`` receives. Everything is checked when the file is loaded: unknown keys,
bad numbers, a latency SLO without its threshold, a rule on an unknown signal or naming an
unknown action, duplicate names, an unknown hardware row. Errors carry the dotted path.
``MonitorConfig.to_*`` build the pure objects (``Slo``, ``AlertRule``, ``Silence``) the
policies take.

What it must never do: read the environment or a clock at import time, or change after load.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aiscale.monitor.alerts import ACTIONS, ActionName, AlertRule, Silence
from aiscale.monitor.history import DEFAULT_TIERS, Tier
from aiscale.monitor.slo import DEFAULT_BURN_RULES, BurnRule, Slo

__all__ = [
    "ACTION_ALIASES",
    "SERIES",
    "ActionSettings",
    "AnomalySettings",
    "BurnRuleConfig",
    "ForecastSettings",
    "MonitorConfig",
    "RuleConfig",
    "SilenceConfig",
    "SloConfig",
    "TierConfig",
    "WebhookConfig",
]

#: The series sampled per deployment and version (what the snapshot and history serve).
SERIES: tuple[str, ...] = ("rps", "p50_ms", "p99_ms", "error_rate", "batch_size", "replicas",
                           "queue_depth")
#: Short names accepted in ``rules[].actions`` for the engine's action names.
ACTION_ALIASES: dict[str, ActionName] = {
    "scale_up": "scale_up",
    "rollback": "rollback_canary",
    "rollback_canary": "rollback_canary",
    "pause": "pause_rollout",
    "pause_rollout": "pause_rollout",
    "shed": "shed_low_priority",
    "shed_low_priority": "shed_low_priority",
}
_SIGNAL = re.compile(
    r"^(slo_page|slo_ticket|slo_budget_remaining|capacity_saturates_in_s|data_quality_failed)$"
    r"|^(slo_page|slo_ticket|slo_budget_remaining):.+$"
    r"|^(value|anomaly_score):(" + "|".join(SERIES) + r")$"
)
_MATCHER_KEYS = ("alertname", "deployment", "severity", "signal")
DAY_S = 86_400.0


class _Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )


class TierConfig(_Frozen):
    """One resolution of the embedded history: buckets of ``step_s`` kept ``retention_s``."""

    step_s: Annotated[float, Field(gt=0)]
    retention_s: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def _check(self) -> TierConfig:
        if self.retention_s < self.step_s:
            raise ValueError("retention_s must be >= step_s")
        return self


class BurnRuleConfig(_Frozen):
    severity: Literal["page", "ticket"]
    long_window_s: Annotated[float, Field(gt=0)]
    short_window_s: Annotated[float, Field(gt=0)]
    factor: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def _check(self) -> BurnRuleConfig:
        if self.short_window_s > self.long_window_s:
            raise ValueError("short_window_s must be <= long_window_s")
        return self


class SloConfig(_Frozen):
    """Availability (not a 5xx) or latency (answered under ``latency_threshold_ms``)."""

    deployment: str
    name: str | None = None
    kind: Literal["availability", "latency"]
    objective: Annotated[float, Field(gt=0, lt=1)]
    window_s: Annotated[float, Field(gt=0, le=400 * DAY_S)] = 30 * DAY_S
    latency_threshold_ms: Annotated[float, Field(gt=0)] | None = None
    #: ``None``: the SRE workbook's page (1 h/5 min x14.4, 6 h/30 min x6) and ticket rules.
    burn_rules: tuple[BurnRuleConfig, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> SloConfig:
        if self.kind == "latency" and self.latency_threshold_ms is None:
            raise ValueError("a latency SLO needs latency_threshold_ms")
        if self.kind == "availability" and self.latency_threshold_ms is not None:
            raise ValueError("an availability SLO has no latency_threshold_ms")
        if self.burn_rules is not None and not self.burn_rules:
            raise ValueError("burn_rules needs at least one rule (or leave it out)")
        return self

    def to_slo(self) -> Slo:
        rules = DEFAULT_BURN_RULES if self.burn_rules is None else tuple(
            BurnRule(r.severity, r.long_window_s, r.short_window_s, r.factor)
            for r in self.burn_rules)
        threshold = None if self.latency_threshold_ms is None else self.latency_threshold_ms / 1e3
        return Slo(self.deployment, self.kind, self.objective, self.window_s, threshold, rules)

    @property
    def label(self) -> str:
        """The SLO's name in signals and the snapshot (``name``, else the derived one)."""
        return self.name or self.to_slo().name


class RuleConfig(_Frozen):
    """``signal <op> threshold`` held ``for_points`` points and ``for_s`` s fires the alert.

    Signals: ``slo_page``, ``slo_ticket``, ``slo_budget_remaining`` (over the deployment's
    SLOs, or ``slo_page:<slo name>`` for one), ``capacity_saturates_in_s``,
    ``data_quality_failed`` (failed checks in the deployment's last data-quality window),
    ``anomaly_score:<series>`` and ``value:<series>`` for a series in ``SERIES``.
    """

    name: Annotated[str, Field(min_length=1, max_length=128)]
    signal: str
    op: Literal[">=", ">", "<=", "<"] = ">="
    threshold: float
    for_points: Annotated[int, Field(ge=1)] = 1
    for_s: Annotated[float, Field(ge=0)] = 0.0
    severity: str = "page"
    actions: tuple[str, ...] = ()
    deployment: str | None = None
    summary: str = ""

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        if not _SIGNAL.match(value):
            raise ValueError(
                f"unknown signal {value!r}; use slo_page, slo_ticket, slo_budget_remaining, "
                f"capacity_saturates_in_s, data_quality_failed, anomaly_score:<series> or "
                f"value:<series> with a series in {', '.join(SERIES)}")
        return value

    @field_validator("actions")
    @classmethod
    def _known_actions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in value if a not in ACTION_ALIASES]
        if bad:
            raise ValueError(f"unknown actions {bad}; known: {', '.join(sorted(ACTION_ALIASES))}")
        return tuple(dict.fromkeys(ACTION_ALIASES[a] for a in value))

    def to_rule(self) -> AlertRule:
        actions = tuple(a for a in ACTIONS if a in self.actions)
        return AlertRule(self.name, self.signal, self.op, self.threshold, self.for_points,
                         self.for_s, self.severity, actions, self.deployment, self.summary)


class WebhookConfig(_Frozen):
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    headers: dict[str, str] = Field(default_factory=dict)


class SilenceConfig(_Frozen):
    """Mutes matching alerts (and their actions) from ``start_s`` (unix s; default: when the
    monitor starts) for ``duration_s`` or until ``end_s``."""

    matchers: dict[str, str]
    start_s: float | None = None
    end_s: float | None = None
    duration_s: Annotated[float, Field(gt=0)] | None = None
    comment: str = ""

    @model_validator(mode="after")
    def _check(self) -> SilenceConfig:
        if not self.matchers:
            raise ValueError("a silence needs at least one matcher")
        bad = [k for k in self.matchers if k not in _MATCHER_KEYS]
        if bad:
            raise ValueError(f"unknown matcher keys {bad}; use {', '.join(_MATCHER_KEYS)}")
        if (self.end_s is None) == (self.duration_s is None):
            raise ValueError("give exactly one of end_s and duration_s")
        if self.end_s is not None and self.start_s is not None and self.end_s <= self.start_s:
            raise ValueError("end_s must be after start_s")
        return self

    def to_silence(self, now_s: float) -> Silence:
        start = now_s if self.start_s is None else self.start_s
        end = self.end_s if self.end_s is not None else start + float(self.duration_s or 0.0)
        return Silence(tuple(sorted(self.matchers.items())), start, end, self.comment)


class AnomalySettings(_Frozen):
    """The streaming detector run on each deployment's series (the ``aiscale detect`` one)."""

    detector: str = "default"
    #: Constructor parameters, in points (e.g. ``history``, ``warmup``, ``shape_len``).
    params: dict[str, Any] = Field(default_factory=dict)
    #: A score at or above this is an anomaly (marked in the snapshot).
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.75
    series: tuple[str, ...] = ("rps", "p50_ms", "p99_ms", "error_rate", "batch_size",
                               "queue_depth")

    @field_validator("series")
    @classmethod
    def _known_series(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in value if s not in SERIES]
        if bad:
            raise ValueError(f"unknown series {bad}; known: {', '.join(SERIES)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> AnomalySettings:
        from aiscale.errors import InvalidInput
        from aiscale.monitor.anomaly import make_detector

        try:
            make_detector(self.detector, **self.params)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return self


class ForecastSettings(_Frozen):
    #: Arrival bins; must divide a day (daily and weekly seasons are learnt per bin).
    step_s: Annotated[float, Field(gt=0, le=DAY_S)] = 300.0
    horizon_s: Annotated[float, Field(gt=0, le=7 * DAY_S)] = 6 * 3600.0
    coverage: Annotated[float, Field(gt=0, lt=1)] = 0.9
    #: Recent rates the capacity trend line is fitted to.
    trend_window_s: Annotated[float, Field(gt=0)] = 300.0

    @model_validator(mode="after")
    def _check(self) -> ForecastSettings:
        bins = DAY_S / self.step_s
        if abs(bins - round(bins)) > 1e-9:
            raise ValueError("step_s must divide a day (86400 s)")
        if self.horizon_s < self.step_s:
            raise ValueError("horizon_s must be >= step_s")
        return self


class ActionSettings(_Frozen):
    #: Replicas a ``scale_up`` adds, up to ``max_replicas``.
    scale_up_step: Annotated[int, Field(ge=1, le=64)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=256)] = 16
    #: ``Retry-After`` of a shed (503) low-priority request.
    shed_retry_after_s: Annotated[float, Field(gt=0, le=3600)] = 5.0


class MonitorConfig(_Frozen):
    is_enabled: bool = Field(default=True, alias="enabled")
    interval_s: Annotated[float, Field(ge=0.05, le=3600)] = 1.0
    tiers: tuple[TierConfig, ...] = tuple(
        TierConfig(step_s=t.step_s, retention_s=t.retention_s) for t in DEFAULT_TIERS)
    max_series: Annotated[int, Field(ge=1)] = 10_000
    slos: tuple[SloConfig, ...] = ()
    rules: tuple[RuleConfig, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    silences: tuple[SilenceConfig, ...] = ()
    anomaly: AnomalySettings = AnomalySettings()
    forecast: ForecastSettings = ForecastSettings()
    actions: ActionSettings = ActionSettings()
    group_wait_s: Annotated[float, Field(ge=0)] = 10.0
    repeat_interval_s: Annotated[float, Field(gt=0)] = 4 * 3600.0
    #: Append-only JSON lines of every action; ``None`` keeps the audit in memory only.
    audit_path: Path | None = None
    #: Read history from this Prometheus (its HTTP API) instead of the embedded store.
    prometheus_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    #: Range of the ``rate()`` in queries to that Prometheus (at least 4 scrape intervals).
    prometheus_rate_window_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    #: Catalog row (``plan/catalog.yaml``) and price a replica is costed at.
    hardware: str = "CPU"
    price_kind: Literal["on_demand", "spot", "reserved"] = "on_demand"

    @model_validator(mode="after")
    def _check(self) -> MonitorConfig:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rules: names must be unique")
        labels = [(s.deployment, s.label) for s in self.slos]
        if len(set(labels)) != len(labels):
            raise ValueError("slos: two SLOs of one deployment have the same name")
        if self.hardware not in _catalog_names():
            raise ValueError(f"hardware {self.hardware!r} is not in the catalog "
                             f"({', '.join(sorted(_catalog_names()))})")
        return self

    def to_tiers(self) -> tuple[Tier, ...]:
        return tuple(Tier(t.step_s, t.retention_s) for t in self.tiers)


@functools.cache
def _catalog_names() -> frozenset[str]:
    from aiscale.plan.catalog import load_catalog

    return frozenset(load_catalog())
