"""Per-key, per-user and per-tenant overrides of rate limits and budget caps.

Each row holds only the fields it overrides (JSON): a field absent falls back to
strata.yaml, a field set to null means "unlimited" for that subject.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "limit_overrides",
        sa.Column("scope", sa.String(16), primary_key=True),
        # A key id, "tenant/user", a tenant id, or an alias name.
        sa.Column("subject", sa.String(256), primary_key=True),
        sa.Column("rules", postgresql.JSONB, nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "scope IN ('key', 'user', 'tenant', 'alias')", name="ck_limit_overrides_scope"
        ),
    )
    op.create_table(
        "budget_caps",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("subject", sa.String(256), primary_key=True),
        sa.Column("caps", postgresql.JSONB, nullable=False),
        sa.Column("updated_at", TS, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("scope IN ('key', 'user', 'tenant')", name="ck_budget_caps_scope"),
    )


def downgrade() -> None:
    op.drop_table("budget_caps")
    op.drop_table("limit_overrides")
