"""SqlRegistry on SQLite and PostgreSQL: migrations, versions, aliases, deployments, keys."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from aiscale.errors import ConfigError, Conflict, InvalidInput, NotFound
from aiscale.registry import DeploymentRecord, SqlRegistry, hash_key
from aiscale.registry._database import head_revision
from aiscale.registry.tables import metadata
from tests.registry.conftest import Database, stepping_clock


def _rows(database: Database, table: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(database.url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(
                f"SELECT * FROM {database.qualified(table)}"
            )]
    finally:
        engine.dispose()


def test_open_migrates_a_new_database_to_head(database: Database) -> None:
    """Opening an empty database creates every table and records the head revision."""
    with SqlRegistry.open(database.url, schema=database.schema):
        pass
    assert _rows(database, "alembic_version") == [(head_revision(),)]
    engine = sa.create_engine(database.url)
    try:
        tables = set(sa.inspect(engine).get_table_names(schema=database.schema))
    finally:
        engine.dispose()
    assert {"models", "versions", "aliases", "deployments", "api_keys"} <= tables


def test_reopening_an_existing_database_keeps_its_data(database: Database) -> None:
    """A second open finds the schema at head, migrates nothing and sees earlier writes."""
    with SqlRegistry.open(database.url, schema=database.schema) as first:
        first.register_version("iris", runtime="sklearn", uri="/m.joblib", config={"a": 1})
    with SqlRegistry.open(database.url, schema=database.schema) as second:
        version = second.get_version("iris", "1")
    assert version.uri == "/m.joblib" and version.config == {"a": 1}
    assert _rows(database, "alembic_version") == [(head_revision(),)]


def test_tables_match_the_latest_migration(tmp_path: Path) -> None:
    """tables.py and the migrations describe the same schema (autogenerate finds no diff)."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    SqlRegistry.open(url).close()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_versions_are_numbered_in_order_and_immutable(registry: SqlRegistry) -> None:
    """Versions auto-number 1, 2, ... past the highest number; an existing one is a Conflict."""
    assert registry.register_version("m", runtime="python", uri="a:B").version == "1"
    assert registry.register_version("m", runtime="python", uri="a:C").version == "2"
    assert registry.register_version("m", runtime="python", uri="a:D", version="exp").version == (
        "exp"
    )
    assert registry.register_version("m", runtime="python", uri="a:E").version == "3"
    registry.register_version("m", runtime="python", uri="a:F", version="10")
    assert registry.register_version("m", runtime="python", uri="a:G").version == "11"
    with pytest.raises(Conflict) as info:
        registry.register_version("m", runtime="onnx", uri="/other.onnx", version="2")
    assert info.value.field == "version"
    assert registry.get_version("m", "2").uri == "a:C"
    assert [v.version for v in registry.list_versions("m")] == ["1", "2", "exp", "3", "10", "11"]


def test_register_stores_every_field_and_creates_the_model(registry: SqlRegistry) -> None:
    """register_version creates a missing model and round-trips config, metadata and schema."""
    record = registry.register_version(
        "emb", runtime="onnx", uri="/a/model.onnx", artifact_digest="ab" * 32,
        config={"batch": {"max_size": 8}}, metadata={"auc": 0.9},
        schema={"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]},
    )
    assert registry.get_model("emb").name == "emb"
    assert registry.get_version("emb", "1") == record
    assert record.created_at.tzinfo is not None


def test_models_conflict_and_not_found(registry: SqlRegistry) -> None:
    """A model is created once; unknown models and versions raise NotFound naming the field."""
    registry.create_model("iris", "flowers")
    with pytest.raises(Conflict):
        registry.create_model("iris")
    assert [m.name for m in registry.list_models()] == ["iris"]
    assert registry.get_model("iris").description == "flowers"
    with pytest.raises(NotFound) as info:
        registry.get_model("nope")
    assert info.value.field == "model"
    with pytest.raises(NotFound) as info:
        registry.get_version("nope", "1")
    assert info.value.field == "model" and "nope" in info.value.message
    with pytest.raises(NotFound) as info:
        registry.get_version("iris", "7")
    assert info.value.field == "version" and "'7'" in info.value.message
    with pytest.raises(NotFound):
        registry.list_versions("nope")


def test_alias_resolves_and_moves(registry: SqlRegistry) -> None:
    """An alias resolves to its version, moves when set again, and is gone once deleted."""
    registry.register_version("m", runtime="python", uri="a:V1")
    registry.register_version("m", runtime="python", uri="a:V2")
    registry.set_alias("m", "prod", "1")
    assert registry.get_version("m", "prod").uri == "a:V1"
    registry.set_alias("m", "prod", "2")
    registry.set_alias("m", "canary", "1")
    assert registry.get_version("m", "prod").uri == "a:V2"
    assert registry.list_aliases("m") == {"canary": "1", "prod": "2"}
    registry.delete_alias("m", "prod")
    assert registry.list_aliases("m") == {"canary": "1"}
    with pytest.raises(NotFound):
        registry.get_version("m", "prod")
    with pytest.raises(NotFound):
        registry.delete_alias("m", "prod")


def test_alias_needs_an_existing_version(registry: SqlRegistry) -> None:
    """set_alias refuses an unknown version or model."""
    registry.register_version("m", runtime="python", uri="a:V1")
    with pytest.raises(NotFound) as info:
        registry.set_alias("m", "prod", "9")
    assert info.value.field == "version"
    with pytest.raises(NotFound) as info:
        registry.set_alias("other", "prod", "1")
    assert info.value.field == "model"


def test_a_version_name_wins_over_an_alias_of_the_same_name(registry: SqlRegistry) -> None:
    """When an alias is spelled like a version, get_version returns the version itself."""
    registry.register_version("m", runtime="python", uri="a:V1")
    registry.register_version("m", runtime="python", uri="a:V2")
    registry.set_alias("m", "1", "2")
    assert registry.get_version("m", "1").uri == "a:V1"


@pytest.mark.parametrize(
    ("name", "field"),
    [("Bad", "model"), ("-x", "model"), ("a b", "model"), ("", "model"), ("x" * 64, "model")],
)
def test_bad_model_names_are_invalid_input(registry: SqlRegistry, name: str, field: str) -> None:
    """Names must match ^[a-z0-9][a-z0-9._-]{0,62}$."""
    with pytest.raises(InvalidInput) as info:
        registry.register_version(name, runtime="python", uri="a:B")
    assert info.value.field == field


def test_bad_alias_version_and_config_are_invalid_input(registry: SqlRegistry) -> None:
    """Alias and version names are validated, and config must be a JSON object."""
    registry.register_version("m", runtime="python", uri="a:B")
    with pytest.raises(InvalidInput) as info:
        registry.set_alias("m", "Prod!", "1")
    assert info.value.field == "alias"
    with pytest.raises(InvalidInput) as info:
        registry.register_version("m", runtime="python", uri="a:B", version="v 2")
    assert info.value.field == "version"
    with pytest.raises(InvalidInput) as info:
        registry.register_version("m", runtime="python", uri="a:B", config={"f": object()})
    assert info.value.field == "config"
    assert [v.version for v in registry.list_versions("m")] == ["1"]


def test_deployments_upsert(registry: SqlRegistry) -> None:
    """put_deployment inserts then updates: created_at stays, updated_at moves on."""
    registry.register_version("m", runtime="python", uri="a:B")
    registry.register_version("m", runtime="python", uri="a:C")
    registry.set_alias("m", "prod", "1")
    first = registry.put_deployment(
        DeploymentRecord(name="web", model="m", version="prod", replicas=2, config={"b": 8})
    )
    second = registry.put_deployment(DeploymentRecord(name="web", model="m", version="2"))
    assert first.created_at is not None and second.updated_at is not None
    assert second.created_at == first.created_at
    assert first.updated_at is not None and second.updated_at > first.updated_at
    stored = registry.get_deployment("web")
    assert (stored.version, stored.replicas, stored.config) == ("2", 1, {})
    assert stored == second
    assert [d.name for d in registry.list_deployments()] == ["web"]
    registry.delete_deployment("web")
    assert registry.list_deployments() == []
    with pytest.raises(NotFound):
        registry.get_deployment("web")
    with pytest.raises(NotFound):
        registry.delete_deployment("web")


def test_deployment_input_is_checked(registry: SqlRegistry) -> None:
    """A deployment needs a valid name, replicas >= 0 and a version that resolves."""
    registry.register_version("m", runtime="python", uri="a:B")
    with pytest.raises(NotFound):
        registry.put_deployment(DeploymentRecord(name="web", model="m", version="9"))
    with pytest.raises(InvalidInput) as info:
        registry.put_deployment(DeploymentRecord(name="web", model="m", version="1", replicas=-1))
    assert info.value.field == "replicas"
    with pytest.raises(InvalidInput) as info:
        registry.put_deployment(DeploymentRecord(name="Web", model="m", version="1"))
    assert info.value.field == "deployment"
    assert registry.list_deployments() == []


def test_keys_are_stored_hashed_and_can_be_revoked(
    registry: SqlRegistry, database: Database
) -> None:
    """Only the sha256 of a key is stored; lookup is by hash; a revoked key is not active."""
    plaintext, record = registry.create_key("ci", frozenset({"inference"}), rate_limit_per_s=5.0)
    admin_plain, admin = registry.create_key("ops", frozenset({"admin", "inference"}))
    assert plaintext.startswith("ask_") and len(plaintext) > 40
    assert record.key_hash == hash_key(plaintext) != hash_key(admin_plain)
    assert registry.get_key_by_hash(hash_key(plaintext)) == record
    assert registry.get_key_by_hash(hash_key(admin_plain)).scopes == {"admin", "inference"}
    stored = repr(_rows(database, "api_keys"))
    assert plaintext not in stored and admin_plain not in stored
    assert record.key_hash in stored

    revoked = registry.revoke_key(record.key_id)
    assert revoked.revoked_at is not None and not revoked.is_active
    assert registry.revoke_key(record.key_id).revoked_at == revoked.revoked_at
    assert [k.key_id for k in registry.active_keys()] == [admin.key_id]
    assert {k.key_id for k in registry.list_keys()} == {record.key_id, admin.key_id}
    assert registry.get_key_by_hash(record.key_hash).revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        registry.revoke_key("nosuchkey")
    with pytest.raises(NotFound):
        registry.get_key_by_hash(hash_key("ask_wrong"))


@pytest.mark.parametrize(
    "scopes", [frozenset(), frozenset({"root"}), frozenset({"admin", "superuser"})]
)
def test_bad_scopes_are_invalid_input(registry: SqlRegistry, scopes: frozenset[str]) -> None:
    """Scopes must be a non-empty subset of {admin, inference}."""
    with pytest.raises(InvalidInput) as info:
        registry.create_key("k", scopes)
    assert info.value.field == "scopes"
    assert registry.list_keys() == []


def test_bad_rate_limit_is_invalid_input(registry: SqlRegistry) -> None:
    """A per-key rate limit must be positive."""
    with pytest.raises(InvalidInput) as info:
        registry.create_key("k", frozenset({"inference"}), rate_limit_per_s=0.0)
    assert info.value.field == "rate_limit_per_s"


def test_concurrent_registrations_get_distinct_numbers(database: Database) -> None:
    """Threads sharing one store, and two stores on one database, never reuse a number."""
    stores = [
        SqlRegistry.open(database.url, schema=database.schema, clock=stepping_clock())
        for _ in range(2)
    ]
    numbers: list[str] = []
    lock = threading.Lock()

    def register(store: SqlRegistry) -> None:
        for _ in range(5):
            version = store.register_version("m", runtime="python", uri="a:B").version
            with lock:
                numbers.append(version)

    threads = [threading.Thread(target=register, args=(stores[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in stores:
        store.close()
    assert sorted(numbers, key=int) == [str(n) for n in range(1, 21)]


def test_unreachable_database_is_a_config_error(tmp_path: Path) -> None:
    """A database that cannot be opened raises ConfigError naming the registry URL."""
    with pytest.raises(ConfigError) as info:
        SqlRegistry.open(f"sqlite:///{tmp_path / 'missing' / 'r.db'}")
    assert info.value.field == "registry_url"
    with pytest.raises(ConfigError) as info:
        SqlRegistry.open("postgresql+psycopg://postgres@127.0.0.1:1/test")
    assert "127.0.0.1:1" in info.value.message
    with pytest.raises(ConfigError):
        SqlRegistry.open("mysql://localhost/x")
    with pytest.raises(ConfigError) as info:
        SqlRegistry.open(f"sqlite:///{tmp_path / 'r.db'}", schema="s")
    assert info.value.field == "schema"
