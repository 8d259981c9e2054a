"""The GPU pool: an inventory of accelerators, teams with quotas, and placement of replicas.

``inventory`` finds devices (NVML, or declared in config); ``placement`` is the pure policy;
``pool`` is the live owner the gateway holds. Imports nothing from ``serving``: the replica
pool reaches it through its own small ``ReplicaResources`` protocol.
"""

from __future__ import annotations

from aiscale.gpus.config import GpuDeviceGroup, GpuPoolConfig, TeamQuota
from aiscale.gpus.errors import GpuCapacityUnavailable, GpuQuotaExceeded
from aiscale.gpus.inventory import GpuDevice, build_inventory, discover_nvml
from aiscale.gpus.placement import GpuDemand, Quota
from aiscale.gpus.pool import GpuLease, GpuPool, LaneGpus, NoGpus, Reservation

__all__ = [
    "GpuCapacityUnavailable",
    "GpuDemand",
    "GpuDevice",
    "GpuDeviceGroup",
    "GpuLease",
    "GpuPool",
    "GpuPoolConfig",
    "GpuQuotaExceeded",
    "LaneGpus",
    "NoGpus",
    "Quota",
    "Reservation",
    "TeamQuota",
    "build_inventory",
    "discover_nvml",
]
