"""Plain records the registry hands out: models, versions, deployments and API keys.

These are values that cross from the store to its callers (CLI, gateway, controllers). They
hold no connection and do no I/O. Timestamps are timezone-aware UTC wall-clock datetimes,
recorded by the store; they are never used to measure intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

#: The scopes an API key may carry: ``inference`` (the model APIs and feedback), ``admin``
#: (the admin API, feedback on any request) and ``metrics`` (``/metrics`` when the server
#: requires a key for it).
SCOPES: frozenset[str] = frozenset({"admin", "inference", "metrics"})


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A named model; its versions live in ``VersionRecord``s."""

    name: str
    description: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One immutable version of a model.

    ``runtime`` names how it is loaded (``python``, ``sklearn``, ``onnx``, ...), ``uri`` where
    its artifact is (or, for ``python``, the ``pkg.module:Class`` path), ``artifact_digest`` the
    sha256 of the stored artifact when the artifact store holds it.
    """

    model: str
    version: str
    runtime: str
    uri: str
    artifact_digest: str | None
    config: dict[str, Any]
    metadata: dict[str, Any]
    schema: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """A named deployment of one model version (or alias) with its replica count and config.

    ``created_at`` and ``updated_at`` are set by the store; values passed in are ignored.
    """

    name: str
    model: str
    version: str
    replicas: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class LlmLimits:
    """Token limits and budgets of one API key or team on the LLM endpoints.

    ``None`` is no limit on that measure. Per-minute limits count over a sliding minute;
    budgets over the UTC calendar day or month (``aiscale.llm.ledger`` enforces them).
    Money is in US dollars as a ``Decimal`` (at most 6 decimal places where stored); the
    token prices that turn usage into money are in the server's config (``server.ledger``).
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    budget_tokens_per_day: int | None = None
    budget_tokens_per_month: int | None = None
    budget_usd_per_day: Decimal | None = None
    budget_usd_per_month: Decimal | None = None

    @property
    def is_empty(self) -> bool:
        """True when no measure is limited."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def as_dict(self) -> dict[str, int | str | None]:
        """JSON-ready: money as a decimal string (a float would round it), ``None`` kept."""
        return {
            f.name: None if (value := getattr(self, f.name)) is None
            else str(value) if isinstance(value, Decimal) else int(value)
            for f in fields(self)
        }


#: The names of every ``LlmLimits`` measure, in declaration order.
LLM_LIMIT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(LlmLimits))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as stored: only the sha256 of its plaintext is kept.

    ``rate_limit_per_s`` is ``None`` for no per-key limit; ``revoked_at`` is ``None`` while
    the key is active. ``team`` names the team whose LLM limits and budgets (config
    ``server.ledger.teams``) the key's requests also count against; ``llm_limits`` are the
    key's own.
    """

    key_id: str
    name: str
    key_hash: str
    scopes: frozenset[str]
    rate_limit_per_s: float | None
    created_at: datetime
    revoked_at: datetime | None = None
    team: str | None = None
    llm_limits: LlmLimits = LlmLimits()

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


#: Every status a rollout can have; a rollout is active while ``running`` or ``paused``.
ROLLOUT_STATUSES: frozenset[str] = frozenset(
    {"running", "paused", "promoted", "rolled_back", "aborted"}
)
ACTIVE_ROLLOUT_STATUSES: frozenset[str] = frozenset({"running", "paused"})
#: What a rollout decision may say: the analysis's verdicts, then operator actions, then
#: ``requested``: an operator action asked through a gateway that does not drive the rollout,
#: for the one that does (``numbers["action"]``).
ROLLOUT_VERDICTS: frozenset[str] = frozenset({
    "promote", "wait", "rollback", "not_enough_data",
    "pause", "resume", "promote_manual", "abort", "rollback_manual", "requested",
})


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """One progressive rollout of ``canary_version`` against ``baseline_version``.

    ``steps`` are the canary's percents of traffic, strictly increasing and ending at 100;
    ``step_index`` is the current one and ``step_started_at`` when it began. ``config`` holds
    the controller's settings (analysis, interval, minimum step duration) as JSON. ``reason``
    is the last decision's reason, or why the rollout ended.
    """

    rollout_id: int
    deployment: str
    baseline_version: str
    canary_version: str
    steps: tuple[float, ...]
    step_index: int
    status: str
    step_started_at: datetime
    created_at: datetime
    updated_at: datetime
    config: dict[str, Any]
    reason: str

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_ROLLOUT_STATUSES

    @property
    def canary_percent(self) -> float:
        return self.steps[self.step_index]


@dataclass(frozen=True, slots=True)
class RolloutDecisionRecord:
    """A decision taken during a rollout: an analysis verdict or an operator action.

    ``numbers`` is the evidence as JSON (test statistics, counts); floats that JSON cannot
    hold (NaN, infinities) are stored as ``None``.
    """

    decision_id: int
    rollout_id: int
    at: datetime
    step_index: int
    verdict: str
    reason: str
    numbers: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TrafficRecord:
    """The traffic split a deployment served from ``at`` until its next record, and why.

    ``split`` is JSON as the caller wrote it, e.g. ``{"weights": {"1": 95.0, "2": 5.0},
    "shadow_version": None, "shadow_fraction": 0.0}``.
    """

    traffic_id: int
    deployment: str
    at: datetime
    split: dict[str, Any]
    cause: str
