"""The arrivals of the LLM fidelity benchmark (``fidelity.py``): fixed in advance, the same
for every real run and for the simulator.

Two shapes, both open loops (a request is sent at its time whatever the replies):

* ``unique``: Poisson arrivals, one user message of random words each (no two prompts share
  more than the chat template's own prefix);
* ``conversations``: conversations starting as a Poisson process, each turn a fixed time
  after the previous one; every turn resends the conversation so far (user messages and
  *preset* assistant answers, so that the text is the same in every run whatever the model
  writes), so its prompt starts with the previous turn's whole prompt: an engine that kept
  that prompt's KV need not prefill it again. Conversations already running at time 0 are
  in the window from their first turn inside it (a steady state from the start).

Output lengths are forced (``ignore_eos``); prompt lengths are words of
``aiscale.bench.chat_workloads.WORDS`` (one token each in SmolLM2's tokenizer) shaped by a
``PromptShaper`` calibrated against the server; the exact prompt tokens come from the
server's usage of the real runs. Deterministic for a seed; no I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from aiscale.bench.chat_workloads import PromptShaper, synthesize_text
from aiscale.plan.llm.profile import LlmProfile

WORKLOADS = ("unique", "conversations")
#: Words of a unique prompt, of a conversation's first and later user messages; output tokens.
UNIQUE_WORDS = (64, 448)
FIRST_WORDS = (128, 384)
LATER_WORDS = (16, 96)
OUTPUT_TOKENS = (32, 128)
TURNS = 4
#: Seconds from one turn of a conversation to the next (uniform): longer than most answers
#: take at these loads, so that the previous turn has usually finished.
THINK_S = (5.0, 12.0)


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of the schedule. ``previous`` is the index of the same conversation's
    previous turn in the schedule (-1: none); ``session`` the conversation (-1: none)."""

    offset_s: float
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    session: int
    previous: int
    planned_prompt_tokens: int


def _words(rng: random.Random, bounds: tuple[int, int]) -> int:
    return rng.randint(bounds[0], bounds[1])


def _unique(rate_per_s: float, seconds: float, shaper: PromptShaper, seed: int) -> list[Planned]:
    arrivals = random.Random(seed)
    sizes = random.Random(seed + 1)
    text = random.Random(seed + 2)
    out: list[Planned] = []
    t = arrivals.expovariate(rate_per_s)
    while t < seconds:
        words = _words(sizes, UNIQUE_WORDS)
        message = {"role": "user", "content": synthesize_text(words, text)}
        out.append(
            Planned(t, (message,), _words(sizes, OUTPUT_TOKENS), -1, -1, shaper.tokens_of(words))
        )
        t += arrivals.expovariate(rate_per_s)
    return out


def _conversations(
    rate_per_s: float,
    seconds: float,
    shaper: PromptShaper,
    turn_tokens: float,
    seed: int,
) -> list[Planned]:
    arrivals = random.Random(seed)
    sizes = random.Random(seed + 1)
    text = random.Random(seed + 2)
    start_rate = rate_per_s / TURNS
    lead_s = (TURNS - 1) * THINK_S[1]
    turns: list[tuple[float, int, int, int]] = []  # (time, conversation, turn, output)
    t = -lead_s + arrivals.expovariate(start_rate)
    conversation = 0
    while t < seconds:
        at = t
        for turn in range(TURNS):
            turns.append((at, conversation, turn, _words(sizes, OUTPUT_TOKENS)))
            at += sizes.uniform(*THINK_S)
        conversation += 1
        t += arrivals.expovariate(start_rate)
    kept = sorted((x for x in turns if 0 <= x[0] < seconds), key=lambda x: (x[0], x[1]))
    history: dict[int, tuple[list[dict[str, str]], int, int, int]] = {}
    out: list[Planned] = []
    for at, conv, _, output in kept:
        messages, words, exchanges, previous = history.get(conv, ([], 0, 0, -1))
        new_words = _words(sizes, FIRST_WORDS if not messages else LATER_WORDS)
        asked = [*messages, {"role": "user", "content": synthesize_text(new_words, text)}]
        planned = shaper.tokens_of(words + new_words) + math.ceil(exchanges * turn_tokens)
        out.append(Planned(at, tuple(asked), output, conv, previous, planned))
        answer = {"role": "assistant", "content": synthesize_text(output, text)}
        history[conv] = ([*asked, answer], words + new_words + output, exchanges + 1, len(out) - 1)
    return out


def schedule(
    workload: str,
    rate_per_s: float,
    seconds: float,
    shaper: PromptShaper,
    *,
    turn_tokens: float,
    seed: int,
) -> list[Planned]:
    """The requests of ``workload`` at ``rate_per_s`` over ``seconds``, in arrival order.
    ``turn_tokens``: the template tokens one earlier exchange adds to a prompt."""
    if workload == "unique":
        return _unique(rate_per_s, seconds, shaper, seed)
    if workload == "conversations":
        return _conversations(rate_per_s, seconds, shaper, turn_tokens, seed)
    raise ValueError(f"unknown workload {workload!r}; expected one of {', '.join(WORKLOADS)}")


def prefilled(plan: list[Planned], prompt_tokens: list[int]) -> list[tuple[int, int]]:
    """Per request ``(tokens reused from its conversation's previous turn, tokens left to
    prefill)``: the previous turn's whole prompt is a prefix of this one's."""
    out = []
    for request, prompt in zip(plan, prompt_tokens, strict=True):
        reused = prompt_tokens[request.previous] if request.previous >= 0 else 0
        reused = min(reused, prompt - 1)
        out.append((reused, prompt - reused))
    return out


def capacity_per_s(profile: LlmProfile, plan: list[Planned]) -> dict[str, Any]:
    """Requests/s one saturated replica serves for this mix, from the profile: every slot
    decoding (``max_num_seqs``, as far as the KV cache holds the mean context), each request's
    output after its first token at that step time shared by the slots, plus its prefill of
    what is not reused at the profile's per-token cost (module docstring of
    ``plan/llm/profile.py``). The planned prompt lengths are estimates (the shaper's)."""
    prompts = [r.planned_prompt_tokens for r in plan]
    outputs = [r.max_tokens for r in plan]
    parts = prefilled(plan, prompts)
    n_req = len(plan)
    mean_prompt = sum(prompts) / n_req
    mean_output = sum(outputs) / n_req
    context = mean_prompt + mean_output / 2
    slots = max(1, min(profile.max_num_seqs, int(profile.kv_capacity_tokens // context)))
    decode_s = (mean_output - 1) * profile.step_s(slots, slots * context) / slots
    prefill_s = (
        sum(
            profile.prefill_per_token_s * todo
            + profile.prefill_per_token_context_s * todo * (reused + (todo - 1) / 2)
            for reused, todo in parts
        )
        / n_req
    )
    return {
        "capacity_per_s": 1.0 / (decode_s + prefill_s),
        "slots": slots,
        "mean_prompt_tokens": mean_prompt,
        "mean_prefilled_tokens": sum(todo for _, todo in parts) / n_req,
        "mean_output_tokens": mean_output,
        "decode_s_per_request": decode_s,
        "prefill_s_per_request": prefill_s,
    }
