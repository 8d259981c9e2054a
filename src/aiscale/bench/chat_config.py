"""The knobs of one chat bench run, validated on construction, and the URLs it derives.

``ChatBenchConfig`` raises ``InvalidInput`` naming the flag for any value that could not make
a meaningful run, so the CLI fails in one line before a request is sent. ``chat_url`` accepts
the forms people paste (a server's base URL, ``.../v1``, or the full
``.../v1/chat/completions``) and returns the chat completions URL. No I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from aiscale.bench.chat_results import ChatWorkload
from aiscale.errors import InvalidInput

__all__ = ["ChatBenchConfig", "chat_url", "models_url"]

_CHAT_PATH = "/chat/completions"


def chat_url(url: str) -> str:
    """The chat completions URL of ``url``: ``http://h:p`` and ``http://h:p/v1`` get
    ``/v1/chat/completions`` (resp. ``/chat/completions``) appended; a URL already ending in
    ``/chat/completions`` is kept. Raises ``InvalidInput`` (field ``url``) otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"url must be http(s)://host[:port][/path], got {url!r}", field="url")
    try:
        _ = parts.port
    except ValueError:
        raise InvalidInput(f"url has an invalid port: {url!r}", field="url") from None
    path = parts.path.rstrip("/")
    if path.endswith(_CHAT_PATH):
        pass
    elif path.endswith("/v1"):
        path += _CHAT_PATH
    elif path == "":
        path = "/v1" + _CHAT_PATH
    else:
        raise InvalidInput(
            f"--chat needs a server's base URL, its /v1, or its /v1/chat/completions; got "
            f"path {parts.path!r}",
            field="url",
        )
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def models_url(chat: str) -> str:
    """The ``/models`` listing beside a chat completions URL."""
    return chat.rsplit(_CHAT_PATH, 1)[0] + "/models"


@dataclass(frozen=True, slots=True)
class ChatBenchConfig:
    """Every knob of one chat bench run (validated on construction; raises ``InvalidInput``).

    The workload: ``trace_path`` (token trace replay), else ``rate_per_s`` (open loop, Poisson),
    else ``turns`` > 1 (multi-turn conversations by ``concurrency`` simulated users, with
    exponential think times of mean ``think_time_s``), else a closed loop of ``concurrency``
    clients. ``prompt_tokens`` is the prompt length (template included) of closed and open loop
    requests and of each user message in a conversation; a trace gives its own. ``max_tokens``
    is every request's output limit (and caps a trace's ``GeneratedTokens``); with
    ``ignore_eos`` the engine must produce exactly that many. ``model`` and ``context_tokens``
    are asked of the server's ``/v1/models`` when None. ``timeout_s`` bounds connecting and
    every wait for the next bytes of a stream. ``is_calibrated``: measure the chat template's
    overhead with two probe requests first; off, prompts assume one token per word and no
    template (for runs where every request counts, such as a token limit's).
    """

    url: str
    concurrency: int = 1
    rate_per_s: float | None = None
    trace_path: Path | None = None
    rate_scale: float = 1.0
    time_scale: float = 1.0
    num_requests: int | None = None
    duration_s: float | None = None
    warmup_s: float = 0.0
    model: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    seed: int = 0
    timeout_s: float = 60.0
    max_outstanding: int = 256
    max_tokens: int = 64
    prompt_tokens: int = 128
    ignore_eos: bool = True
    turns: int = 1
    think_time_s: float = 1.0
    system_tokens: int = 0
    slo_ttft_ms: float = 1000.0
    slo_itl_ms: float = 100.0
    context_tokens: int | None = None
    is_calibrated: bool = True
    progress_interval_s: float = 0.5

    def __post_init__(self) -> None:
        chat_url(self.url)
        if self.rate_per_s is not None and self.trace_path is not None:
            raise InvalidInput("give either --rate or --trace, not both", field="rate")
        if self.turns > 1 and (self.rate_per_s is not None or self.trace_path is not None):
            raise InvalidInput(
                "--turns (multi-turn conversations) runs closed-loop users; drop --rate/--trace",
                field="turns",
            )
        for name, value, low in (
            ("concurrency", self.concurrency, 1),
            ("max_outstanding", self.max_outstanding, 1),
            ("max_tokens", self.max_tokens, 1),
            ("prompt_tokens", self.prompt_tokens, 1),
            ("turns", self.turns, 1),
            ("system_tokens", self.system_tokens, 0),
        ):
            if value < low:
                raise InvalidInput(f"{_flag(name)} must be >= {low}, got {value}", field=name)
        if self.num_requests is not None and self.num_requests < 1:
            raise InvalidInput(
                f"--requests must be >= 1, got {self.num_requests}", field="requests"
            )
        if self.context_tokens is not None and self.context_tokens < 16:
            raise InvalidInput(
                f"--max-context must be >= 16 tokens, got {self.context_tokens}",
                field="context_tokens",
            )
        for name in (
            "rate_per_s",
            "duration_s",
            "rate_scale",
            "time_scale",
            "timeout_s",
            "slo_ttft_ms",
            "slo_itl_ms",
            "progress_interval_s",
        ):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise InvalidInput(f"{_flag(name)} must be > 0, got {value}", field=name)
        for name in ("warmup_s", "think_time_s"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise InvalidInput(f"{_flag(name)} must be >= 0, got {value}", field=name)
        if self.trace_path is None and (self.rate_scale != 1.0 or self.time_scale != 1.0):
            raise InvalidInput("--rate-scale and --time-scale apply to --trace only", field="trace")
        if self.trace_path is not None and not self.trace_path.is_file():
            raise InvalidInput(f"trace file not found: {self.trace_path}", field="trace")
        if self.workload != "trace" and self.num_requests is None and self.duration_s is None:
            raise InvalidInput("give --requests or --duration (or both)", field="duration_s")

    @property
    def workload(self) -> ChatWorkload:
        if self.trace_path is not None:
            return "trace"
        if self.rate_per_s is not None:
            return "open"
        return "multi_turn" if self.turns > 1 else "closed"

    @property
    def chat_url(self) -> str:
        return chat_url(self.url)


_FLAGS = {
    "rate_per_s": "--rate",
    "duration_s": "--duration",
    "warmup_s": "--warmup",
    "timeout_s": "--timeout",
    "think_time_s": "--think-time",
    "context_tokens": "--max-context",
    "progress_interval_s": "progress interval",
}


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))
