"""The audit log entry of an automatic action: one JSON object per line, append-only.

What it does: ``AuditEntry`` records who decided what and why (the rule, its cause and value),
when it was decided (``decided_at_s``, the controller's clock) and when it was written
(``recorded_at``, wall-clock ISO 8601 given by the writer), and what came of it (``outcome``).
``to_json`` gives one compact line with sorted keys; ``from_json`` reads it back.

What it must never do: read a clock or write a file itself: the controller that carries out
the action stamps the entry and appends the line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from aiscale.errors import InvalidInput
from aiscale.monitor.alerts import ACTIONS, ActionDecision

__all__ = ["AuditEntry"]

_FIELDS = ("action", "deployment", "rule", "severity", "cause", "value", "decided_at_s",
           "recorded_at", "outcome", "detail")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One action and its outcome (``requested``, ``done``, ``failed``, ``skipped``)."""

    action: str
    deployment: str
    rule: str
    severity: str
    cause: str
    value: float
    decided_at_s: float
    recorded_at: str
    outcome: str = "requested"
    detail: str = ""

    @classmethod
    def for_decision(cls, decision: ActionDecision, recorded_at: str,
                     outcome: str = "requested", detail: str = "") -> AuditEntry:
        return cls(decision.action, decision.deployment, decision.rule, decision.severity,
                   decision.cause, decision.value, decision.at_s, recorded_at, outcome, detail)

    def to_json(self) -> str:
        """One line of JSON (no newline inside); non-finite values are written as strings."""
        data: dict[str, Any] = asdict(self)
        if data["value"] != data["value"] or data["value"] in (float("inf"), float("-inf")):
            data["value"] = str(data["value"])
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> AuditEntry:
        """Raises ``InvalidInput`` for a line that is not an entry."""
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"audit line is not JSON: {exc}", field="audit") from exc
        if not isinstance(data, dict) or sorted(data) != sorted(_FIELDS):
            raise InvalidInput(f"audit line needs exactly the fields {list(_FIELDS)}",
                               field="audit")
        if data["action"] not in ACTIONS:
            raise InvalidInput(f"unknown action {data['action']!r}", field="action")
        data["value"] = float(data["value"])
        return cls(**data)
