"""``aiscale.serve(model, **options)``: the server ``aiscale serve`` runs, from Python.

    >>> import aiscale
    >>> server = aiscale.serve("tests.models:Echo", replicas=2)
    >>> server.url          # e.g. http://127.0.0.1:41233 (a free port by default)
    >>> server.stop()       # drain, stop the replicas, close the registry

The server is assembled as ``aiscale serve`` assembles it (``serving/launch.py``: registry,
artifacts, capture, the file's and the saved deployments) and runs on uvicorn in a daemon
thread of this process; ``serve`` returns once every deployment answers ``/v2/health/ready``.
Bad options raise ``ConfigError``/``InvalidInput`` naming the field; a server that cannot
start raises ``AiscaleError``. It never exits the process.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from aiscale.errors import AiscaleError, InvalidInput

__all__ = ["ServerHandle", "serve"]


class ServerHandle:
    """A running server: its base ``url``, ``admin_client()`` and ``stop()``."""

    def __init__(self, url: str, threaded: Any, registry: Any) -> None:
        self.url = url
        self._threaded = threaded
        self._registry = registry
        self.is_stopped = False

    def admin_client(self, key: str | None = None) -> Any:
        """An ``aiscale.Client`` for this server's admin API."""
        from aiscale.client import Client

        return Client(self.url, key)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop accepting, drain in-flight requests, stop the replicas; idempotent."""
        if self.is_stopped:
            return
        self.is_stopped = True
        try:
            self._threaded.stop(timeout_s)
        finally:
            self._registry.close()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self.is_stopped else "running"
        return f"<aiscale server {self.url} ({state})>"


def serve(
    model: str = "minilm",
    *,
    name: str | None = None,
    version: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    config: str | Path | None = None,
    data_dir: str | Path | None = None,
    registry_url: str | None = None,
    capture: bool | None = None,
    insecure: bool = False,
    ready_timeout_s: float = 120.0,
    **deployment: Any,
) -> ServerHandle:
    """Serve ``model`` (as ``aiscale serve`` takes it: a registered name, ``minilm``,
    ``pkg.module:Class`` or a model file) in a background thread and return its handle.

    ``deployment`` takes any deployment config field (``replicas``, ``batching``,
    ``timeout_ms``, ``autoscaling``, ...). ``port=0`` picks a free port. ``data_dir``
    defaults to ``~/.aiscale``, like the command.
    """
    from aiscale.config import load_config, parse_config
    from aiscale.data_dir import make_private_data_dir
    from aiscale.registry import FsspecArtifactStore, SqlRegistry
    from aiscale.serving.app import GatewayApp
    from aiscale.serving.launch import build_gateway, ensure_registered
    from aiscale.serving.server import ConnectionLimits, is_loopback, start_in_thread

    folder = Path(data_dir or Path.home() / ".aiscale").expanduser().resolve()
    registry_url = registry_url or f"sqlite:///{folder}/registry.db"
    loaded = load_config(
        Path(config) if config is not None else None,
        server_overrides={
            "host": host,
            "port": port,
            "insecure": insecure or None,
            "data_dir": str(folder),
            "registry_url": registry_url,
            "capture": {"enabled": capture},
        },
    )
    make_private_data_dir(folder)
    registry = SqlRegistry.open(registry_url)
    try:
        artifacts = FsspecArtifactStore(folder / "artifacts", cache_dir=folder / "cache")
        choice = ensure_registered(registry, artifacts, model)
        wanted = {
            "name": name or choice.model,
            "model": choice.model,
            "version": version or choice.version,
            **deployment,
        }
        flags = parse_config({"deployments": [wanted]}).deployments[0]
        server = loaded.server
        if not is_loopback(server.host) and not registry.active_keys() and not server.is_insecure:
            raise InvalidInput(
                f"refusing to serve on {server.host} without API keys: create one with "
                "'aiscale keys create' or pass insecure=True",
                field="host",
            )
        gateway = build_gateway(loaded, registry, artifacts, [flags])
        try:
            threaded = start_in_thread(
                GatewayApp(gateway),
                host=server.host,
                port=server.port,
                ready_timeout_s=ready_timeout_s,
                limits=ConnectionLimits.of(server),
            )
        except (RuntimeError, TimeoutError) as exc:
            raise AiscaleError(f"the server did not start: {exc}") from None
    except BaseException:
        registry.close()
        raise
    return ServerHandle(threaded.url, threaded, registry)
