"""Configuration of the GPU pool: the declared inventory, the teams and their quotas.

Part of the one frozen config tree (``aiscale.config`` holds it as ``server.gpus``); it has
its own frozen base because ``aiscale.config`` imports this module, never the other way.
An unknown key, a negative quota, a duplicate team or device id rejects the whole file,
naming the dotted path of the field (``server.gpus.teams``, ``deployments.0.gpus``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aiscale.errors import ConfigError

TEAM_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuDeviceGroup(_Frozen):
    """Devices of one kind: ``count`` of them numbered in order, or explicit ``ids``."""

    kind: Annotated[str, Field(min_length=1, max_length=64)]
    memory_mb: Annotated[int, Field(ge=1, le=16 * 1024 * 1024)]
    count: Annotated[int, Field(ge=1, le=4096)] | None = None
    #: Explicit device ids as ``CUDA_VISIBLE_DEVICES`` takes them (indexes or ``GPU-<uuid>``).
    ids: tuple[Annotated[str, Field(pattern=DEVICE_ID_PATTERN)], ...] | None = None

    @model_validator(mode="after")
    def _count_or_ids(self) -> GpuDeviceGroup:
        if (self.count is None) == (self.ids is None):
            raise ValueError("give exactly one of count and ids")
        if self.ids is not None and not self.ids:
            raise ValueError("ids must not be empty")
        return self


class TeamQuota(_Frozen):
    """A team and the most it may hold at once; ``None`` means no limit on that measure."""

    name: Annotated[str, Field(pattern=TEAM_PATTERN)]
    #: GPUs held at once, fractions counted as fractions (two 0.5 shares are 1.0).
    max_gpus: Annotated[float, Field(ge=0, le=1_000_000)] | None = None
    #: GPU memory held at once; a whole device counts all its memory.
    max_gpu_memory_mb: Annotated[int, Field(ge=0)] | None = None


class GpuPoolConfig(_Frozen):
    """The accelerators this server may hand to replicas, and who may have how many.

    ``discovery``: ``auto`` asks NVML and falls back to the declared ``devices`` when NVML
    finds none; ``nvml`` uses only what NVML finds; ``declared`` only the ``devices`` here.
    """

    discovery: Literal["auto", "nvml", "declared"] = "auto"
    devices: tuple[GpuDeviceGroup, ...] = ()
    teams: tuple[TeamQuota, ...] = ()
    #: Requests that may wait for capacity at once; past this they are refused (503).
    max_waiting: Annotated[int, Field(ge=1, le=100_000)] = 1024

    @field_validator("devices")
    @classmethod
    def _unique_device_ids(cls, groups: tuple[GpuDeviceGroup, ...]) -> tuple[GpuDeviceGroup, ...]:
        ids = [device_id for device_id, _, _ in _numbered(groups)]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"device ids must be unique; repeated: {repeated}")
        return groups

    @field_validator("teams")
    @classmethod
    def _unique_teams(cls, teams: tuple[TeamQuota, ...]) -> tuple[TeamQuota, ...]:
        names = [team.name for team in teams]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"team names must be unique; repeated: {repeated}")
        return teams

    def declared_devices(self) -> list[tuple[str, str, int]]:
        """``(device_id, kind, memory_mb)`` of every declared device, in order.

        Counted groups are numbered from 0 across all groups, as CUDA numbers devices.
        """
        return _numbered(self.devices)

    @property
    def team_names(self) -> frozenset[str]:
        return frozenset(team.name for team in self.teams)


def _numbered(groups: tuple[GpuDeviceGroup, ...]) -> list[tuple[str, str, int]]:
    devices: list[tuple[str, str, int]] = []
    next_index = 0
    for group in groups:
        if group.ids is not None:
            devices.extend((device_id, group.kind, group.memory_mb) for device_id in group.ids)
            continue
        for _ in range(group.count or 0):
            devices.append((str(next_index), group.kind, group.memory_mb))
            next_index += 1
    return devices


def check_gpu_share(num_gpus: float) -> None:
    """A replica asks for a fraction of one GPU, or whole GPUs; raises ``ValueError``.

    Called by ``DeploymentConfig``'s field validators so that a bad request never loads.
    """
    if num_gpus > 1 and num_gpus != int(num_gpus):
        raise ValueError(f"gpus must be below 1 (a share) or a whole number, not {num_gpus:g}")


def check_gpu_memory(gpu_memory_mb: int | None, num_gpus: float | None) -> None:
    """``gpu_memory_mb`` sizes a GPU request, so it needs ``gpus > 0`` (``None``: gpus invalid)."""
    if gpu_memory_mb is not None and num_gpus is not None and num_gpus == 0:
        raise ValueError("gpu_memory_mb needs gpus > 0")


def check_teams(pool: GpuPoolConfig, deployments: list[tuple[str, float, str | None]]) -> None:
    """Every deployment that asks for GPUs names a declared team (when teams are declared).

    ``deployments`` holds ``(name, gpus, team)`` in file order; raises ``ConfigError``
    naming ``deployments.<index>.team``.
    """
    known = pool.team_names
    for index, (name, num_gpus, team) in enumerate(deployments):
        field = f"deployments.{index}.team"
        if team is not None and team not in known:
            raise ConfigError(
                f"{field}: deployment {name!r} names team {team!r}, which is not declared in "
                f"server.gpus.teams ({sorted(known) or 'none declared'})",
                field=field,
            )
        if num_gpus > 0 and team is None and known:
            raise ConfigError(
                f"{field}: deployment {name!r} asks for GPUs and must name a team "
                f"({sorted(known)})",
                field=field,
            )
