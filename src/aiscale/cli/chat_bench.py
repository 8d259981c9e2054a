"""``aiscale bench URL --chat``: the chat half of the ``bench`` command (``serving.py``).

``bench`` parses the flags and hands them here: ``check_flags`` refuses flags that do not
belong to the chosen mode (one line, exit 1, before any request), ``run_and_print`` runs the
chat bench with a live progress bar and prints the table or ``--json``, and exits 1 when the
server cannot be reached or more than ``--max-error-rate`` of the requests failed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import typer
from rich.console import Console

from aiscale.bench.chat_config import ChatBenchConfig
from aiscale.cli._common import _stderr, _stdout, reported_errors
from aiscale.errors import InvalidInput

__all__ = ["check_flags", "run_and_print"]

# Flags that only the chat bench reads, and those only the request bench reads.
_CHAT_ONLY = (
    "max_tokens",
    "prompt_tokens",
    "ignore_eos",
    "turns",
    "think_time",
    "system_tokens",
    "slo_ttft_ms",
    "slo_itl_ms",
    "max_context",
    "calibrate",
)
_REQUEST_ONLY = ("body", "body_file")


def check_flags(is_chat: bool, given: Mapping[str, object]) -> None:
    """Raise ``InvalidInput`` naming the first flag given (not None) that the mode ignores."""
    names = _REQUEST_ONLY if is_chat else _CHAT_ONLY
    for name in names:
        if given.get(name) is not None:
            flag = "--" + name.replace("_", "-")
            if is_chat:
                raise InvalidInput(
                    f"{flag} does not apply to --chat (its bodies are built "
                    "from --prompt-tokens, --max-tokens or the trace)",
                    field=name,
                )
            raise InvalidInput(f"{flag} applies to --chat only", field=name)
    for name in ("think_time", "system_tokens"):
        if is_chat and given.get(name) is not None and not given.get("turns"):
            flag = "--" + name.replace("_", "-")
            raise InvalidInput(f"{flag} applies to conversations (--turns) only", field=name)


def run_and_print(config: ChatBenchConfig, *, as_json: bool, max_error_rate: float) -> None:
    """Run ``config`` with a progress bar (on stderr with ``--json``) and print the result."""
    from aiscale.bench.chat_command import chat_bench_command
    from aiscale.bench.chat_report import chat_progress, render_chat_result

    with reported_errors(), chat_progress(Console(stderr=as_json)) as on_progress:
        result = chat_bench_command(config, on_progress=on_progress)
    if as_json:
        print(json.dumps(result.to_json()))
    else:
        _stdout().print(render_chat_result(result))
    failure = result.failure_reason(max_error_rate)
    if failure is not None:
        _stderr().print(f"error: {failure}")
        raise typer.Exit(1)
