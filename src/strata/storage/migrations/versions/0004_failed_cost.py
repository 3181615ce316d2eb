"""Cost of failed attempts that were probably billed upstream.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "usage_records",
        sa.Column("failed_cost_usd", sa.Numeric(20, 10), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("usage_records", "failed_cost_usd")
