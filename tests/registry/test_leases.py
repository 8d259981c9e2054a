"""Leases on the registry's PostgreSQL: one holder at a time, freed when the holder's
connection goes, and granted in process on SQLite."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from aiscale.registry import SqlRegistry


@pytest.mark.postgres
def test_one_holder_at_a_time_and_freed_when_its_connection_dies(postgres_url: str) -> None:
    """A second process cannot take a held lease; releasing or losing the connection frees
    it; the holder that lost it learns so from ``check``."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    one = SqlRegistry.open(postgres_url, schema=schema)
    two = SqlRegistry.open(postgres_url, schema=schema)
    other_schema = SqlRegistry.open(postgres_url, schema=f"{schema}x")
    first, second, elsewhere = one.open_leases(), two.open_leases(), other_schema.open_leases()
    try:
        assert first.try_acquire("rollout:m") and first.try_acquire("rollout:m")  # re-entrant
        assert not second.try_acquire("rollout:m")
        assert second.try_acquire("rollout:n")  # names are independent
        assert elsewhere.try_acquire("rollout:m")  # so are registries in other schemas
        first.release("rollout:m")
        assert second.try_acquire("rollout:m")
        assert first.check()  # holds nothing: nothing to lose

        engine = sa.create_engine(postgres_url)
        try:
            with engine.begin() as conn:  # the database drops the holder's connection
                conn.execute(sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid <> pg_backend_pid() "
                    "AND granted AND pid IN (SELECT pid FROM pg_locks GROUP BY pid "
                    "HAVING count(*) FILTER (WHERE locktype = 'advisory') = 2)"
                ))
        finally:
            engine.dispose()
        assert not second.check()
        assert not second.is_held("rollout:m")
        assert first.try_acquire("rollout:m")
    finally:
        for leases in (first, second, elsewhere):
            leases.close()
        for store in (one, two, other_schema):
            store.close()
        engine = sa.create_engine(postgres_url)
        with engine.begin() as conn:
            for name in (schema, f"{schema}x"):
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        engine.dispose()


def test_sqlite_leases_are_granted_in_process(tmp_path: Path) -> None:
    """One gateway per SQLite file: every lease is granted, and check never fails."""
    with SqlRegistry.open(f"sqlite:///{tmp_path / 'r.db'}") as store:
        leases = store.open_leases()
        assert leases.try_acquire("rollout:m") and leases.check()
        leases.release("rollout:m")
        assert not leases.is_held("rollout:m")
        leases.close()
