"""The chat bench: streamed chat completions against any OpenAI-compatible server.

``run_chat_bench(config)`` first asks the server's ``/v1/models`` for the model name and
context window (unless given), then calibrates prompt lengths with two one-token probes (how
many tokens the chat template adds, how many a word takes: ``PromptShaper``), then runs the
workload and returns a ``ChatBenchResult``:

* ``closed``: ``concurrency`` clients, each sending its next request when its stream ends;
* ``open``: Poisson arrivals at ``rate_per_s``, sent on schedule whatever the replies;
* ``trace``: arrivals, prompt lengths (``ContextTokens``) and output lengths
  (``GeneratedTokens``, forced with ``ignore_eos`` and capped by ``max_tokens``) from a token
  trace, time-scaled. A prompt longer than the context window allows is shortened to fit and
  counted (``num_prompts_capped``, with a note);
* ``multi_turn``: ``concurrency`` users, each holding a conversation of ``turns`` turns that
  resends its whole history (the engine can reuse the cached prefix), with exponential think
  times between turns; a finished conversation is followed by a new one.

In the open modes at most ``max_outstanding`` streams are open; an arrival that finds the cap
full is not sent and counts as dropped. Requests started during the first ``warmup_s`` are
not counted. Every request streams with ``stream_options.include_usage``.

A server that cannot be reached, or refuses the probe request, raises ``UpstreamUnavailable``
or ``InvalidInput`` before the run. Intervals use ``time.perf_counter``; this module never
prints (``chat_report.py`` renders).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from aiscale.bench.chat_config import ChatBenchConfig, models_url
from aiscale.bench.chat_results import ChatBenchResult, ChatProgress, ChatTally, LatencySummary
from aiscale.bench.chat_stream import ChatStreamClient, StreamOutcome
from aiscale.bench.chat_workloads import (
    CONTEXT_MARGIN_TOKENS,
    Conversation,
    PromptShaper,
    TraceRequest,
    load_token_trace,
    synthesize_text,
)
from aiscale.errors import InvalidInput, UpstreamUnavailable

__all__ = ["DEFAULT_CONTEXT_TOKENS", "ServerFacts", "run_chat_bench"]

DEFAULT_CONTEXT_TOKENS = 2048
"""Context window assumed when neither --max-context nor the server's /v1/models gives one."""

_PROBE_WORDS = (1, 65)
_TURN_TEMPLATE_TOKENS = 16  # role markers around one more exchange of a conversation


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the run learned of the server before it started."""

    model: str
    context_tokens: int
    shaper: PromptShaper
    notes: tuple[str, ...]


async def run_chat_bench(
    config: ChatBenchConfig, *, on_progress: Callable[[ChatProgress], None] | None = None
) -> ChatBenchResult:
    """Run the chat benchmark described by ``config`` and return its result.

    ``on_progress`` is called from the event loop every ``config.progress_interval_s`` and
    once at the end; it must be quick.
    """
    trace = None
    if config.trace_path is not None:
        cut = None if config.duration_s is None else config.warmup_s + config.duration_s
        trace = load_token_trace(
            config.trace_path,
            rate_scale=config.rate_scale,
            time_scale=config.time_scale,
            duration_s=cut,
        )
    limit = (
        config.concurrency
        if config.workload in ("closed", "multi_turn")
        else config.max_outstanding
    )
    client = ChatStreamClient(
        config.chat_url, headers=config.headers, max_connections=limit, timeout_s=config.timeout_s
    )
    try:
        facts = await _learn_server(config, client)
        run = _Run(config, client, facts, trace)
        return await run.execute(on_progress)
    finally:
        await client.close()


async def _learn_server(config: ChatBenchConfig, client: ChatStreamClient) -> ServerFacts:
    notes: list[str] = []
    listing = await _get_json(config, models_url(config.chat_url))
    entries = listing.get("data") if isinstance(listing, dict) else None
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    model = config.model
    if model is None:
        ids = [str(e.get("id")) for e in entries if e.get("id")]
        if len(ids) != 1:
            listed = ", ".join(ids) if ids else "none"
            raise InvalidInput(
                f"pass --model: the server lists {len(ids)} models ({listed})", field="model"
            )
        model = ids[0]
    context = config.context_tokens
    if context is None:
        found = _context_of(entries, model)
        if found is None:
            context = DEFAULT_CONTEXT_TOKENS
            notes.append(
                f"context window unknown (no --max-context, none in /v1/models): "
                f"assumed {context} tokens"
            )
        else:
            context = found
    if config.is_calibrated:
        shaper = await _calibrate(config, client, model, notes)
    else:
        shaper = PromptShaper()
        notes.append("prompts not calibrated (--no-calibrate): 1 token per word, no template")
    return ServerFacts(model, context, shaper, tuple(notes))


async def _get_json(config: ChatBenchConfig, url: str) -> Any:
    """GET ``url``; the parsed JSON, or None for a non-2xx answer or a body that is not JSON.
    Raises ``UpstreamUnavailable`` when the server cannot be reached."""
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=dict(config.headers)) as response,
        ):
            if response.status >= 300:
                return None
            try:
                return json.loads(await response.read())
            except ValueError:
                return None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"cannot reach {url}: {exc or type(exc).__name__}") from None


def _context_of(entries: list[dict[str, Any]], model: str) -> int | None:
    """The context window a ``/v1/models`` entry states (llama.cpp's ``meta.n_ctx``, vLLM's
    ``max_model_len``, or a ``context_window``/``context_length``), preferring ``model``'s."""
    ordered = sorted(entries, key=lambda e: e.get("id") != model)
    for entry in ordered:
        meta = entry.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        for value in (
            meta.get("n_ctx"),
            entry.get("max_model_len"),
            entry.get("context_window"),
            entry.get("context_length"),
        ):
            if isinstance(value, int) and value > 0:
                return value
    return None


async def _calibrate(
    config: ChatBenchConfig, client: ChatStreamClient, model: str, notes: list[str]
) -> PromptShaper:
    """Two probes of ``_PROBE_WORDS`` words (one output token each) give the template's
    overhead and the tokens per word; raises when the server refuses a probe."""
    rng = random.Random(config.seed - 1)
    counts: list[int] = []
    for num_words in _PROBE_WORDS:
        body = _body(
            model,
            [{"role": "user", "content": synthesize_text(num_words, rng)}],
            1,
            ignore_eos=False,
        )
        outcome = await client.stream(body, started_s=time.perf_counter(), keep_text=False)
        if outcome.error is not None:
            cause = f"{outcome.error}: {outcome.error_text}".strip()
            if outcome.error in ("connection", "timeout"):
                raise UpstreamUnavailable(
                    f"the probe request to {config.chat_url} failed ({cause})"
                )
            raise InvalidInput(f"the server refused the probe request ({cause})", field="url")
        if outcome.prompt_tokens is None:
            notes.append(
                "the server reports no usage: prompt lengths assume 1 token per word "
                "and output tokens are counted as content chunks"
            )
            return PromptShaper()
        counts.append(outcome.prompt_tokens)
    return PromptShaper.calibrated(_PROBE_WORDS[0], counts[0], _PROBE_WORDS[1], counts[1])


def _body(
    model: str, messages: list[dict[str, Any]], max_tokens: int, *, ignore_eos: bool
) -> bytes:
    value: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        value["ignore_eos"] = True
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class _Run:
    """One run's state; everything runs on one event loop, so no locks."""

    def __init__(
        self,
        config: ChatBenchConfig,
        client: ChatStreamClient,
        facts: ServerFacts,
        trace: list[TraceRequest] | None,
    ) -> None:
        self._config = config
        self._client = client
        self._facts = facts
        self._trace = trace
        self._rng = random.Random(config.seed)
        self._tally = ChatTally(
            slo_ttft_s=config.slo_ttft_ms / 1000.0,
            slo_itl_s=config.slo_itl_ms / 1000.0,
            ignore_eos=config.ignore_eos,
        )
        self._tickets = math.inf if config.num_requests is None else float(config.num_requests)
        self._arrivals = 0
        self._dropped = 0
        self._outstanding = 0
        self._num_capped = 0
        self._last_offset = 0.0
        self._is_stopped_by_duration = False
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._start = 0.0
        self._warm_end = 0.0
        self._end = math.inf
        self._system_text: str | None = None
        if config.system_tokens:
            self._system_text = synthesize_text(
                max(1, round(config.system_tokens / facts.shaper.tokens_per_word)), self._rng
            )

    async def execute(self, on_progress: Callable[[ChatProgress], None] | None) -> ChatBenchResult:
        config = self._config
        cpu_start = time.process_time()
        self._start = time.perf_counter()
        self._warm_end = self._start + config.warmup_s
        if config.duration_s is not None:
            self._end = self._warm_end + config.duration_s
        async with asyncio.TaskGroup() as group:
            ticker = None
            if on_progress is not None:
                ticker = group.create_task(self._tick(on_progress))
            if config.workload == "closed":
                await asyncio.gather(*(self._closed_worker() for _ in range(config.concurrency)))
            elif config.workload == "multi_turn":
                await asyncio.gather(*(self._user(index) for index in range(config.concurrency)))
            else:
                await self._open_loop(group)
                await self._all_done.wait()
            if ticker is not None:
                ticker.cancel()
        if on_progress is not None:
            on_progress(self.snapshot())
        wall = time.perf_counter() - self._start
        cpu_share = (time.process_time() - cpu_start) / wall if wall > 0 else None
        return self._result(cpu_share)

    # ------------------------------------------------------------------ requests

    def _shape(self, prompt_tokens: int, max_tokens: int) -> tuple[str, int]:
        """A fresh prompt of about ``prompt_tokens`` tokens and the output limit, both fitted
        into the context window (a shortened prompt is counted)."""
        shaper = self._facts.shaper
        context = self._facts.context_tokens
        floor = shaper.tokens_of(1)
        max_tokens = max(1, min(max_tokens, context - floor - CONTEXT_MARGIN_TOKENS))
        room = context - max_tokens - CONTEXT_MARGIN_TOKENS
        if prompt_tokens > room:
            self._num_capped += 1
            prompt_tokens = room
        return synthesize_text(shaper.words_for(prompt_tokens), self._rng), max_tokens

    def _reserve(self) -> None:
        """Count a stream as open from the moment it is decided (before its task runs)."""
        self._outstanding += 1
        self._all_done.clear()

    async def _send(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int,
        started_s: float,
        *,
        keep_text: bool = False,
    ) -> StreamOutcome:
        """Stream one request that ``_reserve`` counted; releases it when done."""
        body = _body(self._facts.model, messages, max_tokens, ignore_eos=self._config.ignore_eos)
        try:
            outcome = await self._client.stream(body, started_s=started_s, keep_text=keep_text)
        finally:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._all_done.set()
        self._tally.count_window_tokens(outcome, self._warm_end, self._end)
        return outcome

    def _admit(self) -> bool | None:
        """Whether a request starting now is counted; None when the run is over."""
        now = time.perf_counter()
        if now >= self._end:
            self._is_stopped_by_duration = True
            return None
        if now < self._warm_end:
            return False
        if self._tickets <= 0:
            return None
        self._tickets -= 1
        self._arrivals += 1
        return True

    async def _closed_worker(self) -> None:
        config = self._config
        while (is_counted := self._admit()) is not None:
            text, max_tokens = self._shape(config.prompt_tokens, config.max_tokens)
            started = time.perf_counter()
            self._reserve()
            outcome = await self._send([{"role": "user", "content": text}], max_tokens, started)
            if is_counted:
                self._tally.record(outcome, max_tokens)

    async def _user(self, index: int) -> None:
        """One simulated user: conversations of ``turns`` turns, one after another."""
        config = self._config
        rng = random.Random(config.seed * 1_000_003 + index)
        shaper = self._facts.shaper
        room = self._facts.context_tokens - CONTEXT_MARGIN_TOKENS
        conversation = Conversation(self._system_text)
        while (is_counted := self._admit()) is not None:
            words = shaper.words_for(config.prompt_tokens) if conversation.num_turns else 0
            grown = (
                conversation.num_tokens
                + _TURN_TEMPLATE_TOKENS
                + math.ceil(words * shaper.tokens_per_word)
            )
            if conversation.num_turns and grown + config.max_tokens > room:
                conversation = Conversation(self._system_text)  # it would outgrow the window
            if conversation.num_turns == 0:
                question, max_tokens = self._shape(config.prompt_tokens, config.max_tokens)
            else:
                question = synthesize_text(words, self._rng)
                max_tokens = config.max_tokens
            self._reserve()
            outcome = await self._send(
                conversation.ask(question), max_tokens, time.perf_counter(), keep_text=True
            )
            if is_counted:
                self._tally.record(outcome, max_tokens)
            if outcome.error is not None:
                conversation = Conversation(self._system_text)
                continue
            conversation.answered(
                question, outcome.text, (outcome.prompt_tokens or 0) + outcome.completion_tokens
            )
            if conversation.num_turns >= config.turns:
                conversation = Conversation(self._system_text)
            elif config.think_time_s > 0:
                pause = rng.expovariate(1.0 / config.think_time_s)
                await asyncio.sleep(max(0.0, min(pause, self._end - time.perf_counter())))

    def _arrival_plan(self) -> Iterator[tuple[float, int | None, int | None]]:
        """(offset s, prompt tokens, output tokens) per arrival; None sizes: the config's."""
        if self._trace is not None:
            for row in self._trace:
                yield row.offset_s, row.context_tokens, max(1, row.generated_tokens)
            return
        rate = self._config.rate_per_s
        assert rate is not None
        arrivals_rng = random.Random(self._config.seed + 1)
        offset = 0.0
        while True:
            offset += arrivals_rng.expovariate(rate)
            yield offset, None, None

    async def _open_loop(self, group: asyncio.TaskGroup) -> None:
        config = self._config
        for offset, prompt, output in self._arrival_plan():
            scheduled = self._start + offset
            if scheduled >= self._end:
                self._is_stopped_by_duration = True
                break
            is_counted = scheduled >= self._warm_end
            if is_counted and self._tickets <= 0:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if is_counted:
                self._tickets -= 1
                self._arrivals += 1
                self._last_offset = offset
            if self._outstanding >= config.max_outstanding:
                if is_counted:
                    self._dropped += 1
                continue
            asked = config.max_tokens if output is None else min(output, config.max_tokens)
            text, max_tokens = self._shape(
                config.prompt_tokens if prompt is None else prompt, asked
            )
            self._reserve()
            group.create_task(self._open_request(text, max_tokens, scheduled, is_counted))
        if self._is_stopped_by_duration:
            delay = self._end - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _open_request(
        self, text: str, max_tokens: int, scheduled: float, is_counted: bool
    ) -> None:
        outcome = await self._send([{"role": "user", "content": text}], max_tokens, scheduled)
        if is_counted:
            self._tally.record(outcome, max_tokens)

    # ------------------------------------------------------------------ reporting

    async def _tick(self, on_progress: Callable[[ChatProgress], None]) -> None:
        while True:
            await asyncio.sleep(self._config.progress_interval_s)
            on_progress(self.snapshot())

    def snapshot(self) -> ChatProgress:
        tally = self._tally
        now = time.perf_counter()
        measured = now - self._warm_end
        ttft, itl = tally.take_window()
        return ChatProgress(
            elapsed_s=now - self._start,
            is_warmup=measured < 0,
            requests=tally.requests,
            ok=tally.ok,
            errors=tally.requests - tally.ok,
            dropped_by_client=self._dropped,
            outstanding=self._outstanding,
            output_tokens_per_s=tally.output_tokens / measured if measured > 0 else 0.0,
            requests_per_s=tally.ok / measured if measured > 0 else 0.0,
            ttft_p50_ms=ttft,
            itl_p50_ms=itl,
            fraction_done=self._fraction_done(now),
        )

    def _fraction_done(self, now: float) -> float | None:
        config = self._config
        fractions: list[float] = []
        if config.num_requests is not None:
            fractions.append(self._arrivals / config.num_requests)
        if config.duration_s is not None:
            fractions.append((now - self._warm_end) / config.duration_s)
        if self._trace:
            total = self._trace[-1].offset_s - config.warmup_s
            if total > 0:
                fractions.append((now - self._warm_end) / total)
        return min(1.0, max(0.0, max(fractions))) if fractions else None

    def _result(self, cpu_share: float | None) -> ChatBenchResult:
        config = self._config
        tally = self._tally
        finished = max(
            tally.last_done_s, time.perf_counter() if self._is_stopped_by_duration else 0.0
        )
        duration = max(0.0, finished - self._warm_end)
        offered: float | None = None
        if config.workload in ("open", "trace"):
            window = (
                config.duration_s
                if self._is_stopped_by_duration and config.duration_s
                else self._last_offset - config.warmup_s
            )
            offered = self._arrivals / window if window and window > 0 else None
        notes = list(self._facts.notes)
        if self._num_capped:
            notes.append(
                f"{self._num_capped} prompt(s) shortened to fit the context window of "
                f"{self._facts.context_tokens} tokens (with the output and a margin of "
                f"{CONTEXT_MARGIN_TOKENS})"
            )
        return ChatBenchResult(
            workload=config.workload,
            url=config.chat_url,
            model=self._facts.model,
            requests=tally.requests,
            ok=tally.ok,
            errors_by_kind=dict(tally.errors),
            dropped_by_client=self._dropped,
            duration_s=duration,
            requests_per_s=tally.ok / duration if duration > 0 else 0.0,
            output_tokens=tally.output_tokens,
            requested_output_tokens=tally.requested_tokens,
            prompt_tokens=tally.prompt_tokens,
            cached_prompt_tokens=tally.cached_tokens,
            output_tokens_per_s=tally.output_tokens / duration if duration > 0 else 0.0,
            ttft=LatencySummary.of(tally.ttft_s),
            itl=LatencySummary.of(tally.itl_s),
            tpot=LatencySummary.of(tally.tpot_s),
            e2e=LatencySummary.of(tally.e2e_s),
            slo_ttft_ms=config.slo_ttft_ms,
            slo_itl_ms=config.slo_itl_ms,
            num_good=tally.num_good,
            goodput_rps=tally.num_good / duration if duration > 0 else 0.0,
            max_tokens=config.max_tokens,
            ignore_eos=config.ignore_eos,
            num_short_outputs=tally.num_short,
            context_tokens=self._facts.context_tokens,
            num_prompts_capped=self._num_capped,
            offered_rate_rps=offered,
            steady_output_tokens_per_s=(
                tally.window_tokens / config.duration_s
                if self._is_stopped_by_duration and config.duration_s
                else None  # the run ended before its window did: no steady rate
            ),
            client_cpu_share=cpu_share,
            notes=tuple(notes),
            first_error=tally.first_error,
        )
