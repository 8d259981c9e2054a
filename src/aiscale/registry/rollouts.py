"""The registry's record of progressive rollouts: their progress, decisions and traffic history.

``SqlRolloutRecords`` keeps, on the registry's database, one row per rollout (versions, steps,
current step, status), the decisions taken along the way, and which traffic split each
deployment served from when. The rollout controller writes here on every step change,
decision and split change; a restarted server reads the active rollouts back to resume them.
Every call is one short transaction; callers on an event loop use ``anyio.to_thread``.

It never decides anything (that is ``aiscale.rollout``), never touches serving, and never
deletes history: rollouts, decisions and traffic records are only added or moved forward.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from aiscale.errors import Conflict, InvalidInput, NotFound
from aiscale.registry import _database
from aiscale.registry.records import (
    ACTIVE_ROLLOUT_STATUSES,
    ROLLOUT_STATUSES,
    ROLLOUT_VERDICTS,
    RolloutDecisionRecord,
    RolloutRecord,
    TrafficRecord,
)
from aiscale.registry.tables import (
    aliases,
    deployments,
    rollout_decisions,
    rollouts,
    traffic_history,
    versions,
)

Clock = Callable[[], datetime]

#: Longest name a deployment or version column holds.
_MAX_NAME_CHARS = 63


class SqlRolloutRecords:
    """Rollouts, their decisions and traffic history on one registry database.

    Built by ``SqlRegistry`` (its ``rollouts`` attribute), sharing its engine and clock.
    Errors: ``NotFound`` (unknown rollout, deployment or version), ``Conflict`` (a second
    active rollout for a deployment; a change to an ended rollout), ``InvalidInput`` (bad
    value; ``field`` names it).
    """

    def __init__(self, engine: Engine, *, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    @contextmanager
    def _transaction(self, *, is_write: bool = False) -> Iterator[sa.Connection]:
        with self._engine.connect() as conn:
            if is_write:
                conn.execution_options(**{_database.WRITE_OPTION: True})
            with conn.begin():
                yield conn

    def _now(self) -> datetime:
        return _as_utc(self._clock())

    # ---------------------------------------------------------------- rollouts

    def start_rollout(
        self,
        deployment: str,
        baseline_version: str,
        canary_version: str,
        steps: Sequence[float],
        config: dict[str, Any] | None = None,
    ) -> RolloutRecord:
        """Record a new rollout of ``deployment``, running at step 0.

        The versions are versions or aliases of the deployment's model; aliases are stored
        resolved, as the version names they point at now. ``steps`` are canary percents,
        strictly increasing, each in (0, 100], the last 100. Raises NotFound for an unknown
        deployment or version, InvalidInput for bad steps or config or equal versions, and
        Conflict when the deployment has an active (running or paused) rollout already.
        """
        clean_steps = _check_steps(steps)
        clean_config = _json_object(config, "config")
        now = self._now()
        try:
            rollout_id, baseline, canary = self._insert_rollout(
                deployment, baseline_version, canary_version,
                {"steps": list(clean_steps), "step_index": 0, "status": "running",
                 "step_started_at": now, "created_at": now, "updated_at": now,
                 "config": clean_config, "reason": ""},
            )
        except sa.exc.IntegrityError as exc:
            # A concurrent start won the partial unique index (PostgreSQL; SQLite has
            # serialised the whole write transaction, so ``_insert_rollout``'s check saw it).
            raise _active_conflict(deployment, None, None) from exc
        return RolloutRecord(
            rollout_id=rollout_id, deployment=deployment, baseline_version=baseline,
            canary_version=canary, steps=clean_steps, step_index=0, status="running",
            step_started_at=now, created_at=now, updated_at=now, config=clean_config,
            reason="",
        )

    def _insert_rollout(
        self, deployment: str, baseline_version: str, canary_version: str,
        values: dict[str, Any],
    ) -> tuple[int, str, str]:
        with self._transaction(is_write=True) as conn:
            model = conn.execute(sa.select(deployments.c.model).where(
                deployments.c.name == deployment
            )).scalar_one_or_none()
            if model is None:
                raise NotFound(f"unknown deployment {deployment!r}", field="deployment")
            baseline = _resolve_version(conn, model, baseline_version, "baseline_version")
            canary = _resolve_version(conn, model, canary_version, "canary_version")
            if baseline == canary:
                raise InvalidInput(
                    f"the canary must differ from the baseline (both are version {canary!r})",
                    field="canary_version",
                )
            active = conn.execute(rollouts.select().where(
                rollouts.c.deployment == deployment,
                rollouts.c.status.in_(sorted(ACTIVE_ROLLOUT_STATUSES)),
            )).first()
            if active is not None:
                raise _active_conflict(deployment, active.rollout_id, active.status)
            result = conn.execute(rollouts.insert().values(
                deployment=deployment, baseline_version=baseline, canary_version=canary,
                **values,
            ))
            (rollout_id,) = result.inserted_primary_key or (None,)
        assert isinstance(rollout_id, int)
        return rollout_id, baseline, canary

    def get_rollout(self, rollout_id: int) -> RolloutRecord:
        """Raises NotFound for an unknown rollout, InvalidInput for an id that is no integer."""
        _check_id(rollout_id)
        with self._transaction() as conn:
            row = conn.execute(
                rollouts.select().where(rollouts.c.rollout_id == rollout_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"unknown rollout {rollout_id}", field="rollout_id")
        return _rollout_record(row)

    def active_rollout(self, deployment: str) -> RolloutRecord | None:
        """The running or paused rollout of ``deployment``, or None."""
        with self._transaction() as conn:
            row = conn.execute(rollouts.select().where(
                rollouts.c.deployment == deployment,
                rollouts.c.status.in_(sorted(ACTIVE_ROLLOUT_STATUSES)),
            )).one_or_none()
        return None if row is None else _rollout_record(row)

    def active_rollouts(self) -> list[RolloutRecord]:
        """Every running or paused rollout, oldest first (a restarted server resumes these)."""
        with self._transaction() as conn:
            rows = conn.execute(rollouts.select().where(
                rollouts.c.status.in_(sorted(ACTIVE_ROLLOUT_STATUSES))
            ).order_by(rollouts.c.rollout_id)).all()
        return [_rollout_record(row) for row in rows]

    def list_rollouts(self, deployment: str) -> list[RolloutRecord]:
        """Every rollout of ``deployment``, oldest first; empty for a name never rolled out
        (history outlives a deleted deployment, so an unknown name is not an error)."""
        with self._transaction() as conn:
            rows = conn.execute(rollouts.select().where(
                rollouts.c.deployment == deployment
            ).order_by(rollouts.c.rollout_id)).all()
        return [_rollout_record(row) for row in rows]

    def update_rollout(
        self,
        rollout_id: int,
        *,
        step_index: int | None = None,
        status: str | None = None,
        reason: str | None = None,
        step_started_at: datetime | None = None,
    ) -> RolloutRecord:
        """Move an active rollout forward; returns it as stored. ``None`` keeps a field.

        A new ``step_index`` (0 <= index < len(steps)) restarts the step clock: the step's
        ``step_started_at`` becomes now unless given. Allowed status changes: running <->
        paused, and running or paused -> promoted, rolled_back or aborted. An ended rollout
        never changes again: any update raises Conflict. Raises NotFound for an unknown
        rollout and InvalidInput for a bad status, index, reason or time.
        """
        _check_id(rollout_id)
        if status is not None and status not in ROLLOUT_STATUSES:
            raise InvalidInput(
                f"status must be one of {sorted(ROLLOUT_STATUSES)}, got {status!r}",
                field="status",
            )
        if reason is not None and not isinstance(reason, str):
            raise InvalidInput("reason must be a string", field="reason")
        if step_started_at is not None:
            step_started_at = _aware(step_started_at, "step_started_at")
        now = self._now()
        with self._transaction(is_write=True) as conn:
            row = conn.execute(rollouts.select().where(
                rollouts.c.rollout_id == rollout_id
            ).with_for_update()).one_or_none()
            if row is None:
                raise NotFound(f"unknown rollout {rollout_id}", field="rollout_id")
            if row.status not in ACTIVE_ROLLOUT_STATUSES:
                raise Conflict(
                    f"rollout {rollout_id} of {row.deployment!r} has ended ({row.status}) "
                    "and cannot change",
                    field="status",
                )
            values: dict[str, Any] = {"updated_at": now}
            if status is not None:
                values["status"] = str(status)
            if reason is not None:
                values["reason"] = str(reason)
            if step_index is not None:
                _check_step_index(step_index, len(row.steps))
                values["step_index"] = step_index
                if step_index != row.step_index and step_started_at is None:
                    values["step_started_at"] = now
            if step_started_at is not None:
                values["step_started_at"] = step_started_at
            conn.execute(
                rollouts.update().where(rollouts.c.rollout_id == rollout_id).values(**values)
            )
            row = conn.execute(
                rollouts.select().where(rollouts.c.rollout_id == rollout_id)
            ).one()
        return _rollout_record(row)

    # --------------------------------------------------------------- decisions

    def record_decision(
        self,
        rollout_id: int,
        step_index: int,
        verdict: str,
        reason: str,
        numbers: dict[str, Any] | None = None,
    ) -> RolloutDecisionRecord:
        """Append a decision to a rollout's log (an ended rollout still takes entries: the
        decision that ended it may be written after the status).

        ``verdict`` is one of ``ROLLOUT_VERDICTS``; ``numbers`` is JSON, NaN and infinities
        stored as None. Raises NotFound for an unknown rollout, InvalidInput otherwise.
        """
        _check_id(rollout_id)
        if verdict not in ROLLOUT_VERDICTS:
            raise InvalidInput(
                f"verdict must be one of {sorted(ROLLOUT_VERDICTS)}, got {verdict!r}",
                field="verdict",
            )
        if not isinstance(reason, str):
            raise InvalidInput("reason must be a string", field="reason")
        clean_numbers = _json_object(numbers, "numbers")
        now = self._now()
        with self._transaction(is_write=True) as conn:
            steps = conn.execute(sa.select(rollouts.c.steps).where(
                rollouts.c.rollout_id == rollout_id
            )).scalar_one_or_none()
            if steps is None:
                raise NotFound(f"unknown rollout {rollout_id}", field="rollout_id")
            _check_step_index(step_index, len(steps))
            values: dict[str, Any] = {
                "rollout_id": rollout_id, "at": now, "step_index": step_index,
                "verdict": str(verdict), "reason": reason, "numbers": clean_numbers,
            }
            result = conn.execute(rollout_decisions.insert().values(**values))
            (decision_id,) = result.inserted_primary_key or (None,)
        assert isinstance(decision_id, int)
        return RolloutDecisionRecord(decision_id=decision_id, **values)

    def list_decisions(self, rollout_id: int) -> list[RolloutDecisionRecord]:
        """A rollout's decisions in the order they were taken. Raises NotFound."""
        self.get_rollout(rollout_id)
        with self._transaction() as conn:
            rows = conn.execute(rollout_decisions.select().where(
                rollout_decisions.c.rollout_id == rollout_id
            ).order_by(rollout_decisions.c.at, rollout_decisions.c.decision_id)).all()
        return [
            RolloutDecisionRecord(
                decision_id=row.decision_id, rollout_id=row.rollout_id, at=_as_utc(row.at),
                step_index=row.step_index, verdict=row.verdict, reason=row.reason,
                numbers=dict(row.numbers),
            )
            for row in rows
        ]

    # ----------------------------------------------------------------- traffic

    def record_traffic(
        self, deployment: str, split: dict[str, Any], cause: str
    ) -> TrafficRecord:
        """Record that ``deployment`` serves ``split`` from now on, because of ``cause``.

        ``split`` is a non-empty JSON object (NaN and infinities stored as None). The
        deployment need not be in the registry: traffic history is a log of what served.
        Raises InvalidInput for a bad name, split or cause.
        """
        if not isinstance(deployment, str) or not 0 < len(deployment) <= _MAX_NAME_CHARS:
            raise InvalidInput(
                f"deployment must be 1-{_MAX_NAME_CHARS} characters", field="deployment"
            )
        clean_split = _json_object(split, "split")
        if not clean_split:
            raise InvalidInput("split must not be empty", field="split")
        if not isinstance(cause, str):
            raise InvalidInput("cause must be a string", field="cause")
        values: dict[str, Any] = {
            "deployment": deployment, "at": self._now(), "split": clean_split, "cause": cause
        }
        with self._transaction(is_write=True) as conn:
            result = conn.execute(traffic_history.insert().values(**values))
            (traffic_id,) = result.inserted_primary_key or (None,)
        assert isinstance(traffic_id, int)
        return TrafficRecord(traffic_id=traffic_id, **values)

    def traffic_history(
        self,
        deployment: str,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[TrafficRecord]:
        """The splits ``deployment`` recorded with ``since <= at < until``, oldest first.

        Bounds are timezone-aware datetimes or None (unbounded). The split in force at
        ``since`` may have been recorded before it: ask ``traffic_at(deployment, since)``.
        Raises InvalidInput for a naive bound or ``since`` after ``until``.
        """
        query = traffic_history.select().where(traffic_history.c.deployment == deployment)
        if since is not None:
            since = _aware(since, "since")
            query = query.where(traffic_history.c.at >= since)
        if until is not None:
            until = _aware(until, "until")
            query = query.where(traffic_history.c.at < until)
        if since is not None and until is not None and since > until:
            raise InvalidInput("since must not be after until", field="since")
        with self._transaction() as conn:
            rows = conn.execute(
                query.order_by(traffic_history.c.at, traffic_history.c.traffic_id)
            ).all()
        return [_traffic_record(row) for row in rows]

    def latest_traffic(self, deployment: str) -> TrafficRecord | None:
        """The split ``deployment`` recorded last (by insertion order, so gateways with
        skewed clocks agree), or None if none was ever recorded."""
        with self._transaction() as conn:
            row = conn.execute(traffic_history.select().where(
                traffic_history.c.deployment == deployment
            ).order_by(traffic_history.c.traffic_id.desc()).limit(1)).one_or_none()
        return None if row is None else _traffic_record(row)

    def traffic_at(self, deployment: str, at: datetime) -> TrafficRecord | None:
        """The split ``deployment`` served at ``at`` (its last record at or before it), or
        None if nothing was recorded by then. Raises InvalidInput for a naive ``at``."""
        at = _aware(at, "at")
        with self._transaction() as conn:
            row = conn.execute(traffic_history.select().where(
                traffic_history.c.deployment == deployment, traffic_history.c.at <= at
            ).order_by(
                traffic_history.c.at.desc(), traffic_history.c.traffic_id.desc()
            ).limit(1)).one_or_none()
        return None if row is None else _traffic_record(row)


# ------------------------------------------------------------------- checks


def _active_conflict(deployment: str, rollout_id: int | None, status: str | None) -> Conflict:
    held = "" if rollout_id is None else f" (rollout {rollout_id}, {status})"
    return Conflict(
        f"deployment {deployment!r} has an active rollout already{held}; "
        "finish or abort it first",
        field="deployment",
    )


def _check_id(rollout_id: object) -> None:
    if isinstance(rollout_id, bool) or not isinstance(rollout_id, int):
        raise InvalidInput(f"rollout id must be an integer, got {rollout_id!r}",
                           field="rollout_id")


def _check_steps(steps: Sequence[float]) -> tuple[float, ...]:
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence) or not steps:
        raise InvalidInput("steps must be a non-empty list of percents", field="steps")
    clean: list[float] = []
    for step in steps:
        if isinstance(step, bool) or not isinstance(step, numbers.Real):
            raise InvalidInput(f"step {step!r} is not a number", field="steps")
        percent = float(step)
        if not 0 < percent <= 100:
            raise InvalidInput(f"step {step!r} is outside (0, 100]", field="steps")
        if clean and percent <= clean[-1]:
            raise InvalidInput("steps must be strictly increasing", field="steps")
        clean.append(percent)
    if clean[-1] != 100.0:
        raise InvalidInput("the last step must be 100", field="steps")
    return tuple(clean)


def _check_step_index(step_index: object, num_steps: int) -> None:
    if (isinstance(step_index, bool) or not isinstance(step_index, int)
            or not 0 <= step_index < num_steps):
        raise InvalidInput(
            f"step_index must be an integer in [0, {num_steps}), got {step_index!r}",
            field="step_index",
        )


def _resolve_version(conn: sa.Connection, model: str, name: str, field: str) -> str:
    """The version ``name`` is, or that alias ``name`` points at (a version name wins)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{field} must be a version or alias name", field=field)
    found = conn.execute(sa.select(versions.c.version).where(
        versions.c.model == model, versions.c.version == name
    )).scalar_one_or_none()
    if found is None:
        found = conn.execute(sa.select(aliases.c.version).where(
            aliases.c.model == model, aliases.c.alias == name
        )).scalar_one_or_none()
    if found is None:
        raise NotFound(f"model {model!r} has no version or alias {name!r}", field=field)
    return str(found)


def _aware(value: object, field: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(f"{field} must be a timezone-aware datetime", field=field)
    # SQLite keeps no offset, so every stored and compared time is UTC.
    return value.astimezone(UTC)


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything the store writes is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json_object(value: object, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object", field=field)
    clean = _json_value(value, field)
    assert isinstance(clean, dict)
    return clean


def _json_value(value: object, field: str) -> Any:
    """``value`` as plain JSON. NaN and infinities become None: JSON has no spelling for them
    and PostgreSQL rejects the ``NaN`` that Python writes, so both databases store null."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dict):
        clean: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{field} has a non-string key {key!r}", field=field)
            clean[key] = _json_value(item, field)
        return clean
    if isinstance(value, list | tuple):
        return [_json_value(item, field) for item in value]
    raise InvalidInput(
        f"{field} holds a {type(value).__name__}, which JSON cannot store", field=field
    )


def _rollout_record(row: sa.Row[Any]) -> RolloutRecord:
    return RolloutRecord(
        rollout_id=row.rollout_id, deployment=row.deployment,
        baseline_version=row.baseline_version, canary_version=row.canary_version,
        steps=tuple(float(s) for s in row.steps), step_index=row.step_index,
        status=row.status, step_started_at=_as_utc(row.step_started_at),
        created_at=_as_utc(row.created_at), updated_at=_as_utc(row.updated_at),
        config=dict(row.config), reason=row.reason,
    )


def _traffic_record(row: sa.Row[Any]) -> TrafficRecord:
    return TrafficRecord(
        traffic_id=row.traffic_id, deployment=row.deployment, at=_as_utc(row.at),
        split=dict(row.split), cause=row.cause,
    )
