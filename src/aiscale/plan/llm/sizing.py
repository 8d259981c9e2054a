"""From a profile and an SLO to a replica's capacity and each policy's knobs.

``capacity_at_slo`` is the Dynamo-style sizing the SLO and predictive policies use: decode
throughput at the largest batch whose engine step stays within ``ITL_SHARE`` of the ITL
target (room for the prefill chunks that share the steps) and whose contexts fit the KV
cache, prefill throughput of an engine doing only that, and the largest share of its time
prefill may take with TTFT p99 and the inter-token time still on target
(``max_prefill_share``: long prompts queue, as the code trace's do). ``build_llm_policy`` turns a
policy name into the policy the planner, the benchmark and the simulator CLI run, with
knobs chosen from the profile and the SLO only (never fitted to a trace's results):

- ``llm-static``: ``static_replicas`` (the planner's peak fleet);
- ``llm-target``: KEDA triggers on waiting requests per replica (what a replica at 90% of
  its capacity at the SLO admits in half the TTFT target, at least 1: a queue it clears
  well within the target is no reason to add a replica), KV use (80%) and running
  sequences per replica: as many as a replica runs at 90% of its capacity at the SLO
  (``running_at_capacity``; the threshold the AWS guide has operators find by load tests),
  and a gradual scale-down (at most 10% of the fleet per decision, an HPA behaviour).
  Without it, with short contexts the KV trigger never fires (the slots fill first) and
  the waiting trigger alone makes the fleet swing between saturated and ten times too big;
- ``llm-slo`` and ``llm-predictive``: the capacity at the SLO, the SLO's targets, a backlog
  drained within the start-up time plus the TTFT target, the profile's start-up time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aiscale.plan.llm.profile import LlmProfile
from aiscale.plan.traffic import FloatArray, IntArray
from aiscale.scaling.policies.llm_capacity import LlmCapacity
from aiscale.scaling.policies.llm_factory import LLM_POLICY_NAMES, make_llm_policy
from aiscale.scaling.policies.llm_observation import LlmScalingPolicy

__all__ = ["ITL_SHARE", "build_llm_policy", "capacity_at_slo", "running_at_capacity"]

#: Prompt lengths: a sample of a workload's (a list or an array).
Lengths = Sequence[float] | IntArray | FloatArray

#: Share of the ITL target a decode-only step may take at the sizing batch.
ITL_SHARE = 0.7
#: Share of requests the prefill queue model may put over the TTFT target (half of a 99%
#: SLO's allowance: the rest is for ITL misses and the first seconds of bursts).
MISS_SHARE = 0.005
#: A prefill share below which meeting the TTFT target is not worth a fleet for.
MIN_USEFUL_SHARE = 0.2
#: The target utilisation of the capacity at the SLO (the SLO policy's default, the static
#: fleet's and the KEDA thresholds'). Chosen on synthetic days only (the daily cycle with and
#: without bursts, an assumed chat mix; never the Azure traces): 0.85, 0.9 and 0.95 all held
#: 100% of requests in the SLO on smooth days (TTFT p99 0.26-0.31 s against 1 s); 0.9 keeps
#: a 10% margin for the aggregated model's error and small fleets' Poisson noise.
TARGET_UTILIZATION = 0.9
#: ``llm-target``'s scale-down limit per 10 s decision: the Kubernetes HPA docs' example
#: behaviour, 10% of the pods per 60 s, taken as 10% per decision (faster, still gradual).
TARGET_STEP_DOWN_FRACTION = 0.1


def max_prefill_share(
    profile: LlmProfile,
    prompt_tokens: Lengths,
    *,
    ttft_slo_s: float,
    itl_slo_s: float,
    miss_share: float = MISS_SHARE,
) -> float:
    """The largest share of a replica's time prefill may take (``LlmCapacity``):

    * TTFT: prompts queue for prefill as an M/G/1 queue (the aggregated simulator's in-step
      model): a prompt's TTFT is its own prefill (its chunks' steps plus its tokens) plus
      half a step, plus a wait that is zero with probability ``1 - share`` and otherwise
      exponential with mean ``E[S^2] / (2 E[S] (1 - share))``. The share of requests over
      the TTFT target, over the workload's prompt lengths, must stay within ``miss_share``
      (half the 1% a 99% SLO allows: the rest is for ITL and bursts) beyond the prompts
      too long to meet it on an idle engine (the hardware's limit: no share helps them).
      Bisection; below ``MIN_USEFUL_SHARE`` the target is out of the hardware's reach and
      the bound is dropped (the ITL one stays);
    * ITL: chunked prefill stretches the steps decode rides in, so a request's mean
      inter-token time is about ``step / (1 - share)``: ``share <= 1 - step / target``
      with the one-sequence decode step.
    """
    lengths = np.quantile(np.asarray(prompt_tokens, dtype=np.float64), (np.arange(64) + 0.5) / 64)
    per_token = profile.prefill_per_token_s + profile.prefill_per_token_context_s * lengths / 2
    service = lengths * per_token
    mean, second = float(service.mean()), float((service**2).mean())
    step = profile.step_s(1, float(lengths.mean()))
    base = (
        service
        + np.ceil(lengths / profile.max_batched_tokens) * step
        + step / 2
        + profile.gateway_overhead_s
    )
    slack = ttft_slo_s - base

    def missed(share: float) -> float:
        tail_mean = second / (2 * mean * (1 - share))
        over = np.where(slack < 0, 1.0, share * np.exp(-np.maximum(slack, 0) / tail_mean))
        return float(over.mean())

    # Prompts too long to meet the target even on an idle engine miss whatever the share:
    # they are the hardware's limit (the plan shows the SLO missed), not the queue's.
    allowed = float((slack < 0).mean()) + miss_share
    low, high = 0.0, 0.98
    if missed(high) <= allowed:
        low = high
    else:
        for _ in range(40):
            middle = (low + high) / 2
            if missed(middle) <= allowed:
                low = middle
            else:
                high = middle
    by_itl = 1.0 - step / itl_slo_s
    if low < MIN_USEFUL_SHARE:
        # Only an all but idle engine would meet the TTFT target for these prompts: the SLO
        # is out of this hardware's reach, and a fleet twenty times the load's would not
        # bring it back. Size for the load (the plan shows the SLO missed).
        return max(MIN_USEFUL_SHARE, min(by_itl, 1.0))
    return min(low, by_itl, 1.0)


def capacity_at_slo(
    profile: LlmProfile,
    *,
    itl_slo_s: float,
    mean_prompt: float,
    mean_output: float,
    ttft_slo_s: float | None = None,
    prompt_tokens: Lengths | None = None,
) -> LlmCapacity:
    """One replica's sustainable prompt and output tokens/s (module docstring). A profile
    whose single-sequence step already misses the ITL budget gets batch 1. With
    ``ttft_slo_s`` and a sample of ``prompt_tokens`` (the workload's lengths) it also bounds
    the prefill share (``max_prefill_share``)."""
    context = mean_prompt + mean_output / 2
    fit_by_kv = int(profile.kv_capacity_tokens * 0.9 // max(context, 1.0))
    best = 1
    for n in range(1, max(1, min(profile.max_num_seqs, fit_by_kv)) + 1):
        if profile.step_s(n, n * context) <= itl_slo_s * ITL_SHARE:
            best = n
    decode = best / profile.step_s(best, best * context)
    prefill = 1.0 / (
        profile.prefill_per_token_s + profile.prefill_per_token_context_s * mean_prompt / 2
    )
    share = 1.0
    if ttft_slo_s is not None and prompt_tokens is not None and len(prompt_tokens):
        share = max_prefill_share(
            profile, prompt_tokens, ttft_slo_s=ttft_slo_s, itl_slo_s=itl_slo_s
        )
    return LlmCapacity(
        prompt_tokens_per_s=prefill,
        output_tokens_per_s=decode,
        kv_capacity_tokens=profile.kv_capacity_tokens,
        max_num_seqs=profile.max_num_seqs,
        max_prefill_share=share,
    )


def running_at_capacity(
    profile: LlmProfile,
    capacity: LlmCapacity,
    *,
    mean_prompt: float,
    mean_output: float,
    utilization: float = TARGET_UTILIZATION,
) -> float:
    """Sequences one replica runs when it serves ``utilization`` of its capacity at the SLO:
    Little's law ``n = rate * output * TPOT``, with TPOT the decode step at ``n`` stretched
    by the share of engine time prefill takes (a fixed point, found by iteration)."""
    rate = utilization / (
        mean_prompt / capacity.prompt_tokens_per_s + mean_output / capacity.output_tokens_per_s
    )
    prefill_share = min(rate * mean_prompt / capacity.prompt_tokens_per_s, 0.95)
    context = mean_prompt + mean_output / 2
    n = 1.0
    for _ in range(100):
        tpot = profile.step_s(n, n * context) / (1.0 - prefill_share)
        n = min(max(rate * mean_output * tpot, 1.0), float(profile.max_num_seqs))
    return n


def build_llm_policy(
    name: str,
    profile: LlmProfile,
    *,
    ttft_slo_s: float,
    itl_slo_s: float,
    mean_prompt: float,
    mean_output: float,
    max_replicas: int = 10_000,
    min_replicas: int = 1,
    static_replicas: int = 1,
    prompt_tokens: Lengths | None = None,
    **knobs: Any,
) -> LlmScalingPolicy[Any]:
    """The policy ``name`` (``LLM_POLICY_NAMES``) for this profile and SLO; ``knobs``
    override the derived ones. ``prompt_tokens``: a sample of the workload's prompt
    lengths (bounds the prefill share by the TTFT target, ``max_prefill_share``)."""
    if name == "llm-static":
        return make_llm_policy(name, **{"num_replicas": static_replicas, **knobs})
    window = {"min_replicas": min_replicas, "max_replicas": max_replicas}
    capacity = capacity_at_slo(
        profile,
        itl_slo_s=itl_slo_s,
        mean_prompt=mean_prompt,
        mean_output=mean_output,
        ttft_slo_s=ttft_slo_s,
        prompt_tokens=prompt_tokens,
    )
    if name == "llm-target":
        running = running_at_capacity(
            profile, capacity, mean_prompt=mean_prompt, mean_output=mean_output
        )
        rate = TARGET_UTILIZATION / (
            mean_prompt / capacity.prompt_tokens_per_s + mean_output / capacity.output_tokens_per_s
        )
        derived: dict[str, Any] = {
            **window,
            "target_waiting_per_replica": max(1.0, rate * ttft_slo_s / 2),
            "target_running_per_replica": running,
            "max_step_down_fraction": TARGET_STEP_DOWN_FRACTION,
        }
        return make_llm_policy(name, **{**derived, **knobs})
    derived = {
        **window,
        "capacity": capacity,
        "ttft_target_s": ttft_slo_s,
        "itl_target_s": itl_slo_s,
        "backlog_drain_s": profile.startup_s + ttft_slo_s,
    }
    if name == "llm-predictive":
        derived["startup_s"] = profile.startup_s
    if name not in LLM_POLICY_NAMES:
        return make_llm_policy(name, **knobs)  # raises ConfigError naming the choices
    return make_llm_policy(name, **{**derived, **knobs})
