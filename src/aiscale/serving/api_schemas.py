"""Pydantic models of the HTTP bodies that have no pydantic validator of their own.

The OIP v2 and OpenAI bodies and the feedback body are parsed by hand for speed
(``oip_v2.py``, ``openai_api.py``, ``feedback.py``); these models describe them for the
OpenAPI document (``openapi.py``), taking their limits and enums from the parsers' own
constants so the two move together. The responses are described here too. Nothing here
validates a request on the hot path; the admin, monitor and repository-index bodies are
described by the very models that validate them, where they are defined.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from aiscale.serving.feedback import MAX_COMMENT_CHARS, MAX_ID_CHARS, MAX_LABEL_CHARS
from aiscale.serving.llm.validation import MAX_MESSAGES
from aiscale.serving.oip_v2 import NUMPY_DTYPES
from aiscale.serving.oip_v2_extensions import TRITON_TYPES
from aiscale.serving.openai_api import MAX_INPUTS

_DATATYPES: list[JsonValue] = [*NUMPY_DTYPES, "BYTES"]
_TRITON_TYPES: list[JsonValue] = [*sorted(TRITON_TYPES.values())]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


# ----- errors, one shape per protocol (``errors.py``) -------------------------------------
class OipV2Error(_Body):
    """OIP v2's error: the message only; type and field are in ``x-aiscale-error-*``."""

    error: str


class OpenAIErrorDetail(_Body):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(_Body):
    error: OpenAIErrorDetail


class AiscaleErrorDetail(_Body):
    type: str
    message: str
    field: str | None


class AiscaleError(_Body):
    error: AiscaleErrorDetail


# ----- OIP v2 -------------------------------------------------------------------------------
class ServerLive(_Body):
    live: bool


class ServerReady(_Body):
    ready: bool


class ServerMetadata(_Body):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(_Body):
    name: str
    datatype: str = Field(json_schema_extra={"enum": _DATATYPES})
    #: ``-1`` first: the batch dimension, then the shape of one item.
    shape: list[int]


class ModelMetadata(_Body):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(_Body):
    name: str
    ready: bool


class RequestTensor(_Body):
    model_config = ConfigDict(frozen=True, extra="allow")
    name: str
    shape: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    datatype: str = Field(json_schema_extra={"enum": _DATATYPES})
    #: Row-major values, flat or nested; absent when ``parameters.binary_data_size`` is set.
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class RequestedOutput(_Body):
    model_config = ConfigDict(frozen=True, extra="allow")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Body):
    model_config = ConfigDict(frozen=True, extra="allow")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class ResponseTensor(_Body):
    name: str
    shape: list[int]
    datatype: str = Field(json_schema_extra={"enum": _DATATYPES})
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(_Body):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseTensor]


class TritonTensorConfig(_Body):
    name: str
    data_type: str = Field(json_schema_extra={"enum": _TRITON_TYPES})
    dims: list[int]
    reshape: dict[str, Any] | None = None


class ModelConfig(_Body):
    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[TritonTensorConfig]
    output: list[TritonTensorConfig]
    dynamic_batching: dict[str, Any]
    instance_group: list[dict[str, Any]]


class RepositoryModel(_Body):
    name: str
    version: str
    state: Literal["READY", "LOADING", "UNAVAILABLE"]
    reason: str


class StatDuration(_Body):
    count: int = Field(ge=0)
    ns: int = Field(ge=0)


class InferStats(_Body):
    success: StatDuration
    fail: StatDuration
    queue: StatDuration
    compute_input: StatDuration
    compute_infer: StatDuration
    compute_output: StatDuration


class ModelStat(_Body):
    name: str
    version: str
    #: Unix milliseconds of the last answered request; 0 when none yet.
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: InferStats
    batch_stats: list[dict[str, Any]]


class ModelStats(_Body):
    model_stats: list[ModelStat]


# ----- OpenAI -------------------------------------------------------------------------------
class EmbeddingsBody(_Body):
    model_config = ConfigDict(frozen=True, extra="allow")
    model: str = Field(min_length=1, description="the deployment's name")
    input: str | list[str] = Field(
        json_schema_extra={
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": MAX_INPUTS,
                },
            ]
        }
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None


class Embedding(_Body):
    object: Literal["embedding"]
    index: int
    #: Floats, or base64 of little-endian float32 with ``encoding_format: base64``.
    embedding: list[float] | str


class EmbeddingsUsage(_Body):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(_Body):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage


class ModelObject(_Body):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    #: ``llm`` for an LLM deployment (it serves ``/v1/chat/completions``), else ``model``.
    aiscale_kind: Literal["llm", "model"] | None = None
    #: An LLM's context window in tokens (prompt and output of one request), as vLLM says.
    max_model_len: int | None = None


# ----- OpenAI chat and completions (``serving/llm/validation.py`` checks them) ----------------
class ChatMessage(_Body):
    model_config = ConfigDict(frozen=True, extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    #: Text, or a list of ``{"type": "text", "text": ...}`` parts.
    content: str | list[dict[str, str]]
    name: str | None = None


class _SamplingBody(_Body):
    """The fields both LLM routes take; the engine's sampling extras pass through."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = Field(min_length=1, description="the LLM deployment")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)
    stream: bool | None = None
    stream_options: dict[str, bool] | None = Field(
        default=None, description="``include_usage``: a last chunk with the usage"
    )
    n: Literal[1] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    ignore_eos: bool | None = None
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)


class ChatCompletionBody(_SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionBody(_SamplingBody):
    prompt: str = Field(min_length=1)


class LlmUsage(_Body):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class ChatChoice(_Body):
    index: int
    message: dict[str, Any]
    finish_reason: str | None


class ChatCompletion(_Body):
    """The answer; with ``stream: true``, ``text/event-stream`` of chunks then
    ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: LlmUsage | None = None


class CompletionChoice(_Body):
    index: int
    text: str
    finish_reason: str | None


class Completion(_Body):
    """The answer; with ``stream: true``, ``text/event-stream`` of chunks then
    ``data: [DONE]``."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: LlmUsage | None = None


class ModelList(_Body):
    object: Literal["list"]
    data: list[ModelObject]


class FeedbackBody(_Body):
    """At least one of ``label``, ``score`` and ``comment``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    request_id: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, description="the x-request-id of the answer"
    )
    label: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    score: float | None = Field(default=None, allow_inf_nan=False)
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS)


class FeedbackReceipt(_Body):
    feedback_id: str
    request_id: str
    recorded: bool


# ----- admin responses (open: the admin API adds fields as parts grow) -----------------------
class _Open(_Body):
    model_config = ConfigDict(frozen=True, extra="allow")


class DeploymentView(_Open):
    name: str
    model: str
    is_ready: bool
    versions: dict[str, dict[str, Any]]


class DeploymentList(_Open):
    deployments: list[DeploymentView]


class Deleted(_Open):
    deleted: str


class Refreshed(_Open):
    refreshed: bool


class VersionStats(_Open):
    deployment: str
    versions: dict[str, dict[str, Any]]


class AdminObject(_Open):
    """A JSON object whose fields the admin API documents in the README."""
