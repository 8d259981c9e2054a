"""What one engine replica sustains while it meets the TTFT and ITL targets, in tokens.

An engine shares one clock between prefill (prompt tokens, compute-bound) and decode
(output tokens, one per running sequence per step, memory-bound). ``LlmCapacity`` holds the
two rates one replica reaches when it does only one of them at the SLO (measured or derived
from a profile by ``aiscale.plan.llm.capacity_at_slo``), and ``replicas_for_tokens`` adds the
two shares of engine time a token load needs. This is the sizing rule of NVIDIA Dynamo's SLA
planner (profile the engine, find the throughput per replica that still meets TTFT and ITL,
divide the predicted load by it), with prefill and decode on the same replica.

Pure: the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiscale.errors import ConfigError

__all__ = ["LlmCapacity", "replicas_for_tokens"]


@dataclass(frozen=True, slots=True)
class LlmCapacity:
    """One replica's sustainable rates at the SLO.

    ``prompt_tokens_per_s``: prefill throughput of the engine doing nothing else.
    ``output_tokens_per_s``: decode throughput at the largest batch whose step time stays
    under the ITL target. ``max_prefill_share``: the most of a replica's time prefill may
    take with TTFT p99 still under its target (prompts queue behind each other: an M/G/1
    queue whose wait grows as ``share / (1 - share)``) and decode steps still often enough
    for the ITL target (chunked prefill stretches every step it rides in).
    ``kv_capacity_tokens`` and ``max_num_seqs`` bound how many sequences fit at once.
    """

    prompt_tokens_per_s: float
    output_tokens_per_s: float
    kv_capacity_tokens: int
    max_num_seqs: int
    max_prefill_share: float = 1.0

    def __post_init__(self) -> None:
        for name in ("prompt_tokens_per_s", "output_tokens_per_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError("must be a finite number > 0", field=name)
        if self.kv_capacity_tokens < 1 or self.max_num_seqs < 1:
            raise ConfigError("must be >= 1", field="kv_capacity_tokens")
        if not 0 < self.max_prefill_share <= 1:
            raise ConfigError("must be in (0, 1]", field="max_prefill_share")


def replicas_for_tokens(
    capacity: LlmCapacity,
    prompt_tokens_per_s: float,
    output_tokens_per_s: float,
    *,
    target_utilization: float,
) -> float:
    """Replicas (fractional) whose engine time covers the load at ``target_utilization``,
    ``(prompt / prefill rate + output / decode rate) / utilization``, and whose prefill
    share stays within ``max_prefill_share`` (``prompt / prefill rate / max share``)."""
    if not 0 < target_utilization <= 1:
        raise ConfigError("must be in (0, 1]", field="target_utilization")
    prefill = max(prompt_tokens_per_s, 0.0) / capacity.prompt_tokens_per_s
    busy = prefill + max(output_tokens_per_s, 0.0) / capacity.output_tokens_per_s
    return max(busy / target_utilization, prefill / capacity.max_prefill_share)
