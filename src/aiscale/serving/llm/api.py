"""``POST /v1/chat/completions`` and ``POST /v1/completions``: the gateway's LLM path.

Per request, in order (each step may end it with an error in OpenAI's shape, and nothing
after a refusal touches an engine):

1. parse the body (UTF-8, JSON, ``model``) and find the deployment; shed low priority;
2. pick the version (the split, sticky by user; ``x-aiscale-version`` forces one);
3. check every field against the version's engine (``validation.py``): 400 naming it;
4. the key's request rate (``rate_limit_per_s``), then the token budget: ``max_tokens`` and
   the prompt's size against the context window, counted by the engine's tokenizer only when
   the prompt's upper bound does not fit;
5. admit in the token ledger (reserve ``prompt + max_tokens``; 429 naming the limit);
6. route to an engine replica (the lane's router) and send; an engine that cannot be reached
   or fails before answering is skipped for another (a clean retry, nothing was sent yet);
7. answer: the engine's JSON as it is, or its stream relayed event by event (``relay.py``);
8. always, at the end (``LlmCall.finish``): settle the ledger with the real usage, metrics,
   capture, rollout counts, and the shadow copy.

A client that disconnects cancels the work (``disconnect.py``), which closes the engine's
connection so that the engine frees the slot.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson

from aiscale.errors import (
    AiscaleError,
    InvalidInput,
    Overloaded,
    ReplicaUnavailable,
)
from aiscale.llm.ledger import LedgerUnavailable, LimitExceeded, Reservation, TokenLedger
from aiscale.llm.routing import routing_text_of_chat, routing_text_of_completion
from aiscale.serving.auth import Caller
from aiscale.serving.errors import status_for
from aiscale.serving.http import Request, Response
from aiscale.serving.llm.call import CLIENT_CLOSED, CaptureFn, CountFn, LlmCall
from aiscale.serving.llm.disconnect import ClientDisconnected, until_disconnect
from aiscale.serving.llm.lane import LlmLane
from aiscale.serving.llm.relay import LlmStream
from aiscale.serving.llm.validation import (
    LlmRequest,
    RequestKind,
    engine_body,
    fits_without_counting,
    output_budget,
    parse_body,
    validate_chat,
    validate_completion,
)

if TYPE_CHECKING:
    from aiscale.serving.gateway import Gateway

__all__ = ["LlmApi"]

logger = logging.getLogger(__name__)
#: Seconds a client is told to wait when the token ledger's store cannot be reached: the
#: Redis ledger leaves a failed store alone for a second before it tries again.
LEDGER_RETRY_AFTER_S = 1.0

_T = TypeVar("_T")
ParseFn = Callable[[bytes, Callable[[], _T]], Awaitable[_T]]

_JSON = (b"content-type", b"application/json")
#: Engine replicas tried for one request before it fails (each failed before answering).
MAX_ATTEMPTS = 3
#: Bytes of an engine's error body read to explain it.
MAX_ERROR_BYTES = 64 * 1024


class LlmApi:
    """The chat and completion endpoints over a gateway's LLM deployments.

    ``parse`` runs a pure parse on or off the loop by body size (the app's), ``capture`` and
    ``count`` record a finished request as every other endpoint does (the app's)."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        parse: Callable[[bytes, Callable[[], Any]], Awaitable[Any]],
        capture: CaptureFn,
        count: CountFn,
    ) -> None:
        self.gateway = gateway
        self._parse = parse
        self._capture = capture
        self._count = count

    async def handle(
        self, request: Request, caller: Caller, kind: RequestKind
    ) -> Response | LlmStream:
        """Answer one chat (``kind="chat"``) or completion request: a whole JSON answer, or an
        ``LlmStream`` the app sends (``LlmStream.pump``) and always closes (``aclose``).
        Raises ``AiscaleError`` (a 4xx/5xx) or ``ClientDisconnected``."""
        started_s = time.perf_counter()
        body = await request.body()
        data = await self._parse(body, functools.partial(parse_body, body))
        gateway = self.gateway
        deployment = gateway.requested_deployment(str(data["model"]))
        if gateway.shedding:
            gateway.check_priority(deployment.name, request.header(b"x-aiscale-priority"))
        user = data.get("user") if isinstance(data.get("user"), str) else None
        user_key = request.header(b"x-user-id") or user or caller.key_id
        lane = deployment.route(user_key, request.header(b"x-aiscale-version"))
        if not isinstance(lane, LlmLane):
            raise InvalidInput(
                f"deployment {deployment.name!r} is not an LLM; it serves /v1/embeddings "
                "or /v2 inference",
                field="model",
            )
        try:
            validate = validate_chat if kind == "chat" else validate_completion
            checked = await self._parse(body, functools.partial(validate, data, lane.limits))
            if caller.rate_limit_per_s is not None:
                await gateway.admit(caller)
        except AiscaleError as exc:  # counted (and captured) like every refused request
            status = status_for(exc)
            self._count(deployment.name, lane, status, started_s)
            try:
                await self._capture(
                    request, deployment.name, lane, None, None, status, started_s, user_key,
                    caller.key_id,
                )
            except AiscaleError:
                pass
            raise
        lane.arrived()
        call = LlmCall(
            request=request,
            caller=caller,
            deployment=deployment,
            lane=lane,
            checked=checked,
            started_s=started_s,
            user_key=user_key,
            session=request.header(b"x-session-id") or request.header(b"x-user-id") or user,
            routing_text=routing_text_of_chat(checked.messages or ())
            if kind == "chat"
            else routing_text_of_completion(checked.prompt or ""),
            ledger=gateway.llm.ledger,
        )
        try:
            return await until_disconnect(request.receive, self._serve(call))
        except ClientDisconnected:
            await self._finish(call, "cancelled", CLIENT_CLOSED)
            raise
        except AiscaleError as exc:
            await self._finish(call, "failed", status_for(exc))
            raise
        except BaseException:
            await self._finish(call, "failed", 500)
            raise

    async def _finish(self, call: LlmCall, outcome: Any, status: int) -> None:
        """``call.finish`` where a failure to capture an error must not hide the error."""
        try:
            await call.finish(outcome, status, capture=self._capture, count=self._count)
        except AiscaleError:
            pass  # the capture of a failed request is best effort (``capturing.py``)

    async def _serve(self, call: LlmCall) -> Response | LlmStream:
        if call.lane.pool.num_ready == 0:
            await call.lane.wait_for_engine(call.lane.spec.timeout_s)
        await self._budget(call)
        if call.ledger is not None:
            call.reservation = await self._admit(call, call.ledger)
        response = await self.open_engine(call)
        if call.checked.is_stream:
            return LlmStream(call, response, reopen=self.open_engine, finish=self._finish_stream)
        for _ in range(MAX_ATTEMPTS - 1):
            try:
                content = await _read_whole(response)
            except ReplicaUnavailable as exc:
                # The client has seen nothing of a whole answer: another replica may give it.
                call.leave_replica()
                logger.warning(
                    "%s; trying another engine replica", exc.message,
                    extra={"request_id": call.request.request_id},
                )
                response = await self.open_engine(call)
                continue
            return await self._answer(call, content)
        return await self._answer(call, await _read_whole(response))

    async def _finish_stream(self, call: LlmCall, outcome: Any, status: int) -> None:
        await call.finish(outcome, status, capture=self._capture, count=self._count)

    # ----- the token budget ---------------------------------------------------------------
    async def _budget(self, call: LlmCall) -> None:
        """Set ``call.max_tokens`` (and the exact prompt count when it had to be taken: the
        prompt's byte bound might not fit the context window)."""
        checked, limits = call.checked, call.lane.limits
        if fits_without_counting(checked, limits) or not limits.can_count_tokens:
            call.max_tokens = checked.max_tokens or limits.max_output_tokens
            return
        exact = await self._count_prompt(call)
        call.prompt_tokens_exact = exact
        call.max_tokens = output_budget(checked, limits, exact)

    async def _admit(self, call: LlmCall, ledger: TokenLedger) -> Reservation:
        """Reserve the request's tokens: first with what is known of the prompt (its exact
        count if taken, else its byte bound: no engine round trip on the way to the first
        token); when a limit in tokens or money refuses that, once more with the exact count
        from an engine, since the byte bound is several times the real count for most text
        and would refuse requests the limit has room for. The second refusal is final.
        A ledger that cannot be reached refuses the request (it fails closed) with 503 and
        ``Retry-After``: the store is unavailable for now, not the client's error."""

        async def reserve() -> Reservation:
            try:
                return await ledger.admit(
                    key_id=call.caller.key_id,
                    team=call.caller.team,
                    model=call.deployment.name,
                    prompt_tokens_max=call.prompt_tokens_exact or call.checked.prompt_tokens_max,
                    max_tokens=call.max_tokens,
                    key_limits=call.caller.llm_limits,
                )
            except LedgerUnavailable as exc:  # fail closed, but as a retryable 503
                raise Overloaded(
                    f"requests cannot be admitted now: {exc.message}",
                    retry_after_s=LEDGER_RETRY_AFTER_S,
                ) from None

        try:
            return await reserve()
        except LimitExceeded as refusal:
            if (
                not refusal.is_about_tokens
                or call.prompt_tokens_exact is not None
                or not call.lane.limits.can_count_tokens
            ):
                raise
            try:
                call.prompt_tokens_exact = await self._count_prompt(call)
            except ReplicaUnavailable:
                raise refusal from None  # no count to be had: the bound's answer stands
            return await reserve()

    async def _count_prompt(self, call: LlmCall) -> int:
        """The prompt's exact token count, by the least loaded ready engine replica."""
        engines = [e for e in call.lane.ready_engines() if not e.is_draining]
        if not engines:
            raise ReplicaUnavailable(
                f"deployment {call.deployment.name!r} has no engine replica ready to count "
                "the prompt"
            )
        replica = call.lane.replica(min(engines, key=lambda e: e.load).replica_id)
        return await call.lane.client.count_prompt_tokens(
            replica.handle,
            call.checked.kind,
            engine_kind=call.lane.engine.kind,
            model=replica.handle.model_name,
            messages=call.checked.messages,
            prompt=call.checked.prompt,
        )

    # ----- sending ------------------------------------------------------------------------
    async def open_engine(self, call: LlmCall) -> httpx.Response:
        """Route and send ``call`` to an engine replica; return its 200 response with the
        body still to read (``call.replica`` holds it). Replicas that cannot be reached or
        fail (5xx) before answering are skipped, up to ``MAX_ATTEMPTS``; an engine's 4xx is
        the client's error and ends the request."""
        lane = call.lane
        last: AiscaleError | None = None
        for _ in range(MAX_ATTEMPTS):
            engines = [e for e in lane.ready_engines() if e.url not in call.tried_urls]
            if not engines and last is not None:
                break
            view = await lane.router.choose(
                engines, routing_text=call.routing_text, session=call.session
            )
            try:
                replica = lane.replica(view.replica_id)
            except ReplicaUnavailable as exc:  # gone between the look and the choice
                call.tried_urls.add(view.url)
                last = exc
                continue
            call.start_on(replica, view)
            body = engine_body(
                call.checked,
                engine_kind=lane.engine.kind,
                model=replica.handle.model_name,
                max_tokens=call.max_tokens,
                engine_fields={
                    **lane.engine_fields,
                    **(await restored_slot(lane, replica.handle, call) or {}),
                },
            )
            try:
                response = await lane.client.open(
                    replica.handle, call.endpoint, body, read_timeout_s=lane.spec.timeout_s
                )
            except ReplicaUnavailable as exc:
                call.leave_replica()
                last = exc
                logger.warning(
                    "%s; trying another engine replica", exc.message,
                    extra={"request_id": call.request.request_id},
                )
                continue
            except BaseException:
                call.leave_replica()
                raise
            if response.status_code == 200:
                try:
                    await lane.router.routed(view, routing_text=call.routing_text)
                except BaseException:  # cancelled here: the engine's stream must not leak
                    await response.aclose()
                    raise
                return response
            error = await _engine_refusal(response, call.checked)
            call.leave_replica()
            if not isinstance(error, ReplicaUnavailable):
                call.view = None  # the engine refused it: nothing was generated
                raise error
            logger.warning(
                "%s; trying another engine replica", error.message,
                extra={"request_id": call.request.request_id},
            )
            last = error
        raise last or ReplicaUnavailable(f"no engine replica of {call.deployment.name!r}")

    async def _answer(self, call: LlmCall, content: bytes) -> Response:
        """The engine's whole JSON answer, passed on as it is; usage and text tallied."""
        try:
            answer = orjson.loads(content)
            choice = answer["choices"][0]
            message = choice.get("message") or {}
            call.text = str(
                (message.get("content") if call.checked.kind == "chat" else choice.get("text"))
                or ""
            )
            call.finish_reason = choice.get("finish_reason")
            call.usage = answer.get("usage")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise ReplicaUnavailable("the engine's answer is not a completion") from None
        timings = answer.get("timings")
        if isinstance(timings, dict):  # llama.cpp's own: prompt time, time per token
            call.ttft_s = _seconds(timings.get("prompt_ms"))
            call.itl_s = _seconds(timings.get("predicted_per_token_ms"))
        await call.finish("ok", 200, capture=self._capture, count=self._count)
        return 200, content, [_JSON, (b"x-aiscale-version", call.lane.version.encode())]


async def restored_slot(lane: LlmLane, handle: Any, call: LlmCall) -> dict[str, Any] | None:
    """Before a request goes to ``handle``'s engine: restore there the saved KV prefix of
    its conversation (saved when the engine that held it drained) and pin the request to
    that slot, so the follow-up turn reuses the prefix instead of recomputing it. ``None``
    when there is nothing to restore (no I/O while the store is empty or the prompt short);
    a failed restore only costs the recompute it would have saved."""
    if lane.kv is None:
        return None
    checked = call.checked
    try:
        restored = await lane.kv.restore(
            handle,
            messages=checked.messages if checked.kind == "chat" else None,
            prompt=checked.prompt if checked.kind != "chat" else None,
        )
    except Exception:  # never fail a request for an optimisation
        logger.warning("KV restore failed; the engine recomputes the prompt", exc_info=True)
        return None
    return None if restored is None else {"id_slot": restored.slot_id}


async def _read_whole(response: httpx.Response) -> bytes:
    """An engine's whole answer; ``ReplicaUnavailable`` when it drops it on the way."""
    try:
        return await response.aread()
    except httpx.HTTPError as exc:
        raise ReplicaUnavailable(
            f"engine {response.request.url.host}:{response.request.url.port} dropped "
            f"the answer: {type(exc).__name__}"
        ) from None
    finally:
        await response.aclose()


def _seconds(value: Any) -> float | None:
    return float(value) / 1000.0 if isinstance(value, int | float) else None


async def _engine_refusal(response: httpx.Response, checked: LlmRequest) -> AiscaleError:
    """An engine's non-200 answer as our error: 5xx → ``ReplicaUnavailable`` (try another),
    429 → ``Overloaded``, any other 4xx → ``InvalidInput`` with the engine's message."""
    try:
        content = b""
        async for chunk in response.aiter_raw():
            content += chunk
            if len(content) > MAX_ERROR_BYTES:
                break
    except httpx.HTTPError:
        pass
    finally:
        await response.aclose()
    status = response.status_code
    message, kind = _error_message(content)
    if status >= 500:
        return ReplicaUnavailable(f"engine answered {status}: {message}")
    if status == 429:
        return Overloaded(f"engine is overloaded: {message}", retry_after_s=1.0)
    field = checked.prompt_field if "context" in kind or "context" in message else None
    return InvalidInput(f"the engine refused the request: {message}", field=field)


def _error_message(content: bytes) -> tuple[str, str]:
    """(message, type) of an OpenAI-shaped error body, or its text."""
    try:
        error = orjson.loads(content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return content[:500].decode("utf-8", "replace"), ""
    if isinstance(error, dict):
        return str(error.get("message", ""))[:500], str(error.get("type", ""))
    return str(error)[:500], ""
