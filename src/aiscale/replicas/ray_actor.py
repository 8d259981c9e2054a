"""The replica as a Ray actor: loads one model version and answers batches in a Ray worker.

The Ray counterpart of ``process.py``: ``RayActorBackend`` creates one actor per replica with
the deployment's resource requests and calls ``predict`` with each batch. Model code runs only
here, so a model that crashes takes down this worker, never the gateway. Every exception from
the model comes back in the ``BatchReply`` with its type name; this module never decides
status codes and never imports the web framework. It does not import Ray either: the backend
wraps the class with ``ray.remote`` when it creates an actor.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiscale.replicas.ipc import BatchReply, BatchRequest, LoadFailedMessage
from aiscale.replicas.process import _run_batch


@dataclass(frozen=True, slots=True)
class RayReplicaInfo:
    """Sent once by ``load``: where the replica runs and what the model declares."""

    pid: int
    node_id: str
    schema: dict[str, Any]
    load_s: float


class RayReplicaActor:
    """One replica. Ray runs it with ``max_concurrency=2``: ``watch`` holds one thread for the
    actor's whole life, so ``predict`` calls run one at a time on the other, as batches do in a
    local replica process."""

    def __init__(self) -> None:
        self._predict: Any = None
        self._stopped = threading.Event()

    def load(
        self, runtime: str, uri: str, config: dict[str, Any], env: dict[str, str]
    ) -> RayReplicaInfo | LoadFailedMessage:
        """Load the model; the environment is set first, before torch/OpenMP are imported.

        The values replace Ray's own (Ray sets ``OMP_NUM_THREADS`` to the actor's CPUs),
        as a local replica's do: this worker process is the replica's alone.
        """
        started = time.monotonic()
        os.environ.update(env)
        try:
            from aiscale.runtimes import load_model

            model = load_model(runtime, uri, config)
            model.load()
        except Exception as exc:  # the load boundary: report whatever failed to the pool
            return LoadFailedMessage(type(exc).__name__, str(exc))
        self._predict = model.predict
        import ray

        return RayReplicaInfo(
            os.getpid(),
            ray.get_runtime_context().get_node_id(),
            model.schema.to_json(),
            time.monotonic() - started,
        )

    def predict(self, batch_id: int, items: list[Any]) -> BatchReply:
        """One batch's outputs, or the error that failed all of it (never raises)."""
        if self._predict is None:
            return BatchReply(batch_id, error_type="ModelNotLoaded", error_message="not loaded")
        return _run_batch(self._predict, BatchRequest(batch_id, items))

    def watch(self) -> None:
        """Return only when stopped: the backend awaits this call to learn of the actor's death
        (its reference fails with ``ActorDiedError``) even while no batch is on it."""
        self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()
