"""A small Python client for a running server's admin API (``/admin/...``).

    >>> import aiscale
    >>> with aiscale.Client("http://127.0.0.1:8000", key="...") as client:
    ...     client.scale("minilm", 2)
    ...     client.apply("aiscale.yaml", dry_run=True)["deployments"]

Each method is one HTTP call and returns the server's JSON answer. An error answer raises the
class of ``aiscale.errors`` the server named (``NotFound``, ``Conflict``, ``ConfigError``,
...) with the server's message and field; a server that cannot be reached raises
``UpstreamUnavailable``. It never retries and never exits the process.

API keys are created and revoked in the registry (``aiscale keys``), not over HTTP; the
client can ask the server to reload them (``refresh_keys``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from aiscale import errors

__all__ = ["Client"]


def _error_from(response: httpx.Response) -> errors.AiscaleError:
    """The server's error as the class it named, else by status as ``AiscaleError``."""
    try:
        body = response.json()["error"]
        type_name, message, field = str(body["type"]), str(body["message"]), body.get("field")
    except (ValueError, KeyError, TypeError):
        return errors.AiscaleError(
            f"server answered {response.status_code}: {response.text[:200]}"
        )
    found = getattr(errors, type_name, None)
    if (
        isinstance(found, type)
        and issubclass(found, errors.AiscaleError)
        and found is not errors.ReplicaError  # (type_name, message): keep it generic
    ):
        if issubclass(found, errors.Overloaded):
            retry_after = response.headers.get("retry-after", "1")
            try:
                retry_after_s = float(retry_after)
            except ValueError:
                retry_after_s = 1.0
            return found(message, retry_after_s=retry_after_s, field=field)
        return found(message, field=field)
    return errors.AiscaleError(message, field=field)


def config_mapping(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A config given as a mapping, or the path of an ``aiscale.yaml``."""
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise errors.ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"{path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise errors.ConfigError(f"{path} must hold a mapping at the top level")
    return loaded


class Client:
    """The admin API of the server at ``url``; ``key`` needs the ``admin`` scope when the
    server has API keys. ``timeout_s`` bounds each call (a deploy waits for its replicas)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        key: str | None = None,
        *,
        timeout_s: float = 300.0,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise errors.UpstreamUnavailable(f"cannot reach {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response.json()

    # ----- deployments ------------------------------------------------------------------
    def deployments(self) -> list[dict[str, Any]]:
        """Every running deployment, as ``GET /admin/deployments`` describes it."""
        return list(self._call("GET", "/admin/deployments")["deployments"])

    def deployment(self, name: str) -> dict[str, Any]:
        """One deployment; ``NotFound`` if it is not running."""
        return dict(self._call("GET", f"/admin/deployments/{name}"))

    def deploy(
        self, name: str, model: str, *, version: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Create or replace ``name`` (zero downtime); ``fields`` are any of a deployment's
        config fields (``replicas``, ``batching``, ``autoscaling``, ...)."""
        body = {"name": name, "model": model, "version": version, **fields}
        return dict(self._call("POST", "/admin/deployments", body))

    def scale(self, name: str, replicas: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/admin/deployments/{name}/scale", {"replicas": replicas}))

    def undeploy(self, name: str) -> None:
        """Drain and stop ``name``."""
        self._call("DELETE", f"/admin/deployments/{name}")

    def apply(
        self,
        config: Mapping[str, Any] | str | Path,
        *,
        dry_run: bool = False,
        prune: bool = False,
    ) -> dict[str, Any]:
        """Bring the server to ``config`` (a mapping or an ``aiscale.yaml`` path), all or
        nothing; the answer lists each deployment's changes (``serving/apply.py``)."""
        body = {"config": config_mapping(config), "dry_run": dry_run, "prune": prune}
        return dict(self._call("POST", "/admin/apply", body))

    # ----- releases ---------------------------------------------------------------------
    def start_rollout(self, name: str, version: str, **options: Any) -> dict[str, Any]:
        """Start a canary rollout of ``version``; ``options`` as ``RolloutBody`` (``steps``,
        ``interval_s``, ``min_requests``, ``alpha``, ...)."""
        body = {"version": version, **options}
        return dict(self._call("POST", f"/admin/deployments/{name}/rollout", body))

    def rollout(self, name: str) -> dict[str, Any]:
        """The rollout's status; ``NotFound`` when ``name`` has none."""
        return dict(self._call("GET", f"/admin/deployments/{name}/rollout"))

    def rollout_action(self, name: str, action: str) -> dict[str, Any]:
        """``pause``, ``resume``, ``promote`` or ``abort`` the rollout of ``name``."""
        return dict(self._call("POST", f"/admin/deployments/{name}/rollout/{action}"))

    def rollback(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/admin/deployments/{name}/rollback"))

    def set_split(self, name: str, weights: Mapping[str, float]) -> dict[str, Any]:
        body = {"weights": dict(weights)}
        return dict(self._call("PUT", f"/admin/deployments/{name}/split", body))

    # ----- keys -------------------------------------------------------------------------
    def refresh_keys(self) -> None:
        """Make the server reload API keys from the registry now."""
        self._call("POST", "/admin/keys/refresh")
