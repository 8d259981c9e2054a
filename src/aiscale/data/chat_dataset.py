"""Captured LLM requests as fine-tuning conversations: ``aiscale data export --format chat``.

Each successful chat request becomes one JSON line ``{"messages": [...the request's messages,
{"role": "assistant", "content": <the full answer>}], "request_id", "version", "label",
"score", "comment"}``: the ``messages`` list that OpenAI's fine-tuning files and Hugging Face
TRL's ``SFTTrainer`` read, with the request's latest feedback joined beside it (``None`` where
there is none), so a trainer can keep only the well-rated answers. A completion request
becomes ``{"prompt", "completion", ...}``, TRL's prompt-completion form. Only answers that
finished (captured ``outcome: ok``) are examples: a cancelled or failed stream's text is cut
short. Pure: rows in, dicts out (``export.py`` writes them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiscale.errors import InvalidInput

__all__ = ["chat_line", "is_finished_completion"]


def is_finished_completion(row: Mapping[str, Any]) -> bool:
    """Whether an example is an LLM answer that ran to its end (the chat format's rows)."""
    output = row.get("output")
    return isinstance(output, Mapping) and output.get("outcome") == "ok" and "text" in output


def chat_line(row: Mapping[str, Any]) -> dict[str, Any]:
    """One example as a conversation (or prompt and completion) with its feedback.

    Raises ``InvalidInput`` (field ``format``) for a row that is not an LLM request: the
    chat format is for LLM deployments only."""
    request, output = row.get("input"), row.get("output")
    if not isinstance(request, Mapping) or not isinstance(output, Mapping) or (
        "messages" not in request and "prompt" not in request
    ):
        raise InvalidInput(
            "--format chat exports LLM deployments (chat or completion requests); this "
            "deployment's requests are not",
            field="format",
        )
    answer = str(output.get("text") or "")
    line: dict[str, Any]
    if "messages" in request:
        line = {"messages": [*request["messages"], {"role": "assistant", "content": answer}]}
    else:
        line = {"prompt": request["prompt"], "completion": answer}
    line.update(
        request_id=row["request_id"],
        version=row["version"],
        label=row.get("label"),
        score=row.get("score"),
        comment=row.get("comment"),
    )
    return line
