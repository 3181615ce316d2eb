"""Usage records keep the client's end-user id (OpenAI's ``user``), encrypted.

``end_user_enc``: AES-256-GCM ciphertext (strata.usage.sealing); ``end_user_hmac``: a
keyed blind index for per-end-user reports and GDPR requests; ``end_user_dek``: the
data key, so ``strata crypto rotate`` finds what to re-encrypt. Existing rows never
held the id: they keep NULL.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("usage_records", sa.Column("end_user_enc", sa.LargeBinary, nullable=True))
    op.add_column("usage_records", sa.Column("end_user_hmac", sa.String(64), nullable=True))
    op.add_column("usage_records", sa.Column("end_user_dek", sa.Integer, nullable=True))
    op.create_index(
        "ix_usage_tenant_end_user",
        "usage_records",
        ["tenant_id", "end_user_hmac", "created_at"],
        postgresql_where=sa.text("end_user_hmac IS NOT NULL"),
    )
    op.create_index(
        "ix_usage_end_user_dek",
        "usage_records",
        ["end_user_dek"],
        postgresql_where=sa.text("end_user_dek IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_usage_end_user_dek", table_name="usage_records")
    op.drop_index("ix_usage_tenant_end_user", table_name="usage_records")
    op.drop_column("usage_records", "end_user_dek")
    op.drop_column("usage_records", "end_user_hmac")
    op.drop_column("usage_records", "end_user_enc")
