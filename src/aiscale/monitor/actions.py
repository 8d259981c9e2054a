"""Carrying out the actions alert rules request, and the audit log that records each one.

What it does: ``ActionRunner.run`` takes an ``ActionDecision`` from the alert engine and does
it to the fleet: ``scale_up`` adds replicas to the deployment's primary version
(``Fleet.scale`` with a ``monitor: ...`` cause, capped at ``max_replicas``),
``rollback_canary`` aborts a running rollout back to its baseline and ``pause_rollout``
pauses one (through ``RolloutCommands``), ``shed_low_priority`` makes the gateway refuse
requests marked ``x-aiscale-priority: low`` with 503 + Retry-After (``Fleet.set_shedding``)
until the alert that asked for it resolves (``end_shedding``). Every outcome
(``done``, ``skipped`` with the reason, ``failed`` with the error, ``ended``) is an
``AuditEntry`` with its cause, kept in memory (the last ``max_entries``) and appended as one
JSON line to ``audit_path`` when one is configured.

What it must never do: raise out of ``run`` (a failed action is recorded, never lost), run two
actions on one deployment at once, write the audit file on the event loop, or hold the
gateway (it sees the serving side only as a ``Fleet``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import anyio

from aiscale.contracts.clock import Clock
from aiscale.contracts.fleet import Fleet
from aiscale.errors import AiscaleError, NotFound
from aiscale.monitor.alerts import ActionDecision
from aiscale.monitor.audit import AuditEntry
from aiscale.monitor.config import ActionSettings

__all__ = ["ActionRunner", "RolloutCommands"]

logger = logging.getLogger(__name__)


def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).isoformat(timespec="milliseconds")


class RolloutCommands(Protocol):
    """The rollouts this server drives, as the monitor's actions command them
    (``rollout.live.RolloutManager``)."""

    def phase(self, deployment: str) -> tuple[str, float] | None:
        """The status (``running``, ``paused``) and canary percent of the active rollout of
        ``deployment`` driven here; ``None`` when there is none."""
        ...

    async def rollback(self, deployment: str) -> str:
        """Abort the active rollout back to its baseline; returns the version now served."""
        ...

    async def pause(self, deployment: str) -> None: ...


class ActionRunner:
    """Owns the monitor's shedding changes and the audit log of one monitor. ``rollouts``
    ``None``: the rollout actions are skipped (no rollouts on this server)."""

    def __init__(self, fleet: Fleet, settings: ActionSettings, audit_path: Path | None, *,
                 clock: Clock, rollouts: RolloutCommands | None = None,
                 max_entries: int = 1000) -> None:
        self.fleet = fleet
        self.rollouts = rollouts
        self.settings = settings
        self.audit_path = audit_path
        self._clock = clock
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
        entry = AuditEntry.for_decision(decision, _iso(self._clock.time()), outcome, detail)
        await self.record(entry)
        logger.warning("action %s on %s: %s (%s); cause: %s", decision.action,
                       decision.deployment, outcome, detail, decision.cause)
        return entry

    async def _do(self, decision: ActionDecision) -> tuple[str, str]:
        name = decision.deployment
        versions = self.fleet.snapshot(name)
        if not versions:  # removed meanwhile
            raise NotFound(f"no deployment named {name!r}", field="model")
        primary = next((v for v in versions if v.is_primary), versions[0])
        if decision.action == "scale_up":
            current = primary.num_wanted
            target = min(current + self.settings.scale_up_step, self.settings.max_replicas)
            if target <= current:
                return "skipped", f"already at max_replicas ({self.settings.max_replicas})"
            await self.fleet.scale(name, target, version=primary.version,
                                   cause=f"monitor: {decision.rule}: {decision.cause}")
            return "done", f"{current} -> {target} replicas"
        if decision.action == "shed_low_priority":
            if primary.is_shedding:
                return "skipped", "already shedding low-priority requests"
            self.fleet.set_shedding(name, True)
            self.shed_causes[name] = (decision.rule, name)
            return "done", "shedding requests with x-aiscale-priority: low"
        phase = self.rollouts.phase(name) if self.rollouts is not None else None
        if self.rollouts is None or phase is None:
            return "skipped", "no rollout in progress"
        status, canary_percent = phase
        if decision.action == "rollback_canary":
            version = await self.rollouts.rollback(name)
            return "done", f"rolled back to version {version}"
        if status != "running":
            return "skipped", f"rollout is {status}"
        await self.rollouts.pause(name)
        return "done", f"paused at {canary_percent:g}% canary"

    async def end_shedding(self, deployment: str, decided_at_s: float, cause: str) -> None:
        """Stop shedding ``deployment`` (its alert resolved) and record that."""
        rule, _ = self.shed_causes.pop(deployment, ("", deployment))
        self.fleet.set_shedding(deployment, False)
        entry = AuditEntry("shed_low_priority", deployment, rule, "", cause, 0.0, decided_at_s,
                           _iso(self._clock.time()), "ended", "low-priority requests served again")
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
