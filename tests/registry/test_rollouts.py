"""Rollout records on SQLite and PostgreSQL: migration 0002, the one-active-rollout rule,
status transitions, decisions and traffic history."""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from aiscale.errors import Conflict, InvalidInput, NotFound
from aiscale.registry import DeploymentRecord, SqlRegistry, hash_key
from aiscale.registry._database import MIGRATIONS_DIR, create_engine, head_revision
from aiscale.registry.tables import (
    aliases,
    api_keys,
    deployments,
    models,
    rollouts,
    versions,
)
from tests.registry.conftest import Database, stepping_clock

START = datetime(2026, 1, 1, tzinfo=UTC)
ROLLOUT_TABLES = {"rollouts", "rollout_decisions", "traffic_history"}


def _deploy(registry: SqlRegistry, name: str = "web") -> None:
    """Model ``m`` with versions 1, 2, 3, alias ``prod`` -> 1, and deployment ``name`` on 1."""
    if not registry.list_models():
        for _ in range(3):
            registry.register_version("m", runtime="python", uri="tests.models:Sum")
        registry.set_alias("m", "prod", "1")
    registry.put_deployment(DeploymentRecord(name=name, model="m", version="1"))


def _migrate_to(database: Database, revision: str) -> None:
    base, engine = create_engine(database.url, schema=database.schema)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with engine.begin() as conn:
            if database.schema is not None:
                conn.exec_driver_sql(f'CREATE SCHEMA "{database.schema}"')
            config.attributes["connection"] = conn
            config.attributes["schema"] = database.schema
            command.upgrade(config, revision)
    finally:
        base.dispose()


def _table_names(database: Database) -> set[str]:
    engine = sa.create_engine(database.url)
    try:
        return set(sa.inspect(engine).get_table_names(schema=database.schema))
    finally:
        engine.dispose()


# ------------------------------------------------------------------ migrations


def test_open_creates_the_rollout_tables(database: Database) -> None:
    """An empty database opened by the store gets the rollout tables, at the head revision."""
    with SqlRegistry.open(database.url, schema=database.schema) as registry:
        assert registry.rollouts.active_rollouts() == []
    assert _table_names(database) >= ROLLOUT_TABLES
    with SqlRegistry.open(database.url, schema=database.schema):
        pass  # a second open finds nothing to migrate
    assert head_revision() != "0001"


def test_upgrade_from_0001_keeps_existing_rows(database: Database) -> None:
    """A database written at revision 0001 upgrades to head with every row kept, and then
    takes rollouts for its existing deployments."""
    _migrate_to(database, "0001")
    assert ROLLOUT_TABLES.isdisjoint(_table_names(database))
    base, engine = create_engine(database.url, schema=database.schema)
    try:
        with engine.begin() as conn:
            conn.execute(models.insert().values(name="m", description="old", created_at=START))
            for number in ("1", "2"):
                conn.execute(versions.insert().values(
                    model="m", version=number, runtime="python", uri="tests.models:Sum",
                    artifact_digest=None, config={"n": number}, metadata={}, schema=None,
                    created_at=START,
                ))
            conn.execute(aliases.insert().values(model="m", alias="prod", version="1"))
            conn.execute(deployments.insert().values(
                name="web", model="m", version="prod", replicas=2, config={"k": 1},
                created_at=START, updated_at=START,
            ))
            conn.execute(api_keys.insert().values(
                key_id="k1", name="ci", key_hash=hash_key("secret"), scopes="admin",
                rate_limit_per_s=None, created_at=START, revoked_at=None,
            ))
    finally:
        base.dispose()

    with SqlRegistry.open(database.url, schema=database.schema, clock=stepping_clock()) as reg:
        assert reg.get_model("m").description == "old"
        assert [v.config for v in reg.list_versions("m")] == [{"n": "1"}, {"n": "2"}]
        assert reg.list_aliases("m") == {"prod": "1"}
        deployment = reg.get_deployment("web")
        assert (deployment.version, deployment.replicas, deployment.config) == ("prod", 2, {"k": 1})
        assert deployment.created_at == START
        assert reg.get_key_by_hash(hash_key("secret")).key_id == "k1"
        rollout = reg.rollouts.start_rollout("web", "prod", "2", [50, 100])
    assert (rollout.baseline_version, rollout.canary_version) == ("1", "2")
    assert _table_names(database) >= ROLLOUT_TABLES


# ------------------------------------------------------------ starting rollouts


def test_start_stores_a_running_rollout_at_step_zero(registry: SqlRegistry) -> None:
    """start_rollout returns the stored record: running, step 0, aliases resolved, UTC times;
    reading it back (get, active, list) gives the same record."""
    _deploy(registry)
    config = {"interval_s": 5.0, "analysis": {"alpha": 0.01}}
    started = registry.rollouts.start_rollout("web", "prod", "2", [1, 5, 25, 50, 100], config)
    assert started.status == "running" and started.is_active
    assert (started.baseline_version, started.canary_version) == ("1", "2")
    assert started.steps == (1.0, 5.0, 25.0, 50.0, 100.0)
    assert started.step_index == 0 and started.canary_percent == 1.0
    assert started.config == config and started.reason == ""
    assert started.created_at.tzinfo is UTC and started.step_started_at == started.created_at
    assert registry.rollouts.get_rollout(started.rollout_id) == started
    assert registry.rollouts.active_rollout("web") == started
    assert registry.rollouts.list_rollouts("web") == [started]
    assert registry.rollouts.active_rollouts() == [started]


BAD_STEPS: list[object] = [
    [], [0, 100], [5, 5, 100], [50, 25, 100], [1, 5, 50], [1, 101], [math.nan, 100],
    [True, 100], ["5", 100], "1,100", None,
]


def test_bad_steps_are_invalid_input(registry: SqlRegistry) -> None:
    """Steps must be strictly increasing numbers in (0, 100] ending at 100."""
    _deploy(registry)
    for steps in BAD_STEPS:
        with pytest.raises(InvalidInput) as info:
            registry.rollouts.start_rollout("web", "1", "2", steps, {})  # type: ignore[arg-type]
        assert info.value.field == "steps", steps
    assert registry.rollouts.list_rollouts("web") == []


def test_start_checks_deployment_versions_and_config(registry: SqlRegistry) -> None:
    """Unknown deployment or version is NotFound naming it; equal versions (after resolving
    aliases) and a config that is not a JSON object are InvalidInput."""
    _deploy(registry)
    with pytest.raises(NotFound) as missing:
        registry.rollouts.start_rollout("nope", "1", "2", [100])
    assert missing.value.field == "deployment" and "nope" in str(missing.value)
    with pytest.raises(NotFound) as unknown:
        registry.rollouts.start_rollout("web", "1", "9", [100])
    assert unknown.value.field == "canary_version" and "'9'" in str(unknown.value)
    with pytest.raises(NotFound) as unknown_base:
        registry.rollouts.start_rollout("web", "beta", "2", [100])
    assert unknown_base.value.field == "baseline_version"
    with pytest.raises(InvalidInput) as same:
        registry.rollouts.start_rollout("web", "prod", "1", [100])
    assert same.value.field == "canary_version"
    with pytest.raises(InvalidInput) as bad_config:
        registry.rollouts.start_rollout("web", "1", "2", [100], {"f": object()})
    assert bad_config.value.field == "config"
    with pytest.raises(InvalidInput):
        registry.rollouts.start_rollout("web", "1", "2", [100], [1])  # type: ignore[arg-type]
    assert registry.rollouts.list_rollouts("web") == []


# ------------------------------------------------------- one active per deployment


def test_one_active_rollout_per_deployment(registry: SqlRegistry) -> None:
    """A running or paused rollout blocks a second one on its deployment (Conflict naming
    it) but not on another deployment; once it has ended, a new one may start."""
    _deploy(registry, "web")
    _deploy(registry, "api")
    first = registry.rollouts.start_rollout("web", "1", "2", [10, 100])
    registry.rollouts.update_rollout(first.rollout_id, status="paused")
    with pytest.raises(Conflict) as info:
        registry.rollouts.start_rollout("web", "1", "3", [100])
    assert info.value.field == "deployment" and "'web'" in str(info.value)
    other = registry.rollouts.start_rollout("api", "1", "3", [100])
    assert {r.rollout_id for r in registry.rollouts.active_rollouts()} == {
        first.rollout_id, other.rollout_id
    }
    registry.rollouts.update_rollout(first.rollout_id, status="rolled_back", reason="p99 worse")
    assert registry.rollouts.active_rollout("web") is None
    second = registry.rollouts.start_rollout("web", "1", "3", [100])
    assert second.rollout_id > first.rollout_id
    assert [r.status for r in registry.rollouts.list_rollouts("web")] == ["rolled_back", "running"]


def test_the_database_itself_holds_one_active_rollout(
    registry: SqlRegistry, database: Database
) -> None:
    """The partial unique index rejects a second active row written past the store, while
    ended rollouts of the same deployment are unlimited."""
    _deploy(registry)
    registry.rollouts.start_rollout("web", "1", "2", [100])
    base, engine = create_engine(database.url, schema=database.schema)
    row = {"deployment": "web", "baseline_version": "1", "canary_version": "3", "steps": [100],
           "step_index": 0, "step_started_at": START, "created_at": START,
           "updated_at": START, "config": {}, "reason": ""}
    try:
        with engine.begin() as conn:
            conn.execute(rollouts.insert().values(status="aborted", **row))
            conn.execute(rollouts.insert().values(status="promoted", **row))
        for status in ("running", "paused"):
            with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
                conn.execute(rollouts.insert().values(status=status, **row))
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(rollouts.insert().values(status="finished", **row))
    finally:
        base.dispose()
    assert len(registry.rollouts.list_rollouts("web")) == 3


def test_concurrent_starts_on_one_deployment_let_exactly_one_win(database: Database) -> None:
    """Racing starts for one deployment: exactly one rollout is created, the rest Conflict."""
    with SqlRegistry.open(database.url, schema=database.schema) as registry:
        _deploy(registry)
        num_threads = 4
        barrier = threading.Barrier(num_threads)
        outcomes: list[str] = []
        lock = threading.Lock()

        def start() -> None:
            barrier.wait()
            try:
                registry.rollouts.start_rollout("web", "1", "2", [50, 100])
                outcome = "started"
            except Conflict:
                outcome = "conflict"
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=start) for _ in range(num_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(outcomes) == ["conflict"] * (num_threads - 1) + ["started"]
        assert len(registry.rollouts.list_rollouts("web")) == 1


# ------------------------------------------------------------------ transitions


TRANSITIONS: list[tuple[list[str], bool]] = [
    (["paused"], True),
    (["paused", "running"], True),
    (["running"], True),
    (["promoted"], True),
    (["paused", "rolled_back"], True),
    (["paused", "aborted"], True),
    (["promoted", "running"], False),
    (["rolled_back", "paused"], False),
    (["aborted", "aborted"], False),
    (["promoted", "rolled_back"], False),
]


def test_status_transitions(registry: SqlRegistry) -> None:
    """running <-> paused and active -> promoted/rolled_back/aborted are allowed; nothing
    leaves an ended status (Conflict), and the stored status stays the ended one."""
    for number, (path, allowed) in enumerate(TRANSITIONS):
        _deploy(registry, f"d{number}")
        rollout = registry.rollouts.start_rollout(f"d{number}", "1", "2", [50, 100])
        *before, last = path
        for status in before:
            registry.rollouts.update_rollout(rollout.rollout_id, status=status)
        if allowed:
            updated = registry.rollouts.update_rollout(rollout.rollout_id, status=last, reason="r")
            assert (updated.status, updated.reason) == (last, "r")
            assert registry.rollouts.get_rollout(rollout.rollout_id) == updated
        else:
            with pytest.raises(Conflict) as info:
                registry.rollouts.update_rollout(rollout.rollout_id, status=last)
            assert info.value.field == "status" and "ended" in str(info.value), path
            assert registry.rollouts.get_rollout(rollout.rollout_id).status == before[-1]


def test_an_ended_rollout_takes_no_update_at_all(registry: SqlRegistry) -> None:
    """After it ends, even a reason or step change is a Conflict."""
    _deploy(registry)
    rollout = registry.rollouts.start_rollout("web", "1", "2", [50, 100])
    registry.rollouts.update_rollout(rollout.rollout_id, status="promoted", step_index=1)
    with pytest.raises(Conflict):
        registry.rollouts.update_rollout(rollout.rollout_id, reason="later")
    with pytest.raises(Conflict):
        registry.rollouts.update_rollout(rollout.rollout_id, step_index=0)


def test_a_new_step_restarts_the_step_clock(registry: SqlRegistry) -> None:
    """Changing step_index sets step_started_at to now unless given; keeping the index keeps
    it; updated_at moves on every update."""
    _deploy(registry)
    rollout = registry.rollouts.start_rollout("web", "1", "2", [1, 5, 100])
    same = registry.rollouts.update_rollout(rollout.rollout_id, step_index=0, reason="wait")
    assert same.step_started_at == rollout.step_started_at
    assert same.updated_at > rollout.updated_at
    moved = registry.rollouts.update_rollout(rollout.rollout_id, step_index=1)
    assert moved.step_started_at == moved.updated_at > same.updated_at
    assert moved.canary_percent == 5.0 and moved.reason == "wait"
    given = datetime(2026, 3, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    explicit = registry.rollouts.update_rollout(
        rollout.rollout_id, step_index=2, step_started_at=given
    )
    assert explicit.step_started_at == given and explicit.step_started_at.tzinfo is UTC
    assert registry.rollouts.get_rollout(rollout.rollout_id) == explicit


def test_bad_updates_are_rejected(registry: SqlRegistry) -> None:
    """Unknown rollout is NotFound; a bad status, step index, id, reason or naive time is
    InvalidInput naming the field, and nothing changes."""
    _deploy(registry)
    rollout = registry.rollouts.start_rollout("web", "1", "2", [50, 100])
    with pytest.raises(NotFound) as missing:
        registry.rollouts.update_rollout(rollout.rollout_id + 100, status="paused")
    assert missing.value.field == "rollout_id"
    with pytest.raises(NotFound):
        registry.rollouts.get_rollout(rollout.rollout_id + 100)
    bad: list[tuple[dict[str, object], str]] = [
        ({"status": "finished"}, "status"),
        ({"step_index": 2}, "step_index"),
        ({"step_index": -1}, "step_index"),
        ({"step_index": True}, "step_index"),
        ({"reason": 5}, "reason"),
        ({"step_started_at": datetime(2026, 1, 1)}, "step_started_at"),
    ]
    for changes, field in bad:
        with pytest.raises(InvalidInput) as info:
            registry.rollouts.update_rollout(rollout.rollout_id, **changes)  # type: ignore[arg-type]
        assert info.value.field == field, changes
    with pytest.raises(InvalidInput) as bad_id:
        registry.rollouts.get_rollout("1")  # type: ignore[arg-type]
    assert bad_id.value.field == "rollout_id"
    assert registry.rollouts.get_rollout(rollout.rollout_id) == rollout


# -------------------------------------------------------------------- decisions


def test_decisions_are_kept_in_order_with_their_numbers(registry: SqlRegistry) -> None:
    """Decisions list in the order taken; numbers round-trip, NaN and infinities as None;
    an ended rollout still takes the decision that ended it."""
    _deploy(registry)
    rollout = registry.rollouts.start_rollout("web", "1", "2", [10, 100])
    numbers = {"tests": [{"name": "latency", "p_value": 0.003, "baseline": math.nan,
                          "canary": math.inf, "n": 120}], "needs_requests": 40}
    first = registry.rollouts.record_decision(rollout.rollout_id, 0, "not_enough_data", "n<40")
    second = registry.rollouts.record_decision(rollout.rollout_id, 0, "rollback", "p99", numbers)
    registry.rollouts.update_rollout(rollout.rollout_id, status="rolled_back", reason="p99")
    third = registry.rollouts.record_decision(rollout.rollout_id, 0, "rollback_manual", "ops")
    listed = registry.rollouts.list_decisions(rollout.rollout_id)
    assert listed == [first, second, third]
    assert [d.verdict for d in listed] == ["not_enough_data", "rollback", "rollback_manual"]
    assert listed[1].numbers == {"tests": [{"name": "latency", "p_value": 0.003,
                                            "baseline": None, "canary": None, "n": 120}],
                                 "needs_requests": 40}
    assert listed[0].numbers == {} and listed[0].at < listed[1].at < listed[2].at


def test_decisions_taken_at_the_same_instant_keep_their_order(database: Database) -> None:
    """With a clock that stands still, decisions list in the order they were recorded."""
    with SqlRegistry.open(database.url, schema=database.schema, clock=lambda: START) as reg:
        _deploy(reg)
        rollout = reg.rollouts.start_rollout("web", "1", "2", [10, 100])
        verdicts = ["wait", "pause", "resume", "promote", "wait", "abort"]
        for verdict in verdicts:
            reg.rollouts.record_decision(rollout.rollout_id, 0, verdict, "")
        assert [d.verdict for d in reg.rollouts.list_decisions(rollout.rollout_id)] == verdicts


def test_bad_decisions_are_rejected(registry: SqlRegistry) -> None:
    """Unknown rollout is NotFound; bad verdict, step index, reason or numbers InvalidInput."""
    _deploy(registry)
    rollout = registry.rollouts.start_rollout("web", "1", "2", [10, 100])
    with pytest.raises(NotFound):
        registry.rollouts.record_decision(rollout.rollout_id + 1, 0, "wait", "")
    with pytest.raises(NotFound):
        registry.rollouts.list_decisions(rollout.rollout_id + 1)
    bad: list[tuple[tuple[object, ...], str]] = [
        ((0, "maybe", ""), "verdict"),
        ((2, "wait", ""), "step_index"),
        ((0, "wait", None), "reason"),
        ((0, "wait", "", {1: 2}), "numbers"),
        ((0, "wait", "", {"x": {1, 2}}), "numbers"),
    ]
    for args, field in bad:
        with pytest.raises(InvalidInput) as info:
            registry.rollouts.record_decision(rollout.rollout_id, *args)  # type: ignore[arg-type]
        assert info.value.field == field, args
    assert registry.rollouts.list_decisions(rollout.rollout_id) == []


# -------------------------------------------------------------- traffic history


def _split(canary_percent: float) -> dict[str, object]:
    return {"weights": {"1": 100.0 - canary_percent, "2": canary_percent},
            "shadow_version": None, "shadow_fraction": 0.0}


def test_traffic_history_filters_by_deployment_and_time(registry: SqlRegistry) -> None:
    """History lists one deployment's splits oldest first with since <= at < until (bounds in
    any timezone); traffic_at gives the split in force at a moment."""
    record = registry.rollouts.record_traffic
    first = record("web", _split(0), "deployed")
    other = record("api", _split(0), "deployed")
    second = record("web", _split(5), "step 1")
    third = record("web", _split(25), "step 2")
    fourth = record("web", {"weights": {"1": 100.0}, "shadow_version": "2",
                            "shadow_fraction": 0.1}, "rolled_back: p99")
    history = registry.rollouts.traffic_history
    assert history("web") == [first, second, third, fourth]
    assert history("api") == [other] and history("nope") == []
    assert history("web", since=second.at) == [second, third, fourth]
    assert history("web", until=third.at) == [first, second]
    assert history("web", since=second.at, until=fourth.at) == [second, third]
    in_plus_two = third.at.astimezone(timezone(timedelta(hours=2)))
    assert history("web", since=in_plus_two) == [third, fourth]
    assert history("web", since=third.at, until=third.at) == []
    assert fourth.split["shadow_version"] == "2" and fourth.at.tzinfo is UTC

    assert registry.rollouts.traffic_at("web", first.at - timedelta(seconds=1)) is None
    assert registry.rollouts.traffic_at("web", first.at) == first
    assert registry.rollouts.traffic_at("web", third.at + timedelta(milliseconds=1)) == third
    assert registry.rollouts.traffic_at("web", in_plus_two) == third


def test_bad_traffic_input_is_rejected(registry: SqlRegistry) -> None:
    """Empty or non-object splits, bad names, non-string causes, naive or reversed bounds are
    InvalidInput naming the field; nothing is written."""
    record = registry.rollouts.record_traffic
    bad_records: list[tuple[tuple[object, ...], str]] = [
        (("web", {}, "x"), "split"),
        (("web", [("1", 100.0)], "x"), "split"),
        (("web", {"weights": {"1": object()}}, "x"), "split"),
        (("", _split(0), "x"), "deployment"),
        (("w" * 64, _split(0), "x"), "deployment"),
        (("web", _split(0), None), "cause"),
    ]
    for args, field in bad_records:
        with pytest.raises(InvalidInput) as info:
            record(*args)  # type: ignore[arg-type]
        assert info.value.field == field, args
    assert registry.rollouts.traffic_history("web") == []
    naive = datetime(2026, 1, 1)
    with pytest.raises(InvalidInput) as since:
        registry.rollouts.traffic_history("web", since=naive)
    assert since.value.field == "since"
    with pytest.raises(InvalidInput) as until:
        registry.rollouts.traffic_history("web", until=naive)
    assert until.value.field == "until"
    with pytest.raises(InvalidInput):
        registry.rollouts.traffic_history("web", since=START, until=START - timedelta(1))
    with pytest.raises(InvalidInput) as at:
        registry.rollouts.traffic_at("web", naive)
    assert at.value.field == "at"


def test_a_reopened_store_resumes_active_rollouts(database: Database) -> None:
    """Active rollouts, decisions and history read back unchanged by a new store (a restarted
    server resumes from them); ended rollouts are not among the active ones."""
    with SqlRegistry.open(database.url, schema=database.schema, clock=stepping_clock()) as reg:
        _deploy(reg, "web")
        _deploy(reg, "api")
        ended = reg.rollouts.start_rollout("api", "1", "2", [100])
        reg.rollouts.update_rollout(ended.rollout_id, status="aborted", reason="operator")
        running = reg.rollouts.start_rollout("web", "1", "3", [5, 100], {"interval_s": 2.5})
        running = reg.rollouts.update_rollout(running.rollout_id, status="paused", reason="p")
        decision = reg.rollouts.record_decision(running.rollout_id, 0, "pause", "operator")
        split = reg.rollouts.record_traffic("web", _split(5), "step 0")
    with SqlRegistry.open(database.url, schema=database.schema) as reopened:
        assert reopened.rollouts.active_rollouts() == [running]
        assert reopened.rollouts.list_decisions(running.rollout_id) == [decision]
        assert reopened.rollouts.traffic_history("web") == [split]
        assert reopened.rollouts.get_rollout(ended.rollout_id).status == "aborted"
