"""The aggregated mode: token flow per time step for the whole fleet, not per request.

Every step of ``step_s`` (1 s by default) carries a count of arrivals and their prompt and
output tokens. The fleet and the policy calls are simulated as in the exact mode (replicas
start after the start-up, decisions every interval, activation from zero at once); the
engines are a fluid, the ready replicas sharing the load equally:

* **Queue.** Arrivals join a FIFO of step cohorts (requests, prompt tokens still to
  prefill). Prefix reuse removes the tokens an engine that kept the conversation would skip
  (all of them with ``session``/``prefix_aware`` routing, ``1 / ready`` of them otherwise).
  Requests waiting longer than ``max_wait_s`` are dropped; prompts over the context are
  rejected as in the exact mode.
* **Step time.** With ``d`` sequences decoding per replica (holding ``ctx`` tokens), a
  decode-only engine step takes ``tau0 = base + per_seq * d + per_ctx * ctx``, and each
  prefilled token adds ``c`` (linear part plus attention at the mean prompt). Prefilling
  ``x`` tokens per replica in a step of ``step_s`` leaves ``k = (step_s - c * x) / tau0``
  engine steps; ``x`` is bounded by the queue, by the chunk budget
  (``x <= B' * step_s / (tau0 + c * B')``, ``B' = max_batched_tokens - d``), and by the free
  sequence slots and KV cache of admission.
* **Decode.** Requests whose prefill completes form a decode cohort; all cohorts advance
  ``k`` tokens a step, and a cohort's survivors follow the output-length distribution of
  the token mix (``S(g) = P(output > g)``), so tokens out, completions, running sequences
  and KV use per step are sums over at most a few hundred cohorts (numpy). KV over capacity
  preempts the youngest cohorts back to the queue (recompute).
* **Latency.** TTFT of a step's arrivals is the fluid queue's delay beyond the step (from
  when the FIFO actually served their tokens) plus an in-step model: half a step's wait for
  the engine step in progress, the request's own prefill (``ceil(L / B')`` steps plus
  ``c * L``, over 16 quantiles of the prompt length ``L``), and an M/G/1 wait behind
  earlier prefills (Pollaczek-Khinchine mean, exponential tail with mass ``rho``). Per-token
  ITL is a two-point mix per step: ``x / s`` steps carry a prefill chunk of mean size ``s``
  (``tau0 + c * s``), the rest are decode-only (``tau0``); TPOT is the step's mean step time.

Latency distributions are accumulated in log-spaced histograms (0.8% wide bins), so memory
does not grow with the number of requests. It is a heuristic: ``plan.llm.compare_modes``
reports its error against the exact mode. Deterministic; no clock, no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from aiscale.plan.llm.observing import IntervalStats, histories_from_steps
from aiscale.plan.llm.simconfig import LlmSimConfig, LlmSimResult, weighted_quantiles
from aiscale.plan.llm.workload import TokenMix
from aiscale.plan.traffic import FloatArray
from aiscale.scaling.policies.llm_observation import LlmScalingPolicy

__all__ = ["StepInputs", "run_aggregated"]

#: Prompt-length quantiles of the in-step TTFT model, and points of the wait's tail.
_PROMPT_LEVELS = (np.arange(16) + 0.5) / 16
_TAIL_LEVELS = (np.arange(8) + 0.5) / 8
#: Seconds over which the arrival rate of the in-step wait model is averaged.
RATE_WINDOW_S = 10.0
#: Histogram edges for latencies (s): 1 us to 1e5 s, log-spaced.
_EDGES = np.geomspace(1e-6, 1e5, 3001)


class StepInputs:
    """Per-step arrivals (admitted and rejected) and tokens, with the mix's shape."""

    def __init__(
        self,
        counts: FloatArray,
        prompt: FloatArray,
        output: FloatArray,
        reusable: FloatArray,
        rejected: FloatArray,
        mix: TokenMix,
        step_s: float,
        max_context_tokens: int,
    ) -> None:
        self.counts = counts
        self.prompt = prompt
        self.output = output
        self.reusable = reusable
        self.rejected = rejected
        self.step_s = step_s
        fits = mix.prompt_tokens + mix.output_tokens <= max_context_tokens
        prompts = mix.prompt_tokens[fits] if fits.any() else mix.prompt_tokens
        outputs = mix.output_tokens[fits] if fits.any() else mix.output_tokens
        self.mean_prompt = float(prompts.mean())
        self.mean_output = float(outputs.mean())
        self.prompt_quantiles = np.quantile(prompts.astype(np.float64), _PROMPT_LEVELS)
        #: The admissible prompts' lengths (for the policies' sizing).
        self.prompt_sample = prompts
        longest = int(outputs.max())
        lengths = np.bincount(outputs, minlength=longest + 2).astype(np.float64)
        # S[g] = P(output > g); C[m] = sum_{j < m} S[j + 1]: decode tokens in m steps.
        self.survival = 1.0 - np.cumsum(lengths) / lengths.sum()
        self.survival = np.clip(self.survival, 0.0, 1.0)
        self.cumulative = np.concatenate(([0.0], np.cumsum(self.survival[1:])))
        self.longest = longest

    @property
    def num_steps(self) -> int:
        return int(self.counts.size)


class _Fleet:
    """Replica counts by state, and what they cost."""

    def __init__(self, initial: int) -> None:
        self.ready = initial
        self.starting: deque[float] = deque()
        self.draining: list[float] = []

    @property
    def paid(self) -> int:
        return self.ready + len(self.starting)

    def advance(self, now_s: float) -> int:
        """Start-ups finished by ``now_s`` become ready; returns how many did."""
        became = 0
        while self.starting and self.starting[0] <= now_s + 1e-9:
            self.starting.popleft()
            self.ready += 1
            became += 1
        self.draining = [end for end in self.draining if end > now_s + 1e-9]
        return became

    def apply(self, target: int, now_s: float, startup_s: float, drain_s: float) -> None:
        if target > self.paid:
            self.starting.extend([now_s + startup_s] * (target - self.paid))
            return
        surplus = self.paid - target
        while surplus and self.starting:
            self.starting.pop()
            surplus -= 1
        surplus = min(surplus, self.ready)
        self.ready -= surplus
        self.draining.extend([now_s + drain_s] * surplus)


class _AggregatedRun:
    def __init__(
        self, inputs: StepInputs, policy: LlmScalingPolicy[Any], config: LlmSimConfig
    ) -> None:
        self.inp = inputs
        self.policy = policy
        self.state = policy.initial_state()
        self.cfg = config
        self.prof = config.profile
        n = inputs.num_steps
        dt = inputs.step_s
        self.dt = dt
        self.duration_s = n * dt
        self.fleet = _Fleet(config.initial_replicas)
        # Queue: [arrival step, requests left, tokens left, tokens total, KV per request,
        # served token-seconds]
        self.queue: deque[list[float]] = deque()
        self.done_at = np.full(n, np.nan)  # mean time each step's arrivals got first tokens
        self.dropped = np.zeros(n)
        # Steps simulated: the day, then an unpaid tail of at most ``max_wait_s`` to let the
        # queue finish.
        cap = n + math.ceil(config.max_wait_s / dt) + 2
        # Decode cohorts, by the step they were born: size and cumulative steps at birth.
        self.co_n = np.zeros(cap)
        self.co_g = np.zeros(cap)
        self.co_p = np.zeros(cap)
        self.lo = 0
        self.hi = 0
        self.total_g = 0.0
        # Per-step records for the latency model.
        self.tau0 = np.zeros(cap)
        self.tau_mean = np.zeros(cap)
        self.decoding = np.zeros(cap)
        self.prefills = np.zeros(cap)
        self.budget = np.full(cap, float(self.prof.max_batched_tokens))
        self.rho = np.zeros(cap)
        self.wait_mean = np.zeros(cap)
        self.ready_at = np.zeros(cap)
        self.k_steps = np.zeros(cap)
        self.rate_per_replica = 0.0
        self._next_decision = config.decision_interval_s
        self.interval = IntervalStats()
        self.prompt_history, self.output_history = histories_from_steps(
            inputs.prompt, inputs.output, dt, config.history_bin_s
        )
        self.c_prefill = self.prof.prefill_per_token_s + self.prof.prefill_per_token_context_s * (
            inputs.mean_prompt / 2
        )
        self.paid_s = 0.0
        self.timeline: list[tuple[float, int, int]] = []
        self.preempted = 0.0
        self.prompt_tokens = float(inputs.prompt.sum())
        self.cached_tokens = 0.0
        self.cold_starts = 0
        self.cold_since: float | None = None
        self.max_cold_wait = 0.0
        self.last_tau = self.prof.step_s(0, 0)
        self._decoding_now: tuple[float, float] | None = None
        self._occupancy_avg: tuple[float, float] | None = None
        self.q_requests = 0.0
        self.q_tokens = 0.0
        quantiles = inputs.prompt_quantiles
        self._q_mean = float(quantiles.mean())
        self._q2_mean = float((quantiles**2).mean())
        self.tpot_now = self.last_tau

    # ------------------------------------------------------------------ decode cohorts
    def _alive(self) -> tuple[FloatArray, FloatArray]:
        """``(alive per cohort, steps decoded per cohort)`` of cohorts ``lo..hi``."""
        g = self.total_g - self.co_g[self.lo : self.hi]
        survival = np.interp(g + 1.0, self._grid, self.inp.survival, right=0.0)
        return self.co_n[self.lo : self.hi] * survival, g

    @property
    def _grid(self) -> FloatArray:
        grid: FloatArray = np.arange(self.inp.survival.size, dtype=np.float64)
        return grid

    def _decoding(self) -> tuple[float, float]:
        """``(sequences decoding, tokens of context they hold)``, fleet-wide (cached until
        the cohorts change)."""
        if self._decoding_now is None:
            if self.hi == self.lo:
                self._decoding_now = (0.0, 0.0)
            else:
                alive, g = self._alive()
                context = float((alive * (self.co_p[self.lo : self.hi] + 1.0 + g)).sum())
                self._decoding_now = (float(alive.sum()), context)
        return self._decoding_now

    def _advance_decode(self, k: float) -> float:
        """Advance every cohort ``k`` decode steps; returns the tokens they produced."""
        produced = 0.0
        if self.hi > self.lo and k > 0:
            g = self.total_g - self.co_g[self.lo : self.hi]
            grid = self._grid
            cumulative = self.inp.cumulative
            gained = np.interp(g + k, grid, cumulative) - np.interp(g, grid, cumulative)
            produced = float((self.co_n[self.lo : self.hi] * gained).sum())
        self._decoding_now = None
        self.total_g += k
        while self.lo < self.hi and self.total_g - self.co_g[self.lo] > self.inp.longest + 1:
            self.lo += 1
        return produced

    def _occupancy(self) -> tuple[float, float]:
        """``(sequences decoding, their context tokens)`` on average over the last step.

        A snapshot at a step's end undercounts when answers decode faster than a step lasts
        (a 10 s step, 2 s answers: most are gone by its end); the tokens a step produced
        over its engine steps count every sequence for as long as it ran."""
        return self._occupancy_avg if self._occupancy_avg is not None else self._decoding()

    # ------------------------------------------------------------------ queue
    def _serve(self, tokens: float, now_s: float, slots: float, kv_free: float) -> float:
        """Serve up to ``tokens`` from the queue head within ``slots`` new sequences and
        ``kv_free`` tokens; returns the requests whose prefill completed."""
        completed = 0.0
        while self.queue and tokens > 1e-9 and slots > 1e-9:
            head = self.queue[0]
            step, left, todo, _, kv_each, _ = head
            per_request = todo / left if left > 0 else 0.0
            can = min(left, slots, kv_free / max(kv_each, 1.0))
            if can <= 1e-12:
                break
            take = min(todo, tokens, can * per_request if per_request > 0 else todo)
            done = take / per_request if per_request > 0 else left
            head[2] -= take
            head[1] -= done
            head[5] += take * now_s
            tokens -= take
            self.q_tokens -= take
            self.q_requests -= done
            slots -= done
            kv_free -= done * kv_each
            completed += done
            if head[1] <= 1e-9 or head[2] <= 1e-9:
                self.queue.popleft()
                self.q_requests -= head[1]
                self.q_tokens -= head[2]
                index = int(step)
                self.done_at[index] = head[5] / head[3] if head[3] > 0 else now_s
        return completed

    def _enqueue(self, entry: list[float], *, is_front: bool = False) -> None:
        if is_front:
            self.queue.appendleft(entry)
        else:
            self.queue.append(entry)
        self.q_requests += entry[1]
        self.q_tokens += entry[2]

    def _queued(self) -> tuple[float, float]:
        if not self.queue:
            self.q_requests = self.q_tokens = 0.0
        return max(self.q_requests, 0.0), max(self.q_tokens, 0.0)

    # ------------------------------------------------------------------ one step
    def step(self, i: int) -> None:
        inp, prof, dt = self.inp, self.prof, self.dt
        now = i * dt
        if self.fleet.advance(now) and self.cold_since is not None:
            self.cold_starts += 1
            self.max_cold_wait = max(self.max_cold_wait, now - self.cold_since)
            self.cold_since = None
        # Decide on the state the last step left (a queue snapshot between engine steps, as
        # the live metrics see it), before this step's arrivals join.
        if now >= self._next_decision - 1e-9 and now < self.duration_s:
            self._decide(now)
            self._next_decision += self.cfg.decision_interval_s
        arrivals = float(inp.counts[i]) if i < inp.num_steps else 0.0
        ready = self.fleet.ready
        if arrivals > 0:
            hit_share = 0.0
            if self.cfg.is_prefix_caching and inp.reusable[i] > 0:
                is_sticky = self.cfg.routing in ("session", "prefix_aware")
                hit_share = 1.0 if is_sticky else 1.0 / max(ready, 1)
            hits = min(inp.reusable[i] * hit_share, inp.prompt[i] - arrivals)
            self.cached_tokens += hits
            todo = inp.prompt[i] - hits
            self._enqueue([i, arrivals, todo, todo, inp.prompt[i] / arrivals, 0.0])
            self.interval.add_arrival(inp.prompt[i], inp.output[i], arrivals + inp.rejected[i])
            if self.fleet.paid == 0:
                self.cold_since = now
                self._decide(now, is_activation=True)
        elif i < inp.num_steps and inp.rejected[i] > 0:
            self.interval.add_arrival(0.0, 0.0, inp.rejected[i])
        self._drop_old(i)
        ready = self.fleet.ready
        paid_here = min(dt, max(self.duration_s - now, 0.0))
        self.paid_s += (self.fleet.paid + len(self.fleet.draining)) * paid_here
        if ready == 0:
            self.tau0[i] = self.tau_mean[i] = self.last_tau
            return
        decoding, context = self._occupancy()
        d, ctx = decoding / ready, context / ready
        tau0 = prof.step_s(d, ctx)
        c = self.c_prefill
        chunk = max(prof.max_batched_tokens - d, 1.0)
        x_max = chunk * dt / (tau0 + c * chunk)
        queued_requests, queued_tokens = self._queued()
        # Free sequence slots now, plus the turnover of a full engine during the step: with
        # answers shorter than a step, a slot serves several sequences in it.
        held_s = max(inp.mean_output * self.last_tau, 1e-9)
        now_decoding, _ = self._decoding()
        slots = max(ready * prof.max_num_seqs - now_decoding, 0.0) + (
            ready * prof.max_num_seqs * dt / held_s
        )
        kv_free = max(ready * prof.kv_capacity_tokens * (1 - self.cfg.watermark) - context, 0.0)
        x = min(queued_tokens / ready, x_max)
        completed = self._serve(x * ready, now + dt / 2, slots, kv_free)
        served = (queued_tokens - self._queued()[1]) / ready
        k = max((dt - c * served) / tau0, 0.0)
        produced = self._advance_decode(k)
        if completed > 0:
            self._decoding_now = None
            self.co_n[self.hi] = completed
            self.co_g[self.hi] = self.total_g - k / 2
            self.co_p[self.hi] = inp.mean_prompt
            self.hi += 1
            produced += completed * float(np.interp(k / 2, self._grid, inp.cumulative))
        if k > 0:
            average = produced / k
            now_decoding, now_context = self._decoding()
            per_seq = (
                now_context / now_decoding
                if now_decoding > 1e-9
                else inp.mean_prompt + 1 + min(inp.mean_output / 2, k / 2)
            )
            self._occupancy_avg = (average, average * per_seq)
        else:
            self._occupancy_avg = None
        self._preempt_over_capacity(ready, i)
        # Records for the latency model and the policy.
        tau_mean = dt / k if k > 0 else dt
        self.tau0[i], self.tau_mean[i] = tau0, tau_mean
        self.budget[i] = chunk
        self.decoding[i] = decoding
        self.prefills[i] = served / inp.mean_prompt if inp.mean_prompt > 0 else 0.0
        self.ready_at[i] = ready
        self.k_steps[i] = k
        self.last_tau = tau_mean
        # The M/G/1 wait needs the arrival rate, not one step's Poisson count: a mean over
        # about RATE_WINDOW_S (a step's count above what the engine clears is the fluid's).
        blend = min(dt / RATE_WINDOW_S, 1.0)
        self.rate_per_replica += (arrivals / (ready * dt) - self.rate_per_replica) * blend
        lam = self.rate_per_replica
        # Work a prompt puts before later ones: its tokens at the backlogged rate (a queue
        # of prompts fills each step's chunk budget, so the step's own time is shared).
        per_token = c + tau0 / chunk
        rho = min(lam * self._q_mean * per_token, 0.95)
        self.rho[i] = rho
        self.wait_mean[i] = lam * self._q2_mean * per_token**2 / (2 * (1 - rho)) if rho > 0 else 0.0
        # What the policy reads as ITL: the mean step time over about one answer's decode.
        blend = min(dt / max(self.inp.mean_output * tau0, dt), 1.0)
        self.tpot_now += (tau_mean - self.tpot_now) * blend
        if completed > 0:
            self.interval.add_itl(self.tpot_now, completed)
        head_age = max(now - self.queue[0][0] * dt - dt, 0.0) if self.queue else 0.0
        # What the policy reads as TTFT: this step's arrivals under the in-step model, each
        # prompt quantile's service plus the M/G/1 wait (the interval's p99 is the mixture's).
        service = np.ceil(self.inp.prompt_quantiles / chunk) * tau0 + c * self.inp.prompt_quantiles
        base = service + (head_age + tau_mean / 2 + self.prof.gateway_overhead_s)
        tail_mean = self.wait_mean[i] / rho if rho > 0 else 0.0
        self.interval.add_ttft_model(base, rho, tail_mean, arrivals)

    def _preempt_over_capacity(self, ready: int, i: int) -> None:
        capacity = ready * self.prof.kv_capacity_tokens
        decoding, context = self._decoding()
        if context <= capacity or self.hi == self.lo:
            return
        excess = context - capacity
        while excess > 0 and self.hi > self.lo:
            alive, g = self._alive()
            youngest = self.hi - 1
            per_seq = self.co_p[youngest] + 1.0 + float(g[-1])
            moved = min(float(alive[-1]), excess / per_seq + 1e-9)
            if moved <= 0:
                break
            self.preempted += moved
            self.co_n[youngest] -= moved * self.co_n[youngest] / max(float(alive[-1]), 1e-12)
            excess -= moved * per_seq
            self._enqueue([i, moved, moved * per_seq, moved * per_seq, per_seq, 0.0], is_front=True)
            self._decoding_now = None
            if self.co_n[youngest] <= 1e-9:
                self.hi -= 1

    def _drop_old(self, i: int) -> None:
        horizon = self.cfg.max_wait_s / self.dt
        while self.queue and i - self.queue[0][0] > horizon:
            head = self.queue.popleft()
            self.q_requests -= head[1]
            self.q_tokens -= head[2]
            index = int(head[0])
            self.dropped[min(index, self.dropped.size - 1)] += head[1]
            if head[3] > head[2] and head[3] > 0:
                self.done_at[index] = head[5] / (head[3] - head[2])

    # ------------------------------------------------------------------ policy
    def _decide(self, now: float, *, is_activation: bool = False) -> None:
        decoding, context = self._occupancy()
        queued_requests, _ = self._queued()
        ready = self.fleet.ready
        kv = context / (ready * self.prof.kv_capacity_tokens) if ready else None
        self.prompt_history.advance(now)
        self.output_history.advance(now)
        observation = self.interval.observation(
            now,
            num_replicas=self.fleet.paid,
            num_ready=ready,
            num_waiting=round(queued_requests),
            num_running=round(decoding),
            kv_cache_usage=kv,
            num_held=round(queued_requests) if ready == 0 else 0,
            prompt_history=self.prompt_history,
            output_history=self.output_history,
        )
        decision, self.state = self.policy.decide(observation, self.state)
        if not is_activation:
            self.interval.reset(now)
        drain_s = min(self.inp.mean_output / 2 * self.last_tau, self.cfg.max_wait_s)
        self.fleet.apply(max(0, decision.target_replicas), now, self.prof.startup_s, drain_s)
        self.timeline.append((now, self.fleet.paid, self.fleet.ready))

    # ------------------------------------------------------------------ run
    def run(self) -> LlmSimResult:
        n = self.inp.num_steps
        for i in range(n):
            self.step(i)
        # Let what is queued finish (unpaid tail), at most ``max_wait_s`` more.
        extra = 0
        while self.queue and n + extra < self.tau0.size:
            self.step(n + extra)
            extra += 1
        for head in self.queue:
            index = int(head[0])
            self.dropped[min(index, n - 1)] += head[1]
        return self._result()

    # ------------------------------------------------------------------ latencies
    def _tpot(self, at: np.ndarray[Any, np.dtype[np.int64]]) -> FloatArray:
        """Mean time per output token of requests whose decode starts at steps ``at``: the
        steps' time over the engine steps run while a mean answer decodes (one step's
        ``tau_mean`` is too noisy: a step that prefilled a long prompt has few engine steps,
        and a request's tokens span many time steps)."""
        dt = self.dt
        cumulative = np.concatenate(([0.0], np.cumsum(self.k_steps)))
        last = self.k_steps.size
        span = np.clip(
            np.round(self.inp.mean_output * self.tau0[at] / dt).astype(np.int64), 1, None
        )
        end = np.minimum(at + span, last)
        steps = cumulative[end] - cumulative[at]
        spans = (end - at) * dt
        tpot: FloatArray = np.where(steps > 0, spans / np.maximum(steps, 1e-12), dt)
        return tpot

    def _itl_histogram(self) -> FloatArray:
        """Per-token ITL: each step's engine steps are decode-only (``tau0``) or carry a
        prefill chunk; each prompt quantile ``L`` takes ``ceil(L / B')`` chunk steps of
        ``tau0 + c * L / ceil(L / B')``. Where chunk steps would outnumber the engine steps
        every step carries prefill, at the step's mean time."""
        used = self.tau0 > 0
        tau0, k, budget = self.tau0[used], self.k_steps[used], self.budget[used]
        decoding, prefills = self.decoding[used], self.prefills[used]
        ready = np.maximum(self.ready_at[used], 1.0)
        quantiles = self.inp.prompt_quantiles[None, :]
        pieces = np.ceil(quantiles / budget[:, None])  # n x 16
        chunk_steps = (prefills / ready)[:, None] / quantiles.size * pieces  # per replica
        total = chunk_steps.sum(axis=1)
        saturated = total >= k
        with_chunk = tau0[:, None] + self.c_prefill * quantiles / pieces
        hist = np.histogram(
            tau0, _EDGES, weights=np.where(saturated, 0.0, decoding * np.maximum(k - total, 0))
        )[0].astype(np.float64)
        chunk_weight = np.where(saturated[:, None], 0.0, decoding[:, None] * chunk_steps)
        hist += np.histogram(with_chunk.ravel(), _EDGES, weights=chunk_weight.ravel())[0]
        tau_mean = self.tau_mean[used]
        hist += np.histogram(tau_mean, _EDGES, weights=np.where(saturated, decoding * k, 0.0))[0]
        return hist

    def _result(self) -> LlmSimResult:
        inp, cfg, prof, dt = self.inp, self.cfg, self.prof, self.dt
        n = inp.num_steps
        arrivals = inp.counts
        served = np.maximum(arrivals - self.dropped, 0.0)
        idx = np.arange(n)
        done = np.where(np.isnan(self.done_at), (idx + 1) * dt, self.done_at)
        delay = np.maximum(done - (idx + 1) * dt, 0.0)
        # The engine state when each step's arrivals were prefilled.
        at = np.minimum(idx + np.ceil(delay / dt).astype(np.int64), self.tau0.size - 1)
        tau0, tau_mean, budget = self.tau0[at], self.tau_mean[at], self.budget[at]
        rho = np.where(delay > 0, 0.0, self.rho[at])
        wait_mean = np.where(delay > 0, 0.0, self.wait_mean[at])
        quantiles = inp.prompt_quantiles[None, :]
        service = np.ceil(quantiles / budget[:, None]) * tau0[:, None] + self.c_prefill * quantiles
        base = (delay + tau_mean / 2 + prof.gateway_overhead_s)[:, None] + service  # n x 16
        # The wait: an atom (1 - rho) at 0 and an exponential tail of mass rho.
        tail_mean = np.where(rho > 0, wait_mean / np.maximum(rho, 1e-12), 0.0)
        tail = -np.log(1 - _TAIL_LEVELS)[None, :] * tail_mean[:, None]  # n x 8
        weight = served / _PROMPT_LEVELS.size
        ttft_hist = np.zeros(_EDGES.size - 1)
        ttft_hist += np.histogram(base.ravel(), _EDGES, weights=np.repeat(weight * (1 - rho), 16))[
            0
        ]
        values = base[:, :, None] + tail[:, None, :]
        tail_weight = np.repeat(weight * rho / _TAIL_LEVELS.size, 16 * _TAIL_LEVELS.size)
        ttft_hist += np.histogram(values.ravel(), _EDGES, weights=tail_weight)[0]
        # SLO: TTFT within target (exact under the model) and the step's TPOT within target.
        slack = cfg.ttft_slo_s - base
        ok_ttft = np.where(
            slack >= 0,
            (1 - rho)[:, None]
            + rho[:, None]
            * (1 - np.exp(-np.maximum(slack, 0) / np.maximum(tail_mean, 1e-12)[:, None])),
            0.0,
        )
        ok_ttft = np.where(rho[:, None] > 0, ok_ttft, (slack >= 0).astype(np.float64))
        tpot = self._tpot(at)
        ok_tpot = tpot <= cfg.itl_slo_s
        met = float((served * ok_ttft.mean(axis=1) * ok_tpot).sum())
        admissible = float(arrivals.sum())
        tpot_hist = np.histogram(tpot, _EDGES, weights=served)[0]
        ttft_q = _hist_quantiles(ttft_hist, (0.5, 0.9, 0.99))
        itl_q = _hist_quantiles(self._itl_histogram(), (0.5, 0.99))
        tpot_q = _hist_quantiles(tpot_hist, (0.5, 0.99))
        completed = float(served.sum())
        rejected = float(inp.rejected.sum())
        reasons: dict[str, int] = {}
        if rejected:
            reasons["context"] = round(rejected)
        dropped = float(self.dropped.sum())
        if dropped:
            reasons["timeout"] = round(dropped)
        hours = self.paid_s / 3600.0
        return LlmSimResult(
            mode="aggregated",
            requests=round(admissible + rejected),
            completed=round(completed),
            dropped=round(dropped + rejected),
            dropped_by_reason=reasons,
            ttft_p50_s=ttft_q[0],
            ttft_p90_s=ttft_q[1],
            ttft_p99_s=ttft_q[2],
            itl_p50_s=itl_q[0],
            itl_p99_s=itl_q[1],
            tpot_p50_s=tpot_q[0],
            tpot_p99_s=tpot_q[1],
            ttft_slo_s=cfg.ttft_slo_s,
            itl_slo_s=cfg.itl_slo_s,
            slo_attainment=met / admissible if admissible else 1.0,
            goodput_per_s=met / max(self.duration_s, 1e-9),
            output_tokens_per_s=completed * inp.mean_output / max(self.duration_s, 1e-9),
            prompt_tokens=round(self.prompt_tokens),
            cached_prompt_tokens=round(self.cached_tokens),
            preemptions=round(self.preempted),
            cold_starts=self.cold_starts,
            max_cold_start_wait_s=self.max_cold_wait,
            replica_hours=hours,
            cost_usd=hours * cfg.price_per_replica_hour,
            num_events=n,
            duration_s=self.duration_s,
            timeline=tuple(self.timeline),
        )


def _hist_quantiles(hist: FloatArray, levels: tuple[float, ...]) -> list[float]:
    """Quantiles of a histogram over ``_EDGES`` (each bin at its geometric centre)."""
    centres = np.sqrt(_EDGES[:-1] * _EDGES[1:])
    return weighted_quantiles(centres, hist, levels)


def run_aggregated(
    inputs: StepInputs, policy: LlmScalingPolicy[Any], config: LlmSimConfig
) -> LlmSimResult:
    """Simulate ``inputs`` step by step as a token fluid (module docstring)."""
    return _AggregatedRun(inputs, policy, config).run()
