"""The live GPU pool of one server: grants devices to replicas, queues, releases, measures.

The gateway owns one ``GpuPool``. A lane's replica pool asks it for one replica's devices
through ``LaneGpus.acquire`` (the ``ReplicaResources`` hook of ``replicas/backend.py``)
and gets a ``GpuLease``: the environment for the replica process (``CUDA_VISIBLE_DEVICES``),
``serving()`` to call once the replica is ready, and ``release()`` when it exits. Decisions
are the pure functions of ``placement.py``; this class owns the clock, the waiting list
(bounded, ordered by priority then arrival) and the futures of waiting callers. It must
never block: a request that cannot be placed waits on a future with a deadline, or is
refused at once with an error that names the team, its quota, the request and what is free.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from aiscale.contracts.clock import Clock, SystemClock
from aiscale.errors import AiscaleError, InvalidInput, Overloaded, ReplicaUnavailable
from aiscale.gpus.config import GpuPoolConfig
from aiscale.gpus.errors import GpuCapacityUnavailable, GpuQuotaExceeded
from aiscale.gpus.inventory import GpuDevice, build_inventory
from aiscale.gpus.metrics import GpuMetrics
from aiscale.gpus.placement import (
    Device,
    GpuDemand,
    GpuRequest,
    Grant,
    PoolState,
    Quota,
    Refused,
    admit,
    place,
    release,
    team_use,
)

logger = logging.getLogger(__name__)

#: Recent request-to-serving times kept for ``aiscale gpus``.
_SERVING_SAMPLES = 256


class GpuLease:
    """One replica's devices, from grant to release. ``release`` may be called many times."""

    def __init__(self, pool: GpuPool, grant: Grant, requested_at_s: float) -> None:
        self.grant = grant
        self._pool = pool
        self.requested_at_s = requested_at_s
        self.serving_after_s: float | None = None

    @property
    def env(self) -> Mapping[str, str]:
        """Environment of the replica process: it sees only its own devices."""
        return {
            "CUDA_VISIBLE_DEVICES": ",".join(self.grant.device_ids),
            # NVML numbers devices by PCI bus; CUDA does so too only when told.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "AISCALE_GPU_MEMORY_MB": str(self.grant.total_memory_mb),
        }

    def serving(self) -> None:
        """The replica answered ready: record the time from request to serving (once)."""
        if self.serving_after_s is None:
            self.serving_after_s = self._pool.clock.monotonic() - self.requested_at_s
            self._pool._observe_serving(self)

    def release(self) -> None:
        self._pool._release(self)


@dataclass(slots=True)
class _Waiter:
    request: GpuRequest
    future: asyncio.Future[list[GpuLease]]
    requested_at_s: float


class LaneGpus:
    """The GPU hook of one lane's replica pool: a lease per replica, reserved or fresh."""

    def __init__(self, pool: GpuPool, holder: str, demand: GpuDemand) -> None:
        self._pool = pool
        self.holder = holder
        self.demand = demand

    async def acquire(self) -> GpuLease:
        """A reserved lease if the gateway made one for this lane, else one from the pool."""
        lease = self._pool.take_reserved(self.holder)
        if lease is not None:
            return lease
        return (await self._pool.acquire(self.holder, self.demand))[0]


class Reservation:
    """Leases taken ahead of a deploy or scale-up; ``cancel`` releases those not used."""

    def __init__(self, pool: GpuPool, holder: str, leases: list[GpuLease]) -> None:
        self._pool = pool
        self.holder = holder
        self.leases = leases

    def cancel(self) -> None:
        self._pool._cancel_reserved(self.holder, self.leases)


class _NoGpuLease:
    """A CPU replica's lease: it sees no device, so it cannot use one the pool hands out."""

    @property
    def env(self) -> Mapping[str, str]:
        return {"CUDA_VISIBLE_DEVICES": ""}

    def serving(self) -> None:
        pass

    def release(self) -> None:
        pass


class NoGpus:
    """The hook of a lane that asks for no GPUs on a server that has some: hides them all."""

    async def acquire(self) -> _NoGpuLease:
        return _NoGpuLease()


def _team_label(team: str | None) -> str:
    return team if team is not None else "-"


class GpuPool:
    """Devices, teams and waiting requests of one server; see the module docstring."""

    def __init__(
        self,
        devices: Sequence[GpuDevice],
        quotas: Mapping[str, Quota] | None = None,
        *,
        max_waiting: int = 1024,
        metrics_registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.devices = list(devices)
        #: Waits, their deadlines and the times reported are read on this clock.
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._state = PoolState(
            tuple(Device(d.device_id, d.kind, d.memory_mb) for d in devices), dict(quotas or {})
        )
        self._max_waiting = max_waiting
        self._request_ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._leases: dict[int, GpuLease] = {}
        self._reserved: dict[str, list[GpuLease]] = {}
        self._serving_s: deque[float] = deque(maxlen=_SERVING_SAMPLES)
        #: Teams with exported gauges, so that one holding nothing any more reads 0.
        self._exported_teams: set[str | None] = set()
        self._metrics = GpuMetrics(metrics_registry or CollectorRegistry())
        self._metrics.waiting.set_function(lambda: len(self._waiting))
        self._export()

    @classmethod
    def from_config(
        cls,
        config: GpuPoolConfig,
        *,
        metrics_registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
    ) -> GpuPool:
        """The pool of ``config``: devices found by NVML or declared, and the teams' quotas."""
        quotas = {t.name: Quota(t.max_gpus, t.max_gpu_memory_mb) for t in config.teams}
        return cls(
            build_inventory(config),
            quotas,
            max_waiting=config.max_waiting,
            metrics_registry=metrics_registry,
            clock=clock,
        )

    # ----- asking and giving back ------------------------------------------------------
    def for_lane(self, deployment: str, version: str, demand: GpuDemand) -> LaneGpus:
        return LaneGpus(self, f"{deployment}/{version}", demand)

    def for_cpu_lane(self) -> NoGpus | None:
        """The hook of a lane without GPUs: with devices in the pool its replicas see none
        (``CUDA_VISIBLE_DEVICES=""``), so no uncounted use takes memory a team was granted."""
        return NoGpus() if self.devices else None

    async def acquire(
        self, holder: str, demand: GpuDemand, num_replicas: int = 1
    ) -> list[GpuLease]:
        """One lease per replica, all or none; waits up to ``demand.wait_s`` for capacity.

        Raises ``GpuQuotaExceeded`` or ``GpuCapacityUnavailable`` (naming team, quota,
        request and free capacity) when refused or when the wait ends first,
        ``InvalidInput`` for an unknown or missing team, ``Overloaded`` when the waiting
        list is full, ``ReplicaUnavailable`` when the pool closes while waiting.
        """
        request = GpuRequest(next(self._request_ids), holder, demand, num_replicas)
        waiter = _Waiter(
            request, asyncio.get_running_loop().create_future(), self.clock.monotonic()
        )
        self._waiting[request.request_id] = waiter
        self._admit()
        if waiter.future.done():
            return waiter.future.result()
        refusal = place(self._state, request)
        if demand.wait_s <= 0 or (isinstance(refusal, Refused) and refusal.is_permanent):
            del self._waiting[request.request_id]
            raise self._refusal(request, refusal, waited_s=None)
        if len(self._waiting) > self._max_waiting:
            del self._waiting[request.request_id]
            self._metrics.refusals.labels(_team_label(demand.team), "waiting_full").inc()
            raise Overloaded(
                f"{self._max_waiting} GPU requests are waiting already; try again later",
                retry_after_s=min(demand.wait_s, 30.0),
                field="gpus",
            )
        logger.info("GPU request %d of %s waits for capacity", request.request_id, holder)
        # The deadline is on the pool's clock (a test drives it), not the event loop's.
        deadline = asyncio.ensure_future(self.clock.sleep(demand.wait_s))
        either: set[asyncio.Future[Any]] = {waiter.future, deadline}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            deadline.cancel()
            # The caller is gone: give back what may have been granted meanwhile.
            self._waiting.pop(request.request_id, None)
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                for lease in future.result():
                    lease.release()
            future.cancel()
            self._admit()
            raise
        deadline.cancel()
        await asyncio.gather(deadline, return_exceptions=True)
        self._waiting.pop(request.request_id, None)
        if waiter.future.done():
            return waiter.future.result()
        waiter.future.cancel()
        self._admit()  # a waiter gone from the head of the line may let others through
        waited_s = self.clock.monotonic() - waiter.requested_at_s
        raise self._refusal(request, place(self._state, request), waited_s=waited_s)

    async def reserve(
        self, deployment: str, version: str, demand: GpuDemand, num_replicas: int
    ) -> Reservation:
        """Take leases for replicas about to start, before the caller takes its admin lock.

        ``LaneGpus.acquire`` of that lane hands them out first; ``Reservation.cancel``
        afterwards releases any the start did not use.
        """
        holder = f"{deployment}/{version}"
        leases = await self.acquire(holder, demand, num_replicas) if num_replicas > 0 else []
        self._reserved.setdefault(holder, []).extend(leases)
        return Reservation(self, holder, leases)

    def take_reserved(self, holder: str) -> GpuLease | None:
        reserved = self._reserved.get(holder)
        if not reserved:
            return None
        lease = reserved.pop(0)
        if not reserved:
            del self._reserved[holder]
        return lease

    def close(self) -> None:
        """Fail every waiting request; the server is shutting down."""
        for waiter in list(self._waiting.values()):
            if not waiter.future.done():
                waiter.future.set_exception(ReplicaUnavailable("the server is shutting down"))
        self._waiting.clear()

    # ----- internals ---------------------------------------------------------------------
    def _admit(self) -> None:
        if not self._waiting:
            return
        admitted, self._state = admit(self._state, [w.request for w in self._waiting.values()])
        now = self.clock.monotonic()
        for request, placed in admitted:
            waiter = self._waiting.pop(request.request_id)
            leases = [GpuLease(self, grant, waiter.requested_at_s) for grant in placed.grants]
            for lease in leases:
                self._leases[lease.grant.grant_id] = lease
            team = _team_label(request.demand.team)
            self._metrics.wait_seconds.labels(team).observe(now - waiter.requested_at_s)
            waiter.future.set_result(leases)
        if admitted:
            self._export()

    def _release(self, lease: GpuLease) -> None:
        if self._leases.pop(lease.grant.grant_id, None) is None:
            return
        self._state = release(self._state, [lease.grant.grant_id])
        self._export()
        self._admit()

    def _cancel_reserved(self, holder: str, leases: list[GpuLease]) -> None:
        reserved = self._reserved.get(holder, [])
        for lease in leases:
            if lease in reserved:
                reserved.remove(lease)
                lease.release()
        if not reserved:
            self._reserved.pop(holder, None)

    def _observe_serving(self, lease: GpuLease) -> None:
        assert lease.serving_after_s is not None
        self._serving_s.append(lease.serving_after_s)
        self._metrics.request_to_serving_seconds.labels(_team_label(lease.grant.team)).observe(
            lease.serving_after_s
        )

    def _refusal(
        self, request: GpuRequest, refusal: Refused | Any, waited_s: float | None
    ) -> AiscaleError:
        team = request.demand.team
        if not isinstance(refusal, Refused):
            # It fits the devices, but older requests wait ahead of it.
            ahead = len(self._waiting)
            message = (
                f"no GPU capacity for {request.holder}: {ahead} earlier request(s) wait ahead"
            )
            reason = "capacity"
        else:
            message, reason = refusal.message, refusal.reason
        if waited_s is not None:
            message = f"gave up after waiting {waited_s:.1f}s: {message}"
        self._metrics.refusals.labels(
            _team_label(team), "timeout" if waited_s is not None else reason
        ).inc()
        if reason == "team":
            return InvalidInput(message, field="team")
        if reason == "quota":
            return GpuQuotaExceeded(message, field="team")
        return GpuCapacityUnavailable(message, field="gpus")

    def _export(self) -> None:
        self._exported_teams |= {*self._state.quotas, *(g.team for g in self._state.grants)}
        for team in self._exported_teams:
            gpus, memory_mb = team_use(self._state, team)
            self._metrics.team_gpus.labels(_team_label(team)).set(gpus)
            self._metrics.team_memory_bytes.labels(_team_label(team)).set(memory_mb * 1024 * 1024)

    # ----- what ``GET /admin/gpus`` and ``aiscale gpus`` show -----------------------------
    def snapshot(self) -> dict[str, Any]:
        state = self._state
        now = self.clock.monotonic()
        holders: dict[str, list[dict[str, Any]]] = {d.device_id: [] for d in state.devices}
        for grant in state.grants:
            lease = self._leases.get(grant.grant_id)
            for device_id, memory_mb in zip(grant.device_ids, grant.memory_mb, strict=True):
                holders[device_id].append(
                    {
                        "holder": grant.holder,
                        "team": grant.team,
                        "grant_id": grant.grant_id,
                        "num_gpus": grant.num_gpus,
                        "memory_mb": memory_mb,
                        "is_exclusive": grant.is_exclusive,
                        "is_serving": lease is not None and lease.serving_after_s is not None,
                    }
                )
        devices = []
        for device, source in zip(state.devices, self.devices, strict=True):
            used_mb = sum(h["memory_mb"] for h in holders[device.device_id])
            devices.append(
                {
                    "id": device.device_id,
                    "kind": device.kind,
                    "source": source.source,
                    "memory_mb": device.memory_mb,
                    "used_mb": used_mb,
                    "free_mb": device.memory_mb - used_mb,
                    "holders": holders[device.device_id],
                }
            )
        teams = []
        for team in sorted({*state.quotas, *(g.team or "-" for g in state.grants)}):
            quota = state.quotas.get(team, Quota())
            gpus, memory_mb = team_use(state, None if team == "-" else team)
            teams.append(
                {
                    "team": team,
                    "quota": {"max_gpus": quota.max_gpus, "max_gpu_memory_mb": quota.max_memory_mb},
                    "used": {"gpus": gpus, "memory_mb": memory_mb},
                }
            )
        waiting = [
            {
                "request_id": w.request.request_id,
                "holder": w.request.holder,
                "team": w.request.demand.team,
                "num_gpus": w.request.demand.num_gpus,
                "memory_mb": w.request.demand.memory_mb,
                "num_replicas": w.request.num_replicas,
                "priority": w.request.demand.priority,
                "waited_s": now - w.requested_at_s,
                "wait_s": w.request.demand.wait_s,
            }
            for w in sorted(
                self._waiting.values(),
                key=lambda w: (-w.request.demand.priority, w.request.request_id),
            )
        ]
        samples = list(self._serving_s)
        return {
            "devices": devices,
            "teams": teams,
            "waiting": waiting,
            "request_to_serving_s": {
                "count": len(samples),
                "last": samples[-1] if samples else None,
                "p50": statistics.median(samples) if samples else None,
                "max": max(samples) if samples else None,
            },
        }
