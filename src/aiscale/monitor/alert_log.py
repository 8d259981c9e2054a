"""The alerts a person sees: which fire now, since when, and which resolved lately.

What it does: ``AlertLog.update`` reads the alert engine's state after each step and keeps one
``AlertRecord`` per firing episode of a (rule, deployment): it appears when the instance turns
firing, follows its value while it fires, and moves to the bounded list of resolved alerts
when it stops. The engine decides; this only remembers what it decided, for the admin API.

What it must never do: decide anything, do I/O, or grow without bound.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from aiscale.monitor.alerts import AlertEngine, AlertRule, AlertState

__all__ = ["AlertLog", "AlertRecord"]


@dataclass(frozen=True, slots=True)
class AlertRecord:
    id: str
    rule: str
    deployment: str
    severity: str
    state: Literal["firing", "resolved"]
    since_s: float
    value: float
    message: str
    resolved_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "rule": self.rule, "deployment": self.deployment,
                "severity": self.severity, "state": self.state, "since": self.since_s,
                "resolved_at": self.resolved_s, "message": self.message,
                "value": self.value if math.isfinite(self.value) else str(self.value)}


def _message(rule: AlertRule, deployment: str, value: float) -> str:
    what = f"{rule.signal}={value:.4g} {rule.op} {rule.threshold:g}"
    return f"{deployment}: {rule.summary} ({what})" if rule.summary else f"{deployment}: {what}"


class AlertLog:
    def __init__(self, max_resolved: int = 200) -> None:
        self._firing: dict[tuple[str, str], AlertRecord] = {}
        self.resolved: deque[AlertRecord] = deque(maxlen=max_resolved)
        self._num_episodes = 0

    def update(self, state: AlertState, engine: AlertEngine, now_s: float) -> list[AlertRecord]:
        """Fold in the engine's state after a step; returns the alerts that resolved now."""
        ended: list[AlertRecord] = []
        firing = {k: v for k, v in state.instances.items() if v.status == "firing"}
        for key, inst in firing.items():
            rule = engine.rules[key[0]]
            old = self._firing.get(key)
            if old is None:
                self._num_episodes += 1
                since = inst.firing_since_s if inst.firing_since_s is not None else now_s
                self._firing[key] = AlertRecord(
                    f"{self._num_episodes}", rule.name, key[1], rule.severity, "firing", since,
                    inst.value, _message(rule, key[1], inst.value))
            else:
                self._firing[key] = replace(old, value=inst.value,
                                            message=_message(rule, key[1], inst.value))
        for key in [k for k in self._firing if k not in firing]:
            record = replace(self._firing.pop(key), state="resolved", resolved_s=now_s)
            self.resolved.append(record)
            ended.append(record)
        return ended

    def is_firing(self, rule: str, deployment: str) -> bool:
        return (rule, deployment) in self._firing

    def all(self) -> Iterator[AlertRecord]:
        """Firing alerts (oldest first), then resolved ones (newest first)."""
        yield from sorted(self._firing.values(), key=lambda r: r.since_s)
        yield from reversed(self.resolved)
