"""What every replica of one LLM deployment runs: the engine, its model and its sizes.

An ``EngineSpec`` is built once from the deployment's ``engine:`` config
(``aiscale.config.EngineConfig.to_spec``) and handed to the engine's backend. It is a frozen
value: no I/O here, no defaults read from the machine (a backend decides what ``None`` means
when it starts a replica).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from aiscale.replicas.backend import ReplicaSpec

__all__ = [
    "ENGINE_KINDS", "EXTRA_ARGS", "EngineKind", "EngineSpec", "ExtraArg", "ObjectStoreOptions"
]

EngineKind = Literal["llamacpp", "vllm", "openai-upstream"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("llamacpp", "vllm", "openai-upstream")

ExtraArg = int | float | bool | str

#: The engine settings a deployment may set beyond the common ones, per engine kind, with
#: their type. An allow-list, not a pass-through: every name here is known to be safe to
#: expose (no file paths the engine would write, no network binding, no keys).
#: llama.cpp: attributes of ``xllamacpp.CommonParams``; vLLM: ``vllm serve`` flags (the
#: name with ``_`` turned into ``-``).
EXTRA_ARGS: Mapping[str, Mapping[str, type]] = MappingProxyType({
    "llamacpp": MappingProxyType({
        "n_batch": int,              # logical batch of prompt processing (tokens)
        "n_ubatch": int,             # physical batch (tokens)
        "n_gpu_layers": int,         # layers offloaded to a GPU (GPU wheels)
        "n_cache_reuse": int,        # min chunk to reuse from the cache by KV shifting
        "cache_ram_mib": int,        # host-memory prompt cache across slots (MiB; -1 no limit)
        "kv_unified": bool,          # one KV buffer shared by all slots
        "ctx_shift": bool,           # shift the context instead of stopping when full
        "swa_full": bool,            # full-size sliding-window-attention cache
        "slot_prompt_similarity": float,  # how alike a prompt must be to reuse a slot
        "cont_batching": bool,       # continuous batching (on by default)
        "warmup": bool,              # run one empty decode at load
        "n_threads_http": int,       # HTTP worker threads
    }),
    "vllm": MappingProxyType({
        "gpu_memory_utilization": float,
        "max_num_batched_tokens": int,
        "tensor_parallel_size": int,
        "pipeline_parallel_size": int,
        "dtype": str,
        "quantization": str,
        "kv_cache_dtype": str,
        "block_size": int,
        "swap_space": float,
        "enforce_eager": bool,
        "enable_chunked_prefill": bool,
        "max_num_partial_prefills": int,
        "seed": int,
    }),
    "openai-upstream": MappingProxyType({}),
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class ObjectStoreOptions:
    """How to reach the object store that holds an engine's weights (``s3://...``).

    Credentials are never values here: ``*_env`` name the environment variables of the
    gateway's process that hold them. All ``None``: the store's own defaults (for S3 the AWS
    chain: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, profiles).
    """

    #: An S3-compatible endpoint (MinIO, Ceph, R2, ...): ``http(s)://host:port``.
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    #: Read a public bucket without signing requests.
    is_anonymous: bool = False
    #: Tries of each request to the store (a flaky store's errors are retried with backoff).
    max_attempts: int = 3


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One LLM deployment's engine: every replica runs exactly this.

    ``model``: the model file (llama.cpp, already located) or its object-store URI
    (``s3://bucket/key.gguf``: each replica's start fetches it into the node's weights cache,
    once per node, ``engines/weights.py``), the model folder (vLLM), or the upstream's own
    model name (``openai-upstream``). ``served_model_name``: the name clients
    send as ``model`` and the engine answers with. ``context_window``: tokens one request may
    hold in all (prompt + output); a llama.cpp replica gets ``context_window * parallel``
    tokens of KV cache so that each of its ``parallel`` slots holds a whole window.
    """

    kind: EngineKind
    model: str
    served_model_name: str
    context_window: int = 2048
    #: Requests one replica decodes at once (llama.cpp slots, vLLM ``--max-num-seqs``).
    parallel: int = 4
    #: CPU threads per replica; ``None``: the machine's cores split over the replicas.
    threads: int | None = None
    #: The most tokens one request may generate; the engine caps it too.
    max_output_tokens: int = 512
    #: ``openai-upstream``: the endpoints' base URLs (``https://host/v1`` or ``http://host``),
    #: one replica each.
    upstream_urls: tuple[str, ...] = ()
    #: ``openai-upstream``: the environment variable holding the upstream's API key.
    api_key_env: str | None = None
    #: Allowed engine settings beyond the common ones (``EXTRA_ARGS``).
    extra_args: Mapping[str, ExtraArg] = field(default_factory=dict)
    #: Where llama.cpp saves and restores slots' KV cache (``/slots/{id}?action=save``);
    #: ``None``: a private folder per model file under the temporary folder.
    slot_save_dir: str | None = None
    startup_timeout_s: float = 120.0
    #: llama.cpp: the engine's threads run as ``SCHED_BATCH`` (``llamacpp_process``).
    batch_scheduling: bool = True
    #: An object-store ``model``'s expected sha256 (hex), from the config or the registry's
    #: ``artifact_digest``; ``None``: read from the ``<model>.sha256`` object beside it.
    model_sha256: str | None = None
    #: The node's weights cache (``<dir>/sha256/<digest>``); ``None``: the backend's default.
    model_cache_dir: str | None = None
    #: How to reach the object store of an object-store ``model``.
    object_store: ObjectStoreOptions = field(default_factory=ObjectStoreOptions)

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise ValueError(f"unknown engine kind {self.kind!r}; use one of {ENGINE_KINDS}")
        if self.context_window < 1 or self.parallel < 1 or self.max_output_tokens < 1:
            raise ValueError("context_window, parallel and max_output_tokens must be >= 1")
        if self.max_output_tokens >= self.context_window and self.kind != "openai-upstream":
            raise ValueError("max_output_tokens must be below context_window")
        if self.model_sha256 is not None and not _is_sha256(self.model_sha256):
            raise ValueError("model_sha256 must be 64 lower-case hex digits (a sha256)")
        allowed = EXTRA_ARGS[self.kind]
        for name, value in self.extra_args.items():
            if name not in allowed:
                raise ValueError(f"{self.kind} takes no extra arg {name!r}; allowed: "
                                 f"{', '.join(sorted(allowed)) or 'none'}")
            if not _is_of(value, allowed[name]):
                raise ValueError(f"extra arg {name!r} must be of type {allowed[name].__name__}")
        # Frozen: a copy the caller cannot change afterwards.
        object.__setattr__(self, "extra_args", MappingProxyType(dict(self.extra_args)))

    @property
    def total_context_tokens(self) -> int:
        """KV cache tokens of one llama.cpp replica: a whole window for each slot."""
        return self.context_window * self.parallel

    def schema(self) -> dict[str, Any]:
        """What a ready replica of this engine serves (its ``ReplicaInfo.schema``)."""
        return {
            "engine": self.kind,
            "model": self.served_model_name,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "parallel": self.parallel,
        }

    def replica_spec(self) -> ReplicaSpec:
        """The ``ReplicaSpec`` a ``ReplicaPool`` over this engine's backend takes: the pool
        reads only ``uri`` (for its logs), ``startup_timeout_s`` and the batch slots
        (engines are not fed batches through the pool; ``send`` refuses)."""
        return ReplicaSpec(
            runtime=self.kind,
            uri=self.served_model_name,
            max_inflight_batches=self.parallel,
            startup_timeout_s=self.startup_timeout_s,
            num_threads=self.threads,
        )


def _is_of(value: object, wanted: type) -> bool:
    """``isinstance`` without Python's ``bool``-is-an-``int`` surprise; an int is a float."""
    if isinstance(value, bool):
        return wanted is bool
    if wanted is float:
        return isinstance(value, int | float)
    return isinstance(value, wanted)


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
