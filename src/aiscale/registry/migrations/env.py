"""Alembic environment for the registry, run programmatically by ``aiscale.registry._migrate``.

The caller hands over an open connection (inside its transaction) and the optional PostgreSQL
schema through ``config.attributes``; there is no alembic.ini and no logging set-up here.
Offline (SQL script) mode is not supported.
"""

from __future__ import annotations

from alembic import context

from aiscale.errors import ConfigError
from aiscale.registry.tables import metadata

config = context.config

if context.is_offline_mode():
    raise ConfigError("the registry migrations run online only")

context.configure(
    connection=config.attributes["connection"],
    target_metadata=metadata,
    version_table_schema=config.attributes.get("schema"),
)
with context.begin_transaction():
    context.run_migrations()
