"""Background RAG ingestions: one row per upload queued for a worker (its state,
counts and the encrypted list of stored documents).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "rag_ingestions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("collection_id", sa.String(40), nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("uploads", sa.Integer, nullable=False),
        sa.Column("documents", sa.Integer, nullable=False, server_default="0"),
        sa.Column("chunks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("spec_enc", sa.LargeBinary, nullable=False),
        sa.Column("error_enc", sa.LargeBinary),
        sa.Column("lease_owner", sa.String(80)),
        _ts("lease_until"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        _ts("started_at"),
        _ts("finished_at"),
    )
    op.create_index("ix_rag_ingestions_tenant_user", "rag_ingestions", ["tenant_id", "user_id"])
    op.create_index("ix_rag_ingestions_status", "rag_ingestions", ["status"])


def downgrade() -> None:
    op.drop_table("rag_ingestions")
