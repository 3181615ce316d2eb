"""The OpenTelemetry trace id of each usage record's request (when traced).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # 32 hex digits (W3C trace-id); NULL when tracing is off.
    op.add_column("usage_records", sa.Column("trace_id", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("usage_records", "trace_id")
