"""The retraining loop's view of a running gateway: its admin API over HTTP.

Kept apart from :mod:`aiscale.data.retrain` so the loop's logic reads without HTTP details.
Every call has a timeout; a 4xx/5xx answer becomes the matching ``AiscaleError`` with the
server's message and field. Blocking (httpx's sync client).
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from aiscale.errors import AiscaleError, Conflict, InvalidInput, NotFound

#: Rollout statuses after which nothing changes any more.
FINAL_STATUSES = frozenset({"promoted", "rolled_back", "aborted"})
_POLL_S = 0.25
_ERRORS: dict[int, type[AiscaleError]] = {400: InvalidInput, 404: NotFound, 409: Conflict}


class AdminClient:
    """Calls ``/admin/deployments/...`` on the gateway at ``url``."""

    def __init__(self, url: str, key: str | None = None, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"authorization": f"Bearer {key}"} if key else {}
        self.timeout = httpx.Timeout(timeout_s)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = httpx.request(
                method, f"{self.url}{path}", json=body, headers=self.headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise AiscaleError(
                f"cannot reach the server at {self.url}: {exc}", field="url"
            ) from None
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                message, field = str(error["message"]), error.get("field")
            except (ValueError, KeyError, TypeError):
                message, field = response.text[:200], None
            kind = _ERRORS.get(response.status_code, AiscaleError)
            raise kind(f"server answered {response.status_code}: {message}", field=field)
        return response.json()

    def describe(self, deployment: str) -> dict[str, Any]:
        """The deployment as served: ``model``, ``version`` (primary), ``runtime``, ..."""
        return dict(self.call("GET", f"/admin/deployments/{deployment}"))

    def rollout(self, deployment: str) -> dict[str, Any] | None:
        """The deployment's last rollout status, or None if it never had one here."""
        try:
            return dict(self.call("GET", f"/admin/deployments/{deployment}/rollout"))
        except NotFound:
            return None

    def active_rollout(self, deployment: str) -> str | None:
        """The canary version of a running or paused rollout, else None."""
        status = self.rollout(deployment)
        if status is None or status.get("status") in FINAL_STATUSES:
            return None
        return str(status.get("canary"))

    def start_rollout(self, deployment: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call("POST", f"/admin/deployments/{deployment}/rollout", body))

    def wait_rollout(self, deployment: str, timeout_s: float) -> dict[str, Any]:
        """Poll until the rollout is final or ``timeout_s`` passed; the last status seen."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.rollout(deployment)
            if status is None:
                raise NotFound(f"{deployment!r} has no rollout", field="deployment")
            if status.get("status") in FINAL_STATUSES or time.monotonic() >= deadline:
                return status
            time.sleep(_POLL_S)
