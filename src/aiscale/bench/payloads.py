"""Request bodies for the load generator, pre-encoded once before the run.

With no explicit body, the body is derived from the URL path: ``/v1/embeddings`` gets an
OpenAI-style ``{"model", "input"}`` body and ``/v2/models/{name}[/versions/{v}]/infer`` an Open
Inference Protocol v2 body with one BYTES input ``text`` of shape [1]. One body is built per
built-in sentence so that requests vary. This module never does I/O.
"""

from __future__ import annotations

import json
import re

from aiscale.bench.sentences import SENTENCES
from aiscale.errors import InvalidInput

__all__ = ["derive_bodies"]

_OIP_INFER = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?/infer")


def derive_bodies(path: str, *, model: str, body: bytes | None = None) -> tuple[bytes, ...]:
    """Return the pre-encoded bodies a run picks from (one per sentence, or just ``body``).

    ``path`` is the URL path. Raises ``InvalidInput`` (field ``body``) when there is no explicit
    body and the path is not one whose body can be derived.
    """
    if body is not None:
        return (body,)
    clean = path.rstrip("/")
    if clean.endswith("/v1/embeddings"):
        return tuple(_encode({"model": model, "input": s}) for s in SENTENCES)
    if _OIP_INFER.search(clean):
        return tuple(
            _encode({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [s]}]})
            for s in SENTENCES
        )
    raise InvalidInput(
        f"cannot derive a request body for path {path!r}: only /v1/embeddings and "
        "/v2/models/{name}/infer are known; pass --body or --body-file",
        field="body",
    )


def _encode(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
