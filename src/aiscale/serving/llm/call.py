"""One LLM request from admission to its end: its state, and what happens once it ends.

``LlmCall`` holds what the request's path learns as it goes (the lane, the checked request,
the token budget, the ledger's reservation, the engine replica it went to). ``LlmCall.finish``
runs exactly once per admitted request, whether it was answered, streamed, cancelled by the
client or failed: it settles the reservation with the real usage (from the engine; for a
request cut short, the prompt's tokens plus the tokens streamed so far), counts tokens and
latencies in the metrics, records the request for capture and the rollout analysis, and
mirrors a successful request to the shadow version (never streamed to anyone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiscale.errors import AiscaleError
from aiscale.llm.ledger import Reservation, TokenUsage
from aiscale.llm.routing import EngineView, routing_text_of_chat, routing_text_of_completion
from aiscale.replicas.pool import Replica
from aiscale.serving.auth import Caller
from aiscale.serving.capturing import completion_values
from aiscale.serving.deployment import Deployment
from aiscale.serving.http import Request
from aiscale.serving.lane import VersionLane
from aiscale.serving.llm.lane import LlmLane, ShadowCopy
from aiscale.serving.llm.validation import LlmRequest

__all__ = ["CaptureFn", "CountFn", "LlmCall", "Outcome"]

logger = logging.getLogger(__name__)

Outcome = Literal["ok", "cancelled", "failed"]
#: The app's capture of one request: ``(request, deployment, lane, inputs, outputs, status,
#: started, user_key, key_id)``; raises only for a 200 that could not be made durable.
CaptureFn = Callable[
    [Request, str, VersionLane, Any, Any, int, float, "str | None", "str | None"],
    Awaitable[None],
]
#: The app's request counter: ``(deployment, lane, status, started)``.
CountFn = Callable[[str, VersionLane, int, float], None]
#: Status recorded for a request whose client went away (nginx's "client closed request").
CLIENT_CLOSED = 499
#: How long the end of a cut-short request may spend asking an engine for its prompt's
#: token count (else the upper bound is settled).
COUNT_AFTER_CANCEL_TIMEOUT_S = 2.0


@dataclass(slots=True, eq=False)
class LlmCall:
    """The state of one LLM request (see the module docstring)."""

    request: Request
    caller: Caller
    deployment: Deployment
    lane: LlmLane
    checked: LlmRequest
    started_s: float
    user_key: str | None
    session: str | None
    routing_text: str
    #: The token ledger (``aiscale.llm.ledger.TokenLedger``); ``None``: nothing is booked.
    ledger: Any = None
    #: The ``max_tokens`` sent to the engine, and the prompt's exact token count if known.
    max_tokens: int = 0
    prompt_tokens_exact: int | None = None
    reservation: Reservation | None = None
    replica: Replica[Any] | None = None
    view: EngineView | None = None
    #: What the answer said so far (filled by the non-streamed answer or the relay).
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    num_token_chunks: int = 0
    ttft_s: float | None = None
    itl_s: float | None = None
    is_finished: bool = False
    tried_urls: set[str] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return "/v1/chat/completions" if self.checked.kind == "chat" else "/v1/completions"

    def start_on(self, replica: Replica[Any], view: EngineView) -> None:
        """The request is on its way to ``replica``."""
        self.replica, self.view = replica, view
        self.lane.begin(replica)

    def leave_replica(self) -> None:
        """The request no longer holds its replica (ended, or retried elsewhere)."""
        if self.replica is not None:
            self.lane.end(self.replica)
            self.tried_urls.add(self.replica.handle.url)
        self.replica = None

    def token_usage(self) -> TokenUsage:
        """What the request used: the engine's usage, else (cut short) the prompt's tokens
        (exact when known, else its upper bound) and the tokens streamed so far."""
        usage = self.usage
        if usage is not None:
            details = usage.get("prompt_tokens_details") or {}
            return TokenUsage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                cached_tokens=int(details.get("cached_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        if self.replica is None and self.view is None:
            return TokenUsage(0, 0, 0)  # never reached an engine
        prompt = self.prompt_tokens_exact
        if prompt is None:
            prompt = self.checked.prompt_tokens_max
        return TokenUsage(prompt, 0, self.num_token_chunks)

    async def count_prompt_after_cut(self) -> None:
        """A request cut short has no usage from the engine: ask one for the prompt's exact
        token count (bounded in time), so that the ledger books it rather than the bound."""
        if self.usage is not None or self.prompt_tokens_exact is not None:
            return
        if self.view is None or not self.lane.limits.can_count_tokens:
            return
        engines = [e for e in self.lane.ready_engines() if not e.is_draining]
        if not engines:
            return
        try:
            replica = self.lane.replica(min(engines, key=lambda e: e.load).replica_id)
            async with asyncio.timeout(COUNT_AFTER_CANCEL_TIMEOUT_S):
                self.prompt_tokens_exact = await self.lane.client.count_prompt_tokens(
                    replica.handle,
                    self.checked.kind,
                    engine_kind=self.lane.engine.kind,
                    model=replica.handle.model_name,
                    messages=self.checked.messages,
                    prompt=self.checked.prompt,
                )
        except (AiscaleError, TimeoutError):
            pass  # the upper bound is booked instead: never less than was used

    async def finish(
        self, outcome: Outcome, status: int, *, capture: CaptureFn, count: CountFn
    ) -> None:
        """Settle, count, capture and mirror; once per request (later calls do nothing).
        Raises only when a successful request's capture record could not be made durable
        (``Overloaded``): then the answer must not be acknowledged."""
        if self.is_finished:
            return
        self.is_finished = True
        self.leave_replica()
        if outcome != "ok":
            await self.count_prompt_after_cut()
        usage = self.token_usage()
        if self.reservation is not None and self.ledger is not None:
            await self.ledger.settle(self.reservation, usage)
        self._observe(outcome, usage)
        count(self.deployment.name, self.lane, status, self.started_s)
        inputs, outputs = completion_values(
            messages=list(self.checked.messages) if self.checked.messages is not None else None,
            prompt=self.checked.prompt,
            params={**self.checked.params, "max_tokens": self.max_tokens},
            text=self.text,
            finish_reason=self.finish_reason,
            usage={
                "prompt_tokens": usage.prompt_tokens,
                "cached_tokens": usage.cached_tokens,
                "completion_tokens": usage.completion_tokens,
            },
            ttft_s=self.ttft_s,
            itl_s=self.itl_s,
            is_streamed=self.checked.is_stream,
            outcome=outcome,
        )
        if outcome == "ok":
            if self.view is not None:  # the engine's cache now holds the answer too
                await self.lane.router.routed(self.view, routing_text=self._answered_text())
            self.deployment.mirror(
                self.lane, [ShadowCopy(self.checked, self.max_tokens)], [self.text]
            )
        await capture(
            self.request,
            self.deployment.name,
            self.lane,
            inputs,
            outputs,
            status,
            self.started_s,
            self.user_key,
            self.caller.key_id,
        )

    def _answered_text(self) -> str:
        """What the engine's cache holds after answering: the prompt and the answer."""
        if self.checked.messages is not None:
            return routing_text_of_chat(self.checked.messages, answer=self.text)
        return routing_text_of_completion((self.checked.prompt or "") + self.text)

    def _observe(self, outcome: Outcome, usage: TokenUsage) -> None:
        metrics = self.lane.llm_metrics
        labels = self.labels_of_view()
        metrics.requests.labels(
            self.deployment.name, self.lane.version, outcome, str(self.checked.is_stream).lower()
        ).inc()
        if usage.prompt_tokens:
            metrics.prompt_tokens.labels(*labels).inc(usage.prompt_tokens)
        if usage.cached_tokens:
            metrics.cached_prompt_tokens.labels(*labels).inc(usage.cached_tokens)
        if usage.completion_tokens:
            metrics.generation_tokens.labels(*labels).inc(usage.completion_tokens)
        if self.ttft_s is not None and self.checked.is_stream:
            # Measured at the gateway for streams only; a whole answer's TTFT is the
            # engine's own figure (captured, not mixed into this histogram).
            metrics.ttft_seconds.labels(*labels).observe(self.ttft_s)
        if outcome == "ok":
            elapsed_s = time.perf_counter() - self.started_s
            metrics.e2e_seconds.labels(*labels).observe(elapsed_s)
            self.lane.completed(elapsed_s)
        self.lane.ended(outcome, usage, self.ttft_s, self.itl_s)
        if outcome == "ok":
            self.lane.answered(self.request.request_id)

    def labels_of_view(self) -> tuple[str, str, str]:
        """Metric labels of the replica that served (the last one tried)."""
        replica = str(self.view.replica_id) if self.view is not None else "none"
        return self.deployment.name, self.lane.version, replica
