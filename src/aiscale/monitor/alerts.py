"""Alert rules over SLO burn, forecasts and anomaly scores; notifications and actions.

What it does: every input is a ``Signal`` (a named value of one deployment at a time: an anomaly
score, ``slo_page``, ``capacity_saturates_in_s`` ...; ``slo_signals``, ``capacity_signal`` and
``anomaly_signal`` build them). An ``AlertRule`` compares one signal with a threshold and fires,
per deployment, once the condition held for ``for_points`` consecutive points and ``for_s``
seconds (``score >= 0.9 for 2 points``); it resolves at the first point where it no longer holds.
``AlertEngine.step(inputs, state, now_s)`` returns the notifications and the actions due now and
the next state, as Alertmanager would decide them:

- deduplicated: a firing alert is notified once, then again only after ``repeat_interval_s``
  or when it resolves (a resolution is notified only for an alert that was notified firing);
- grouped: alerts of one deployment that become due within ``group_wait_s`` of the first one go
  out as one ``Notification`` (``group_wait_s = 0`` sends at once);
- silenced: while a ``Silence`` (label matchers, start, end) matches an alert, the alert is
  neither notified nor acted on; when the silence ends while it still fires, it is notified then
  (a silence is for planned work, when automatic remediation is not wanted either);
- actions: a rule may request ``scale_up``, ``rollback_canary``, ``shed_low_priority`` or
  ``pause_rollout``; each is emitted once per firing episode as an ``ActionDecision`` that
  names its cause. The controllers that own the deployment carry them out and append an
  ``audit.AuditEntry``.

What it must never do: read a clock, do I/O (notifiers live in ``notifiers.py``), or hold state
that grows with time: the state holds one entry per (rule, deployment) alert, dropped once it is
inactive and nothing about it is left to notify.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from aiscale.errors import ConfigError, InvalidInput
from aiscale.monitor.capacity import CapacityWarning
from aiscale.monitor.slo import SloStatus

__all__ = [
    "ACTIONS",
    "ActionDecision",
    "ActionName",
    "Alert",
    "AlertEngine",
    "AlertInputs",
    "AlertRule",
    "AlertState",
    "AlertStep",
    "InstanceState",
    "Notification",
    "Signal",
    "Silence",
    "anomaly_signal",
    "capacity_signal",
    "slo_signals",
]

Op = Literal[">=", ">", "<=", "<"]
ActionName = Literal["scale_up", "rollback_canary", "shed_low_priority", "pause_rollout"]
ACTIONS: tuple[ActionName, ...] = ("scale_up", "rollback_canary", "shed_low_priority",
                                   "pause_rollout")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True, slots=True)
class Signal:
    """A named value of one deployment observed at ``t_s``."""

    name: str
    deployment: str
    value: float
    t_s: float


def anomaly_signal(series: str, deployment: str, score: float, t_s: float) -> Signal:
    """An anomaly detector's score of ``series``: signal ``anomaly_score:<series>``."""
    return Signal(f"anomaly_score:{series}", deployment, score, t_s)


def slo_signals(status: SloStatus) -> list[Signal]:
    """``slo_page`` / ``slo_ticket`` (1 while such a burn alert fires, else 0) and
    ``slo_budget_remaining`` of the status's deployment, at its ``now_s``."""
    d, t = status.slo.deployment, status.now_s
    return [Signal("slo_page", d, 1.0 if status.is_paging else 0.0, t),
            Signal("slo_ticket", d, 1.0 if status.is_ticketing else 0.0, t),
            Signal("slo_budget_remaining", d, status.budget_remaining, t)]


def capacity_signal(deployment: str, warning: CapacityWarning | None, now_s: float) -> Signal:
    """``capacity_saturates_in_s``: seconds until the queue is full (+inf when not foreseen)."""
    return Signal("capacity_saturates_in_s", deployment,
                  math.inf if warning is None else warning.saturates_in_s, now_s)


@dataclass(frozen=True, slots=True)
class AlertRule:
    """Fire when ``signal <op> threshold`` held for ``for_points`` points and ``for_s`` s.

    ``deployment=None`` applies the rule to every deployment (one alert each).
    """

    name: str
    signal: str
    op: Op
    threshold: float
    for_points: int = 1
    for_s: float = 0.0
    severity: str = "page"
    actions: tuple[ActionName, ...] = ()
    deployment: str | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ConfigError(f"unknown operator {self.op!r}", field="op")
        if self.for_points < 1 or self.for_s < 0:
            raise ConfigError("need for_points >= 1 and for_s >= 0", field="for_points")
        bad = [a for a in self.actions if a not in ACTIONS]
        if bad:
            raise ConfigError(f"unknown actions {bad}; known: {', '.join(ACTIONS)}",
                              field="actions")

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes alerts whose labels match every matcher while ``start_s <= now_s < end_s``.
    Matcher keys: ``alertname``, ``deployment``, ``severity``, ``signal``."""

    matchers: tuple[tuple[str, str], ...]
    start_s: float
    end_s: float
    comment: str = ""

    def __post_init__(self) -> None:
        if not self.matchers:
            raise InvalidInput("a silence needs at least one matcher", field="matchers")
        if self.end_s <= self.start_s:
            raise InvalidInput("a silence must end after it starts", field="end_s")

    def mutes(self, labels: Mapping[str, str], now_s: float) -> bool:
        return (self.start_s <= now_s < self.end_s
                and all(labels.get(k) == v for k, v in self.matchers))


@dataclass(frozen=True, slots=True)
class AlertInputs:
    """One step's signals and the silences in force (the live controller owns the list)."""

    signals: tuple[Signal, ...] = ()
    silences: tuple[Silence, ...] = ()


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as a notification reports it."""

    rule: str
    deployment: str
    severity: str
    status: Literal["firing", "resolved"]
    signal: str
    value: float
    threshold: float
    since_s: float
    summary: str = ""


@dataclass(frozen=True, slots=True)
class Notification:
    """Alerts of one group (a deployment) sent together at ``at_s``."""

    group: str
    at_s: float
    alerts: tuple[Alert, ...]

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if any(a.status == "firing" for a in self.alerts) else "resolved"


@dataclass(frozen=True, slots=True)
class ActionDecision:
    """An action a firing rule requests, with its cause."""

    action: ActionName
    deployment: str
    rule: str
    severity: str
    cause: str
    value: float
    at_s: float


@dataclass(frozen=True, slots=True)
class InstanceState:
    """One (rule, deployment) alert. ``status``: inactive, pending or firing.
    ``due``: waiting in its group to be notified (as firing, or as resolved when inactive)."""

    status: Literal["inactive", "pending", "firing"] = "inactive"
    num_true: int = 0
    true_since_s: float | None = None
    firing_since_s: float | None = None
    value: float = math.nan
    last_notified_s: float | None = None
    is_due: bool = False


@dataclass(frozen=True, slots=True)
class AlertState:
    """Everything the engine remembers between steps."""

    instances: Mapping[tuple[str, str], InstanceState] = field(default_factory=dict)
    #: group -> when its first due alert started waiting (group wait).
    group_since_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlertStep:
    notifications: tuple[Notification, ...]
    actions: tuple[ActionDecision, ...]
    state: AlertState


class AlertEngine:
    """Evaluates rules over signals; pure (``step`` returns the next state)."""

    def __init__(self, rules: Sequence[AlertRule], *, group_wait_s: float = 30.0,
                 repeat_interval_s: float = 4 * 3600.0) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ConfigError("alert rule names must be unique", field="rules")
        if group_wait_s < 0 or repeat_interval_s <= 0:
            raise ConfigError("need group_wait_s >= 0 and repeat_interval_s > 0",
                              field="group_wait_s")
        self.rules = {r.name: r for r in rules}
        self.group_wait_s = group_wait_s
        self.repeat_interval_s = repeat_interval_s

    @staticmethod
    def labels(rule: AlertRule, deployment: str) -> dict[str, str]:
        """The labels silences match against."""
        return {"alertname": rule.name, "deployment": deployment, "severity": rule.severity,
                "signal": rule.signal}

    def _is_muted(self, rule: AlertRule, deployment: str, silences: Iterable[Silence],
                  now_s: float) -> bool:
        labels = self.labels(rule, deployment)
        return any(s.mutes(labels, now_s) for s in silences)

    def step(self, inputs: AlertInputs, state: AlertState | None, now_s: float) -> AlertStep:
        """Fold in ``inputs.signals`` (in time order), then send what is due at ``now_s``.

        An alert keeps its status until a signal for it arrives, so callers send every
        signal each step (``slo_signals`` sends 0 when nothing burns, ``capacity_signal``
        +inf when nothing saturates).
        """
        state = state if state is not None else AlertState()
        instances = dict(state.instances)
        actions: list[ActionDecision] = []
        for sig in sorted(inputs.signals, key=lambda s: s.t_s):
            for rule in self.rules.values():
                if rule.signal != sig.name or rule.deployment not in (None, sig.deployment):
                    continue
                key = (rule.name, sig.deployment)
                old = instances.get(key, InstanceState())
                new = self._advance(rule, old, sig)
                if new.status == "firing" and old.status != "firing" and not self._is_muted(
                        rule, sig.deployment, inputs.silences, now_s):
                    actions.extend(
                        ActionDecision(a, sig.deployment, rule.name, rule.severity,
                                       f"{rule.name}: {rule.signal}={sig.value:g} "
                                       f"{rule.op} {rule.threshold:g}", sig.value, now_s)
                        for a in rule.actions)
                instances[key] = new
        # Repeat interval: a firing alert notified long enough ago is due again.
        for key, inst in instances.items():
            if (inst.status == "firing" and not inst.is_due and inst.last_notified_s is not None
                    and now_s - inst.last_notified_s >= self.repeat_interval_s):
                instances[key] = replace(inst, is_due=True)
        groups, sent = self._flush(instances, dict(state.group_since_s), inputs.silences, now_s)
        # Forget inactive alerts with nothing left to say (bounded state).
        instances = {k: v for k, v in instances.items()
                     if v.status != "inactive" or v.is_due}
        return AlertStep(tuple(sent), tuple(actions), AlertState(instances, groups))

    def _advance(self, rule: AlertRule, inst: InstanceState, sig: Signal) -> InstanceState:
        if not rule.holds(sig.value):
            if inst.status == "firing":
                # Say it resolved only if someone was told it fired.
                return InstanceState(value=sig.value, last_notified_s=inst.last_notified_s,
                                     firing_since_s=inst.firing_since_s,
                                     is_due=inst.last_notified_s is not None)
            return InstanceState(value=sig.value, last_notified_s=inst.last_notified_s,
                                 firing_since_s=inst.firing_since_s, is_due=inst.is_due)
        num_true = inst.num_true + 1 if inst.status != "inactive" else 1
        since = inst.true_since_s if inst.status != "inactive" and inst.true_since_s is not None \
            else sig.t_s
        if inst.status == "firing":
            return replace(inst, num_true=num_true, value=sig.value)
        if num_true >= rule.for_points and sig.t_s - since >= rule.for_s:
            return InstanceState("firing", num_true, since, sig.t_s, sig.value, None, True)
        return InstanceState("pending", num_true, since, None, sig.value,
                             inst.last_notified_s, inst.is_due)

    def _flush(self, instances: dict[tuple[str, str], InstanceState],
               group_since_s: dict[str, float], silences: Sequence[Silence],
               now_s: float) -> tuple[dict[str, float], list[Notification]]:
        due_by_group: dict[str, list[tuple[str, str]]] = {}
        for key, inst in sorted(instances.items()):
            rule = self.rules.get(key[0])
            if rule is None or not inst.is_due:
                continue
            if self._is_muted(rule, key[1], silences, now_s):
                continue
            due_by_group.setdefault(key[1], []).append(key)
        sent: list[Notification] = []
        groups: dict[str, float] = {}
        for group, keys in sorted(due_by_group.items()):
            since = group_since_s.get(group, now_s)
            if now_s - since < self.group_wait_s:
                groups[group] = since
                continue
            alerts = []
            for key in keys:
                inst, rule = instances[key], self.rules[key[0]]
                firing = inst.status == "firing"
                alerts.append(Alert(rule.name, key[1], rule.severity,
                                    "firing" if firing else "resolved", rule.signal, inst.value,
                                    rule.threshold, inst.firing_since_s or now_s, rule.summary))
                instances[key] = replace(inst, is_due=False,
                                         last_notified_s=now_s if firing else None)
            sent.append(Notification(group, now_s, tuple(alerts)))
        return groups, sent
