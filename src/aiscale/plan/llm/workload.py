"""LLM workloads: arrivals with token counts, from traces or synthetic conversations.

A trace is a CSV with ``TIMESTAMP``, ``ContextTokens`` (prompt tokens) and
``GeneratedTokens`` (output tokens): the Azure LLM inference traces in
``../shared/data/traces``, or any other trace with those columns. Two shapes feed the
simulator:

- ``TokenRequests``: one row per request (time, prompt and output tokens, and optionally the
  conversation it belongs to and how many of its prompt tokens repeat that conversation's
  previous turn, which an engine that kept them need not prefill again): the exact mode's
  input, and the aggregated mode's when the rows are known;
- ``ArrivalCounts`` plus a ``TokenMix`` (the trace's joint distribution of prompt and output
  tokens): a day of tens of millions of requests that is never materialised row by row
  (``token_day``: the trace's per-minute rate stretched to a day, as the request/response
  autoscaling benchmark draws it, ``aiscale.plan.traffic.day_counts``).

Everything random takes a seed. Reads only the files it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from aiscale.errors import ConfigError, InvalidInput
from aiscale.plan.traffic import ArrivalCounts, FloatArray, IntArray, day_counts

__all__ = [
    "TokenMix",
    "TokenRequests",
    "multi_turn_chat",
    "read_token_trace",
    "requests_from_counts",
    "token_day",
]

TOKEN_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True, slots=True, eq=False)
class TokenRequests:
    """Requests in arrival order: ``times_s`` sorted within ``[0, duration_s)``.

    ``session[i]`` names request ``i``'s conversation (``-1``: none) and
    ``reusable_tokens[i]`` how many leading prompt tokens repeat that conversation's
    previous prompt and answer (0 when unknown).
    """

    times_s: FloatArray
    prompt_tokens: IntArray
    output_tokens: IntArray
    duration_s: float
    session: IntArray | None = None
    reusable_tokens: IntArray | None = None

    def __post_init__(self) -> None:
        n = self.times_s.size
        if self.prompt_tokens.size != n or self.output_tokens.size != n:
            raise ConfigError("times, prompt and output tokens differ in length", field="times_s")
        for name in ("session", "reusable_tokens"):
            column = getattr(self, name)
            if column is not None and column.size != n:
                raise ConfigError("must have one value per request", field=name)
        if n and (np.any(np.diff(self.times_s) < 0) or self.times_s[0] < 0):
            raise ConfigError("arrival times must be sorted and >= 0", field="times_s")
        if n and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise InvalidInput("every request needs >= 1 prompt and output token", field="tokens")

    @property
    def num_requests(self) -> int:
        return int(self.times_s.size)

    def mix(self) -> TokenMix:
        """The joint distribution of prompt and output tokens of these requests."""
        return TokenMix(self.prompt_tokens, self.output_tokens)

    def reusable_or_zero(self) -> IntArray:
        if self.reusable_tokens is None:
            return np.zeros(self.num_requests, dtype=np.int64)
        return self.reusable_tokens

    def per_step(self, step_s: float) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
        """``(arrivals, prompt tokens, output tokens, reusable tokens)`` per step of ``step_s``."""
        num_steps = max(1, math.ceil(self.duration_s / step_s - 1e-9))
        index = np.minimum((self.times_s // step_s).astype(np.int64), num_steps - 1)
        counts = np.bincount(index, minlength=num_steps).astype(np.int64)
        weights = (self.prompt_tokens, self.output_tokens, self.reusable_or_zero())
        prompt, output, reusable = (
            np.bincount(index, w.astype(np.float64), minlength=num_steps).astype(np.float64)
            for w in weights
        )
        return counts, prompt, output, reusable


@dataclass(frozen=True, slots=True, eq=False)
class TokenMix:
    """An empirical joint distribution of ``(prompt, output)`` tokens, one pair per row."""

    prompt_tokens: IntArray
    output_tokens: IntArray

    def __post_init__(self) -> None:
        if self.prompt_tokens.size == 0 or self.prompt_tokens.size != self.output_tokens.size:
            raise InvalidInput("a token mix needs >= 1 row of prompt and output", field="tokens")

    @property
    def mean_prompt(self) -> float:
        return float(self.prompt_tokens.mean())

    @property
    def mean_output(self) -> float:
        return float(self.output_tokens.mean())

    def sample(self, n: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
        """``n`` pairs drawn with replacement (prompt and output stay paired)."""
        rows = rng.integers(0, self.prompt_tokens.size, n)
        return self.prompt_tokens[rows], self.output_tokens[rows]


def read_token_trace(path: str | Path) -> TokenRequests:
    """A trace's requests at their own times (seconds from the first), sorted.

    Raises ``InvalidInput`` naming the missing or bad column.
    """
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                include_columns=list(TOKEN_COLUMNS),
                column_types={
                    "TIMESTAMP": pa.timestamp("ns"),
                    "ContextTokens": pa.int64(),
                    "GeneratedTokens": pa.int64(),
                },
            ),
        )
    except (pa.ArrowInvalid, KeyError) as exc:
        missing = [c for c in TOKEN_COLUMNS if c in str(exc)]
        raise InvalidInput(
            f"trace {path} needs columns {', '.join(TOKEN_COLUMNS)}: {exc}",
            field=missing[0] if missing else "TIMESTAMP",
        ) from exc
    except OSError as exc:
        raise InvalidInput(f"cannot read trace {path}: {exc}", field="trace") from exc
    if table.num_rows == 0:
        raise InvalidInput(f"trace {path} is empty", field="TIMESTAMP")
    ns = table.column("TIMESTAMP").to_numpy().astype("datetime64[ns]").astype(np.int64)
    order = np.argsort(ns, kind="stable")
    times = (ns[order] - ns[order][0]).astype(np.float64) / 1e9
    prompt = table.column("ContextTokens").to_numpy().astype(np.int64)[order]
    output = table.column("GeneratedTokens").to_numpy().astype(np.int64)[order]
    # A row with no token (a failed request in the trace) still cost a step: count it as one.
    return TokenRequests(
        times, np.maximum(prompt, 1), np.maximum(output, 1), float(times[-1]) + 1e-9
    )


def token_day(
    path: str | Path, requests_per_day: float, *, seed: int = 0
) -> tuple[ArrivalCounts, TokenMix]:
    """One day of per-second Poisson counts following the trace's rate (``day_counts``) and
    the trace's token mix: what the aggregated mode needs for a day of millions of users."""
    trace = read_token_trace(path)
    counts, _, _ = day_counts(trace.times_s, requests_per_day, seed=seed)
    return counts, trace.mix()


def requests_from_counts(counts: ArrivalCounts, mix: TokenMix, *, seed: int = 0) -> TokenRequests:
    """Rows for ``counts``: times uniform inside each step, tokens drawn from ``mix``."""
    arrivals = counts.to_arrivals(seed)
    rng = np.random.default_rng([seed, 7])
    prompt, output = mix.sample(arrivals.num_requests, rng)
    return TokenRequests(arrivals.times_s, prompt, output, arrivals.duration_s)


def multi_turn_chat(
    *,
    num_conversations: int,
    turns: int,
    duration_s: float,
    system_tokens: int = 200,
    user_tokens: tuple[int, int] = (20, 200),
    output_tokens: tuple[int, int] = (50, 300),
    think_s: float = 20.0,
    seed: int = 0,
) -> TokenRequests:
    """Conversations starting uniformly over the first half of ``duration_s``, ``turns``
    turns each, a user message every ``think_s`` (exponential) plus the previous answer's
    generation time ignored (an open loop). Turn ``k``'s prompt is turn ``k - 1``'s prompt,
    answer and a new user message; its reusable tokens are the first two."""
    if num_conversations < 1 or turns < 1 or duration_s <= 0 or think_s < 0:
        raise ConfigError("need >= 1 conversation and turn, duration > 0", field="turns")
    rng = np.random.default_rng(seed)
    times, prompts, outputs, sessions, reusable = [], [], [], [], []
    for conversation in range(num_conversations):
        t = float(rng.uniform(0.0, duration_s / 2))
        context = system_tokens
        for turn in range(turns):
            user = int(rng.integers(user_tokens[0], user_tokens[1] + 1))
            answer = int(rng.integers(output_tokens[0], output_tokens[1] + 1))
            times.append(t)
            prompts.append(context + user)
            outputs.append(answer)
            sessions.append(conversation)
            reusable.append(context if turn > 0 else 0)
            context += user + answer
            t += float(rng.exponential(think_s)) if think_s > 0 else 0.0
    order = np.argsort(np.asarray(times), kind="stable")
    keep = np.asarray(times)[order] < duration_s
    pick = order[keep]
    return TokenRequests(
        np.asarray(times)[pick],
        np.asarray(prompts, dtype=np.int64)[pick],
        np.asarray(outputs, dtype=np.int64)[pick],
        duration_s,
        session=np.asarray(sessions, dtype=np.int64)[pick],
        reusable_tokens=np.asarray(reusable, dtype=np.int64)[pick],
    )
