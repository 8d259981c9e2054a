"""What the LLM simulator is told (``LlmSimConfig``) and what it reports (``LlmSimResult``).

The SLO of an LLM deployment is on two latencies: time to first token (TTFT, the wait before
a reply starts, gateway included) and the time between tokens. A request *meets the SLO*
when its TTFT is within ``ttft_slo_s`` and its mean time per output token after the first
(TPOT, what a reader of the stream feels) within ``itl_slo_s``; a dropped request does not.
``slo_attainment`` is the share of all arrivals that met it; ``goodput`` counts them per
second (DistServe's definition). ITL percentiles are over tokens (every gap between two
tokens of a stream), TTFT and TPOT percentiles over requests.

Replica-hours count the time each replica is paid for (from the moment it is asked for,
start-up included, until it is removed) within ``[0, duration_s)``; requests still running at
the end are simulated to completion but that tail is not paid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from aiscale.errors import ConfigError
from aiscale.plan.llm.profile import LlmProfile
from aiscale.plan.traffic import FloatArray

__all__ = ["ROUTING_POLICIES", "LlmSimConfig", "LlmSimResult", "weighted_quantiles"]

Mode = Literal["exact", "aggregated"]
ROUTING_POLICIES = ("least_loaded", "round_robin", "session", "prefix_aware")


@dataclass(frozen=True, slots=True)
class LlmSimConfig:
    """One LLM deployment and the simulation's knobs.

    ``max_wait_s``: a request still without its first token after this long is dropped (the
    client gave up). ``watermark``: share of the KV cache admission keeps free (vLLM's).
    ``step_s``: the aggregated mode's time step. ``history_bin_s``: the bins of the token
    histories shown to predictive policies.
    """

    profile: LlmProfile
    ttft_slo_s: float = 1.0
    itl_slo_s: float = 0.1
    slo_target: float = 0.99
    routing: str = "least_loaded"
    initial_replicas: int = 1
    decision_interval_s: float = 10.0
    price_per_replica_hour: float = 0.0
    mode: Mode = "exact"
    step_s: float = 1.0
    history_bin_s: float = 60.0
    max_wait_s: float = 600.0
    watermark: float = 0.01
    is_prefix_caching: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("ttft_slo_s", "itl_slo_s", "decision_interval_s", "step_s", "max_wait_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError("must be a finite number > 0", field=name)
        if not 0 < self.slo_target <= 1:
            raise ConfigError("must be in (0, 1]", field="slo_target")
        if self.routing not in ROUTING_POLICIES:
            raise ConfigError(
                f"unknown routing {self.routing!r}; expected one of {', '.join(ROUTING_POLICIES)}",
                field="routing",
            )
        if self.initial_replicas < 0:
            raise ConfigError("must be >= 0", field="initial_replicas")
        if self.mode not in ("exact", "aggregated"):
            raise ConfigError(f"unknown mode {self.mode!r}", field="mode")
        if not 0 <= self.watermark < 1:
            raise ConfigError("must be in [0, 1)", field="watermark")
        ratio = self.history_bin_s / self.step_s
        if self.history_bin_s <= 0 or abs(ratio - round(ratio)) > 1e-9:
            raise ConfigError("must be a multiple of step_s", field="history_bin_s")


@dataclass(frozen=True, slots=True)
class LlmSimResult:
    """One simulated run (module docstring for the definitions)."""

    mode: Mode
    requests: int
    completed: int
    dropped: int
    dropped_by_reason: dict[str, int]
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p99_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    ttft_slo_s: float
    itl_slo_s: float
    slo_attainment: float
    goodput_per_s: float
    output_tokens_per_s: float
    prompt_tokens: int
    cached_prompt_tokens: int
    preemptions: int
    cold_starts: int
    max_cold_start_wait_s: float
    replica_hours: float
    cost_usd: float
    num_events: int
    duration_s: float
    #: ``(t_s, replicas paid for, replicas ready)`` at each decision.
    timeline: tuple[tuple[float, int, int], ...] = field(default=())
    #: When the last request finished (its last token; s from the start): the run's real
    #: end, past ``duration_s`` when a queue drains after the arrivals stop. ``nan`` when
    #: no request finished or the mode does not follow requests (aggregated).
    last_token_s: float = math.nan

    @property
    def prefix_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def peak_replicas(self) -> int:
        return max((paid for _, paid, _ in self.timeline), default=0)

    def meets(self, slo_target: float) -> bool:
        return self.slo_attainment >= slo_target - 1e-12

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timeline"] = [list(point) for point in self.timeline]
        data["prefix_hit_rate"] = self.prefix_hit_rate
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def weighted_quantiles(
    values: FloatArray | Sequence[float],
    weights: FloatArray | Sequence[float] | None,
    levels: Sequence[float],
) -> list[float]:
    """Quantiles of ``values`` each counted ``weights`` times (the lower value at a level:
    the smallest ``v`` with at least ``level`` of the weight at or below it); ``nan`` when the
    weight is zero."""
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = w > 0
    v, w = v[keep], w[keep]
    total = float(w.sum())
    if v.size == 0 or total <= 0:
        return [math.nan for _ in levels]
    order = np.argsort(v, kind="stable")
    v, cumulative = v[order], np.cumsum(w[order])
    out = []
    for level in levels:
        index = int(np.searchsorted(cumulative, level * total - 1e-9 * total, side="left"))
        out.append(float(v[min(index, v.size - 1)]))
    return out
