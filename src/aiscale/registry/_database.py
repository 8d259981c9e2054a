"""Engine set-up and schema migration for the registry's SQL database.

Builds one SQLAlchemy engine per store (SQLite file, SQLite in memory, or PostgreSQL, with an
optional per-store PostgreSQL schema) and upgrades the database to the newest Alembic revision.
It never reads the environment and never creates tables outside Alembic.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

from aiscale.errors import ConfigError

#: Execution option that marks a connection whose transaction will write.
WRITE_OPTION = "aiscale_write"

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Any constant works; it keeps concurrent first-time migrations of one database in line.
_MIGRATION_LOCK_ID = 0x61697363616C65  # "aiscale"
#: How long a SQLite writer waits for another process's write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 10_000


def create_engine(url: str, *, schema: str | None) -> tuple[Engine, Engine]:
    """Return ``(base_engine, engine)``: ``engine`` maps the tables into ``schema``.

    ``base_engine`` is the one to dispose. Raises ConfigError for an unusable URL or schema.
    """
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"invalid registry URL: {exc}", field="registry_url") from exc
    backend = parsed.get_backend_name()
    if schema is not None and not _SCHEMA_RE.match(schema):
        raise ConfigError(f"invalid schema name {schema!r}", field="schema")
    if backend == "sqlite":
        if schema is not None:
            raise ConfigError("a schema applies to PostgreSQL only", field="schema")
        base = _sqlite_engine(parsed)
    elif backend == "postgresql":
        base = sa.create_engine(parsed, pool_pre_ping=True)
    else:
        raise ConfigError(
            f"unsupported registry database {backend!r} (use sqlite or postgresql)",
            field="registry_url",
        )
    engine = base if schema is None else base.execution_options(schema_translate_map={None: schema})
    return base, engine


def _create_private(path: Path) -> None:
    """Create the SQLite file with mode 0600 before SQLite does (it would follow the umask,
    usually 0644; its -wal and -shm files copy the main file's mode). An existing file keeps
    its mode: changing it is the owner's call."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except FileNotFoundError:  # no folder: SQLite's own error says it better
        pass


def _sqlite_engine(parsed: sa.URL) -> Engine:
    is_memory = parsed.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if is_memory:
        # One shared connection, so that every thread sees the same in-memory database.
        kwargs["poolclass"] = StaticPool
    elif parsed.database is not None and not parsed.database.startswith("file:"):
        _create_private(Path(parsed.database))
    engine = sa.create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so that writers can BEGIN IMMEDIATE below.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # WAL lets a CLI process read and write while a server holds the file open.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A deferred transaction that later writes can fail with SQLITE_BUSY without waiting
        # for the busy timeout; writers therefore take the write lock up front.
        is_write = bool(conn.get_execution_options().get(WRITE_OPTION))
        conn.exec_driver_sql("BEGIN IMMEDIATE" if is_write else "BEGIN")

    return engine


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest Alembic revision shipped with this package."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "the registry ships at least one migration"
    return head


def current_revision(engine: Engine, *, schema: str | None) -> str | None:
    """The revision the database is at, or None for a database never migrated."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table_schema": schema})
        return context.get_current_revision()


def upgrade_to_head(engine: Engine, *, schema: str | None) -> None:
    """Create ``schema`` if needed and apply every pending migration, in one transaction.

    Safe to call from several processes at once: SQLite serialises the write transactions,
    PostgreSQL takes a transaction-scoped advisory lock first.
    """
    config = _alembic_config()
    with engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
                if schema is not None:
                    quoted = conn.dialect.identifier_preparer.quote_schema(schema)
                    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            config.attributes["connection"] = conn
            config.attributes["schema"] = schema
            command.upgrade(config, "head")
