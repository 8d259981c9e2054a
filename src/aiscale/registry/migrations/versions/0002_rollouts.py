"""Progressive rollouts: rollouts, rollout_decisions, traffic_history.

Adds tables only; existing rows are untouched. The partial unique index keeps at most one
active (running or paused) rollout per deployment on SQLite and PostgreSQL alike.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# Written out rather than imported from tables.py: a migration must not change when the
# current schema does.
_ACTIVE = "status IN ('running', 'paused')"


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("deployment", sa.String(63), nullable=False),
        sa.Column("baseline_version", sa.String(63), nullable=False),
        sa.Column("canary_version", sa.String(63), nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", name="pk_rollouts"),
        sa.CheckConstraint(
            "status IN ('running', 'paused', 'promoted', 'rolled_back', 'aborted')",
            name="ck_rollouts_status",
        ),
    )
    op.create_index("ix_rollouts_deployment", "rollouts", ["deployment"])
    op.create_index(
        "uq_rollouts_active_deployment",
        "rollouts",
        ["deployment"],
        unique=True,
        sqlite_where=sa.text(_ACTIVE),
        postgresql_where=sa.text(_ACTIVE),
    )
    op.create_table(
        "rollout_decisions",
        sa.Column("decision_id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.Integer, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("numbers", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("decision_id", name="pk_rollout_decisions"),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.rollout_id"],
            name="fk_rollout_decisions_rollout_id_rollouts",
        ),
    )
    op.create_index("ix_rollout_decisions_rollout_id", "rollout_decisions", ["rollout_id"])
    op.create_table(
        "traffic_history",
        sa.Column("traffic_id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("deployment", sa.String(63), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("split", sa.JSON, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("traffic_id", name="pk_traffic_history"),
    )
    op.create_index(
        "ix_traffic_history_deployment", "traffic_history", ["deployment", "at"]
    )


def downgrade() -> None:
    op.drop_table("traffic_history")
    op.drop_table("rollout_decisions")
    op.drop_table("rollouts")
