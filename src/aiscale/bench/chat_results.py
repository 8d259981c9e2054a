"""What a chat bench reports: the live ``ChatProgress`` and the final ``ChatBenchResult``.

``ChatTally`` collects finished ``StreamOutcome``s (owned by the run's event loop, no locks)
and turns them into the result. Definitions, per successful counted request:

* TTFT: first content chunk minus the request's start (its scheduled time in open modes, so
  a slow server cannot hide queueing: no coordinated omission);
* ITL: every gap between consecutive content chunks, pooled over all requests;
* TPOT: a request's mean inter-token time, (last chunk - first chunk) / (chunks - 1);
* e2e: end of the stream minus the start;
* goodput: requests with TTFT <= ``slo_ttft_ms`` and TPOT <= ``slo_itl_ms`` (the request's
  mean ITL, as vLLM's and DistServe's goodput use it), per second of the counted window;
* steady output tokens/s (runs with a duration): content chunks that arrived inside the
  measured window (after the warm-up, before its end), from any request, warm-up ones and
  ones still running at the end included, over the window's length. ``output_tokens_per_s``
  counts the tokens of the requests started in the window up to the last one's end, so in a
  closed loop whose requests wait in a queue for longer than the window it mostly measures
  the start-up and the drain; the steady rate is the server's rate under the full load.

No I/O and no clock: callers pass the times.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Literal

from aiscale.bench.chat_stream import StreamOutcome
from aiscale.bench.results import percentile_ms

__all__ = ["ChatBenchResult", "ChatProgress", "ChatTally", "ChatWorkload", "LatencySummary"]

ChatWorkload = Literal["closed", "open", "trace", "multi_turn"]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of one latency (ms); every field None when nothing was measured."""

    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, values_s: array[float] | list[float]) -> LatencySummary:
        ordered = sorted(values_s)
        if not ordered:
            return cls(None, None, None, None, None)
        return cls(
            percentile_ms(ordered, 50.0),
            percentile_ms(ordered, 90.0),
            percentile_ms(ordered, 99.0),
            sum(ordered) / len(ordered) * 1000.0,
            ordered[-1] * 1000.0,
        )


@dataclass(frozen=True, slots=True)
class ChatProgress:
    """The run so far, for the progress bar. Rates cover the counted window; the latencies
    cover requests finished since the previous snapshot (None when there were none)."""

    elapsed_s: float
    is_warmup: bool
    requests: int
    ok: int
    errors: int
    dropped_by_client: int
    outstanding: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_p50_ms: float | None
    itl_p50_ms: float | None
    fraction_done: float | None


@dataclass(frozen=True, slots=True)
class ChatBenchResult:
    """Outcome of one chat bench run (see the module docstring for the definitions).

    ``errors_by_kind`` keys: an HTTP status (``"503"``), ``"connection"``, ``"timeout"`` or
    ``"stream"`` (an error event or a stream cut short). ``output_tokens`` uses the server's
    usage where it sent one, else the content chunks. ``num_short_outputs`` counts successful
    requests that produced fewer tokens than asked although ``ignore_eos`` was set (a server
    that ignores the option shows here). ``num_prompts_capped`` counts prompts shortened to
    fit ``context_tokens``. ``client_cpu_share`` is this process's CPU seconds per second of
    the run: near 1.0 means the client, not the server, was the limit.
    """

    workload: ChatWorkload
    url: str
    model: str
    requests: int
    ok: int
    errors_by_kind: dict[str, int]
    dropped_by_client: int
    duration_s: float
    requests_per_s: float
    output_tokens: int
    requested_output_tokens: int
    prompt_tokens: int
    cached_prompt_tokens: int
    output_tokens_per_s: float
    ttft: LatencySummary
    itl: LatencySummary
    tpot: LatencySummary
    e2e: LatencySummary
    slo_ttft_ms: float
    slo_itl_ms: float
    num_good: int
    goodput_rps: float
    max_tokens: int
    ignore_eos: bool
    num_short_outputs: int
    context_tokens: int
    num_prompts_capped: int
    offered_rate_rps: float | None
    client_cpu_share: float | None
    steady_output_tokens_per_s: float | None = None
    notes: tuple[str, ...] = ()
    first_error: str = ""

    @property
    def num_errors(self) -> int:
        return sum(self.errors_by_kind.values())

    @property
    def cache_hit_share(self) -> float | None:
        """Share of prompt tokens the server reported as cached (None without prompt usage)."""
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else None

    def failure_reason(self, max_error_rate: float) -> str | None:
        """Why this run did not measure a working server, or None (see ``BenchResult``)."""
        if self.requests == 0:
            return "no counted request finished"
        share = self.num_errors / self.requests
        if share <= max_error_rate:
            return None
        common = sorted(self.errors_by_kind.items(), key=lambda kv: -kv[1])[:3]
        kinds = ", ".join(f"{count:,} x {kind}" for kind, count in common)
        first = f"; first: {self.first_error}" if self.first_error else ""
        return (
            f"{self.num_errors:,} of {self.requests:,} requests failed ({share:.1%}, more than "
            f"--max-error-rate {max_error_rate:.1%}): {kinds}{first}"
        )

    def to_json(self) -> dict[str, object]:
        """A flat JSON-ready dict (latencies as ``<name>_<stat>_ms``)."""
        out: dict[str, object] = {
            "workload": self.workload,
            "url": self.url,
            "model": self.model,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.num_errors,
            "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
            "first_error": self.first_error,
            "dropped_by_client": self.dropped_by_client,
            "duration_s": self.duration_s,
            "requests_per_s": self.requests_per_s,
            "output_tokens": self.output_tokens,
            "requested_output_tokens": self.requested_output_tokens,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cache_hit_share": self.cache_hit_share,
            "output_tokens_per_s": self.output_tokens_per_s,
            "steady_output_tokens_per_s": self.steady_output_tokens_per_s,
        }
        for name in ("ttft", "itl", "tpot", "e2e"):
            summary: LatencySummary = getattr(self, name)
            for stat in ("p50", "p90", "p99", "mean", "max"):
                out[f"{name}_{stat}_ms"] = getattr(summary, f"{stat}_ms")
        out.update(
            slo_ttft_ms=self.slo_ttft_ms,
            slo_itl_ms=self.slo_itl_ms,
            good_requests=self.num_good,
            goodput_rps=self.goodput_rps,
            goodput_share=self.num_good / self.ok if self.ok else None,
            max_tokens=self.max_tokens,
            ignore_eos=self.ignore_eos,
            short_outputs=self.num_short_outputs,
            context_tokens=self.context_tokens,
            prompts_capped=self.num_prompts_capped,
            offered_rate_rps=self.offered_rate_rps,
            client_cpu_share=self.client_cpu_share,
            notes=list(self.notes),
        )
        return out


@dataclass(slots=True)
class ChatTally:
    """Counters of one run, fed by ``record`` as counted requests finish. A request is ok
    when its stream finished without an error (an empty answer too: it has no TTFT or ITL)."""

    slo_ttft_s: float
    slo_itl_s: float
    ignore_eos: bool
    requests: int = 0
    ok: int = 0
    num_good: int = 0
    num_short: int = 0
    output_tokens: int = 0
    requested_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str = ""
    ttft_s: array[float] = field(default_factory=lambda: array("d"))
    itl_s: array[float] = field(default_factory=lambda: array("d"))
    tpot_s: array[float] = field(default_factory=lambda: array("d"))
    e2e_s: array[float] = field(default_factory=lambda: array("d"))
    window_ttft_s: list[float] = field(default_factory=list)
    window_itl_s: list[float] = field(default_factory=list)
    last_done_s: float = 0.0
    #: Content chunks that arrived inside the measured window, from any request.
    window_tokens: int = 0

    def count_window_tokens(self, outcome: StreamOutcome, start_s: float, end_s: float) -> None:
        """Add the content chunks of ``outcome`` (counted or not, failed or not) that arrived
        in ``[start_s, end_s)``: the steady output rate's numerator."""
        self.window_tokens += sum(1 for at in outcome.token_times_s if start_s <= at < end_s)

    def record(self, outcome: StreamOutcome, asked_tokens: int) -> None:
        """Count one finished request that asked for ``asked_tokens`` output tokens."""
        self.requests += 1
        self.last_done_s = max(self.last_done_s, outcome.ended_s)
        times = outcome.token_times_s
        if outcome.error is not None:
            self.errors[outcome.error] = self.errors.get(outcome.error, 0) + 1
            if not self.first_error:
                self.first_error = f"{outcome.error}: {outcome.error_text}"
            return
        self.ok += 1
        self.e2e_s.append(outcome.ended_s - outcome.started_s)
        self.requested_tokens += asked_tokens
        self.prompt_tokens += outcome.prompt_tokens or 0
        self.cached_tokens += outcome.cached_tokens or 0
        if not times:
            # A finished answer without a token (the model stopped at once): no TTFT or ITL
            # to measure; it is good if it came within the TTFT objective.
            self.num_short += int(self.ignore_eos and asked_tokens > 0)
            self.num_good += int(outcome.ended_s - outcome.started_s <= self.slo_ttft_s)
            return
        ttft = times[0] - outcome.started_s
        self.ttft_s.append(ttft)
        self.window_ttft_s.append(ttft)
        tpot = 0.0
        if len(times) > 1:
            previous = times[0]
            itl = self.itl_s
            for at in times[1:]:
                itl.append(at - previous)
                previous = at
            tpot = (times[-1] - times[0]) / (len(times) - 1)
            self.tpot_s.append(tpot)
            self.window_itl_s.append(tpot)
        if ttft <= self.slo_ttft_s and tpot <= self.slo_itl_s:
            self.num_good += 1
        produced = outcome.completion_tokens
        self.output_tokens += produced
        if self.ignore_eos and produced < asked_tokens:
            self.num_short += 1

    def take_window(self) -> tuple[float | None, float | None]:
        """TTFT p50 and per-request mean ITL p50 (ms) of the requests finished since the last
        call; clears the window."""
        ttft = percentile_ms(sorted(self.window_ttft_s), 50.0)
        itl = percentile_ms(sorted(self.window_itl_s), 50.0)
        self.window_ttft_s.clear()
        self.window_itl_s.clear()
        return ttft, itl
