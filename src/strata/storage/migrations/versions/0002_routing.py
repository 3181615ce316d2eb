"""Routing: attempts and fallback on usage records.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "usage_records", sa.Column("attempts", sa.Integer, nullable=False, server_default="0")
    )
    op.add_column(
        "usage_records",
        sa.Column("fallback", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("usage_records", "fallback")
    op.drop_column("usage_records", "attempts")
