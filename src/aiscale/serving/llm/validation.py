"""OpenAI chat and completion bodies checked before anything reaches an engine.

Every field a client may send is named here, with its check: an unknown field, a role the
engine cannot take, an empty or huge ``messages`` array, a non-text content part, ``n > 1``,
tools where the engine has none, ``max_tokens`` over the model's limit or a prompt over the
context window is an ``InvalidInput`` naming the field (the gateway answers 400 in OpenAI's
error shape), and the engine is never called for it. Sampling fields the engines accept in
the body (``ignore_eos``, ``top_k``, ``min_p``, ``repetition_penalty``) pass through by name,
translated where an engine spells one differently.

The prompt's length in tokens is bounded from above without a tokenizer: a byte-level BPE
token is at least one UTF-8 byte, plus an allowance for the chat template's framing. Only when
that bound does not fit the context window does the caller count exactly (the engine's own
tokenizer); ``output_budget`` then decides. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from aiscale.errors import InvalidInput

__all__ = [
    "CHAT_TEMPLATE_BASE_TOKENS",
    "CHAT_TEMPLATE_TOKENS_PER_MESSAGE",
    "MAX_MESSAGES",
    "EngineLimits",
    "LlmRequest",
    "engine_body",
    "fits_without_counting",
    "output_budget",
    "parse_body",
    "validate_chat",
    "validate_completion",
]

RequestKind = Literal["chat", "completion"]

#: The most messages one chat request may carry (a conversation longer than this is refused
#: before any message is looked at; the body size limit bounds it too).
MAX_MESSAGES = 1024
#: Tokens a chat template may add once (a default system prompt, the generation prompt) and
#: per message (role markers, separators): the allowance over the bytes of the text.
CHAT_TEMPLATE_BASE_TOKENS = 128
CHAT_TEMPLATE_TOKENS_PER_MESSAGE = 8
#: Tokens a completion prompt may gain besides its bytes (BOS, EOS).
COMPLETION_SPECIAL_TOKENS = 2
#: Roles of a chat message; ``tool`` and ``function`` need tool support.
TEXT_ROLES = frozenset({"system", "developer", "user", "assistant"})
TOOL_ROLES = frozenset({"tool", "function"})
#: Message keys the SDKs send back with ``null`` (a replayed assistant message): fine unset.
_NULLABLE_MESSAGE_KEYS = frozenset(
    {"tool_calls", "function_call", "refusal", "audio", "annotations", "tool_call_id"}
)
_MAX_STOP_SEQUENCES = 4
_MAX_USER_CHARS = 256
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """What one LLM deployment's engine can take: tokens per request (prompt + output, one
    slot's window), the most output tokens of one request, and whether it does tools."""

    context_window: int
    max_output_tokens: int
    has_tools: bool = False
    #: Whether the engine can count a prompt's tokens for us (llama.cpp, vLLM: yes; an
    #: upstream: no, it judges the context window itself).
    can_count_tokens: bool = True


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """One checked chat or completion request.

    ``max_tokens`` is what the client asked for (``None``: the model's default), under the
    field name it used (``max_tokens_field``). ``params`` are the sampling fields forwarded
    to the engine as sent. ``prompt_tokens_max`` bounds the prompt's tokens from above."""

    kind: RequestKind
    model: str
    messages: tuple[dict[str, Any], ...] | None
    prompt: str | None
    max_tokens: int | None
    max_tokens_field: str
    is_stream: bool
    include_usage: bool
    user: str | None
    params: dict[str, Any] = field(default_factory=dict)
    prompt_tokens_max: int = 0

    @property
    def prompt_field(self) -> str:
        """The field that holds the prompt: ``messages`` (chat) or ``prompt``."""
        return "messages" if self.kind == "chat" else "prompt"


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body, with ``model`` checked; ``InvalidInput`` naming
    ``body`` for bytes that are not UTF-8 or not JSON, ``model`` for a missing name."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if _is_not_utf8(body):
            raise InvalidInput("body is not valid UTF-8", field="body") from None
        raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object", field="body")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("model must name a deployment", field="model")
    return data


def _is_not_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# ----- field checks: each returns the value to forward, or raises naming the field -----------
Check = Callable[[Any, str], Any]


def _number(low: float, high: float, *, is_low_open: bool = False) -> Check:
    def check(value: Any, name: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{name} must be a number", field=name)
        if not math.isfinite(value) or value > high or value < low or (
            is_low_open and value == low
        ):
            side = "(" if is_low_open else "["
            raise InvalidInput(f"{name} must be in {side}{low:g}, {high:g}]", field=name)
        return value

    return check


def _integer(low: int, high: int) -> Check:
    def check(value: Any, name: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name} must be an integer", field=name)
        if not low <= value <= high:
            raise InvalidInput(f"{name} must be in [{low}, {high}]", field=name)
        return value

    return check


def _boolean(value: Any, name: str) -> Any:
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false", field=name)
    return value


def _stop(value: Any, name: str) -> Any:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= _MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in value)
    ):
        raise InvalidInput(
            f"{name} must be a string or a list of 1 to {_MAX_STOP_SEQUENCES} non-empty strings",
            field=name,
        )
    return value


def _user(value: Any, name: str) -> Any:
    if not isinstance(value, str) or len(value) > _MAX_USER_CHARS:
        raise InvalidInput(f"{name} must be a string of at most {_MAX_USER_CHARS} characters",
                           field=name)
    return value


def _only(allowed: Any, why: str) -> Check:
    """A field accepted only with one value (e.g. ``n`` = 1): anything else is unsupported."""

    def check(value: Any, name: str) -> Any:
        if value != allowed or isinstance(value, bool) != isinstance(allowed, bool):
            raise InvalidInput(f"{name}={value!r} is not supported: {why}", field=name)
        return value

    return check


def _never(why: str) -> Check:
    def check(value: Any, name: str) -> Any:
        raise InvalidInput(f"{name} is not supported: {why}", field=name)

    return check


def _response_format(value: Any, name: str) -> Any:
    if not isinstance(value, dict) or value.get("type") != "text" or len(value) != 1:
        raise InvalidInput(
            f"{name} supports only {{\"type\": \"text\"}} on this deployment", field=name
        )
    return value


#: Sampling fields forwarded to the engine, both request kinds: OpenAI's and the engines'
#: own extras (vLLM and llama.cpp accept them in the body).
SAMPLING_FIELDS: dict[str, Check] = {
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0),
    "stop": _stop,
    "seed": _integer(-_INT64_MAX, _INT64_MAX),
    "frequency_penalty": _number(-2.0, 2.0),
    "presence_penalty": _number(-2.0, 2.0),
    "ignore_eos": _boolean,
    "top_k": _integer(-1, 1_000_000),
    "min_p": _number(0.0, 1.0),
    "repetition_penalty": _number(0.0, 10.0, is_low_open=True),
}
#: Fields taken with one value only (what the engine does by default) or not at all.
_CHAT_ONLY_VALUES: dict[str, Check] = {
    "n": _only(1, "one choice per request"),
    "logprobs": _only(False, "log probabilities are not returned"),
    "parallel_tool_calls": _never("this engine has no tools"),
    "response_format": _response_format,
    "store": _only(False, "completions are captured by aiscale, not stored for OpenAI"),
}
_COMPLETION_ONLY_VALUES: dict[str, Check] = {
    "n": _only(1, "one choice per request"),
    "best_of": _only(1, "one choice per request"),
    "echo": _only(False, "the prompt is not echoed"),
    "suffix": _never("insertion is not supported"),
    "logprobs": _never("log probabilities are not returned"),
}
_TOOL_FIELDS = ("tools", "tool_choice", "functions", "function_call")
#: Fields read into ``LlmRequest`` itself rather than forwarded as sampling parameters.
_CHAT_OWN = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "stream",
                       "stream_options", "user"})
_COMPLETION_OWN = frozenset({"model", "prompt", "max_tokens", "stream", "stream_options",
                             "user"})


def validate_chat(data: Mapping[str, Any], limits: EngineLimits) -> LlmRequest:
    """A checked ``/v1/chat/completions`` body (``parse_body``'s result)."""
    for name in _TOOL_FIELDS:
        if data.get(name) is not None and not limits.has_tools:
            raise InvalidInput(f"{name} is not supported: this engine has no tools", field=name)
    params = _sampling(data, _CHAT_OWN, _CHAT_ONLY_VALUES, extra=_TOOL_FIELDS)
    messages, num_bytes = _messages(data.get("messages"))
    max_tokens, max_field = _max_tokens(data, limits, ("max_completion_tokens", "max_tokens"))
    is_stream, include_usage = _streaming(data)
    return LlmRequest(
        kind="chat",
        model=str(data["model"]),
        messages=messages,
        prompt=None,
        max_tokens=max_tokens,
        max_tokens_field=max_field,
        is_stream=is_stream,
        include_usage=include_usage,
        user=_optional(data, "user", _user),
        params=params,
        prompt_tokens_max=num_bytes
        + CHAT_TEMPLATE_BASE_TOKENS
        + CHAT_TEMPLATE_TOKENS_PER_MESSAGE * len(messages),
    )


def validate_completion(data: Mapping[str, Any], limits: EngineLimits) -> LlmRequest:
    """A checked ``/v1/completions`` body (``parse_body``'s result)."""
    params = _sampling(data, _COMPLETION_OWN, _COMPLETION_ONLY_VALUES)
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise InvalidInput("one prompt per request (a list of prompts is n > 1)", field="prompt")
    if isinstance(prompt, list) and prompt and all(
        isinstance(p, int) and not isinstance(p, bool) for p in prompt
    ):
        raise InvalidInput("token arrays are not supported; send text", field="prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InvalidInput("prompt must be a non-empty string", field="prompt")
    max_tokens, max_field = _max_tokens(data, limits, ("max_tokens",))
    is_stream, include_usage = _streaming(data)
    return LlmRequest(
        kind="completion",
        model=str(data["model"]),
        messages=None,
        prompt=prompt,
        max_tokens=max_tokens,
        max_tokens_field=max_field,
        is_stream=is_stream,
        include_usage=include_usage,
        user=_optional(data, "user", _user),
        params=params,
        prompt_tokens_max=len(prompt.encode("utf-8", "surrogatepass"))
        + COMPLETION_SPECIAL_TOKENS,
    )


def _optional(data: Mapping[str, Any], name: str, check: Check) -> Any:
    value = data.get(name)
    return None if value is None else check(value, name)


def _sampling(
    data: Mapping[str, Any],
    own: frozenset[str],
    only_values: Mapping[str, Check],
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The sampling fields to forward; an unknown field, or a bad value, names itself."""
    params: dict[str, Any] = {}
    for name, value in data.items():
        if name in own or name in extra:
            continue
        check = SAMPLING_FIELDS.get(name)
        if check is not None:
            if value is not None:
                params[name] = check(value, name)
            continue
        only = only_values.get(name)
        if only is None:
            raise InvalidInput(f"unknown field {name!r}", field=name)
        if value is not None:
            only(value, name)  # checked, and the engine's default is what it asks for
    return params


def _messages(raw: Any) -> tuple[tuple[dict[str, Any], ...], int]:
    """The messages to forward (nullable SDK keys dropped) and the UTF-8 bytes of their text."""
    if not isinstance(raw, list):
        raise InvalidInput("messages must be a list of messages", field="messages")
    if not raw:
        raise InvalidInput("messages must hold at least one message", field="messages")
    if len(raw) > MAX_MESSAGES:
        raise InvalidInput(
            f"{len(raw)} messages in one request; the limit is {MAX_MESSAGES}", field="messages"
        )
    messages: list[dict[str, Any]] = []
    num_bytes = 0
    for index, message in enumerate(raw):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise InvalidInput(f"{where} must be an object", field=where)
        role = message.get("role")
        if role in TOOL_ROLES:
            raise InvalidInput(
                f"{where}.role {role!r} needs tools, which this engine does not have",
                field=f"{where}.role",
            )
        if role not in TEXT_ROLES:
            raise InvalidInput(
                f"{where}.role must be one of {', '.join(sorted(TEXT_ROLES))}",
                field=f"{where}.role",
            )
        kept: dict[str, Any] = {"role": role}
        for key, value in message.items():
            if key == "role":
                continue
            if key == "content":
                kept["content"], size = _content(value, f"{where}.content")
                num_bytes += size
            elif key == "name":
                if not isinstance(value, str):
                    raise InvalidInput(f"{where}.name must be a string", field=f"{where}.name")
                kept["name"] = value
                num_bytes += len(value.encode("utf-8", "surrogatepass"))
            elif key in _NULLABLE_MESSAGE_KEYS:
                if value not in (None, [], ""):
                    raise InvalidInput(
                        f"{where}.{key} is not supported: this engine has no tools",
                        field=f"{where}.{key}",
                    )
            else:
                raise InvalidInput(f"unknown field {key!r} in {where}", field=f"{where}.{key}")
        if "content" not in kept:
            raise InvalidInput(f"{where}.content is missing", field=f"{where}.content")
        messages.append(kept)
    return tuple(messages), num_bytes


def _content(value: Any, where: str) -> tuple[Any, int]:
    """A message's content (a string, or a list of text parts) and its UTF-8 size."""
    if isinstance(value, str):
        return value, len(value.encode("utf-8", "surrogatepass"))
    if not isinstance(value, list) or not value:
        raise InvalidInput(
            f"{where} must be a string or a non-empty list of text parts", field=where
        )
    size = 0
    for index, part in enumerate(value):
        at = f"{where}.{index}"
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InvalidInput(
                f"{at}: only text parts are supported, not {kind!r}", field=f"{at}.type"
            )
        text = part.get("text")
        if not isinstance(text, str) or set(part) - {"type", "text"}:
            raise InvalidInput(f"{at} must be {{\"type\": \"text\", \"text\": <string>}}",
                               field=f"{at}.text")
        size += len(text.encode("utf-8", "surrogatepass"))
    return value, size


def _max_tokens(
    data: Mapping[str, Any], limits: EngineLimits, names: tuple[str, ...]
) -> tuple[int | None, str]:
    """The output limit the client asked for, under the field it used; over the model's
    limit, or two fields that disagree, is refused."""
    given = [(name, data[name]) for name in names if data.get(name) is not None]
    for name, value in given:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"{name} must be a positive integer", field=name)
        if value > limits.max_output_tokens:
            raise InvalidInput(
                f"{name}={value} is over this model's limit of {limits.max_output_tokens} "
                "output tokens",
                field=name,
            )
    if len(given) == 2 and given[0][1] != given[1][1]:
        raise InvalidInput(
            f"{given[0][0]} and {given[1][0]} disagree; send one of them", field=given[1][0]
        )
    if not given:
        return None, names[-1]
    return int(given[0][1]), given[0][0]


def _streaming(data: Mapping[str, Any]) -> tuple[bool, bool]:
    """(stream?, include_usage?): ``stream_options`` only with ``stream: true``."""
    is_stream = bool(_optional(data, "stream", _boolean))
    options = data.get("stream_options")
    if options is None:
        return is_stream, False
    if not is_stream:
        raise InvalidInput("stream_options is allowed only with stream: true",
                           field="stream_options")
    if not isinstance(options, dict):
        raise InvalidInput("stream_options must be an object", field="stream_options")
    for key in options:
        if key not in ("include_usage", "include_obfuscation"):
            raise InvalidInput(f"unknown field {key!r} in stream_options",
                               field=f"stream_options.{key}")
    include = options.get("include_usage")
    if include is not None:
        _boolean(include, "stream_options.include_usage")
    return is_stream, bool(include)


# ----- the context window ---------------------------------------------------------------------
def fits_without_counting(request: LlmRequest, limits: EngineLimits) -> bool:
    """Whether the prompt's upper bound plus the output limit fit the window: then nobody
    needs to tokenize, and the output budget is the client's or the model's limit."""
    wanted = request.max_tokens or limits.max_output_tokens
    return request.prompt_tokens_max + wanted <= limits.context_window


def output_budget(request: LlmRequest, limits: EngineLimits, prompt_tokens: int) -> int:
    """The ``max_tokens`` to send for a prompt of ``prompt_tokens`` (exact, or an upper
    bound that fits): the client's, or the model's limit cut to what the window leaves.

    A prompt that fills the window is refused naming the prompt's field; a client's
    ``max_tokens`` that does not fit beside the prompt is refused naming that field."""
    room = limits.context_window - prompt_tokens
    if room < 1:
        raise InvalidInput(
            f"the prompt has {prompt_tokens} tokens; this model's context window holds "
            f"{limits.context_window} (prompt and output together)",
            field=request.prompt_field,
        )
    if request.max_tokens is None:
        return min(limits.max_output_tokens, room)
    if request.max_tokens > room:
        raise InvalidInput(
            f"{request.max_tokens_field}={request.max_tokens} does not fit beside a prompt of "
            f"{prompt_tokens} tokens in the context window of {limits.context_window}; "
            f"at most {room}",
            field=request.max_tokens_field,
        )
    return request.max_tokens


# ----- the engine's body ----------------------------------------------------------------------
#: Engines that spell a sampling field differently: (engine kind, OpenAI-side name) → theirs.
_ENGINE_NAMES: dict[tuple[str, str], str] = {("llamacpp", "repetition_penalty"): "repeat_penalty"}


def engine_body(
    request: LlmRequest,
    *,
    engine_kind: str,
    model: str,
    max_tokens: int,
    is_stream: bool | None = None,
    engine_fields: Mapping[str, Any] | None = None,
) -> bytes:
    """The JSON body sent to the engine. Streams always ask the engine for usage (the
    gateway needs it; the client gets it only if it asked). ``model`` is the engine's own
    name of the model; ``is_stream`` overrides the client's choice (a shadow copy)."""
    stream = request.is_stream if is_stream is None else is_stream
    body: dict[str, Any] = {"model": model}
    if request.kind == "chat":
        body["messages"] = request.messages
    else:
        body["prompt"] = request.prompt
    body["max_tokens"] = max_tokens
    for name, value in request.params.items():
        body[_ENGINE_NAMES.get((engine_kind, name), name)] = value
    if request.user is not None:
        body["user"] = request.user
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if engine_fields:  # the gateway's own, e.g. llama.cpp's id_slot after a KV restore
        body.update(engine_fields)
    return orjson.dumps(body)
