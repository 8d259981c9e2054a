"""The OpenAI-compatible embeddings body, both ways (``POST /v1/embeddings``), and the
Model objects of ``GET /v1/models``.

The request's ``model`` names the deployment. ``encoding_format`` ``float`` (default) or
``base64`` (what the official client asks for) are supported. Pure functions: no I/O.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from aiscale.errors import InvalidInput
from aiscale.serving.limits import check_item_count

#: The most texts one request may carry, as OpenAI's API allows.
MAX_INPUTS = 2048


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    model: str
    texts: list[str]
    is_base64: bool
    dimensions: int | None
    user: str | None


def parse_embeddings_request(body: bytes, *, max_items: int = MAX_INPUTS) -> EmbeddingsRequest:
    """The request in ``body``; more than ``max_items`` inputs (or OpenAI's 2048) is refused
    with ``PayloadTooLarge`` from the list's length, before any input is looked at."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
    if not isinstance(request, dict):
        raise InvalidInput("body must be a JSON object", field="body")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("model must name a deployment", field="model")
    raw = request.get("input")
    if isinstance(raw, list):
        check_item_count(len(raw), min(max_items, MAX_INPUTS), "input")
        kinds = set(map(type, raw))  # one C-level pass over the inputs
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw and kinds == {str}:
        texts = raw
    elif isinstance(raw, list) and raw and kinds <= {int, list}:
        raise InvalidInput("token arrays are not supported; send text", field="input")
    else:
        raise InvalidInput("input must be a string or a non-empty list of strings", field="input")
    encoding = request.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidInput("encoding_format must be 'float' or 'base64'", field="encoding_format")
    dimensions = request.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or dimensions <= 0):
        raise InvalidInput("dimensions must be a positive integer", field="dimensions")
    user = request.get("user")
    return EmbeddingsRequest(
        model, texts, encoding == "base64", dimensions, user if isinstance(user, str) else None
    )


def model_object(deployment: Any) -> dict[str, Any]:
    """A deployment as OpenAI's Model object (``GET /v1/models[/{id}]``). An LLM deployment
    also says its context window as vLLM does (``max_model_len``) and its kind, so a client
    can tell the chat models from the others in one list."""
    found: dict[str, Any] = {
        "id": deployment.name,
        "object": "model",
        "created": 0,
        "owned_by": "aiscale",
    }
    engine = getattr(deployment.spec, "engine", None)
    if engine is not None:
        found["max_model_len"] = engine.context_window
        found["aiscale_kind"] = "llm"
    else:
        found["aiscale_kind"] = "model"
    return found


def count_tokens(texts: list[str]) -> int:
    """Whitespace words: an approximation of tokens for the ``usage`` field (no tokenizer here)."""
    return sum(len(text.split()) for text in texts)


def render_embeddings_response(
    model: str, embeddings: list[Any], *, is_base64: bool, num_tokens: int
) -> bytes:
    data = []
    for index, vector in enumerate(embeddings):
        array = np.asarray(vector, dtype=np.float32)
        value: Any = (
            base64.b64encode(array.astype("<f4").tobytes()).decode() if is_base64 else array
        )
        data.append({"object": "embedding", "index": index, "embedding": value})
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
