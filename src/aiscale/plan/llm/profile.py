"""The LLM profile: how fast one engine replica prefills and decodes, and what it holds.

An engine with continuous batching runs *steps*: each step decodes one token for every
running sequence and prefills up to a token budget of prompt chunks (chunked prefill). The
profile models one step's time as a sum of terms whose coefficients ``aiscale profile``
fits to measurements (``plan/llm/profiling.py``) or a roofline derives from a datasheet
(``plan/llm/catalog.py``)::

    step_s = step_base_s
           + decode_per_seq_s           * sequences decoding
           + decode_per_context_token_s * tokens of context those sequences hold
           + prefill_per_token_s        * prompt tokens prefilled in the step
           + prefill_per_token_context_s * sum over those tokens of the context before them

The first three are decode (memory-bound: weights and KV read once per step), the last two
prefill (compute-bound: a linear part and attention, quadratic in the prompt). Beside the
speed: the KV cache in tokens, the most sequences one step holds, the step's token budget,
the longest sequence the engine accepts, start-up split into weight load and warm-up, and
the gateway's own time per request. Each profile says where its numbers come from
(``source``, ``date``, ``is_estimate``, ``notes``).

JSON (``save_llm_profile``/``load_llm_profile``)::

    {"kind": "aiscale-llm-profile", "version": 1, "model": ..., "hardware": ...,
     "tensor_parallel": 1, "units": {"step_base_s": "s", ...}, "step_base_s": 0.028, ...,
     "provenance": {"source": ..., "date": ..., "is_estimate": true, "notes": ...}}

Pure values and file I/O only on the path given.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from aiscale.errors import ConfigError

__all__ = [
    "LlmProfile",
    "Provenance",
    "load_llm_profile",
    "save_llm_profile",
    "smollm2_cpu_profile",
]

PROFILE_KIND = "aiscale-llm-profile"
PROFILE_VERSION = 1

#: The unit of each number (written into every file so a reader needs no code).
UNITS: dict[str, str] = {
    "step_base_s": "s per engine step",
    "decode_per_seq_s": "s per decoding sequence per step",
    "decode_per_context_token_s": "s per token of context held by decoding sequences, per step",
    "prefill_per_token_s": "s per prompt token prefilled",
    "prefill_per_token_context_s": "s per prompt token per token of context before it",
    "kv_capacity_tokens": "tokens of KV cache per replica",
    "max_num_seqs": "sequences per step",
    "max_batched_tokens": "tokens per step (decode + prefill chunk)",
    "max_context_tokens": "tokens per sequence (prompt + output)",
    "weight_load_s": "s from start to weights in memory",
    "warmup_s": "s from weights loaded to first request served",
    "gateway_overhead_s": "s added by the gateway per request (to TTFT)",
    "memory_bytes": "bytes of weights per replica (all its devices)",
}


_INT_FIELDS = frozenset(
    {
        "kv_capacity_tokens",
        "max_num_seqs",
        "max_batched_tokens",
        "max_context_tokens",
        "tensor_parallel",
        "memory_bytes",
    }
)


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where the numbers come from."""

    source: str
    date: str
    is_estimate: bool
    notes: str = ""


@dataclass(frozen=True, slots=True)
class LlmProfile:
    """One engine replica of ``model`` on ``hardware`` x ``tensor_parallel`` devices."""

    model: str
    hardware: str
    step_base_s: float
    decode_per_seq_s: float
    decode_per_context_token_s: float
    prefill_per_token_s: float
    prefill_per_token_context_s: float
    kv_capacity_tokens: int
    max_num_seqs: int
    max_batched_tokens: int
    max_context_tokens: int
    weight_load_s: float
    warmup_s: float
    gateway_overhead_s: float
    provenance: Provenance
    tensor_parallel: int = 1
    memory_bytes: int = 0

    def __post_init__(self) -> None:
        for name in (
            "step_base_s",
            "decode_per_seq_s",
            "decode_per_context_token_s",
            "prefill_per_token_s",
            "prefill_per_token_context_s",
            "weight_load_s",
            "warmup_s",
            "gateway_overhead_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError("must be a finite number >= 0", field=name)
        if self.step_base_s + self.decode_per_seq_s <= 0:
            raise ConfigError("a step must take some time", field="step_base_s")
        if self.prefill_per_token_s <= 0:
            raise ConfigError("must be > 0", field="prefill_per_token_s")
        for name in (
            "kv_capacity_tokens",
            "max_num_seqs",
            "max_batched_tokens",
            "max_context_tokens",
            "tensor_parallel",
        ):
            if int(getattr(self, name)) < 1:
                raise ConfigError("must be >= 1", field=name)
        if self.max_batched_tokens < self.max_num_seqs:
            raise ConfigError("must be >= max_num_seqs", field="max_batched_tokens")

    @property
    def startup_s(self) -> float:
        """Start to first request served: weight load plus warm-up."""
        return self.weight_load_s + self.warmup_s

    def step_s(
        self,
        num_decoding: float,
        decode_context_tokens: float,
        prefill_tokens: float = 0.0,
        prefill_context_tokens: float = 0.0,
    ) -> float:
        """One engine step's time (module docstring); ``prefill_context_tokens`` is the sum
        over prefilled tokens of the context before each."""
        return (
            self.step_base_s
            + self.decode_per_seq_s * num_decoding
            + self.decode_per_context_token_s * decode_context_tokens
            + self.prefill_per_token_s * prefill_tokens
            + self.prefill_per_token_context_s * prefill_context_tokens
        )

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "provenance"}
        return {
            "kind": PROFILE_KIND,
            "version": PROFILE_VERSION,
            **data,
            "units": dict(UNITS),
            "provenance": asdict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlmProfile:
        """Parse ``to_dict``'s shape; raises ``ConfigError`` naming the bad field."""
        if data.get("kind") != PROFILE_KIND:
            raise ConfigError(f"not an LLM profile (kind must be {PROFILE_KIND!r})", field="kind")
        if data.get("version") != PROFILE_VERSION:
            raise ConfigError(f"unsupported version {data.get('version')!r}", field="version")
        raw = data.get("provenance")
        if not isinstance(raw, dict) or not {"source", "date", "is_estimate"} <= raw.keys():
            raise ConfigError("needs source, date and is_estimate", field="provenance")
        provenance = Provenance(
            source=str(raw["source"]),
            date=str(raw["date"]),
            is_estimate=bool(raw["is_estimate"]),
            notes=str(raw.get("notes", "")),
        )
        known = {f.name for f in fields(cls)} - {"provenance"}
        unknown = set(data) - known - {"kind", "version", "units", "provenance"}
        if unknown:
            raise ConfigError(f"unknown fields {sorted(unknown)}", field=sorted(unknown)[0])
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "provenance" or f.name not in data:
                continue
            value = data[f.name]
            if f.name in ("model", "hardware"):
                values[f.name] = str(value)
            elif f.name in _INT_FIELDS:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ConfigError("must be an integer", field=f.name)
                values[f.name] = value
            else:
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise ConfigError("must be a number", field=f.name)
                values[f.name] = float(value)
        try:
            return cls(provenance=provenance, **values)
        except TypeError as exc:
            raise ConfigError(f"incomplete LLM profile: {exc}", field="profile") from exc


def save_llm_profile(profile: LlmProfile, path: str | Path) -> None:
    """Write ``profile`` as JSON (module docstring)."""
    Path(path).write_text(json.dumps(profile.to_dict(), indent=2) + "\n")


def load_llm_profile(path: str | Path) -> LlmProfile:
    """Read an LLM profile; raises ``ConfigError`` for a file that is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read LLM profile {path}: {exc}", field="profile") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"LLM profile {path} must be a JSON object", field="profile")
    return LlmProfile.from_dict(data)


def smollm2_cpu_profile() -> LlmProfile:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) on llama.cpp, 4 slots, 2 threads, this 2-core
    machine: the default until ``aiscale profile smollm2`` has measured it.

    Decode is from the issue text (issue 15 and 16: "~34 tokens/s per stream, ~137 tokens/s
    at 8 streams" on 4 slots, 2 threads, 64-token outputs; not measured by us): one stream's
    step ~29 ms, four sequences' ~29.6 ms, so a step costs ~28 ms plus ~0.4 ms per sequence.
    Everything else is an estimate, labelled so: prefill 1.5 ms per prompt token (~670
    prompt tokens/s on 2 threads: a 135M-parameter model needs ~0.27 GFLOP per token and
    llama.cpp's CPU matrix kernels reach a few hundred GFLOP/s on 2 AVX2 cores; no
    measurement here), the context terms small guesses, 8,192 tokens of context per slot
    (SmolLM2's window), a load of ~0.3 s (a 90 MB file from the page cache) and a warm-up of
    ~0.5 s, 1 ms of gateway per request (the target of issue 15 is +5 ms at most).
    """
    return LlmProfile(
        model="smollm2",
        hardware="CPU",
        step_base_s=0.028,
        decode_per_seq_s=0.0004,
        decode_per_context_token_s=2e-7,
        prefill_per_token_s=0.0015,
        prefill_per_token_context_s=2e-8,
        kv_capacity_tokens=4 * 8192,
        max_num_seqs=4,
        max_batched_tokens=2048,
        max_context_tokens=8192,
        weight_load_s=0.3,
        warmup_s=0.5,
        gateway_overhead_s=0.001,
        provenance=Provenance(
            source="issue text (issues 15/16): ~34 tokens/s per stream, ~137 tokens/s at 8 "
            "streams, llama.cpp 4 slots, 2 threads; prefill, context terms and start-up "
            "estimated (see smollm2_cpu_profile)",
            date="2025",
            is_estimate=True,
            notes="not measured by aiscale profile: run `aiscale profile smollm2` on a quiet "
            "machine to replace it",
        ),
        memory_bytes=90_000_000,
    )
