"""The gateway's LLM path: OpenAI chat and completions over engine replicas.

    api.py            LlmApi: POST /v1/chat/completions and /v1/completions, step by step
    validation.py     every body field checked (400 naming it) before an engine is called
    lane.py           LlmLane (alias LlmDeployment): one version's engines, router, scrapes
    engine_client.py  pooled HTTP to the engines (requests, token counts, metrics)
    relay.py          LlmStream: a streamed answer relayed, retried before its first token
    stream.py         SseRelay: SSE events passed on as they come, tallied (usage, TTFT, ITL)
    call.py           LlmCall: one request's state and its end (ledger, metrics, capture)
    disconnect.py     work cancelled when the client leaves (the engine frees the slot)
    context.py        what every LLM lane of a gateway shares

Never imported by the control loops (they see LLM versions through the Fleet like any
other). The names load on first use, so importing the serving package does not pay for
this path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiscale.serving.llm.api import LlmApi
    from aiscale.serving.llm.lane import LlmDeployment, LlmLane

_MODULES = {
    "LlmApi": "aiscale.serving.llm.api",
    "LlmDeployment": "aiscale.serving.llm.lane",
    "LlmLane": "aiscale.serving.llm.lane",
}

__all__ = ["LlmApi", "LlmDeployment", "LlmLane"]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'aiscale.serving.llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
