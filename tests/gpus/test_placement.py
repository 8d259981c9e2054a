"""The pure placement policy: tables of cases, and invariants on random sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiscale.gpus.placement import (
    Device,
    GpuDemand,
    GpuRequest,
    Placed,
    PoolState,
    Quota,
    Refused,
    admit,
    place,
    release,
    team_use,
)

L4_MB = 24_576
FOUR_L4 = tuple(Device(str(i), "L4", L4_MB) for i in range(4))
QUOTAS = {"vision": Quota(max_gpus=2), "nlp": Quota(max_memory_mb=36_864), "free": Quota()}


def request(
    team: str | None, num_gpus: float, memory_mb: int | None = None, replicas: int = 1, **kw: int
) -> GpuRequest:
    return GpuRequest(
        kw.get("request_id", 1), f"{team}-dep/1", GpuDemand(num_gpus, memory_mb, team,
        priority=kw.get("priority", 0)), replicas,
    )


def state(*grants_for: GpuRequest, devices: tuple[Device, ...] = FOUR_L4) -> PoolState:
    current = PoolState(devices, QUOTAS)
    for r in grants_for:
        result = place(current, r)
        assert isinstance(result, Placed), result
        current = result.state
    return current


@pytest.mark.parametrize(
    ("held", "asked", "devices", "memory"),
    [
        # whole GPUs take idle devices, lowest id first among equal sizes
        ((), request("vision", 1), ("0",), (L4_MB,)),
        ((), request("vision", 2), ("0", "1"), (L4_MB, L4_MB)),
        ((request("free", 1),), request("free", 2), ("1", "2"), (L4_MB, L4_MB)),
        # a share is sized by memory, or by its fraction of the device
        ((), request("nlp", 0.5), ("0",), (L4_MB // 2,)),
        ((), request("nlp", 0.25, 8000), ("0",), (8000,)),
        # shares pack onto the fullest device that still fits (best fit)
        ((request("free", 1), request("nlp", 0.5)), request("nlp", 0.25), ("1",), (L4_MB // 4,)),
        # a share never lands on a device held whole
        ((request("free", 1),), request("nlp", 0.5), ("1",), (L4_MB // 2,)),
    ],
)
def test_placement_table(
    held: tuple[GpuRequest, ...],
    asked: GpuRequest,
    devices: tuple[str, ...],
    memory: tuple[int, ...],
) -> None:
    """Each request lands on the devices the rules say, with the memory they say."""
    result = place(state(*held), asked)
    assert isinstance(result, Placed), result
    (grant,) = result.grants
    assert grant.device_ids == devices
    assert grant.memory_mb == memory


@pytest.mark.parametrize(
    ("held", "asked", "reason", "is_permanent", "words"),
    [
        # vision may hold 2 GPUs: a third is over quota, waiting for its own release helps
        ((request("vision", 2),), request("vision", 1), "quota", False, ["'vision'", "2 GPUs"]),
        # asking more than the quota at once can never succeed
        ((), request("vision", 3), "quota", True, ["never"]),
        # nlp may hold 36864 MB: two 0.5 shares (12288 each) fit, a whole GPU on top does not
        ((request("nlp", 0.5, replicas=2),), request("nlp", 1), "quota", False, ["36864 MB"]),
        # no idle device left
        ((request("free", 4),), request("free", 1), "capacity", False, ["0 of 4 devices free"]),
        # more devices than exist, or a share bigger than any device
        ((), request("free", 5), "capacity", True, ["never"]),
        ((), request("free", 0.5, 30_000), "capacity", True, ["never"]),
        # whole devices with more memory than any has
        ((), request("free", 1, 40_000), "capacity", True, ["never"]),
        # an unknown team, or none where teams are declared
        ((), request("ghost", 1), "team", True, ["'ghost'", "not declared"]),
        ((), request(None, 1), "team", True, ["must name a team"]),
    ],
)
def test_refusal_table(
    held: tuple[GpuRequest, ...],
    asked: GpuRequest,
    reason: str,
    is_permanent: bool,
    words: list[str],
) -> None:
    """A refusal says why, whether waiting could help, and names what it is about."""
    result = place(state(*held), asked)
    assert isinstance(result, Refused)
    assert (result.reason, result.is_permanent) == (reason, is_permanent)
    for word in words:
        assert word in result.message


def test_refusal_message_names_team_quota_request_and_free_capacity() -> None:
    """The quota message has the team, its quota, what it holds and asks; capacity lists what
    is free."""
    held = state(request("vision", 2), request("free", 1))
    refused = place(held, request("vision", 1))
    assert isinstance(refused, Refused)
    assert "team 'vision'" in refused.message
    assert "quota of 2 GPUs" in refused.message
    assert "holds 2 GPUs" in refused.message
    assert "1 whole GPU(s)" in refused.message
    full = state(request("free", 3), request("vision", 1))
    refused = place(full, request("nlp", 0.75))
    assert isinstance(refused, Refused)
    assert refused.reason == "capacity"
    assert "0 of 4 devices free" in refused.message


def test_several_replicas_are_placed_all_or_none() -> None:
    """Three replicas of one GPU each with two idle devices: none is placed."""
    held = state(request("free", 2))
    result = place(held, request("free", 1, replicas=3))
    assert isinstance(result, Refused)
    assert result.reason == "capacity"
    assert len(held.grants) == 1


def test_release_frees_and_is_idempotent() -> None:
    held = state(request("vision", 2))
    grant_ids = [g.grant_id for g in held.grants]
    freed = release(release(held, grant_ids), grant_ids)
    assert freed.grants == ()
    assert team_use(freed, "vision") == (0, 0)


def test_admit_is_fifo_per_priority() -> None:
    """With room for one, the higher priority wins; among equals, the oldest."""
    held = state(request("free", 3))
    waiting = [
        request("free", 1, request_id=5),
        request("free", 1, request_id=6, priority=1),
        request("free", 1, request_id=7, priority=1),
    ]
    admitted, after = admit(held, waiting)
    assert [r.request_id for r, _ in admitted] == [6]
    emptied = release(after, [g.grant_id for g in after.grants])
    admitted, _ = admit(emptied, waiting[:1] + waiting[2:])
    assert [r.request_id for r, _ in admitted] == [7, 5]


def test_admit_blocked_by_capacity_holds_later_requests_back() -> None:
    """A big request first in line is not starved by a small one behind it."""
    held = state(request("free", 3))
    waiting = [request("free", 2, request_id=1), request("nlp", 0.5, request_id=2)]
    admitted, _ = admit(held, waiting)
    assert admitted == []


def test_admit_blocked_by_quota_holds_back_only_its_team() -> None:
    held = state(request("vision", 2))
    waiting = [request("vision", 1, request_id=1), request("nlp", 0.5, request_id=2)]
    admitted, _ = admit(held, waiting)
    assert [r.request_id for r, _ in admitted] == [2]


# ----- invariants on random sequences of requests and releases -----------------------------

demands = st.builds(
    GpuDemand,
    num_gpus=st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0]),
    memory_mb=st.one_of(st.none(), st.integers(1, 30_000)),
    team=st.sampled_from(["vision", "nlp", "free"]),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("place"), demands, st.integers(1, 3)),
        st.tuples(st.just("release"), st.integers(0, 50), st.just(0)),
    ),
    max_size=40,
)
MIXED = (Device("a", "L4", L4_MB), Device("b", "L4", L4_MB), Device("c", "A100", 81_920))


def check_invariants(current: PoolState) -> None:
    by_device = {d.device_id: d for d in current.devices}
    used = dict.fromkeys(by_device, 0)
    holders: dict[str, list[bool]] = {d: [] for d in by_device}
    for grant in current.grants:
        for device_id, memory_mb in zip(grant.device_ids, grant.memory_mb, strict=True):
            used[device_id] += memory_mb
            holders[device_id].append(grant.is_exclusive)
    for device_id, device in by_device.items():
        assert used[device_id] <= device.memory_mb, "a device's memory is over-assigned"
        if any(holders[device_id]):
            assert len(holders[device_id]) == 1, "a device held whole is shared"
    for team, quota in current.quotas.items():
        gpus, memory_mb = team_use(current, team)
        assert quota.max_gpus is None or gpus <= quota.max_gpus + 1e-9
        assert quota.max_memory_mb is None or memory_mb <= quota.max_memory_mb


@settings(max_examples=300, deadline=None)
@given(steps)
def test_invariants_hold_on_any_sequence(sequence: list[tuple[str, object, int]]) -> None:
    """Never over-assign a device's memory, never share a whole device, never pass a quota;
    a refusal leaves the state unchanged and a placement grants one grant per replica."""
    current = PoolState(MIXED, QUOTAS)
    request_ids = iter(range(1, 1000))
    for kind, payload, replicas in sequence:
        if kind == "release":
            assert isinstance(payload, int)
            if current.grants:
                victim = current.grants[payload % len(current.grants)]
                current = release(current, [victim.grant_id])
        else:
            assert isinstance(payload, GpuDemand)
            asked = GpuRequest(next(request_ids), "d/1", payload, replicas)
            result = place(current, asked)
            if isinstance(result, Placed):
                assert len(result.grants) == replicas
                current = result.state
            else:
                assert result.message
        check_invariants(current)
