"""Carrying out the actions alert rules request, and the audit log that records each one.

What it does: ``ActionRunner.run`` takes an ``ActionDecision`` from the alert engine and does
it to the running gateway: ``scale_up`` adds replicas to the deployment's primary version
(``gateway.scale``, capped at ``max_replicas``), ``rollback_canary`` aborts a running rollout
back to its baseline (``gateway.rollouts.rollback``), ``pause_rollout`` pauses a running one,
``shed_low_priority`` makes the gateway refuse requests marked ``x-aiscale-priority: low`` with
503 + Retry-After until the alert that asked for it resolves (``end_shedding``). Every outcome
(``done``, ``skipped`` with the reason, ``failed`` with the error, ``ended``) is an
``AuditEntry`` with its cause, kept in memory (the last ``max_entries``) and appended as one
JSON line to ``audit_path`` when one is configured.

What it must never do: raise out of ``run`` (a failed action is recorded, never lost), run two
actions on one deployment at once, or write the audit file on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from aiscale.errors import AiscaleError
from aiscale.monitor.alerts import ActionDecision
from aiscale.monitor.audit import AuditEntry
from aiscale.monitor.config import ActionSettings

__all__ = ["ActionRunner"]

logger = logging.getLogger(__name__)


def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).isoformat(timespec="milliseconds")


class ActionRunner:
    """Owns the shedding set's changes and the audit log of one monitor."""

    def __init__(self, gateway: Any, settings: ActionSettings, audit_path: Path | None, *,
                 wall_clock: Callable[[], float], max_entries: int = 1000) -> None:
        self.gateway = gateway
        self.settings = settings
        self.audit_path = audit_path
        self._clock = wall_clock
        self.entries: deque[AuditEntry] = deque(maxlen=max_entries)
        #: deployment -> the (rule, deployment) alert that turned shedding on.
        self.shed_causes: dict[str, tuple[str, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def run(self, decision: ActionDecision) -> AuditEntry:
        """Do one action and record it; never raises (a failure is an audit entry)."""
        lock = self._locks.setdefault(decision.deployment, asyncio.Lock())
        async with lock:
            try:
                outcome, detail = await self._do(decision)
            except AiscaleError as exc:
                outcome, detail = "failed", f"{type(exc).__name__}: {exc.message}"
            except Exception as exc:  # a task boundary: record and log, never lose it
                logger.exception("action %s on %s failed", decision.action, decision.deployment)
                outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
        entry = AuditEntry.for_decision(decision, _iso(self._clock()), outcome, detail)
        await self.record(entry)
        logger.warning("action %s on %s: %s (%s); cause: %s", decision.action,
                       decision.deployment, outcome, detail, decision.cause)
        return entry

    async def _do(self, decision: ActionDecision) -> tuple[str, str]:
        gateway = self.gateway
        name = decision.deployment
        deployment = gateway.deployment(name)  # NotFound when it was removed meanwhile
        if decision.action == "scale_up":
            current = deployment.primary.pool.num_wanted
            target = min(current + self.settings.scale_up_step, self.settings.max_replicas)
            if target <= current:
                return "skipped", f"already at max_replicas ({self.settings.max_replicas})"
            await gateway.scale(name, target)
            return "done", f"{current} -> {target} replicas"
        if decision.action == "shed_low_priority":
            if name in gateway.shedding:
                return "skipped", "already shedding low-priority requests"
            gateway.shedding.add(name)
            self.shed_causes[name] = (decision.rule, name)
            return "done", "shedding requests with x-aiscale-priority: low"
        controller = gateway.rollouts.controllers.get(name)
        if controller is None or not controller.status.is_active:
            return "skipped", "no rollout in progress"
        if decision.action == "rollback_canary":
            version = await gateway.rollouts.rollback(deployment)
            return "done", f"rolled back to version {version}"
        if str(controller.status) != "running":
            return "skipped", f"rollout is {controller.status}"
        await controller.pause()
        return "done", f"paused at {controller.canary_percent:g}% canary"

    async def end_shedding(self, deployment: str, decided_at_s: float, cause: str) -> None:
        """Stop shedding ``deployment`` (its alert resolved) and record that."""
        rule, _ = self.shed_causes.pop(deployment, ("", deployment))
        self.gateway.shedding.discard(deployment)
        entry = AuditEntry("shed_low_priority", deployment, rule, "", cause, 0.0, decided_at_s,
                           _iso(self._clock()), "ended", "low-priority requests served again")
        await self.record(entry)
        logger.warning("stopped shedding %s: %s", deployment, cause)

    async def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)
        if self.audit_path is not None:
            line = entry.to_json() + "\n"
            path = self.audit_path
            try:
                await anyio.to_thread.run_sync(_append, path, line)
            except OSError:
                logger.exception("cannot append to the audit log %s", path)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
