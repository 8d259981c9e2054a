"""The time a control loop lives in: real (``SystemClock``) or driven by a test (``ManualClock``).

Every loop that owns time — the autoscaler, the rollout controller and its follower, the
monitor, the quality window, the GPU waiting list — takes a ``Clock`` in its constructor and
never calls ``time`` or ``asyncio.sleep`` itself (STYLE rules 9-10, SimPy's injected
environment). A test then drives the same loop object with a ``ManualClock`` and no sleeps;
the simulator can drive it in simulated time.

``monotonic()`` is for intervals and deadlines; ``time()`` is the wall clock, only for
timestamps that are recorded (metrics history, logs). This module must never import anything
outside the standard library.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time as _time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "wait_or_timeout"]


class Clock(Protocol):
    """Monotonic and wall time, and a sleep that only this clock's time can end."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    def time(self) -> float:
        """Unix seconds, for recorded timestamps only (never for intervals)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock (at once when <= 0)."""
        ...


class SystemClock:
    """The real clocks of the machine and the running event loop's sleep."""

    def monotonic(self) -> float:
        return _time.monotonic()

    def time(self) -> float:
        return _time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when ``advance`` is awaited: tests drive loops without sleeping.

    Sleepers wake in deadline order (ties in the order they slept, SimPy's rule 11); each wakes
    with the clock reading its own deadline, and gets the event loop to itself until it sleeps
    again or finishes, so a loop that sleeps in a ``while True`` runs exactly once per interval
    that ``advance`` crosses.
    """

    def __init__(self, start_s: float = 1000.0, wall_start_s: float = 1_700_000_000.0) -> None:
        self._now_s = start_s
        self._wall_offset_s = wall_start_s - start_s
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now_s

    def time(self) -> float:
        return self._now_s + self._wall_offset_s

    @property
    def num_sleepers(self) -> int:
        """Sleeps not yet ended (a cancelled sleep no longer counts)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now_s + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper whose deadline it crosses."""
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        target = self._now_s + seconds
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now_s = max(self._now_s, deadline)
            if not future.done():
                future.set_result(None)
                await _settle()
        self._now_s = target
        await _settle()


async def _settle(rounds: int = 20) -> None:
    """Let woken tasks run until they block again (a bounded number of loop turns)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def wait_or_timeout(clock: Clock, event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passes on ``clock``; True if the event won.

    The clock-aware ``asyncio.wait_for(event.wait(), timeout)``: with a ``ManualClock`` the
    timeout ends only when the test advances time past it.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(timeout_s))
    try:
        await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, sleeper):
            if not task.done():
                task.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
    return event.is_set()
