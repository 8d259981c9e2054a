"""The registry's SQL schema as SQLAlchemy Core tables (SQLite and PostgreSQL alike).

This module only describes tables; it never connects. The tables carry no schema name: a
store placed in a PostgreSQL schema maps them there with ``schema_translate_map``. Every
change here needs a new Alembic revision in ``migrations/versions`` (a test compares the two).
"""

from __future__ import annotations

import sqlalchemy as sa

#: Constraint names are fixed so that migrations can refer to them on every database.
NAMING_CONVENTION: dict[str, str] = {
    "pk": "pk_%(table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "ix": "ix_%(table_name)s_%(column_0_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

NAME = sa.String(63)
TIMESTAMP = sa.DateTime(timezone=True)

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("model", NAME, sa.ForeignKey("models.name"), primary_key=True),
    sa.Column("version", NAME, primary_key=True),
    sa.Column("runtime", sa.String(64), nullable=False),
    sa.Column("uri", sa.Text, nullable=False),
    sa.Column("artifact_digest", sa.String(64), nullable=True),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("schema", sa.JSON, nullable=True),
    sa.Column("created_at", TIMESTAMP, nullable=False),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("model", NAME, primary_key=True),
    sa.Column("alias", NAME, primary_key=True),
    sa.Column("version", NAME, nullable=False),
    sa.ForeignKeyConstraint(["model", "version"], ["versions.model", "versions.version"]),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("model", NAME, nullable=False),
    sa.Column("version", NAME, nullable=False),
    sa.Column("replicas", sa.Integer, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    # sha256 hex of the plaintext; the plaintext itself is never stored.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    # sorted comma-separated list, e.g. "admin,inference"
    sa.Column("scopes", sa.String(255), nullable=False),
    sa.Column("rate_limit_per_s", sa.Float, nullable=True),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("revoked_at", TIMESTAMP, nullable=True),
    # LLM limits (registry/records.py ``LlmLimits``); NULL: no limit on that measure.
    sa.Column("team", NAME, nullable=True),
    sa.Column("requests_per_minute", sa.BigInteger, nullable=True),
    sa.Column("tokens_per_minute", sa.BigInteger, nullable=True),
    sa.Column("max_concurrent", sa.BigInteger, nullable=True),
    sa.Column("budget_tokens_per_day", sa.BigInteger, nullable=True),
    sa.Column("budget_tokens_per_month", sa.BigInteger, nullable=True),
    # Money as whole micro-dollars: exact on SQLite and PostgreSQL alike (no float, and no
    # Numeric, which SQLite would store as a float).
    sa.Column("budget_usd_micros_per_day", sa.BigInteger, nullable=True),
    sa.Column("budget_usd_micros_per_month", sa.BigInteger, nullable=True),
)

#: The rollout statuses in which a rollout holds its deployment (see ``records.py``).
ACTIVE_ROLLOUT_SQL = "status IN ('running', 'paused')"

rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("rollout_id", sa.Integer, primary_key=True, autoincrement=True),
    # No foreign key to deployments: a rollout's history outlives its deployment.
    sa.Column("deployment", NAME, nullable=False),
    sa.Column("baseline_version", NAME, nullable=False),
    sa.Column("canary_version", NAME, nullable=False),
    sa.Column("steps", sa.JSON, nullable=False),
    sa.Column("step_index", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("step_started_at", TIMESTAMP, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.CheckConstraint(
        "status IN ('running', 'paused', 'promoted', 'rolled_back', 'aborted')",
        name="ck_rollouts_status",
    ),
)
sa.Index("ix_rollouts_deployment", rollouts.c.deployment)
# At most one active rollout per deployment, held by the database itself (both SQLite and
# PostgreSQL have partial indexes), so that two racing starts cannot both win.
sa.Index(
    "uq_rollouts_active_deployment",
    rollouts.c.deployment,
    unique=True,
    sqlite_where=sa.text(ACTIVE_ROLLOUT_SQL),
    postgresql_where=sa.text(ACTIVE_ROLLOUT_SQL),
)

rollout_decisions = sa.Table(
    "rollout_decisions",
    metadata,
    sa.Column("decision_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "rollout_id", sa.Integer, sa.ForeignKey("rollouts.rollout_id"), nullable=False, index=True
    ),
    sa.Column("at", TIMESTAMP, nullable=False),
    sa.Column("step_index", sa.Integer, nullable=False),
    sa.Column("verdict", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("numbers", sa.JSON, nullable=False),
)

traffic_history = sa.Table(
    "traffic_history",
    metadata,
    sa.Column("traffic_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("deployment", NAME, nullable=False),
    sa.Column("at", TIMESTAMP, nullable=False),
    sa.Column("split", sa.JSON, nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
)
sa.Index("ix_traffic_history_deployment", traffic_history.c.deployment, traffic_history.c.at)
