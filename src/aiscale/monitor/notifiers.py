"""Where alert notifications go: a webhook (HTTP POST of JSON) or the log.

What it does: ``notification_payload`` is the JSON body (shaped like Alertmanager's webhook:
``version``, ``group``, ``status``, ``alerts``); ``WebhookNotifier`` POSTs it with httpx under
an explicit timeout and raises ``NotificationFailed`` when the receiver cannot be reached or
answers outside 2xx; ``LogNotifier`` writes one log line per notification. These are the only
parts of ``aiscale.monitor`` that do I/O; the alert engine never imports them.

What it must never do: retry forever or block the event loop (one POST, bounded by its
timeout; the caller's loop decides about retries), lose a failure silently, or put a
webhook's path, query or credentials in an error or a log line: receivers such as Slack
carry their token in the path, so only the scheme and host (``where``) are ever shown.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from aiscale.errors import AiscaleError
from aiscale.monitor.alerts import Notification

__all__ = ["LogNotifier", "NotificationFailed", "Notifier", "WebhookNotifier",
           "notification_payload"]

logger = logging.getLogger(__name__)


class NotificationFailed(AiscaleError):
    """A notification could not be delivered (unreachable receiver, timeout, non-2xx)."""


class Notifier(Protocol):
    """Delivers notifications; raises ``NotificationFailed`` when it cannot."""

    async def send(self, notification: Notification) -> None: ...


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def notification_payload(notification: Notification) -> dict[str, Any]:
    """The JSON body of a notification (non-finite values as strings: JSON has no inf)."""
    return {
        "version": "1",
        "group": notification.group,
        "status": notification.status,
        "at_s": notification.at_s,
        "alerts": [
            {"rule": a.rule, "deployment": a.deployment, "severity": a.severity,
             "status": a.status, "signal": a.signal, "value": _number(a.value),
             "threshold": _number(a.threshold), "since_s": a.since_s, "summary": a.summary}
            for a in notification.alerts
        ],
    }


def safe_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: what may be logged of a URL that may hold a token."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "(unparsable URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme or '?'}://{host}{port}"


class WebhookNotifier:
    """POST each notification as JSON to ``url``.

    ``client``: an ``httpx.AsyncClient`` to share (the caller closes it); without one the
    notifier owns a client and ``aclose`` closes it.
    """

    def __init__(self, url: str, *, timeout: httpx.Timeout | None = None,
                 client: httpx.AsyncClient | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.url = url
        #: What errors and logs show of ``url`` (never its path or query).
        self.where = safe_url(url)
        self.timeout = timeout if timeout is not None else httpx.Timeout(5.0)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=self.timeout)
        self.headers = dict(headers or {})

    async def send(self, notification: Notification) -> None:
        try:
            response = await self._client.post(self.url, json=notification_payload(notification),
                                               headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            # httpx's messages may quote the URL; only its scheme and host may be shown.
            parts = urlsplit(self.url)
            detail = str(exc).replace(self.url, self.where)
            secrets = [x for x in (parts.path.strip("/"), parts.query, parts.password) if x]
            if any(secret in detail for secret in secrets):
                detail = ""
            raise NotificationFailed(
                f"webhook {self.where}: {type(exc).__name__}" + (f": {detail}" if detail else ""),
                field="url",
            ) from None
        if not 200 <= response.status_code < 300:
            raise NotificationFailed(f"webhook {self.where} answered {response.status_code}",
                                     field="url")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> WebhookNotifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class LogNotifier:
    """Log each notification: WARNING while something fires, INFO for resolutions."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.log = log if log is not None else logger

    async def send(self, notification: Notification) -> None:
        level = logging.WARNING if notification.status == "firing" else logging.INFO
        summary = ", ".join(f"{a.rule}={a.status}({a.signal}={a.value:g})"
                            for a in notification.alerts)
        self.log.log(level, "alerts for %s: %s", notification.group, summary,
                     extra={"deployment": notification.group})
