"""Auto-routing: a per-key switch, and the routing decision on usage records.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column("auto_routing", sa.Boolean, nullable=False, server_default=sa.true()),
    )
    op.add_column("usage_records", sa.Column("route", sa.String(100)))


def downgrade() -> None:
    op.drop_column("usage_records", "route")
    op.drop_column("api_keys", "auto_routing")
