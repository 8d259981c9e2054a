"""The live ``GpuPool`` on a real event loop and a declared inventory: leases, waiting with a
deadline, a bounded waiting list, and release of what a cancelled waiter was granted."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from aiscale.contracts.clock import ManualClock
from aiscale.errors import InvalidInput, Overloaded, ReplicaUnavailable
from aiscale.gpus import (
    GpuCapacityUnavailable,
    GpuDemand,
    GpuDevice,
    GpuPool,
    GpuQuotaExceeded,
    Quota,
)

L4_MB = 24_576
TWO_L4 = [GpuDevice("0", "L4", L4_MB), GpuDevice("1", "L4", L4_MB)]
QUOTAS = {"vision": Quota(max_gpus=1), "nlp": Quota(max_gpus=2)}


def pool(**kwargs: object) -> GpuPool:
    return GpuPool(TWO_L4, QUOTAS, **kwargs)  # type: ignore[arg-type]


def test_lease_env_names_only_its_devices() -> None:
    """A lease's environment shows the replica its own devices, in NVML's (PCI bus) order."""

    async def scenario() -> None:
        gpus = pool()
        whole = (await gpus.acquire("a/1", GpuDemand(1, team="vision")))[0]
        share = (await gpus.acquire("b/1", GpuDemand(0.25, team="nlp")))[0]
        assert whole.env == {
            "CUDA_VISIBLE_DEVICES": "0",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "AISCALE_GPU_MEMORY_MB": str(L4_MB),
        }
        assert share.env["CUDA_VISIBLE_DEVICES"] == "1"
        assert share.env["AISCALE_GPU_MEMORY_MB"] == str(L4_MB // 4)
        hidden = gpus.for_cpu_lane()
        assert hidden is not None
        assert (await hidden.acquire()).env == {"CUDA_VISIBLE_DEVICES": ""}
        assert GpuPool([]).for_cpu_lane() is None  # no devices: nothing to hide

    asyncio.run(scenario())


def test_refusals_name_team_quota_and_request() -> None:
    """Without ``wait_s`` a request over quota or beyond free capacity is refused at once,
    an unknown team is bad input; each refusal is counted by reason."""

    async def scenario() -> None:
        registry = CollectorRegistry()
        gpus = pool(metrics_registry=registry)
        await gpus.acquire("a/1", GpuDemand(1, team="vision"))
        with pytest.raises(GpuQuotaExceeded, match="team 'vision' is over its GPU quota of 1"):
            await gpus.acquire("a/1", GpuDemand(1, team="vision"))
        with pytest.raises(GpuCapacityUnavailable, match="1 of 2 devices free"):
            await gpus.acquire("b/1", GpuDemand(1, team="nlp"), num_replicas=2)
        with pytest.raises(InvalidInput, match="team 'x' is not declared") as raised:
            await gpus.acquire("c/1", GpuDemand(1, team="x"))
        assert raised.value.field == "team"
        text = generate_latest(registry).decode()
        assert 'aiscale_gpus_refusals_total{reason="quota",team="vision"} 1.0' in text
        assert 'aiscale_gpus_refusals_total{reason="capacity",team="nlp"} 1.0' in text

    asyncio.run(scenario())


def test_waiting_request_is_granted_on_release_or_gives_up_at_its_deadline() -> None:
    """A request with ``wait_s`` waits in the list and is granted when a lease is released;
    one whose deadline passes first is refused saying how long it waited."""

    async def scenario() -> None:
        gpus = pool()
        held = await gpus.acquire("a/1", GpuDemand(1, team="nlp"), num_replicas=2)
        waiting = asyncio.create_task(gpus.acquire("b/1", GpuDemand(0.5, team="nlp", wait_s=30)))
        while not gpus.snapshot()["waiting"]:
            await asyncio.sleep(0)
        assert gpus.snapshot()["waiting"][0]["holder"] == "b/1"
        held[1].release()
        granted = await asyncio.wait_for(waiting, 5)
        assert granted[0].grant.device_ids == ("1",)
        assert gpus.snapshot()["waiting"] == []
        with pytest.raises(GpuCapacityUnavailable, match=r"gave up after waiting 0\.\d+s"):
            await gpus.acquire("c/1", GpuDemand(1, team="vision", wait_s=0.05))
        assert gpus.snapshot()["waiting"] == []

    asyncio.run(scenario())


def test_a_wait_ends_at_its_deadline_on_the_pool_clock() -> None:
    """The deadline of a waiting request is read on the pool's clock: with a ``ManualClock``
    it is still waiting just before ``wait_s`` and refused once the clock passes it, saying
    how long it waited on that clock."""

    async def scenario() -> None:
        clock = ManualClock()
        gpus = pool(clock=clock)
        await gpus.acquire("a/1", GpuDemand(1, team="nlp"), num_replicas=2)
        waiting = asyncio.create_task(gpus.acquire("b/1", GpuDemand(1, team="vision", wait_s=30)))
        await clock.advance(29.5)
        assert not waiting.done()
        assert gpus.snapshot()["waiting"][0]["waited_s"] == 29.5
        await clock.advance(0.5)
        with pytest.raises(GpuCapacityUnavailable, match=r"gave up after waiting 30\.0s"):
            await waiting
        assert gpus.snapshot()["waiting"] == []

    asyncio.run(scenario())


def test_waiting_list_is_bounded_and_fails_on_close() -> None:
    """Past ``max_waiting`` a request is refused with ``Overloaded`` (503 + Retry-After);
    closing the pool fails every waiter rather than leaving it to its deadline."""

    async def scenario() -> None:
        gpus = pool(max_waiting=1)
        await gpus.acquire("a/1", GpuDemand(1, team="nlp"), num_replicas=2)
        first = asyncio.create_task(gpus.acquire("b/1", GpuDemand(1, team="nlp", wait_s=30)))
        while not gpus.snapshot()["waiting"]:
            await asyncio.sleep(0)
        with pytest.raises(Overloaded) as raised:
            await gpus.acquire("c/1", GpuDemand(1, team="nlp", wait_s=30))
        assert raised.value.retry_after_s == 30
        gpus.close()
        with pytest.raises(ReplicaUnavailable, match="shutting down"):
            await asyncio.wait_for(first, 5)

    asyncio.run(scenario())


def test_cancelled_waiter_gives_back_a_grant_and_lets_the_next_through() -> None:
    """A waiter cancelled (its caller gone) leaves the list; the capacity it would have had
    goes to the next request, and team gauges fall back to what is really held."""

    async def scenario() -> None:
        registry = CollectorRegistry()
        gpus = pool(metrics_registry=registry)
        held = await gpus.acquire("a/1", GpuDemand(1, team="nlp"), num_replicas=2)
        gone = asyncio.create_task(gpus.acquire("b/1", GpuDemand(1, team="nlp", wait_s=30)))
        nxt = asyncio.create_task(gpus.acquire("c/1", GpuDemand(1, team="nlp", wait_s=30)))
        while len(gpus.snapshot()["waiting"]) < 2:
            await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        held[0].release()
        granted = await asyncio.wait_for(nxt, 5)
        assert granted[0].grant.holder == "c/1"
        for lease in [held[1], *granted]:
            lease.release()
            lease.release()  # idempotent
        text = generate_latest(registry).decode()
        assert 'aiscale_gpus_team_gpus{team="nlp"} 0.0' in text
        assert gpus.snapshot()["teams"][0]["used"] == {"gpus": 0.0, "memory_mb": 0}

    asyncio.run(scenario())


def test_version_refused_a_gpu_leaves_no_replica_or_device_behind() -> None:
    """A new version (a canary) whose second replica is over the team's quota fails whole:
    the replica that did get a device is stopped and gives it back."""
    from aiscale.serving import Deployment, DeploymentSpec
    from aiscale.serving.metrics import GatewayMetrics

    def spec(version: str, replicas: int) -> DeploymentSpec:
        return DeploymentSpec(
            name="detector", model="detector", version=version, runtime="python",
            uri="tests.models:VisibleDevices", replicas=replicas, num_threads=1,
            gpu=GpuDemand(1, team="vision"),
        )

    async def scenario() -> None:
        gpus = GpuPool(TWO_L4, {"vision": Quota(max_gpus=1)})
        deployment = Deployment(spec("1", 0), GatewayMetrics(CollectorRegistry()), gpus)
        # Version 1 is never started: version 2 alone asks for two GPUs against a quota of one.
        with pytest.raises(GpuQuotaExceeded, match="detector/2"):
            await deployment.add_lane(spec("2", 2))
        assert "2" not in deployment.lanes
        deadline = asyncio.get_running_loop().time() + 60
        while any(d["holders"] for d in gpus.snapshot()["devices"]):
            assert asyncio.get_running_loop().time() < deadline, gpus.snapshot()
            await asyncio.sleep(0.05)
        assert gpus.snapshot()["teams"][0]["used"] == {"gpus": 0.0, "memory_mb": 0}

    asyncio.run(scenario())
