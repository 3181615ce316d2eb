"""Spend alerts: one row per alert and channel; the unique key makes delivery
exactly-once across instances even when Redis is down.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        # kind:scope:scope_id:period:period_start:threshold (see strata.alerts.events).
        sa.Column("dedupe_key", sa.String(400), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("scope", sa.String(40), nullable=False),
        sa.Column("scope_id", sa.String(200), nullable=False),
        sa.Column("period", sa.String(10), nullable=False),
        sa.Column("period_start", sa.Date, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("channel_type", sa.String(20), nullable=False),
        # pending (claimed, being delivered) → sent | failed
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),  # never holds a secret
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("created_at", TS, server_default=sa.func.now(), nullable=False),
        sa.Column("delivered_at", TS),
        sa.UniqueConstraint("dedupe_key", "channel", name="uq_alert_deliveries_key_channel"),
    )
    op.create_index("ix_alert_deliveries_created", "alert_deliveries", ["created_at"])
    op.create_index("ix_alert_deliveries_scope", "alert_deliveries", ["scope", "scope_id"])


def downgrade() -> None:
    op.drop_table("alert_deliveries")
