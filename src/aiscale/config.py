"""The one configuration tree: the ``aiscale.yaml`` file, then ``AISCALE_*`` variables, then flags.

Loaded once into frozen pydantic models with ``extra="forbid"``: an unknown key or a bad
value rejects the whole file with the dotted path of the field. Components receive their
slice through their constructors; nothing reads the environment at import time and
nothing changes the tree after loading.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aiscale.data.quality import Expectations
from aiscale.engines.spec import EXTRA_ARGS, EngineSpec, ExtraArg, ObjectStoreOptions
from aiscale.errors import ConfigError
from aiscale.gpus.config import GpuPoolConfig, check_gpu_memory, check_gpu_share, check_teams
from aiscale.llm.ledger_config import LedgerConfig
from aiscale.monitor.config import MonitorConfig

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )


class BatchingConfig(_Frozen):
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    max_batch_delay_ms: Annotated[float, Field(ge=0, le=10_000)] = 10.0
    max_queue: Annotated[int, Field(ge=1, le=1_000_000)] = 2048
    #: A batch whose replica died is sent again this many times before it fails with 503.
    max_retries: Annotated[int, Field(ge=0, le=3)] = 1


class CacheConfig(_Frozen):
    is_enabled: bool = Field(default=False, alias="enabled")
    max_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024


class AutoscalingConfig(_Frozen):
    #: ``static``, ``reactive`` (Ray Serve's rule), ``kpa`` (Knative's) or ``predictive``,
    #: the last three under the platform's guard (``scaling/policies/guard.py``);
    #: ``ray-serve-rule`` and ``knative-rule`` are the two rules unguarded. An LLM
    #: deployment (``engine:``) may also take a token-aware policy
    #: (``scaling/policies/llm_factory.py``): ``llm-static``, ``llm-target`` (waiting
    #: requests and KV-cache use), ``llm-slo`` (TTFT/ITL p99) or ``llm-predictive``.
    policy: Literal[
        "static", "reactive", "kpa", "predictive", "ray-serve-rule", "knative-rule",
        "llm-static", "llm-target", "llm-slo", "llm-predictive",
    ] = "reactive"
    decision_interval_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    #: The policy's own settings (e.g. ``min_replicas``, ``max_replicas``, ``upscale_delay_s``);
    #: checked by the policy, an unknown one is a ``ConfigError``.
    knobs: dict[str, Any] = Field(default_factory=dict)


class _NestedFieldError(ValueError):
    """A validator's error deeper than its field: ``sub_path`` continues the dotted path."""

    def __init__(self, sub_path: str, message: str) -> None:
        super().__init__(f"{sub_path}: {message}" if sub_path else message)
        self.sub_path = sub_path
        self.message = message


class QualityConfig(_Frozen):
    """The rolling-window data-quality check of one deployment's served traffic.

    Every ``interval_s`` the gateway checks the examples of the last ``window_s`` (at most
    ``max_examples``, the newest kept) against ``expectations`` (the mapping that
    ``Expectations.from_dict`` takes, checked when the file is loaded).
    """

    expectations: dict[str, Any]
    window_s: Annotated[float, Field(gt=0, le=7 * 86400)] = 300.0
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_examples: Annotated[int, Field(ge=1, le=1_000_000)] = 5000

    @field_validator("expectations")
    @classmethod
    def _valid_expectations(cls, data: dict[str, Any]) -> dict[str, Any]:
        try:
            Expectations.from_dict(data)
        except ConfigError as exc:
            raise _NestedFieldError(exc.field or "", exc.message) from None
        return data

    def to_expectations(self) -> Expectations:
        return Expectations.from_dict(self.expectations)


class ObjectStoreConfig(_Frozen):
    """How to reach the object store of an ``s3://`` engine model. Credentials are never
    written here: ``*_env`` name the environment variables that hold them. Unset: the AWS
    defaults (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...)."""

    #: An S3-compatible endpoint (MinIO, Ceph, R2, ...).
    endpoint_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")] | None = None
    access_key_id_env: (
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None
    ) = None
    secret_access_key_env: (
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None
    ) = None
    is_anonymous: bool = Field(default=False, alias="anonymous")
    #: Tries of each request to the store (errors of a flaky store are retried with backoff).
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3

    def to_options(self) -> ObjectStoreOptions:
        return ObjectStoreOptions(
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id_env=self.access_key_id_env,
            secret_access_key_env=self.secret_access_key_env,
            is_anonymous=self.is_anonymous,
            max_attempts=self.max_attempts,
        )


class EngineConfig(_Frozen):
    """The engine of an LLM deployment (a deployment with ``engine:`` is an LLM deployment).

    ``model``: for ``llamacpp`` a bundled model's name (``smollm2``) or a GGUF file; for
    ``vllm`` a local model folder (nothing is downloaded); for ``openai-upstream`` the
    upstream's own model name. ``context_window`` is per request (prompt + output): each of
    a llama.cpp replica's ``parallel`` slots holds a whole window, so its KV cache is
    ``context_window * parallel`` tokens. Routing defaults to ``prefix_aware``: it sends a
    conversation back to the replica holding its prefix in cache, and its balance guard falls
    back to the least loaded replica when prompts share nothing, so it is never worse than
    ``least_loaded`` by more than the guard's slack.
    """

    kind: Literal["llamacpp", "vllm", "openai-upstream"] = "llamacpp"
    model: Annotated[str, Field(min_length=1, max_length=4096)]
    #: The name clients send as ``model``; default: the deployment's name.
    served_model_name: (
        Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")] | None
    ) = None
    context_window: Annotated[int, Field(ge=64, le=1_048_576)] = 2048
    #: Requests one replica decodes at once (llama.cpp slots; vLLM ``--max-num-seqs``).
    parallel: Annotated[int, Field(ge=1, le=1024)] = 4
    #: CPU threads per replica; default: the machine's cores split over the replicas.
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    #: The most tokens one request may generate (a larger ``max_tokens`` is refused).
    max_output_tokens: Annotated[int, Field(ge=1, le=1_048_576)] = 512
    #: How the gateway picks a replica for a request (``aiscale.llm.routing.make_router``).
    routing: Literal["prefix_aware", "least_loaded", "session", "round_robin"] = "prefix_aware"
    #: The routing policy's own settings (checked by ``make_router``).
    routing_knobs: dict[str, Any] = Field(default_factory=dict)
    #: ``openai-upstream``: the endpoints' base URLs, one replica each.
    urls: tuple[Annotated[str, Field(pattern=r"^https?://\S+$")], ...] = ()
    #: ``openai-upstream``: the environment variable that holds the upstream's API key.
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = None
    #: Engine settings beyond these, from an allow-list per kind (``engines.spec.EXTRA_ARGS``).
    extra_args: dict[str, ExtraArg] = Field(default_factory=dict)
    startup_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    #: ``llamacpp``: run the engine's threads as batch work (Linux ``SCHED_BATCH``), so the
    #: gateway and other latency-bound processes on the node preempt them at once
    #: (``engines.llamacpp_process``); ``false`` keeps the default policy.
    batch_scheduling: bool = True
    #: An object-store ``model``'s sha256 (hex): a pin, checked on every fetch, and a warm
    #: node cache then starts replicas without the network [default: ``<model>.sha256``].
    model_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    #: The node's weights cache for object-store models [default: ``<data_dir>/model-cache``
    #: when the server passes it, else ``~/.cache/aiscale/model-cache``].
    model_cache_dir: Path | None = None
    #: How to reach the object store of an ``s3://`` model.
    object_store: ObjectStoreConfig | None = None

    @model_validator(mode="after")
    def _fits_kind(self) -> EngineConfig:
        from aiscale.engines.models import is_object_uri

        upstream = self.kind == "openai-upstream"
        if is_object_uri(self.model) and self.kind != "llamacpp":
            raise _NestedFieldError(
                "model", "object-store weights (s3://...) are fetched for kind: llamacpp only"
            )
        if not is_object_uri(self.model):
            for name in ("model_sha256", "model_cache_dir", "object_store"):
                if getattr(self, name) is not None:
                    raise _NestedFieldError(
                        name, "is only used with an object-store model (s3://bucket/key)"
                    )
        if upstream and not self.urls:
            raise _NestedFieldError("urls", "openai-upstream needs at least one URL")
        if not upstream and (self.urls or self.api_key_env):
            name = "urls" if self.urls else "api_key_env"
            raise _NestedFieldError(name, "is only used with kind: openai-upstream")
        if not upstream and self.max_output_tokens >= self.context_window:
            raise _NestedFieldError(
                "max_output_tokens", f"must be below context_window ({self.context_window})"
            )
        allowed = EXTRA_ARGS[self.kind]
        for name, value in self.extra_args.items():
            if name not in allowed:
                raise _NestedFieldError(
                    f"extra_args.{name}",
                    f"not an allowed {self.kind} setting; allowed: "
                    f"{', '.join(sorted(allowed)) or 'none'}",
                )
            try:
                EngineSpec(self.kind, "-", "-", extra_args={name: value})
            except ValueError as exc:
                raise _NestedFieldError(f"extra_args.{name}", str(exc)) from None
        return self

    def to_spec(
        self,
        deployment: str,
        *,
        num_threads: int | None = None,
        slot_save_dir: str | None = None,
        model_cache_dir: str | None = None,
    ) -> EngineSpec:
        """The engine spec every replica runs. Locates the model (``ConfigError`` naming the
        cause if it is not there; nothing is downloaded: an object-store model is checked
        here and fetched by the replicas); ``num_threads`` is the deployment's, used when
        the engine names none; ``model_cache_dir`` the server's node weights cache, used
        when the engine names none."""
        from aiscale.engines.models import model_source

        if self.kind == "llamacpp":
            model = model_source(self.model)
        elif self.kind == "vllm":
            path = Path(self.model).expanduser()
            if not path.exists():
                raise ConfigError(
                    f"engine.model: {self.model!r} is not a local model folder (vllm "
                    "engines load local weights only; nothing is downloaded)",
                    field="engine.model",
                )
            model = str(path.resolve())
        else:
            model = self.model
        return EngineSpec(
            kind=self.kind,
            model=model,
            served_model_name=self.served_model_name or deployment,
            context_window=self.context_window,
            parallel=self.parallel,
            threads=self.threads or num_threads,
            max_output_tokens=self.max_output_tokens,
            upstream_urls=self.urls,
            api_key_env=self.api_key_env,
            extra_args=self.extra_args,
            slot_save_dir=slot_save_dir,
            startup_timeout_s=self.startup_timeout_s,
            batch_scheduling=self.batch_scheduling,
            model_sha256=self.model_sha256,
            model_cache_dir=(
                str(self.model_cache_dir.expanduser())
                if self.model_cache_dir is not None
                else model_cache_dir
            ),
            object_store=(
                self.object_store.to_options()
                if self.object_store is not None
                else ObjectStoreOptions()
            ),
        )


class DeploymentConfig(_Frozen):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    model: Annotated[str, Field(pattern=NAME_PATTERN)]
    #: A version number or an alias; ``None`` takes the newest version.
    version: str | None = None
    replicas: Annotated[int, Field(ge=0, le=256)] = 1
    num_threads: Annotated[int, Field(ge=1, le=256)] | None = None
    timeout_ms: Annotated[float, Field(gt=0, le=3_600_000)] = 30_000.0
    max_inflight_batches: Annotated[int, Field(ge=1, le=8)] = 1
    batching: BatchingConfig = BatchingConfig()
    cache: CacheConfig = CacheConfig()
    autoscaling: AutoscalingConfig | None = None
    #: GPUs per replica: a share of one device (``0 < gpus < 1``, by memory) or whole devices.
    gpus: Annotated[float, Field(ge=0, le=64)] = 0.0
    #: GPU memory per replica: the share's size, or the least memory of each whole device.
    gpu_memory_mb: Annotated[int, Field(ge=1)] | None = None
    #: The team whose quota the GPUs count against (``server.gpus.teams``).
    team: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    #: Seconds a replica may wait for GPU capacity before it is refused; 0 refuses at once.
    gpu_wait_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    #: Among waiting GPU requests, higher goes first; equal ones in arrival order.
    gpu_priority: Annotated[int, Field(ge=-100, le=100)] = 0
    #: Ray runtime only: CPUs each replica's actor asks for [default: num_threads, else 1].
    cpus: Annotated[float, Field(gt=0, le=1024)] | None = None
    #: Ray runtime only: memory each replica's actor reserves on its node.
    memory_mb: Annotated[int, Field(ge=1)] | None = None
    #: Ray runtime only: custom Ray resources per replica (e.g. ``{"accelerator_a10": 1}``).
    ray_resources: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    #: Rolling-window data-quality checks of the served traffic; ``None``: none.
    quality: QualityConfig | None = None
    #: Traffic percent per version or alias (``version`` must be one of them); set by
    #: ``aiscale apply`` on a running server (``serving/apply.py``). ``None``: all to ``version``.
    split: dict[str, Annotated[float, Field(ge=0, le=100)]] | None = None
    #: The LLM engine its replicas run; ``None``: a model replica (``runtimes``) instead.
    engine: EngineConfig | None = None

    @model_validator(mode="after")
    def _llm_policy_on_engines(self) -> DeploymentConfig:
        # A token-aware policy reads the engines' queues and KV cache: a model has none.
        policy = self.autoscaling.policy if self.autoscaling is not None else ""
        if policy.startswith("llm-") and self.engine is None:
            raise _NestedFieldError(
                "autoscaling.policy", f"{policy} scales LLM engines: it needs an engine"
            )
        return self

    @model_validator(mode="after")
    def _vllm_on_gpus(self) -> DeploymentConfig:
        # Without devices from the GPU pool, every vLLM replica would take all the GPUs.
        if self.engine is not None and self.engine.kind == "vllm" and self.gpus < 1:
            raise _NestedFieldError("gpus", "a vllm engine needs whole GPUs (gpus >= 1)")
        return self

    @field_validator("gpus")
    @classmethod
    def _gpu_share(cls, num_gpus: float) -> float:
        check_gpu_share(num_gpus)
        return num_gpus

    @field_validator("gpu_memory_mb")
    @classmethod
    def _gpu_memory(cls, memory_mb: int | None, info: ValidationInfo) -> int | None:
        check_gpu_memory(memory_mb, info.data.get("gpus"))
        return memory_mb


class CaptureServerConfig(_Frozen):
    """Capture of every request and feedback; on by default so a new user's data is never lost."""

    is_enabled: bool = Field(default=True, alias="enabled")
    sample_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    #: Keys (at any depth of inputs and outputs) whose values are replaced by ``[REDACTED]``.
    redact_fields: tuple[str, ...] = ()
    #: Regular expressions whose matches in any captured string are replaced by ``[REDACTED]``.
    redact_patterns: tuple[str, ...] = ()
    #: Records accepted but not yet durable before appends are refused with 503.
    max_queue: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    #: Publish to this NATS JetStream server instead of the local log (several gateways).
    nats_url: str | None = None
    nats_stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "AISCALE_CAPTURE"


class TracingConfig(_Frozen):
    """OpenTelemetry traces of requests, queues, batches, model calls and capture; off by default.

    Tracing is on when ``endpoint`` is set (an OTLP/HTTP collector: its base URL, to which
    ``/v1/traces`` is added, or the full traces URL; also ``--otel-endpoint`` and
    ``AISCALE_OTEL_ENDPOINT``) or ``console`` is true (spans printed on stdout). It needs the
    ``aiscale[otel]`` extra; with tracing off no OpenTelemetry module is loaded.
    """

    endpoint: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    is_console: bool = Field(default=False, alias="console")
    service_name: Annotated[str, Field(min_length=1, max_length=128)] = "aiscale"
    #: Share of new traces recorded; a request whose ``traceparent`` is sampled always is.
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0

    @property
    def is_enabled(self) -> bool:
        return self.endpoint is not None or self.is_console


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    data_dir: Path = Path("~/.aiscale")
    registry_url: str | None = None
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    #: Items (OIP v2 rows, embeddings inputs) one request may carry, refused with 413 from the
    #: declared count before any is decoded; a deployment's ``batching.max_queue`` caps it too.
    max_items_per_request: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    is_insecure: bool = Field(default=False, alias="insecure")
    drain_timeout_s: Annotated[float, Field(ge=0)] = 30.0
    key_refresh_s: Annotated[float, Field(gt=0)] = 2.0
    #: A request's headers not all received this long after its connection opened (or its
    #: first byte) close the connection with 408; so do idle new connections.
    header_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    #: A request body not all received within this many seconds is answered 408.
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    #: An idle kept-alive connection is closed after this many seconds.
    keep_alive_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    #: Open connections (and requests in progress) beyond this are answered 503.
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 2048
    #: Whether ``/metrics`` needs a key with the ``metrics`` scope.
    is_metrics_key_required: bool = Field(default=False, alias="metrics_key_required")
    capture: CaptureServerConfig = CaptureServerConfig()
    #: OpenTelemetry traces (off unless an endpoint or the console is configured).
    tracing: TracingConfig = TracingConfig()
    #: The live monitor (SLOs, anomalies, forecasts, alerts and actions).
    monitor: MonitorConfig = MonitorConfig()
    #: Accelerators (found by NVML or declared) and the teams' quotas.
    gpus: GpuPoolConfig = GpuPoolConfig()
    #: LLM token accounting: the teams' limits and budgets, and token prices per model
    #: (``aiscale.llm.ledger``); keys' own limits are stored with each key.
    ledger: LedgerConfig = LedgerConfig()
    #: Shared rate limits and response cache for several gateways (``redis://host:6379/0``);
    #: ``None`` keeps both in process.
    redis_url: str | None = None
    #: Prefix of every Redis key this server writes (one per installation, or per test).
    redis_key_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "aiscale:"
    #: Deadline of each Redis call; past it a limit falls back to this gateway's own bucket.
    redis_timeout_s: Annotated[float, Field(gt=0, le=10)] = 0.25
    #: Lifetime of a cached response in Redis (memory is bounded by Redis's ``maxmemory``).
    redis_cache_ttl_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 3600.0
    #: Key of the HMAC sealing cached values in Redis; every gateway sharing the cache needs
    #: the same one. ``None``: one generated once in ``data_dir/cache_secret`` (mode 0600).
    redis_cache_secret: Annotated[SecretStr, Field(min_length=16)] | None = None
    #: Host names (``Host`` header) accepted besides the addresses the server is bound to
    #: and ``localhost``; ``*`` accepts any (behind a proxy that checks names itself).
    allowed_hosts: tuple[Annotated[str, Field(min_length=1, max_length=253)], ...] = ()
    #: Browser origins (``https://app.example.com``) allowed to call the inference API
    #: cross-site; none by default, so no CORS header is sent and foreign origins get 403.
    cors_origins: tuple[Annotated[str, Field(pattern=r"^https?://[^/\s]+$")], ...] = ()
    #: How often a gateway reads traffic splits and rollouts from the registry, so that a
    #: change made through another gateway reaches it within this plus one query.
    split_poll_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    #: Where replicas run: ``local`` processes on this machine, or actors on a ``ray`` cluster.
    runtime: Literal["local", "ray"] = "local"
    #: The Ray cluster to join (``host:port`` of the head's GCS, or ``auto``); ``None`` with
    #: ``runtime: ray`` starts a one-node Ray inside the server process.
    ray_address: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url

    @field_validator("ray_address")
    @classmethod
    def _ray_address_needs_ray(cls, address: str | None, info: ValidationInfo) -> str | None:
        if address is not None and info.data.get("runtime") != "ray":
            raise ValueError("is only used with runtime: ray (--runtime ray)")
        return address

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser()

    @property
    def resolved_registry_url(self) -> str:
        return self.registry_url or f"sqlite:///{self.resolved_data_dir / 'registry.db'}"


class AiscaleConfig(_Frozen):
    server: ServerConfig = ServerConfig()
    deployments: tuple[DeploymentConfig, ...] = ()


#: ``AISCALE_*`` variables and the server field each one sets.
ENVIRONMENT_FIELDS = {
    "AISCALE_HOST": "host",
    "AISCALE_PORT": "port",
    "AISCALE_DATA_DIR": "data_dir",
    "AISCALE_REGISTRY_URL": "registry_url",
    "AISCALE_MAX_BODY_BYTES": "max_body_bytes",
    "AISCALE_INSECURE": "insecure",
    "AISCALE_REDIS_URL": "redis_url",
    "AISCALE_REDIS_CACHE_SECRET": "redis_cache_secret",
    "AISCALE_RUNTIME": "runtime",
    "AISCALE_RAY_ADDRESS": "ray_address",
    "AISCALE_OTEL_ENDPOINT": "tracing.endpoint",
}


def _dotted(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location)


def parse_config(data: Mapping[str, Any]) -> AiscaleConfig:
    """Validate a whole configuration; the first error names its dotted field path."""
    try:
        config = AiscaleConfig.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        path = _dotted(first["loc"])
        message = first["msg"]
        nested = first.get("ctx", {}).get("error")
        if isinstance(nested, _NestedFieldError):
            path = f"{path}.{nested.sub_path}" if nested.sub_path else path
            message = nested.message
        raise ConfigError(f"{path}: {message}", field=path) from None
    if config.server.runtime == "ray":
        _check_ray_deployments(config.deployments)
    else:
        check_teams(config.server.gpus, [(d.name, d.gpus, d.team) for d in config.deployments])
    return config


def _check_ray_deployments(deployments: tuple[DeploymentConfig, ...]) -> None:
    """On Ray, Ray owns the GPUs: the gateway's GPU pool settings would silently not apply."""
    for index, deployment in enumerate(deployments):
        for name in ("gpu_memory_mb", "team"):
            if getattr(deployment, name) is not None:
                path = f"deployments.{index}.{name}"
                raise ConfigError(
                    f"{path}: the ray runtime places GPUs by count (gpus) only; "
                    "GPU memory shares and team quotas need runtime: local",
                    field=path,
                )


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    server_overrides: Mapping[str, Any] | None = None,
) -> AiscaleConfig:
    """File, then environment, then flags (``server_overrides``, ``None`` values ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        data = dict(loaded or {})
    server = dict(data.get("server") or {})
    env = os.environ if environ is None else environ
    for variable, field_name in ENVIRONMENT_FIELDS.items():
        if variable in env:
            section, _, key = field_name.rpartition(".")
            if section:  # a field of a nested section (``tracing.endpoint``)
                server[section] = {**dict(server.get(section) or {}), key: env[variable]}
            else:
                server[field_name] = env[variable]
    for field_name, value in (server_overrides or {}).items():
        if isinstance(value, Mapping):
            # A nested section (e.g. ``capture``): flags override only the keys they set.
            given = {k: v for k, v in value.items() if v is not None}
            if given:
                server[field_name] = {**dict(server.get(field_name) or {}), **given}
        elif value is not None:
            server[field_name] = value
    data["server"] = server
    return parse_config(data)
