"""API keys get a team and LLM limits: requests and tokens per minute, concurrent requests,
budgets in tokens and money per day and month.

Adds nullable columns only: existing keys keep working, with no team and no limits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

# Written out rather than imported from tables.py: a migration must not change when the
# current schema does.
_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("team", sa.String(63)),
    ("requests_per_minute", sa.BigInteger()),
    ("tokens_per_minute", sa.BigInteger()),
    ("max_concurrent", sa.BigInteger()),
    ("budget_tokens_per_day", sa.BigInteger()),
    ("budget_tokens_per_month", sa.BigInteger()),
    ("budget_usd_micros_per_day", sa.BigInteger()),
    ("budget_usd_micros_per_month", sa.BigInteger()),
)


def _schema() -> str | None:
    # ALTER TABLE names its table itself: the store's schema_translate_map, which places
    # created tables, does not reach it, so the PostgreSQL schema is named here.
    schema: str | None = context.config.attributes.get("schema")
    return schema


def upgrade() -> None:
    # SQLite adds a nullable column in place (ALTER TABLE ADD COLUMN); no table copy needed.
    for name, column_type in _COLUMNS:
        op.add_column("api_keys", sa.Column(name, column_type, nullable=True), schema=_schema())


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=_schema()) as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
