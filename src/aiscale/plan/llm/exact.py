"""The exact mode: every request and every engine step of every replica, on an event heap.

Requests arrive at their times, pass the gateway (``gateway_overhead_s`` is added to their
TTFT) and are routed to a ready, non-draining replica by the same pure choices the live
routers make (``aiscale.llm.routing_choice``: least loaded, round robin, session, prefix
aware with its balance guard). While no replica is ready the gateway holds them (never fails
them); a deployment at zero is activated by the first one at once (the scaling policy is
asked right then) and the wait is reported as a cold start. Each replica runs the engine of
``plan/llm/engine.py``; its steps are events. Every ``decision_interval_s`` the scaling
policy sees an ``LlmScalingObservation`` built from the engines (waiting, running, KV use),
the last interval's TTFT and ITL p99 and token rates, and the token histories; its target
starts replicas (ready after the profile's start-up, paid from the ask) or removes them
(starting ones first, newest first; then the least loaded ready ones drain: they take no new
request, hand their queue back to the gateway, finish what runs, and are paid until empty).

Deterministic: ties on the heap are broken by an insertion counter. No clock, no I/O.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

import numpy as np

from aiscale.llm.routing_choice import (
    BalanceGuard,
    EngineView,
    pick_by_prefix,
    pick_by_session,
    pick_least_loaded,
    pick_round_robin,
)
from aiscale.plan.llm.engine import Engine, Sequence
from aiscale.plan.llm.observing import IntervalStats, token_histories
from aiscale.plan.llm.simconfig import LlmSimConfig, LlmSimResult, weighted_quantiles
from aiscale.plan.llm.workload import TokenRequests
from aiscale.scaling.policies.llm_observation import LlmScalingObservation, LlmScalingPolicy

__all__ = ["PREFIX_BLOCK_TOKENS", "run_exact", "summarize"]

#: Tokens per block of the prefix-aware router's match (vLLM's KV page size).
PREFIX_BLOCK_TOKENS = 16
_READY, _STEP, _DECIDE = 0, 1, 2


class _Replica:
    __slots__ = ("engine", "is_draining", "is_ready", "paid_from_s", "rid", "step_started_s", "url")

    def __init__(self, rid: int, engine: Engine, paid_from_s: float) -> None:
        self.rid = rid
        self.url = f"sim://replica-{rid:06d}"
        self.engine = engine
        self.is_ready = False
        self.is_draining = False
        self.paid_from_s = paid_from_s
        self.step_started_s = paid_from_s


class _ExactRun:
    """One run's mutable state (``run_exact`` is its only user)."""

    def __init__(
        self, requests: TokenRequests, policy: LlmScalingPolicy[Any], config: LlmSimConfig
    ) -> None:
        self.req = requests
        self.policy = policy
        self.state = policy.initial_state()
        self.cfg = config
        self.profile = config.profile
        self.heap: list[tuple[float, int, int, int]] = []
        self.counter = 0
        self.replicas: dict[int, _Replica] = {}
        self.next_rid = 0
        self.held: deque[Sequence] = deque()
        self.turn = 0
        self.guard = BalanceGuard()
        n = requests.num_requests
        self.ttft = np.full(n, np.nan)
        self.tpot = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int8)  # 0 pending, 1 done, 2 dropped
        self.reasons: dict[str, int] = {}
        self.itl_values: list[float] = []
        self.itl_weights: list[int] = []
        self.paid_s = 0.0
        self.timeline: list[tuple[float, int, int]] = []
        self.steps = 0
        self.preemptions = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.cold_starts = 0
        self.max_cold_wait = 0.0
        self.is_cold = False
        self.last_token_s = math.nan
        self.interval = IntervalStats()
        self.prompt_history, self.output_history = token_histories(requests, config)
        self.session = requests.session
        self.reusable = requests.reusable_or_zero()

    # ------------------------------------------------------------------ plumbing
    def push(self, t: float, kind: int, key: int) -> None:
        self.counter += 1
        heapq.heappush(self.heap, (t, self.counter, kind, key))

    def paid(self) -> list[_Replica]:
        return [r for r in self.replicas.values() if not r.is_draining]

    def routable(self) -> list[_Replica]:
        return [r for r in self.replicas.values() if r.is_ready and not r.is_draining]

    def drop(self, seq: Sequence, reason: str) -> None:
        self.status[seq.rid] = 2
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    # ------------------------------------------------------------------ requests
    def arrive(self, i: int, t: float) -> None:
        prompt = int(self.req.prompt_tokens[i])
        output = int(self.req.output_tokens[i])
        self.interval.add_arrival(prompt, output)
        session = int(self.session[i]) if self.session is not None else -1
        seq = Sequence(i, t, prompt, output, session, int(self.reusable[i]))
        if prompt + output > self.profile.max_context_tokens:
            self.drop(seq, "context")
            return
        if not self.routable():
            self.held.append(seq)
            if not self.paid():
                self.decide(t, is_activation=True)
            return
        self.dispatch(seq, t)

    def dispatch(self, seq: Sequence, t: float) -> None:
        replicas = self.routable()
        views = [
            EngineView(r.url, r.rid, r.engine.num_waiting, r.engine.num_running) for r in replicas
        ]
        by_url = {r.url: r for r in replicas}
        routing = self.cfg.routing
        if routing == "round_robin":
            view = pick_round_robin(views, self.turn)
        elif routing == "session" and seq.session >= 0:
            view = pick_by_session(views, str(seq.session))
        elif routing == "prefix_aware" and seq.session >= 0:
            matched = {
                r.url: min(r.engine.cached_for(seq.session), seq.reusable) // PREFIX_BLOCK_TOKENS
                for r in replicas
            }
            view, _ = pick_by_prefix(
                views, matched, seq.prompt // PREFIX_BLOCK_TOKENS, self.turn, self.guard
            )
        else:
            view = pick_least_loaded(views, self.turn)
        self.turn += 1
        replica = by_url[view.url]
        replica.engine.enqueue(seq)
        if not replica.engine.is_busy:
            self.start_step(replica, t)

    def start_step(self, replica: _Replica, t: float) -> None:
        dropped: list[Sequence] = []
        duration = replica.engine.begin(t, self.cfg.max_wait_s, dropped)
        for seq in dropped:
            self.drop(seq, "timeout")
        if duration is not None:
            replica.step_started_s = t
            self.push(t + duration, _STEP, replica.rid)
        elif replica.is_draining and replica.engine.is_empty:
            self.remove(replica, t)

    def end_step(self, replica: _Replica, t: float) -> None:
        start_s = replica.step_started_s
        events = replica.engine.end(t)
        self.steps += 1
        if events.num_decoded:
            self.itl_values.append(t - start_s)
            self.itl_weights.append(events.num_decoded)
        gateway = self.profile.gateway_overhead_s
        for seq in events.first_tokens:
            ttft = t - seq.arrival_s + gateway
            self.ttft[seq.rid] = ttft
            self.interval.add_ttft(ttft)
        for seq in events.finished:
            self.status[seq.rid] = 1
            self.last_token_s = t
            if seq.output > 1 and seq.first_token_s is not None:
                tpot = (t - seq.first_token_s) / (seq.output - 1)
                self.tpot[seq.rid] = tpot
                self.interval.add_itl(tpot, 1.0)
        self.start_step(replica, t)

    # ------------------------------------------------------------------ fleet
    def start_replica(self, t: float, *, is_warm: bool = False) -> None:
        """A replica paid from ``t``, ready after the start-up (at once when ``is_warm``:
        the fleet a run starts with)."""
        rid = self.next_rid
        self.next_rid += 1
        engine = Engine(
            self.profile,
            watermark=self.cfg.watermark,
            is_prefix_caching=self.cfg.is_prefix_caching,
        )
        replica = _Replica(rid, engine, t)
        self.replicas[rid] = replica
        if is_warm:
            replica.is_ready = True
        else:
            self.push(t + self.profile.startup_s, _READY, rid)

    def on_ready(self, replica: _Replica, t: float) -> None:
        replica.is_ready = True
        if self.is_cold and self.held:
            self.cold_starts += 1
            self.max_cold_wait = max(self.max_cold_wait, t - self.held[0].arrival_s)
        self.is_cold = False
        while self.held:
            seq = self.held.popleft()
            if t - seq.arrival_s > self.cfg.max_wait_s:
                self.drop(seq, "timeout")
                continue
            self.dispatch(seq, t)

    def remove(self, replica: _Replica, t: float) -> None:
        del self.replicas[replica.rid]
        end = min(t, self.req.duration_s)
        if end > replica.paid_from_s:
            self.paid_s += end - replica.paid_from_s

    def apply(self, target: int, t: float) -> None:
        paid = self.paid()
        if target > len(paid):
            if not paid:
                self.is_cold = True
            for _ in range(target - len(paid)):
                self.start_replica(t)
            return
        surplus = len(paid) - target
        for replica in sorted((r for r in paid if not r.is_ready), key=lambda r: -r.rid):
            if surplus == 0:
                return
            self.remove(replica, t)
            surplus -= 1
        ready = sorted(
            (r for r in paid if r.is_ready),
            key=lambda r: (r.engine.num_waiting + r.engine.num_running, -r.rid),
        )
        for replica in ready[:surplus]:
            replica.is_draining = True
            for seq in replica.engine.take_waiting():
                if self.routable():
                    self.dispatch(seq, t)
                else:
                    self.held.append(seq)
            if replica.engine.is_empty and not replica.engine.is_busy:
                self.remove(replica, t)

    def observe(self, t: float) -> LlmScalingObservation:
        paid = self.paid()
        ready = [r for r in paid if r.is_ready]
        everyone = list(self.replicas.values())
        waiting = sum(r.engine.num_waiting for r in everyone) + len(self.held)
        running = sum(r.engine.num_running for r in everyone)
        kv = sum(r.engine.kv_usage() for r in ready) / len(ready) if ready else None
        self.prompt_history.advance(t)
        self.output_history.advance(t)
        return self.interval.observation(
            t,
            num_replicas=len(paid),
            num_ready=len(ready),
            num_waiting=waiting,
            num_running=running,
            kv_cache_usage=kv,
            num_held=len(self.held),
            prompt_history=self.prompt_history,
            output_history=self.output_history,
        )

    def decide(self, t: float, *, is_activation: bool = False) -> None:
        observation = self.observe(t)
        decision, self.state = self.policy.decide(observation, self.state)
        if not is_activation:
            self.interval.reset(t)
        self.apply(max(0, decision.target_replicas), t)
        paid = self.paid()
        self.timeline.append((t, len(paid), sum(1 for r in paid if r.is_ready)))

    # ------------------------------------------------------------------ loop
    def run(self) -> LlmSimResult:
        cfg = self.cfg
        for _ in range(cfg.initial_replicas):
            self.start_replica(0.0, is_warm=True)
        self.push(cfg.decision_interval_s, _DECIDE, 0)
        times = self.req.times_s
        n = self.req.num_requests
        i = 0
        while i < n or self.heap:
            if i < n and (not self.heap or times[i] <= self.heap[0][0]):
                t = float(times[i])
                self.arrive(i, t)
                i += 1
                continue
            t, _, kind, key = heapq.heappop(self.heap)
            if kind == _DECIDE:
                if t < self.req.duration_s:
                    self.decide(t)
                    self.push(t + cfg.decision_interval_s, _DECIDE, 0)
                continue
            replica = self.replicas.get(key)
            if replica is None:
                continue
            if kind == _READY:
                self.on_ready(replica, t)
            else:
                self.end_step(replica, t)
        return self.result()

    def result(self) -> LlmSimResult:
        cfg = self.cfg
        for seq in self.held:
            self.drop(seq, "unfinished")
        for replica in list(self.replicas.values()):
            for seq in replica.engine.waiting:
                self.drop(seq, "unfinished")
            self.remove(replica, math.inf)
            self.preemptions += replica.engine.num_preemptions
            self.prompt_tokens += replica.engine.num_prompt_tokens
            self.cached_tokens += replica.engine.num_cached_hits
        return summarize(
            cfg,
            mode="exact",
            ttft=self.ttft,
            tpot=self.tpot,
            output_tokens=self.req.output_tokens,
            status=self.status,
            reasons=self.reasons,
            itl_values=np.asarray(self.itl_values),
            itl_weights=np.asarray(self.itl_weights, dtype=np.float64),
            paid_s=self.paid_s,
            duration_s=self.req.duration_s,
            num_events=self.steps,
            extras={
                "preemptions": self.preemptions,
                "prompt_tokens": self.prompt_tokens,
                "cached_prompt_tokens": self.cached_tokens,
                "cold_starts": self.cold_starts,
                "max_cold_start_wait_s": self.max_cold_wait,
                "last_token_s": self.last_token_s,
            },
            timeline=self.timeline,
        )


def summarize(
    cfg: LlmSimConfig,
    *,
    mode: str,
    ttft: np.ndarray[Any, np.dtype[np.float64]],
    tpot: np.ndarray[Any, np.dtype[np.float64]],
    output_tokens: np.ndarray[Any, np.dtype[np.int64]],
    status: np.ndarray[Any, np.dtype[np.int8]],
    reasons: dict[str, int],
    itl_values: np.ndarray[Any, np.dtype[np.float64]],
    itl_weights: np.ndarray[Any, np.dtype[np.float64]],
    paid_s: float,
    duration_s: float,
    num_events: int,
    extras: dict[str, Any],
    timeline: list[tuple[float, int, int]],
) -> LlmSimResult:
    """The result from per-request arrays (the exact mode's path)."""
    done = status == 1
    rejected = reasons.get("context", 0)
    admissible = status.size - rejected
    met = done & (ttft <= cfg.ttft_slo_s) & ((output_tokens <= 1) | (tpot <= cfg.itl_slo_s))
    ttft_q = weighted_quantiles(ttft[~np.isnan(ttft)], None, (0.5, 0.9, 0.99))
    tpot_q = weighted_quantiles(tpot[~np.isnan(tpot)], None, (0.5, 0.99))
    itl_q = weighted_quantiles(itl_values, itl_weights, (0.5, 0.99))
    hours = paid_s / 3600.0
    span = max(duration_s, 1e-9)
    return LlmSimResult(
        mode="exact" if mode == "exact" else "aggregated",
        requests=int(status.size),
        completed=int(done.sum()),
        dropped=int((status == 2).sum()),
        dropped_by_reason=dict(sorted(reasons.items())),
        ttft_p50_s=ttft_q[0],
        ttft_p90_s=ttft_q[1],
        ttft_p99_s=ttft_q[2],
        itl_p50_s=itl_q[0],
        itl_p99_s=itl_q[1],
        tpot_p50_s=tpot_q[0],
        tpot_p99_s=tpot_q[1],
        ttft_slo_s=cfg.ttft_slo_s,
        itl_slo_s=cfg.itl_slo_s,
        slo_attainment=float(met.sum()) / admissible if admissible else 1.0,
        goodput_per_s=float(met.sum()) / span,
        output_tokens_per_s=float(output_tokens[done].sum()) / span,
        prompt_tokens=int(extras["prompt_tokens"]),
        cached_prompt_tokens=int(extras["cached_prompt_tokens"]),
        preemptions=int(extras["preemptions"]),
        cold_starts=int(extras["cold_starts"]),
        max_cold_start_wait_s=float(extras["max_cold_start_wait_s"]),
        replica_hours=hours,
        cost_usd=hours * cfg.price_per_replica_hour,
        num_events=num_events,
        duration_s=duration_s,
        timeline=tuple(timeline),
        last_token_s=float(extras.get("last_token_s", math.nan)),
    )


def run_exact(
    requests: TokenRequests, policy: LlmScalingPolicy[Any], config: LlmSimConfig
) -> LlmSimResult:
    """Simulate ``requests`` request by request and step by step (module docstring)."""
    return _ExactRun(requests, policy, config).run()
