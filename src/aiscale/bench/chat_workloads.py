"""What the chat bench asks: synthetic prompts of a given token count, token traces, conversations.

Prompts are random sequences of common English words, each one token in the BPE vocabularies
of the usual chat models (SmolLM2, Llama, Qwen, GPT: checked against SmolLM2's tokenizer in the
tests). A ``PromptShaper`` turns a wanted prompt length in tokens into a number of words, from
a calibration the runner makes against the server itself (how many tokens the chat template
adds, how many tokens a word takes), so that the prompt the engine sees is about as long as the
trace asked. Each prompt draws its own words, so two requests share no prefix by accident;
a conversation shares its prefix with its own earlier turns on purpose.

``load_token_trace`` reads the Azure LLM inference traces' columns (``TIMESTAMP``,
``ContextTokens``, ``GeneratedTokens``). This module never does network I/O, never reads the
clock and never uses global randomness: callers pass a ``random.Random``.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiscale.bench.traces import parse_timestamp
from aiscale.errors import InvalidInput

__all__ = [
    "CONTEXT_MARGIN_TOKENS",
    "WORDS",
    "Conversation",
    "PromptShaper",
    "TraceRequest",
    "load_token_trace",
    "synthesize_text",
]

# Common words that are one token each, with or without a leading space, in SmolLM2's
# tokenizer (and, being frequent English words, in most BPE vocabularies).
_WORD_TEXT = """time year people way day man thing woman life child world school state family
    student group country problem hand part place case week company system program question work
    government number night point home water room mother area money story fact month lot right
    study book eye job word business issue side kind head house service friend father power
    hour game line end member law car city community name president team minute idea kid body
    information back parent face others level office door health person art war history party
    result change reason research girl moment air teacher force education foot boy age policy
    process music market sense nation plan college interest death experience effect use class
    control care field development role rate heart drug show leader light voice wife mind price
    report decision son view relationship town road arm difference value building action model
    season tax director position player record paper space ground form event official matter
    center site project activity star table need court oil cost industry figure street image
    phase test river bridge window stone green blue red small large early young old new good
    great high long little own other last big different"""
WORDS = tuple(_WORD_TEXT.split())

CONTEXT_MARGIN_TOKENS = 8
"""Tokens left free below the context window when a prompt is capped (template rounding)."""

_COLUMNS = ("TIMESTAMP", "CONTEXTTOKENS", "GENERATEDTOKENS")  # matched case-blind
_SPELLED = {
    "TIMESTAMP": "TIMESTAMP",
    "CONTEXTTOKENS": "ContextTokens",
    "GENERATEDTOKENS": "GeneratedTokens",
}


def synthesize_text(num_words: int, rng: random.Random) -> str:
    """``num_words`` (at least 1) random words from ``WORDS``, space-separated."""
    choose = rng.choice
    return " ".join([choose(WORDS) for _ in range(max(1, num_words))])


@dataclass(frozen=True, slots=True)
class PromptShaper:
    """Maps a wanted prompt length (tokens, template included) to a number of words.

    ``overhead_tokens`` is what the chat template adds around one user message (system prompt,
    role markers); ``tokens_per_word`` how many tokens one word of ``WORDS`` takes. Both come
    from ``calibrated`` (two probes against the server) or the defaults (1 token per word, no
    overhead) when the server reports no usage.
    """

    overhead_tokens: float = 0.0
    tokens_per_word: float = 1.0

    @classmethod
    def calibrated(
        cls, words_short: int, tokens_short: int, words_long: int, tokens_long: int
    ) -> PromptShaper:
        """From two probes: ``words_*`` words in one user message gave ``tokens_*`` prompt
        tokens. Raises ``InvalidInput`` when the counts cannot describe a tokenizer."""
        if words_long <= words_short or tokens_long <= tokens_short:
            raise InvalidInput(
                f"prompt calibration failed: {words_short} words gave {tokens_short} tokens, "
                f"{words_long} words gave {tokens_long}",
                field="url",
            )
        per_word = (tokens_long - tokens_short) / (words_long - words_short)
        return cls(max(0.0, tokens_short - per_word * words_short), per_word)

    def words_for(self, tokens: int) -> int:
        """Words whose prompt (template included) is about ``tokens`` long; at least 1."""
        return max(1, round((tokens - self.overhead_tokens) / self.tokens_per_word))

    def tokens_of(self, num_words: int) -> int:
        """The prompt tokens expected for one user message of ``num_words`` words."""
        return math.ceil(self.overhead_tokens + self.tokens_per_word * num_words)


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One row of a token trace: when it arrives (s from the first row, scaled) and its sizes."""

    offset_s: float
    context_tokens: int
    generated_tokens: int


def load_token_trace(
    path: str | Path,
    *,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    duration_s: float | None = None,
) -> list[TraceRequest]:
    """The rows of a CSV with ``TIMESTAMP``, ``ContextTokens`` and ``GeneratedTokens`` columns
    (the Azure LLM inference traces' layout), sorted by arrival.

    Gaps are multiplied by ``time_scale / rate_scale`` as in ``traces.load_arrivals``; rows at
    or after ``duration_s`` (scaled) are dropped. Raises ``InvalidInput`` (field ``trace``) for
    an unreadable file, a missing column, no rows, or a value that cannot be parsed (naming the
    line, the header being line 1).
    """
    for name, value in (("rate_scale", rate_scale), ("time_scale", time_scale)):
        if not (value > 0 and math.isfinite(value)):
            raise InvalidInput(f"{name} must be > 0, got {value}", field=name)
    rows = _read_rows(Path(path))
    if not rows:
        raise InvalidInput(f"trace {path} has no rows", field="trace")
    rows.sort(key=lambda row: row[0])
    first = rows[0][0]
    factor = time_scale / rate_scale
    out = [TraceRequest((t - first) * factor, ctx, gen) for t, ctx, gen in rows]
    if duration_s is not None:
        out = [r for r in out if r.offset_s < duration_s]
    return out


def _read_rows(path: Path) -> list[tuple[float, int, int]]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read trace {path}: {exc.strerror}", field="trace") from exc
    with handle:
        reader = csv.reader(handle)
        header = [name.strip().upper() for name in next(reader, [])]
        missing = [_SPELLED[c] for c in _COLUMNS if c not in header]
        if missing:
            raise InvalidInput(
                f"trace {path} lacks the column(s) {', '.join(missing)} (a token trace needs "
                "TIMESTAMP, ContextTokens, GeneratedTokens)",
                field="trace",
            )
        at = [header.index(c) for c in _COLUMNS]
        base_day: int | None = None
        rows: list[tuple[float, int, int]] = []
        for row in reader:
            if not row:
                continue
            try:
                day, seconds = parse_timestamp(row[at[0]].strip())
                context, generated = int(row[at[1]]), int(row[at[2]])
                if context < 0 or generated < 0:
                    raise ValueError("negative token count")
            except (ValueError, IndexError):
                raise InvalidInput(
                    f"trace {path} line {reader.line_num}: cannot parse {row!r}", field="trace"
                ) from None
            base_day = day if base_day is None else base_day
            rows.append(((day - base_day) * 86400.0 + seconds, context, generated))
    return rows


class Conversation:
    """One simulated user's chat: the messages so far, growing by one exchange per turn.

    Every turn resends the whole history, so the engine can reuse the cached prefix of the
    earlier turns: the multi-turn workload that prefix-aware routing is measured on.
    ``num_tokens`` is the last known prompt + completion length (from the server's usage),
    which the runner uses to end a conversation before it outgrows the context window.
    """

    __slots__ = ("_messages", "num_tokens", "num_turns")

    def __init__(self, system_text: str | None) -> None:
        self._messages: list[dict[str, Any]] = []
        if system_text:
            self._messages.append({"role": "system", "content": system_text})
        self.num_turns = 0
        self.num_tokens = 0

    def ask(self, text: str) -> list[dict[str, Any]]:
        """The messages of the next request: the history plus a new user message."""
        return [*self._messages, {"role": "user", "content": text}]

    def answered(self, question: str, answer: str, num_tokens: int) -> None:
        """Record a finished turn: the user's ``question``, the assistant's ``answer`` and
        the server's prompt + completion tokens of that request."""
        self._messages.append({"role": "user", "content": question})
        self._messages.append({"role": "assistant", "content": answer})
        self.num_turns += 1
        self.num_tokens = num_tokens
