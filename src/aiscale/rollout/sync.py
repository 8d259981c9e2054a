"""Several gateways, one traffic split: follow the registry, and drive a rollout from one place.

Every gateway runs this loop, every ``split_poll_s`` seconds, in a task the gateway owns:

* a deployment whose rollout this gateway drives (it holds the rollout's lease, see
  ``registry/leases.py``): apply the operator actions other gateways recorded for it
  (``requested`` decisions) through the local controller;
* an active rollout nobody drives (the gateway that did went away, or none was up): take
  its lease and resume it here, from the step the registry holds;
* anything else: read the deployment's latest traffic record and serve that split, warming
  a version's replicas first if this gateway has none, and finishing (new primary version,
  loser drained) when a rollout has ended.

So a split changed through any gateway reaches every other within ``split_poll_s`` plus one
registry read once the versions are warm (a version new to a gateway is loaded first; until
then that gateway keeps serving the previous split). Operator actions sent to a gateway that
does not drive the rollout are recorded and wait until the driver has applied them.

It never touches the hot path or holds the gateway: it reads and changes the serving side
through the ``Fleet`` (``snapshot``, ``set_split``, ``warm``, ``scale`` to 0 to drain) and
drives rollouts through the ``RolloutManager``; its time is an injected ``Clock``. Every
registry call runs in a worker thread.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import anyio

from aiscale.contracts.clock import Clock, SystemClock
from aiscale.contracts.fleet import Fleet
from aiscale.contracts.split import TrafficSplit
from aiscale.errors import AiscaleError, Conflict, DeadlineExceeded, NotFound
from aiscale.rollout.live import RolloutManager, RolloutRecords, finish_rollout, split_json

logger = logging.getLogger(__name__)

#: The operator actions and the decision verdict the driving controller writes for each.
ACTIONS = {"pause": "pause", "resume": "resume", "promote": "promote_manual", "abort": "abort"}
#: What the rollout's status must be once an action was applied.
_DONE_STATUS = {
    "pause": {"paused"},
    "resume": {"running"},
    "promote": {"promoted"},
    "abort": {"aborted", "rolled_back"},
}


@runtime_checkable
class SharedRollouts(Protocol):
    """The registry's view of splits and rollouts that every gateway reads (synchronous)."""

    def latest_traffic(self, deployment: str) -> Any:
        """The last traffic record of ``deployment`` (``traffic_id``, ``split``) or None."""
        ...

    def latest_rollout(self, deployment: str) -> Any:
        """The newest rollout record of ``deployment``, active or ended, or None."""
        ...

    def decisions(self, rollout_id: Any) -> list[Any]:
        """A rollout's decisions, oldest first (``decision_id``, ``verdict``, ``numbers``)."""
        ...


def split_from_json(deployment: str, data: dict[str, Any]) -> TrafficSplit:
    """A recorded split as the deployment routes it (salted by the deployment's name, as
    every split the gateway makes is, so users land on the same version on every gateway)."""
    return TrafficSplit.of(
        {str(v): float(w) for v, w in dict(data.get("weights") or {}).items()},
        shadow_version=data.get("shadow_version"),
        shadow_fraction=float(data.get("shadow_fraction") or 0.0),
        salt=deployment,
    )


class RolloutSync:
    """The follow loop of one gateway; ``run`` is its task, ``command`` serves admin calls.

    ``records`` is the registry (``None``, or one without the shared tables: nothing to
    follow, ``run`` returns at once and commands go to the local manager)."""

    def __init__(
        self,
        fleet: Fleet,
        manager: RolloutManager,
        records: object | None,
        *,
        poll_s: float,
        command_timeout_s: float = 15.0,
        clock: Clock | None = None,
    ) -> None:
        self.fleet = fleet
        self.manager = manager
        is_shared = isinstance(records, SharedRollouts) and isinstance(records, RolloutRecords)
        self._records: Any = records if is_shared else None
        self.poll_s = poll_s
        self.command_timeout_s = command_timeout_s
        self.clock: Clock = clock if clock is not None else SystemClock()
        #: The last traffic record applied (or found at start-up) per deployment.
        self._seen: dict[str, int] = {}
        #: A followed split whose rollout had not ended when it was applied, per deployment.
        self._unfinished: dict[str, TrafficSplit] = {}

    async def run(self) -> None:
        """Look every ``poll_s`` seconds (at a fixed rate: a slow look does not add up)."""
        if self._records is None:
            return
        clock = self.clock
        next_s = clock.monotonic()
        while True:
            try:
                await self.tick()
            except Exception:  # a task boundary: keep the current splits, try again next time
                logger.exception("following the registry's traffic splits failed")
            next_s = max(next_s + self.poll_s, clock.monotonic() + self.poll_s / 10)
            await clock.sleep(next_s - clock.monotonic())

    def _read(self, names: list[str]) -> tuple[bool, dict[str, Any], dict[str, Any]]:
        """Everything one look needs, in one worker-thread call: whether this gateway still
        holds its leases, the active rollouts, and each deployment's latest traffic record."""
        records = self._records
        leases = self.manager.leases
        is_lease_ok = leases is None or leases.check_leases()
        active = {r.deployment: r for r in records.active_rollouts()}
        latest = {name: records.latest_traffic(name) for name in names}
        return is_lease_ok, active, latest

    async def tick(self) -> None:
        """One look at the registry: drive, take over or follow each deployment."""
        manager = self.manager
        if manager.is_stopping:
            return  # stopping: take nothing over, warm nothing
        records = self._records
        deployments: dict[str, set[str]] = {}
        for snapshot in self.fleet.snapshot():
            deployments.setdefault(snapshot.deployment, set()).add(snapshot.version)
        is_lease_ok, active, latest = await anyio.to_thread.run_sync(self._read, list(deployments))
        if not is_lease_ok:
            for name in list(manager.controllers):
                if manager.is_driving(name):
                    logger.warning("lost the lease of %s's rollout; following it instead", name)
                    await manager.step_down(name)
        for name, versions in deployments.items():
            if manager.is_driving(name):
                await self._apply_requests(name, records)
                continue
            record = active.get(name)
            local = manager.controllers.get(name)
            if record is not None and (local is None or local.rollout_id != record.rollout_id):
                # Nobody drives it (or only this gateway can): take its lease and resume it.
                await manager.resume(record)
                if manager.is_driving(name):
                    continue
            await self._follow(name, versions, record is not None, latest.get(name))

    async def _follow(
        self, name: str, versions: set[str], is_rolling_out: bool, latest: Any
    ) -> None:
        current = self.manager.controllers.get(name)
        if current is not None and not current.done.is_set():
            return  # this gateway's own controller is still finishing
        if latest is None:
            return
        seen = self._seen.get(name)
        if latest.traffic_id == seen:
            await self._finish_when_ended(name, is_rolling_out)
            return
        if seen is None and not is_rolling_out:
            # History from before this gateway started: its deployment config is the truth.
            self._seen[name] = latest.traffic_id
            return
        split = split_from_json(name, latest.split)
        wanted = [*split.versions, *([split.shadow_version] if split.shadow_version else [])]
        for version in wanted:
            if version not in versions:
                logger.info("warming version %s of %s to follow the registry", version, name)
                await self.fleet.warm(name, version)
        await self.fleet.set_split(name, split, cause="following the registry")
        self._seen[name] = latest.traffic_id
        self._unfinished[name] = split
        await self._finish_when_ended(name, is_rolling_out)

    async def _finish_when_ended(self, name: str, is_rolling_out: bool) -> None:
        """Finish once the followed split has one version and no rollout is active.

        The driver records the final split a moment before it marks its rollout ended, so a
        look can see the one without the other: the finish then waits for a later look
        instead of being skipped with the record (which left the loser's replicas running).
        """
        split = self._unfinished.get(name)
        if split is None or is_rolling_out:
            return
        del self._unfinished[name]
        if len(split.weights) == 1 and split.shadow_version is None:
            # A rollout ended elsewhere: the winner becomes primary, the other versions drain.
            await finish_rollout(self.fleet, name, split.weights[0][0], None)

    async def _apply_requests(self, name: str, records: Any) -> None:
        """Apply actions asked through other gateways that the driver has not answered yet."""
        controller = self.manager.controllers[name]
        decisions = await anyio.to_thread.run_sync(records.decisions, controller.rollout_id)
        for index, decision in enumerate(decisions):
            if decision.verdict != "requested":
                continue
            action = str(decision.numbers.get("action", ""))
            answer = ACTIONS.get(action)
            later = decisions[index + 1 :]
            if answer is None or any(d.verdict == answer for d in later):
                continue
            if not controller.status.is_active:
                return
            logger.info("applying %s of %s's rollout, asked through another gateway", action, name)
            try:
                await getattr(controller, action)()
            except AiscaleError as exc:
                logger.warning("could not %s the rollout of %s: %s", action, name, exc)
            return  # one action per look: the next look sees its decision

    # ----- admin calls ---------------------------------------------------------------------
    async def command(self, name: str, action: str) -> None:
        """Pause, resume, promote or abort a rollout through this gateway, whichever drives it.

        Raises ``NotFound`` (no rollout / no such action), ``Conflict`` (the rollout ended)
        and ``DeadlineExceeded`` (the driving gateway did not apply it in time).
        """
        if action not in ACTIONS:
            raise NotFound(f"no rollout action {action!r}; use {sorted(ACTIONS)}", field="action")
        manager = self.manager
        records = self._records
        if not manager.is_driving(name) and records is not None:
            record = await self._active(name)
            if record is not None:
                await manager.resume(record)  # nobody drives it: this gateway will
                if not manager.is_driving(name):
                    await self._ask(record, action)
                    return
        await getattr(manager.controller(name), action)()

    async def _active(self, name: str) -> Any:
        records = self._records
        record = await anyio.to_thread.run_sync(records.latest_rollout, name)
        return record if record is not None and record.status in ("running", "paused") else None

    async def _ask(self, record: Any, action: str) -> None:
        """Record the action for the driving gateway and wait until it has been applied."""
        records = self._records
        asked = await anyio.to_thread.run_sync(
            lambda: records.record_decision(
                record.rollout_id,
                record.step_index,
                "requested",
                f"{action} asked through another gateway",
                {"action": action},
            )
        )
        clock = self.clock
        deadline = clock.monotonic() + self.command_timeout_s
        while clock.monotonic() < deadline:
            await clock.sleep(min(0.1, self.poll_s))
            latest = await anyio.to_thread.run_sync(records.latest_rollout, record.deployment)
            if latest is None or latest.rollout_id != record.rollout_id:
                break
            if latest.status in _DONE_STATUS[action]:
                decisions = await anyio.to_thread.run_sync(records.decisions, record.rollout_id)
                if any(
                    d.decision_id > asked.decision_id and d.verdict == ACTIONS[action]
                    for d in decisions
                ) or latest.status not in ("running", "paused"):
                    return
            elif latest.status not in ("running", "paused"):
                raise Conflict(
                    f"the rollout of {record.deployment!r} has ended ({latest.status})",
                    field="rollout",
                )
        raise DeadlineExceeded(
            f"the gateway driving {record.deployment!r}'s rollout did not apply {action!r} "
            f"within {self.command_timeout_s:g}s",
            field="rollout",
        )

    async def record_split(self, name: str, split: TrafficSplit, cause: str) -> None:
        """Record a split set through this gateway, so that the others follow it."""
        records = self._records
        if records is None:
            return
        await anyio.to_thread.run_sync(records.record_traffic, name, split_json(split), cause)
        latest = await anyio.to_thread.run_sync(records.latest_traffic, name)
        if latest is not None:
            self._seen[name] = latest.traffic_id
            self._unfinished.pop(name, None)  # a split set here supersedes one followed before

    async def status(self, name: str) -> dict[str, Any] | None:
        """The registry's view of ``name``'s newest rollout for a gateway not driving it."""
        records = self._records
        if records is None:
            return None
        record = await anyio.to_thread.run_sync(records.latest_rollout, name)
        if record is None:
            return None
        decisions = await anyio.to_thread.run_sync(records.decisions, record.rollout_id)
        analysis = [
            d for d in decisions if d.verdict in ("promote", "wait", "rollback", "not_enough_data")
        ]
        last = analysis[-1] if analysis else None
        return {
            "deployment": name,
            "rollout_id": record.rollout_id,
            "baseline": record.baseline_version,
            "canary": record.canary_version,
            "steps": list(record.steps),
            "step_index": record.step_index,
            "canary_percent": record.steps[record.step_index],
            "status": record.status,
            "reason": record.reason,
            "driven_here": False,
            "last_decision": None
            if last is None
            else {"verdict": last.verdict, "reason": last.reason, **dict(last.numbers)},
        }
