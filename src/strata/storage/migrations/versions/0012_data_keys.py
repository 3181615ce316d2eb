"""PII field encryption at rest: wrapped data keys; the semantic cache stores ciphertext.

``data_keys`` holds the data-encryption keys, each wrapped (AES-GCM) by the master
key, which never reaches the database (strata.security.crypto). One is active.

``semantic_cache``: the plaintext ``query`` and ``entry`` columns give way to
``query_enc`` / ``entry_enc`` (AES-256-GCM ciphertext), ``query_hmac`` (a keyed
blind index of the question, for the one-row-per-question dedupe) and ``dek_id``
(the data key, so ``strata crypto rotate`` finds what to re-encrypt). Existing rows
are plaintext personal data and a cache: they are deleted, not converted.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _has_semantic_cache() -> bool:
    bind = op.get_bind()
    return bool(bind.execute(sa.text("SELECT to_regclass('semantic_cache') IS NOT NULL")).scalar())


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.text("true")),
    )
    if not _has_semantic_cache():
        return
    op.execute("DELETE FROM semantic_cache")
    op.execute("ALTER TABLE semantic_cache DROP COLUMN query, DROP COLUMN entry")
    op.execute(
        "ALTER TABLE semantic_cache ADD COLUMN query_enc bytea NOT NULL, "
        "ADD COLUMN entry_enc bytea NOT NULL, ADD COLUMN query_hmac char(64) NOT NULL, "
        "ADD COLUMN dek_id integer NOT NULL"
    )
    op.execute("CREATE INDEX ix_semantic_cache_dek ON semantic_cache (dek_id)")


def downgrade() -> None:
    if _has_semantic_cache():
        op.execute("DELETE FROM semantic_cache")
        op.execute("DROP INDEX IF EXISTS ix_semantic_cache_dek")
        op.execute(
            "ALTER TABLE semantic_cache DROP COLUMN query_enc, DROP COLUMN entry_enc, "
            "DROP COLUMN query_hmac, DROP COLUMN dek_id"
        )
        op.execute(
            "ALTER TABLE semantic_cache ADD COLUMN query text NOT NULL, "
            "ADD COLUMN entry jsonb NOT NULL"
        )
    op.drop_table("data_keys")
