"""Registry fixtures: every store test runs on SQLite in tmp_path and on the local PostgreSQL,
each PostgreSQL test in a fresh schema that is dropped afterwards."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from aiscale.registry import SqlRegistry

PG_USERS = ("postgres", "root")
PG_TEMPLATE = "postgresql+psycopg://{user}@127.0.0.1:5432/test"


@dataclass(frozen=True, slots=True)
class Database:
    """Where a test's registry lives."""

    url: str
    schema: str | None

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    def qualified(self, table: str) -> str:
        return table if self.schema is None else f'"{self.schema}".{table}'


def _postgres_url() -> str | None:
    for user in PG_USERS:
        url = PG_TEMPLATE.format(user=user)
        engine = sa.create_engine(url)
        try:
            with engine.connect():
                return url
        except sa.exc.OperationalError:
            continue
        finally:
            engine.dispose()
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = _postgres_url()
    if url is None:
        pytest.skip("no local PostgreSQL at 127.0.0.1:5432 (users postgres, root)")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A new, empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield Database(url=f"sqlite:///{tmp_path / 'registry.db'}", schema=None)
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield Database(url=url, schema=schema)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        engine.dispose()


def stepping_clock(step_s: float = 1.0) -> Callable[[], datetime]:
    """A clock that moves ``step_s`` forward on every reading, so timestamps always differ."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    counter = itertools.count()
    return lambda: start + timedelta(seconds=step_s * next(counter))


@pytest.fixture
def registry(database: Database) -> Iterator[SqlRegistry]:
    store = SqlRegistry.open(database.url, schema=database.schema, clock=stepping_clock())
    yield store
    store.close()
