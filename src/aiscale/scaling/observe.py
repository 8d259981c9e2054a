"""The one way a scaling observation is made, live and simulated: ``observe``.

A ``LoadSample`` is what a scaler reads of one version at one moment: replica counts, items
being served and waiting now, and cumulative counts (arrived, completed, replica-busy
seconds). The live autoscaler takes it from a ``FleetSnapshot`` (``LoadSample.of``); both
simulator modes (``plan._exact``, ``plan._aggregated``) fill it from their own bookkeeping.
``observe`` then turns two samples (the last decision's and this one) and the arrival
history into the ``ScalingObservation`` a policy decides on, so that rates, the mean service
time and the history mean the same thing in the simulator and in production.

Pure: no clock (times travel in the samples), no I/O. Imports only contracts and policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiscale.contracts.fleet import FleetSnapshot
from aiscale.scaling.policies.base import ScalingObservation

__all__ = ["LoadSample", "observe"]


@dataclass(frozen=True, slots=True)
class LoadSample:
    """One version's load at ``at_s`` (seconds on the caller's clock, real or simulated).

    The ``num_*`` counts of replicas and items are as of now; ``num_arrived``,
    ``num_completed`` and ``busy_s`` are cumulative since ``lane_id`` started (a new lane
    restarts them, so samples of different lanes are never diffed).
    """

    at_s: float
    num_ready: int
    num_starting: int
    num_in_flight: int
    num_queued: int
    #: Items submitted so far, and items answered (in finished batches) so far.
    num_arrived: float
    num_completed: float
    #: Replica-busy seconds spent on the completed items: a batch's time counts once.
    busy_s: float
    lane_id: int = 0

    @classmethod
    def of(cls, snapshot: FleetSnapshot, at_s: float) -> LoadSample:
        """The sample of a live version, read at ``at_s`` on the loop's clock."""
        return cls(
            at_s=at_s,
            num_ready=snapshot.num_ready,
            num_starting=snapshot.num_starting,
            num_in_flight=snapshot.num_inflight_items,
            num_queued=snapshot.num_queued_items,
            num_arrived=snapshot.num_arrived,
            num_completed=snapshot.num_batch_items,
            busy_s=snapshot.model_s,
            lane_id=snapshot.lane_id,
        )


def observe(
    sample: LoadSample,
    previous: LoadSample | None,
    arrival_history: Sequence[tuple[float, float]] = (),
) -> ScalingObservation:
    """The observation at ``sample.at_s``: rates per second since ``previous`` (zero without
    one, or when it is of another lane), the mean replica-busy seconds per completed item
    over that interval (``None`` when none completed), and ``arrival_history`` as given
    (complete ``(bin_start_s, count)`` bins ending at or before ``sample.at_s``)."""
    arrival_rate = completed_rate = 0.0
    mean_service_s: float | None = None
    if previous is not None and previous.lane_id == sample.lane_id:
        elapsed_s = sample.at_s - previous.at_s
        completed = sample.num_completed - previous.num_completed
        if elapsed_s > 0:
            arrival_rate = max(0.0, sample.num_arrived - previous.num_arrived) / elapsed_s
            completed_rate = max(0.0, completed) / elapsed_s
        if completed > 0:
            mean_service_s = (sample.busy_s - previous.busy_s) / completed
    return ScalingObservation(
        now_s=sample.at_s,
        num_replicas=sample.num_ready + sample.num_starting,
        num_ready=sample.num_ready,
        num_starting=sample.num_starting,
        num_in_flight=sample.num_in_flight,
        num_queued=sample.num_queued,
        arrival_rate_per_s=arrival_rate,
        completed_rate_per_s=completed_rate,
        mean_service_time_s=mean_service_s,
        arrival_history=arrival_history,
    )
