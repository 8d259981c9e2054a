"""ReplicaPool over both backends: the logic written once (least-loaded drain, loss with its
cause, replacement, the batcher's retry) behaves the same on local processes and Ray actors.

The Ray cases run on a one-node Ray instance inside this test process, started once for the
module and shut down after it, and are marked slow (starting Ray costs ~15 s on two cores).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from aiscale.errors import ModelLoadError, ReplicaUnavailable
from aiscale.replicas.backend import ReplicaBackend, ReplicaSpec
from aiscale.replicas.local import LocalProcessBackend
from aiscale.replicas.pool import ReplicaPool
from aiscale.replicas.ray_pool import RayActorBackend, RayPlacement, connect, disconnect
from aiscale.replicas.target import reply_outputs
from aiscale.serving.batcher import Batcher, BatchingSettings

T = TypeVar("T")

BACKENDS = ["local", pytest.param("ray", marks=pytest.mark.slow)]
#: What a replica lost with a batch names in the error each of its callers gets.
LOSS_CAUSES = {
    "local": r"replica {id} \(pid {pid}\) exited with code -9",
    "ray": r"replica {id} \(Ray actor pid {pid} on node \w+\) was lost: \w+",
}


#: The address of the module's Ray head while it runs (the pools' placement names it).
RAY_ADDRESS: list[str] = []


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """A one-node Ray instance this process drives; left before the next module runs."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # A head node of its own rather than ``connect(None)``: a Ray started inside this process
    # (``ray.init()`` with no address) leaves state behind that makes actors of a later
    # cluster joined by the same process die at start (tests/scaleout/test_ray_runtime.py).
    started = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    try:
        connect(started.address)
        RAY_ADDRESS[:] = [started.address]
        yield
    finally:
        RAY_ADDRESS.clear()
        disconnect()
        started.shutdown()


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind = str(request.param)
    if kind == "ray":
        request.getfixturevalue("ray_instance")
    return kind


def make_pool(kind: str, model: str, **config: Any) -> ReplicaPool[Any]:
    """A pool of ``tests.models:<model>`` replicas on the ``kind`` backend."""
    spec = ReplicaSpec("python", f"tests.models:{model}", config, startup_timeout_s=60.0)
    backend: ReplicaBackend[Any]
    if kind == "local":
        backend = LocalProcessBackend(spec)
    else:
        # Half a CPU each: two replicas and a replacement fit on a two-core machine.
        backend = RayActorBackend(spec, RayPlacement(address=RAY_ADDRESS[0], num_cpus=0.5))
    return ReplicaPool(spec, backend)


async def until(check: Callable[[], T], timeout_s: float, what: str) -> T:
    """Poll ``check`` on the event loop until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def test_scale_down_drains_the_least_loaded_replica(backend_kind: str) -> None:
    """Scaling 2 → 1 stops the replica with fewer items in flight, not the busy one; scaling
    1 → 0 waits for the batch the last replica holds, which is answered, never failed."""

    async def run() -> None:
        pool = make_pool(backend_kind, "Slow", delay_ms=300)
        await pool.start(2)
        try:
            assert pool.num_ready == 2 and pool.schema is not None
            busy = await pool.acquire()
            assert busy.pid > 0 and (busy.node == "local") == (backend_kind == "local")
            first = pool.send(busy, ["a", "b"])
            assert pool.num_inflight_items == 2 and pool.has_free_slot()  # the idle one

            await pool.scale(1, drain_timeout_s=10.0)
            assert [r.replica_id for r in pool.replicas()] == [busy.replica_id]
            assert pool.num_ready == 1 and pool.num_wanted == 1
            assert reply_outputs(await first) == ["a", "b"]

            second = pool.send(busy, ["c"])
            await pool.scale(0, drain_timeout_s=10.0)
            assert second.done() and reply_outputs(second.result()) == ["c"]
            assert pool.replicas() == [] and busy.is_dead and pool.num_replaced == 0
        finally:
            await pool.stop(drain_timeout_s=5.0)

    asyncio.run(run())


@pytest.mark.parametrize("max_retries", [0, 1])
def test_lost_replica_fails_or_retries_its_batch_and_is_replaced(
    backend_kind: str, max_retries: int
) -> None:
    """kill -9 of the replica holding a batch: without a retry the caller gets
    ``ReplicaUnavailable`` naming the replica and the cause; with one the batcher sends the
    batch again and the caller gets its answer. Either way the pool replaces the replica."""

    async def run() -> None:
        pool = make_pool(backend_kind, "Slow", delay_ms=1000)
        await pool.start(2)
        settings = BatchingSettings(
            max_batch_size=4, max_batch_delay_s=0.001, max_retries=max_retries
        )
        batcher = Batcher(pool, settings)
        batcher.start()
        try:
            answer = asyncio.create_task(batcher.submit("x", timeout_s=30.0))
            victim = await until(
                lambda: next((r for r in pool.replicas() if r.num_inflight_items), None),
                10.0,
                "a batch in flight",
            )
            os.kill(victim.pid, signal.SIGKILL)
            if max_retries:
                assert await answer == "x"
            else:
                cause = LOSS_CAUSES[backend_kind].format(id=victim.replica_id, pid=victim.pid)
                with pytest.raises(ReplicaUnavailable, match=cause):
                    await answer
            await until(
                lambda: pool.num_ready == 2 and pool.num_replaced == 1, 60.0, "a replacement"
            )
            assert victim.is_dead and victim not in pool.replicas()
            assert await batcher.submit("y", timeout_s=30.0) == "y"
        finally:
            await batcher.stop()
            await pool.stop(drain_timeout_s=5.0)

    asyncio.run(run())


def test_model_that_does_not_load_fails_start_and_leaves_nothing(backend_kind: str) -> None:
    """A replica whose model cannot load fails ``start`` with ``ModelLoadError`` carrying the
    model's error; the pool is left with no replica, ready or starting."""

    async def run() -> None:
        pool = make_pool(backend_kind, "NoSuchModel")
        try:
            with pytest.raises(ModelLoadError, match="NoSuchModel"):
                await pool.start(1)
            assert pool.replicas() == [] and pool.num_starting == 0 and pool.num_ready == 0
        finally:
            await pool.stop(drain_timeout_s=1.0)

    asyncio.run(run())
