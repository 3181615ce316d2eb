"""Response cache: status and dollars saved on usage records.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("usage_records", sa.Column("cache", sa.String(20)))
    op.add_column(
        "usage_records",
        sa.Column("saved_usd", sa.Numeric(20, 10), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("usage_records", "saved_usd")
    op.drop_column("usage_records", "cache")
