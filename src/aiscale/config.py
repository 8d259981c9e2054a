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
)

from aiscale.data.quality import Expectations
from aiscale.errors import ConfigError
from aiscale.gpus.config import GpuPoolConfig, check_gpu_memory, check_gpu_share, check_teams
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
    #: ``static``, ``reactive`` (Ray Serve's rule), ``kpa`` (Knative's) or ``predictive``.
    policy: Literal["static", "reactive", "kpa", "predictive"] = "reactive"
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
