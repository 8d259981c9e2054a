"""API keys' team and LLM limits in the registry (SQLite and PostgreSQL): migration 0003
upgrades an existing database, limits round-trip exactly, bad values are refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from aiscale.errors import InvalidInput, NotFound
from aiscale.registry import LlmLimits, SqlRegistry, hash_key
from aiscale.registry._database import MIGRATIONS_DIR, create_engine, head_revision
from tests.registry.conftest import Database, _postgres_url

START = datetime(2026, 1, 1, tzinfo=UTC)
FULL = LlmLimits(
    requests_per_minute=60,
    tokens_per_minute=100_000,
    max_concurrent=4,
    budget_tokens_per_day=1_000_000,
    budget_tokens_per_month=20_000_000,
    budget_usd_per_day=Decimal("2.5"),
    budget_usd_per_month=Decimal("49.999999"),
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A new, empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards
    (as ``tests/registry/conftest.py``'s ``database``)."""
    if request.param == "sqlite":
        yield Database(url=f"sqlite:///{tmp_path / 'registry.db'}", schema=None)
        return
    url = _postgres_url()
    if url is None:
        pytest.skip("no local PostgreSQL at 127.0.0.1:5432 (users postgres, root)")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield Database(url=url, schema=schema)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        engine.dispose()


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


def test_upgrade_from_0002_keeps_keys_and_adds_limits(db: Database) -> None:
    """A database at 0002 with a key upgrades to head: the key keeps working, with no team
    and no limits, and takes a team and limits afterwards."""
    _migrate_to(db, "0002")
    base, engine = create_engine(db.url, schema=db.schema)
    try:
        with engine.begin() as conn:
            # The 0002 table, written out: the current one has more columns.
            old_keys = sa.table(
                "api_keys", sa.column("key_id"), sa.column("name"), sa.column("key_hash"),
                sa.column("scopes"), sa.column("rate_limit_per_s"), sa.column("created_at"),
                sa.column("revoked_at"), schema=db.schema,
            )
            conn.execute(old_keys.insert().values(
                key_id="k1", name="ci", key_hash=hash_key("secret"), scopes="inference",
                rate_limit_per_s=2.0, created_at=START, revoked_at=None,
            ))
    finally:
        base.dispose()
    assert head_revision() == "0003"
    with SqlRegistry.open(db.url, schema=db.schema) as registry:
        (key,) = registry.active_keys()
        assert (key.key_id, key.rate_limit_per_s, key.team) == ("k1", 2.0, None)
        assert key.llm_limits == LlmLimits() and key.llm_limits.is_empty
        updated = registry.set_key_llm_limits("k1", team="search", llm_limits=FULL)
        assert (updated.team, updated.llm_limits) == ("search", FULL)
        assert registry.get_key_by_hash(hash_key("secret")).llm_limits == FULL


def test_limits_round_trip_exactly(db: Database) -> None:
    """Counts and money (to the micro-dollar) come back as they went in."""
    with SqlRegistry.open(db.url, schema=db.schema) as registry:
        _, record = registry.create_key(
            "svc", frozenset({"inference"}), team="ads", llm_limits=FULL
        )
        assert (record.team, record.llm_limits) == ("ads", FULL)
        stored = registry.get_key(record.key_id)
        assert stored.llm_limits == FULL and stored.team == "ads"
        assert stored.llm_limits.as_dict()["budget_usd_per_month"] == "49.999999"
        cleared = registry.set_key_llm_limits(record.key_id, team=None, llm_limits=LlmLimits())
        assert cleared.team is None and cleared.llm_limits.is_empty


@pytest.mark.parametrize(
    ("limits", "team", "field"),
    [
        (LlmLimits(requests_per_minute=0), None, "requests_per_minute"),
        (LlmLimits(tokens_per_minute=-5), None, "tokens_per_minute"),
        (LlmLimits(max_concurrent=10**16), None, "max_concurrent"),
        (LlmLimits(budget_usd_per_day=Decimal("0.0000001")), None, "budget_usd_per_day"),
        (LlmLimits(budget_usd_per_month=Decimal(0)), None, "budget_usd_per_month"),
        (LlmLimits(budget_usd_per_month=Decimal("NaN")), None, "budget_usd_per_month"),
        (LlmLimits(budget_usd_per_month=Decimal(10**7)), None, "budget_usd_per_month"),
        (LlmLimits(), "Bad Team", "team"),
    ],
)
def test_bad_limits_are_refused(
    db: Database, limits: LlmLimits, team: str | None, field: str
) -> None:
    """An out-of-range limit or a bad team name is InvalidInput naming it; nothing is written."""
    with SqlRegistry.open(db.url, schema=db.schema) as registry:
        with pytest.raises(InvalidInput) as caught:
            registry.create_key("k", frozenset({"inference"}), team=team, llm_limits=limits)
        assert caught.value.field == field
        assert registry.list_keys() == []


def test_set_limits_of_an_unknown_key_is_not_found(db: Database) -> None:
    with (
        SqlRegistry.open(db.url, schema=db.schema) as registry,
        pytest.raises(NotFound, match="unknown key id 'nope'"),
    ):
        registry.set_key_llm_limits("nope", team=None, llm_limits=LlmLimits())
