"""From configuration to a runnable gateway: resolve models in the registry, build specs.

Used by ``aiscale serve`` and ``aiscale demo``. A model argument may be a registered model
name, ``minilm`` (registered on first use), an import path ``pkg.module:Class``, or a local
model file or folder (``.onnx``, ``.joblib``/``.pkl``, a sentence-transformers folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from aiscale.config import AiscaleConfig, DeploymentConfig, ServerConfig
from aiscale.data.capture import CaptureLayout, CaptureSink, load_or_create_salt
from aiscale.data.capture_nats import NatsCaptureSink
from aiscale.data.capture_record import CaptureConfig
from aiscale.errors import ConfigError, InvalidInput, NotFound
from aiscale.llm.ledger import make_ledger
from aiscale.registry import FsspecArtifactStore, SqlRegistry, register_with_artifact
from aiscale.registry.front import RegistryControl
from aiscale.replicas.pool import ReplicaRuntime
from aiscale.serving.capturing import CaptureBackend
from aiscale.serving.gateway import Gateway, GatewaySettings
from aiscale.serving.specs import llm_version_of, spec_from_config

if TYPE_CHECKING:
    from aiscale.serving.shared_state import SharedState
    from aiscale.serving.tracing import RequestTracing

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """A model argument resolved to a registered model name (and version, if pinned)."""

    model: str
    version: str | None


def _name_from(text: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return (name or "model")[:63]


def ensure_registered(
    registry: SqlRegistry, artifacts: FsspecArtifactStore, model_arg: str
) -> ModelChoice:
    """Register what ``model_arg`` points at unless it is already a registered model."""
    try:
        registry.get_model(model_arg)
        return ModelChoice(model_arg, None)
    except (NotFound, InvalidInput):
        pass
    if model_arg == "minilm":
        record = register_with_artifact(
            registry, artifacts, "minilm", runtime="minilm", uri="bundled"
        )
        return ModelChoice(record.model, record.version)
    if _IMPORT_PATH.match(model_arg):
        name = _name_from(model_arg.rsplit(":", 1)[1])
        return _register_once(registry, artifacts, name, "python", model_arg)
    path = Path(model_arg).expanduser()
    if path.is_dir():
        return _register_once(
            registry, artifacts, _name_from(path.name), "sentence-transformers", str(path)
        )
    if path.is_file():
        runtime = {".onnx": "onnx", ".joblib": "sklearn", ".pkl": "sklearn"}.get(
            path.suffix.lower()
        )
        if runtime is None:
            raise InvalidInput(
                f"cannot tell the runtime of {model_arg!r} from its suffix", field="model"
            )
        return _register_once(registry, artifacts, _name_from(path.stem), runtime, str(path))
    raise NotFound(
        f"{model_arg!r} is not a registered model, 'minilm', an import path or a model file",
        field="model",
    )


def _register_once(
    registry: SqlRegistry, artifacts: FsspecArtifactStore, name: str, runtime: str, uri: str
) -> ModelChoice:
    """Reuse the newest version when it came from the same source; register otherwise."""
    try:
        versions = registry.list_versions(name)
    except NotFound:
        versions = []
    for record in reversed(versions):
        if record.runtime == runtime and record.metadata.get("source") == uri:
            return ModelChoice(name, record.version)
    # The operator named this file on the command line (or in the config): any path, and a
    # pickle is trusted (with a warning logged by the registration).
    record = register_with_artifact(
        registry, artifacts, name, runtime=runtime, uri=uri, metadata={"source": uri},
        is_pickle_allowed=True, registered_by="serve",
    )
    return ModelChoice(record.model, record.version)


def build_capture(server: ServerConfig, registry: CollectorRegistry) -> CaptureBackend | None:
    """The server's capture backend: the local durable log by default, NATS when configured."""
    settings = server.capture
    if not settings.is_enabled:
        return None
    layout = CaptureLayout.from_data_dir(server.resolved_data_dir)
    capture_config = CaptureConfig(
        sample_rate=settings.sample_rate,
        redact_fields=settings.redact_fields,
        redact_patterns=settings.redact_patterns,
        max_queue=settings.max_queue,
        salt=load_or_create_salt(layout.root / "salt"),
    )
    if settings.nats_url is not None:
        return NatsCaptureSink(settings.nats_url, settings.nats_stream, capture_config, registry)
    return CaptureSink(layout, capture_config, registry)


def build_shared_state(server: ServerConfig, registry: CollectorRegistry) -> SharedState | None:
    """Redis for rate limits and the response cache when ``redis_url`` is set; checked now,
    so an unreachable or bad URL stops ``serve`` with a ``ConfigError`` before it binds."""
    if server.redis_url is None:
        return None
    from aiscale.serving.shared_state import RedisSettings, SharedState, check_reachable

    secret = server.redis_cache_secret
    secret_path = server.resolved_data_dir / "cache_secret"
    if secret is None and len(load_or_create_salt(secret_path)) < 16:
        raise ConfigError(
            f"{secret_path} holds under 16 bytes; delete it to make a new cache secret",
            field="redis_cache_secret",
        )
    settings = RedisSettings(
        server.redis_url,
        key_prefix=server.redis_key_prefix,
        timeout_s=server.redis_timeout_s,
        cache_ttl_s=server.redis_cache_ttl_s,
        # Gateways sharing one Redis must share this secret (config or environment).
        cache_secret=secret.get_secret_value().encode()
        if secret is not None
        else load_or_create_salt(secret_path),
    )
    check_reachable(settings)
    return SharedState(settings, registry)


def build_tracing(server: ServerConfig) -> RequestTracing | None:
    """The gateway's tracer when ``server.tracing`` turns tracing on, else ``None``; only then
    is OpenTelemetry imported (a ``ConfigError`` names the extra when it is missing)."""
    settings = server.tracing
    if not settings.is_enabled:
        return None
    from aiscale.replicas.tracing import TraceExport
    from aiscale.serving.tracing import RequestTracing

    return RequestTracing(
        TraceExport(
            endpoint=settings.endpoint,
            is_console=settings.is_console,
            service_name=settings.service_name,
            sample_ratio=settings.sample_ratio,
        )
    )


def _version_of(control: RegistryControl, deployment: DeploymentConfig) -> Any:
    """The registry's version record of ``deployment``. An LLM deployment whose model the
    registry does not hold yet (``serve smollm2``, a GGUF file in the config) is registered
    first, as a version of its engine kind whose ``uri`` is the engine's model (the file is
    not copied: weights stay where they are), so that it is saved, restarted and rolled out
    like any deployment."""
    try:
        return control.resolve_version(deployment.model, deployment.version)
    except NotFound:
        if deployment.engine is None or deployment.version is not None:
            raise
    fallback = llm_version_of(deployment)
    engine = deployment.engine.to_spec(deployment.name)
    try:
        versions = control.registry.list_versions(deployment.model)
    except NotFound:
        versions = []
    for record in reversed(versions):
        if record.runtime == engine.kind and record.uri == engine.model:
            return record
    return control.registry.register_version(
        deployment.model,
        runtime=fallback.runtime,
        uri=engine.model,
        metadata={"source": deployment.engine.model, "registered_by": "serve"},
    )


def build_gateway(
    config: AiscaleConfig,
    registry: SqlRegistry,
    artifacts: FsspecArtifactStore,
    extra: list[DeploymentConfig],
) -> Gateway:
    """The gateway for the file's deployments, the ones saved by earlier runs, and ``extra``
    (from command-line flags); a later source replaces an earlier one of the same name."""
    control = RegistryControl(registry, artifacts)
    by_name: dict[str, DeploymentConfig] = {}
    for deployment in [
        *(DeploymentConfig.model_validate(saved) for saved in control.saved_deployments()),
        *config.deployments,
        *extra,
    ]:
        by_name[deployment.name] = deployment
    server = config.server
    from aiscale.serving.server import is_loopback

    # Open mode is decided here, once (serving/auth.py): asked for, or loopback with no key
    # ever created. A revoked key counts as created: whoever set keys up wanted them.
    is_open_allowed = server.is_insecure or (
        is_loopback(server.host) and not registry.list_keys()
    )
    runtime = ReplicaRuntime(server.runtime, server.ray_address)
    specs = []
    for deployment in by_name.values():
        specs.append(spec_from_config(deployment, _version_of(control, deployment), runtime))
    metrics_registry = CollectorRegistry()
    gateway = Gateway(
        GatewaySettings(
            max_body_bytes=server.max_body_bytes,
            max_items_per_request=server.max_items_per_request,
            drain_timeout_s=server.drain_timeout_s,
            key_refresh_s=server.key_refresh_s,
            split_poll_s=server.split_poll_s,
            runtime=runtime,
            is_open_allowed=is_open_allowed,
            allowed_hosts=server.allowed_hosts,
            cors_origins=server.cors_origins,
            # Kept in the data dir: owned request ids still verify after a restart.
            request_id_key=load_or_create_salt(server.resolved_data_dir / "request_id_secret"),
            body_timeout_s=server.body_timeout_s,
            is_metrics_key_required=server.is_metrics_key_required,
        ),
        specs,
        metrics_registry=metrics_registry,
        control=control,
        capture=build_capture(server, metrics_registry),
        gpus=server.gpus,
        shared=build_shared_state(server, metrics_registry),
        tracing=build_tracing(server),
        ledger=make_ledger(
            server.ledger,
            redis_url=server.redis_url,
            key_prefix=server.redis_key_prefix,
            timeout_s=server.redis_timeout_s,
            metrics_registry=metrics_registry,
        ),
        monitor=server.monitor
        if server.monitor.audit_path is not None
        else server.monitor.model_copy(
            update={"audit_path": server.resolved_data_dir / "monitor" / "audit.jsonl"}
        ),
    )
    gateway.configs.update(by_name)
    for deployment in by_name.values():
        control.save_deployment(deployment)
    return gateway
