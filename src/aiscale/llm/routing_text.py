"""What a router hashes: a request's prompt as text, cut into blocks whose hashes are chained.

An engine reuses its KV cache for the longest token prefix a new prompt shares with one it has
seen (vLLM's automatic prefix caching in blocks of 16 tokens, llama.cpp's slot and prompt
cache token by token). The gateway cannot tokenize on its hot path, so it approximates tokens
by characters, after the Gateway API Inference Extension's prefix scorer
(``pkg/epp/scheduling/framework/plugins/multi/prefix/plugin.go``): blocks of 64 characters
("vLLM default token block size is 16, and a good guess of average characters per token is
4"), at most 256 of them, the trailing partial block ignored, and each hash chained to the one
before (``h_i = H(h_{i-1}, block_i)``) so that a block's hash names the whole prefix up to it.
Two prompts that share their first ``k`` blocks share their first ``k`` hashes and no more.

A chat request is rendered canonically (ChatML framing, fixed field order, JSON with sorted
keys for anything that is not plain text) and ends with the assistant's generation prompt, as
the engine's chat template does; turn N+1 of a conversation (turn N's messages, the assistant's
reply, the next user message) therefore renders to a text that extends turn N's exactly, and
its chain extends turn N's chain.

Pure: no I/O, no clock, no randomness; never raises on odd message shapes (validation is the
API's job, before routing).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

#: Characters per block: vLLM's 16-token block at about 4 characters per token (GIE's default).
DEFAULT_BLOCK_CHARS = 64
#: Blocks hashed at most (GIE's default): longer prompts are told apart by their first 16 KiB.
DEFAULT_MAX_BLOCKS = 256
#: Hex digits per block hash (a 16-byte blake2b: collisions are not a practical concern).
_DIGEST_BYTES = 16


def routing_text_of_chat(
    messages: Sequence[Mapping[str, Any]], *, answer: str | None = None
) -> str:
    """The text a chat request is routed on: each message in ChatML framing, then the
    assistant's generation prompt. Deterministic for equal messages (key order ignored).

    With ``answer`` (the assistant's full reply, once generated): the text the engine holds
    in its cache after answering, which the next turn's text extends. Passing it to
    ``Router.routed`` at the end of a request lets the next turn match its whole history,
    not only the previous prompt.
    """
    parts = [_render_message(message) for message in messages]
    parts.append("<|im_start|>assistant\n")
    if answer is not None:
        parts.append(f"{answer}<|im_end|>\n")
    return "".join(parts)


def routing_text_of_completion(prompt: str, *, answer: str | None = None) -> str:
    """The text a completion request is routed on: its prompt as the engine receives it
    (with ``answer``: followed by the generated text, what the engine then holds)."""
    return prompt if answer is None else prompt + answer


def prefix_chain(
    text: str,
    *,
    seed: str,
    block_chars: int = DEFAULT_BLOCK_CHARS,
    max_blocks: int = DEFAULT_MAX_BLOCKS,
) -> tuple[str, ...]:
    """The chained hashes (hex) of ``text``'s full blocks, at most ``max_blocks`` of them.

    ``seed`` (the deployment) starts the chain, so that equal text for different models never
    shares a hash. A text shorter than one block has an empty chain: nothing to reuse.
    """
    if block_chars < 1 or max_blocks < 1:
        raise ValueError("block_chars and max_blocks must be at least 1")
    num_blocks = min(len(text) // block_chars, max_blocks)
    previous = hashlib.blake2b(
        b"aiscale-route\0" + seed.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES
    ).digest()
    chain: list[str] = []
    for index in range(num_blocks):
        block = text[index * block_chars : (index + 1) * block_chars]
        digest = hashlib.blake2b(previous, digest_size=_DIGEST_BYTES)
        # "surrogatepass": a lone surrogate (from a JSON \ud800 escape) must hash, not raise.
        digest.update(block.encode("utf-8", "surrogatepass"))
        previous = digest.digest()
        chain.append(previous.hex())
    return tuple(chain)


def _render_message(message: Mapping[str, Any]) -> str:
    role = _as_text(message.get("role", ""))
    name = message.get("name")
    if name is not None:
        role = f"{role}:{_as_text(name)}"
    body = _render_content(message.get("content"))
    # Assistant tool calls and a tool message's id are part of what the engine sees.
    for extra in ("tool_calls", "tool_call_id", "function_call"):
        if message.get(extra) is not None:
            body += f"\n<{extra}>{_canonical_json(message[extra])}"
    return f"<|im_start|>{role}\n{body}<|im_end|>\n"


def _render_content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        rendered = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                rendered.append(_as_text(part.get("text", "")))
            else:
                rendered.append(_canonical_json(part))
        return "\n".join(rendered)
    return _canonical_json(content)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else _canonical_json(value)


def _canonical_json(value: Any) -> str:
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr
        )
    except (TypeError, ValueError):  # keys of mixed types, a cycle: not JSON, still routable
        return repr(value)
