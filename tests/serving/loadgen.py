"""A small bounded load loop for fault tests: N threads post until told to stop."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

import httpx


@dataclass
class SteadyLoad:
    """Posts ``body`` to ``url`` from ``num_threads`` threads until ``stop()`` (or 60 s)."""

    url: str
    body: dict[str, object]
    num_threads: int = 8
    max_seconds: float = 60.0
    statuses: Counter[int] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> SteadyLoad:
        for _ in range(self.num_threads):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _loop(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.wait(0):
                try:
                    response = client.post(self.url, json=self.body)
                    status = response.status_code
                    message = "" if status == 200 else response.text
                except httpx.TransportError as exc:
                    status, message = 0, repr(exc)
                with self._lock:
                    self.statuses[status] += 1
                    if message:
                        self.messages.append(message)
                if self._stop.wait(0):
                    return
