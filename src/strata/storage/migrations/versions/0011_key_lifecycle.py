"""API key lifecycle: scopes, allowed model aliases, expiry, IP allow-list, rotation.

All new columns are nullable and NULL means "as before" (every scope but admin,
unless the key is an admin key; every alias; never expires; any address), so
existing keys keep working unchanged.

Rotation keeps one key identity (id, tenant, user, settings) and swaps its secret:
the new hash goes to ``key_hash`` and the old one to ``previous_hash``, accepted
until ``previous_expires_at`` (the grace window). Rotating again within a grace
window ends the older secret at once (only one previous secret is kept).
``rotated_at`` dates the current secret (NULL: it is the one made at creation),
so ``strata keys rotate --older-than`` goes by the secret's age.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    text_array = postgresql.ARRAY(sa.Text())
    op.add_column("api_keys", sa.Column("scopes", text_array, nullable=True))
    op.add_column("api_keys", sa.Column("allowed_models", text_array, nullable=True))
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    # CIDRs as text (validated by the application; PostgreSQL's cidr rejects host bits).
    op.add_column("api_keys", sa.Column("ip_allow", text_array, nullable=True))
    op.add_column("api_keys", sa.Column("previous_hash", sa.String(64), nullable=True))
    op.add_column(
        "api_keys", sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("api_keys", sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_api_keys_previous_hash", "api_keys", ["previous_hash"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_previous_hash", table_name="api_keys")
    for column in (
        "rotated_at",
        "previous_expires_at",
        "previous_hash",
        "ip_allow",
        "expires_at",
        "allowed_models",
        "scopes",
    ):
        op.drop_column("api_keys", column)
