"""Placement of replicas on GPUs: a pure policy over an immutable pool state.

``place(state, request)`` answers with the devices for every replica of a request and the
new state, or with a refusal that says why (over the team's quota, or no capacity free)
and whether waiting could ever help. ``admit(state, waiting)`` decides which waiting
requests a release lets through. No I/O, no clock, no randomness: ``pool.py`` owns time,
queues and futures and calls these functions.

Invariants every returned state keeps (``tests/gpus`` checks them on random sequences):

- a device's shares never add up to more than its memory;
- a device held whole has exactly one holder and no shares beside it;
- a team never holds more GPUs or GPU memory than its quota.

Rules: a replica asks for whole GPUs (``num_gpus`` 1, 2, ...), each held alone, or for a
share of one GPU (``0 < num_gpus < 1``) sized by ``memory_mb`` or else by the fraction of
the device's memory; shares pack onto the fullest device that still fits them (best fit),
whole GPUs take the smallest free devices that are big enough. A request for several
replicas is placed whole or not at all, so two waiting deployments never each hold half.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    kind: str
    memory_mb: int


@dataclass(frozen=True, slots=True)
class Quota:
    """The most a team may hold at once; ``None`` is no limit on that measure."""

    max_gpus: float | None = None
    max_memory_mb: int | None = None


@dataclass(frozen=True, slots=True)
class GpuDemand:
    """What each replica of a deployment asks for (``DeploymentSpec.gpu``)."""

    num_gpus: float
    memory_mb: int | None = None
    team: str | None = None
    #: How long a replica may wait for capacity before it is refused; 0 refuses at once.
    wait_s: float = 0.0
    #: Higher goes first among waiting requests; equal priorities are first come, first served.
    priority: int = 0

    @property
    def is_whole(self) -> bool:
        return self.num_gpus >= 1

    def describe(self) -> str:
        if self.is_whole:
            size = "" if self.memory_mb is None else f" of at least {self.memory_mb} MB"
            return f"{self.num_gpus:g} whole GPU(s){size}"
        size = f"{self.memory_mb} MB" if self.memory_mb is not None else "its share of memory"
        return f"a {self.num_gpus:g} GPU share ({size})"


@dataclass(frozen=True, slots=True)
class GpuRequest:
    """``num_replicas`` replicas of ``holder`` (``deployment/version``), each ``demand``."""

    request_id: int
    holder: str
    demand: GpuDemand
    num_replicas: int = 1


@dataclass(frozen=True, slots=True)
class Grant:
    """The devices of one replica. ``memory_mb`` per device; whole devices count all of it."""

    grant_id: int
    holder: str
    team: str | None
    num_gpus: float
    is_exclusive: bool
    device_ids: tuple[str, ...]
    memory_mb: tuple[int, ...]

    @property
    def total_memory_mb(self) -> int:
        return sum(self.memory_mb)


@dataclass(frozen=True, slots=True)
class PoolState:
    devices: tuple[Device, ...]
    quotas: Mapping[str, Quota] = field(default_factory=dict)
    grants: tuple[Grant, ...] = ()
    next_grant_id: int = 1


@dataclass(frozen=True, slots=True)
class Placed:
    grants: tuple[Grant, ...]
    state: PoolState


#: ``team``: unknown, or missing where teams are declared (always permanent).
RefusalReason = Literal["quota", "capacity", "team"]


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a request cannot be placed now; ``is_permanent`` when waiting can never help."""

    reason: RefusalReason
    is_permanent: bool
    message: str


# ----- reading a state ------------------------------------------------------------------------


@dataclass(slots=True)
class _DeviceUse:
    used_mb: int = 0
    num_holders: int = 0
    is_exclusive: bool = False


def _device_use(state: PoolState) -> dict[str, _DeviceUse]:
    use = {device.device_id: _DeviceUse() for device in state.devices}
    for grant in state.grants:
        for device_id, memory_mb in zip(grant.device_ids, grant.memory_mb, strict=True):
            entry = use[device_id]
            entry.used_mb += memory_mb
            entry.num_holders += 1
            entry.is_exclusive = entry.is_exclusive or grant.is_exclusive
    return use


def team_use(state: PoolState, team: str | None) -> tuple[float, int]:
    """GPUs (fractions as fractions) and GPU memory in MB that ``team`` holds."""
    grants = [g for g in state.grants if g.team == team]
    return sum(g.num_gpus for g in grants), sum(g.total_memory_mb for g in grants)


def free_summary(state: PoolState) -> str:
    """Free capacity in words: idle devices, and the largest share still free on a shared one."""
    use = _device_use(state)
    idle = [d for d in state.devices if use[d.device_id].num_holders == 0]
    shared_free = [
        d.memory_mb - use[d.device_id].used_mb
        for d in state.devices
        if use[d.device_id].num_holders > 0 and not use[d.device_id].is_exclusive
    ]
    text = f"{len(idle)} of {len(state.devices)} devices free"
    if idle:
        text += " (" + ", ".join(f"{d.device_id}: {d.kind} {d.memory_mb} MB" for d in idle) + ")"
    if shared_free and max(shared_free) > 0:
        text += f", largest free share {max(shared_free)} MB"
    return text


def _quota_text(quota: Quota) -> str:
    parts = []
    if quota.max_gpus is not None:
        parts.append(f"{quota.max_gpus:g} GPUs")
    if quota.max_memory_mb is not None:
        parts.append(f"{quota.max_memory_mb} MB")
    return " and ".join(parts) or "no limit"


# ----- placing ----------------------------------------------------------------------------------


def _share_mb(demand: GpuDemand, device: Device) -> int:
    if demand.memory_mb is not None:
        return demand.memory_mb
    return max(1, math.ceil(demand.num_gpus * device.memory_mb))


def _within(quota: Quota | None, gpus: float, memory_mb: int) -> bool:
    if quota is None:
        return True
    # A tolerance so that 0.1 + 0.2 shares are not refused against a quota of 0.3.
    if quota.max_gpus is not None and gpus > quota.max_gpus + 1e-9:
        return False
    return quota.max_memory_mb is None or memory_mb <= quota.max_memory_mb


def _place_one(
    state: PoolState,
    use: dict[str, _DeviceUse],
    demand: GpuDemand,
    team_gpus: float,
    team_memory_mb: int,
    grant_id: int,
    holder: str,
) -> Grant | RefusalReason:
    """One replica's grant (``use`` updated), or the reason it does not fit."""
    quota = state.quotas.get(demand.team) if demand.team is not None else None
    if not _within(quota, team_gpus + demand.num_gpus, 0):
        return "quota"
    if demand.is_whole:
        needed = int(demand.num_gpus)
        idle = [
            d
            for d in state.devices
            if use[d.device_id].num_holders == 0
            and (demand.memory_mb is None or d.memory_mb >= demand.memory_mb)
        ]
        if len(idle) < needed:
            return "capacity"
        # Smallest first: big devices stay free for requests that need them.
        chosen = sorted(idle, key=lambda d: d.memory_mb)[:needed]
        memory = tuple(d.memory_mb for d in chosen)
        if not _within(quota, team_gpus + demand.num_gpus, team_memory_mb + sum(memory)):
            return "quota"
        for device in chosen:
            use[device.device_id] = _DeviceUse(device.memory_mb, 1, True)
        return Grant(
            grant_id, holder, demand.team, demand.num_gpus, True,
            tuple(d.device_id for d in chosen), memory,
        )
    fitting = [
        (d.memory_mb - use[d.device_id].used_mb - _share_mb(demand, d), index, d)
        for index, d in enumerate(state.devices)
        if not use[d.device_id].is_exclusive
        and d.memory_mb - use[d.device_id].used_mb >= _share_mb(demand, d)
    ]
    if not fitting:
        return "capacity"
    allowed = [
        entry
        for entry in fitting
        if _within(quota, team_gpus + demand.num_gpus, team_memory_mb + _share_mb(demand, entry[2]))
    ]
    if not allowed:
        return "quota"
    _, _, device = min(allowed, key=lambda entry: (entry[0], entry[1]))
    share = _share_mb(demand, device)
    entry = use[device.device_id]
    use[device.device_id] = _DeviceUse(entry.used_mb + share, entry.num_holders + 1, False)
    return Grant(
        grant_id, holder, demand.team, demand.num_gpus, False, (device.device_id,), (share,)
    )


def _try_place(state: PoolState, request: GpuRequest) -> Placed | RefusalReason:
    use = _device_use(state)
    team_gpus, team_memory_mb = team_use(state, request.demand.team)
    grants: list[Grant] = []
    next_id = state.next_grant_id
    for _ in range(request.num_replicas):
        result = _place_one(
            state, use, request.demand, team_gpus, team_memory_mb, next_id, request.holder
        )
        if isinstance(result, str):
            return result
        grants.append(result)
        next_id += 1
        team_gpus += result.num_gpus
        team_memory_mb += result.total_memory_mb
    return Placed(
        tuple(grants),
        replace(state, grants=(*state.grants, *grants), next_grant_id=next_id),
    )


def place(state: PoolState, request: GpuRequest) -> Placed | Refused:
    """Devices for every replica of ``request``, or a refusal naming team, quota and free room."""
    demand = request.demand
    teams = sorted(state.quotas)
    if demand.team is not None and demand.team not in state.quotas:
        return Refused(
            "team", True, f"team {demand.team!r} is not declared (teams: {teams or 'none'})"
        )
    if demand.team is None and state.quotas:
        return Refused(
            "team", True, f"{request.holder} asks for GPUs and must name a team (teams: {teams})"
        )
    result = _try_place(state, request)
    if isinstance(result, Placed):
        return result
    # Would it fit an empty pool? If not, waiting for releases can never help.
    is_permanent = isinstance(_try_place(replace(state, grants=()), request), str)
    asked = f"{request.num_replicas} replica(s) of {request.holder}, each {demand.describe()}"
    if result == "quota":
        quota = state.quotas.get(demand.team or "", Quota())
        held_gpus, held_mb = team_use(state, demand.team)
        message = (
            f"team {demand.team!r} is over its GPU quota of {_quota_text(quota)}: "
            f"it holds {held_gpus:g} GPUs and {held_mb} MB, and {asked} would exceed it"
        )
    else:
        message = f"no GPU capacity for {asked}: {free_summary(state)}"
    if is_permanent:
        message += " (and never could, even with every device free)"
    return Refused(result, is_permanent, message)


def release(state: PoolState, grant_ids: Iterable[int]) -> PoolState:
    """The state without the given grants; unknown ids are ignored (a release is idempotent)."""
    gone = set(grant_ids)
    return replace(state, grants=tuple(g for g in state.grants if g.grant_id not in gone))


def admit(
    state: PoolState, waiting: Sequence[GpuRequest]
) -> tuple[list[tuple[GpuRequest, Placed]], PoolState]:
    """Which waiting requests to place now, in order: higher priority first, then oldest.

    A request held back by capacity stops every later one from taking capacity (strict
    order, so a large request is not starved by a stream of small ones). A request held
    back by its own team's quota blocks only later requests of that team.
    """
    admitted: list[tuple[GpuRequest, Placed]] = []
    blocked_teams: set[str | None] = set()
    for request in sorted(waiting, key=lambda r: (-r.demand.priority, r.request_id)):
        if request.demand.team in blocked_teams:
            continue
        result = place(state, request)
        if isinstance(result, Placed):
            admitted.append((request, result))
            state = result.state
        elif result.reason == "capacity":
            break
        else:
            blocked_teams.add(request.demand.team)
    return admitted, state
