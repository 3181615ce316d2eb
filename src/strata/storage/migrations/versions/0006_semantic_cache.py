"""Semantic response cache: answers keyed by an embedding of the user text.

The table needs pgvector. The embedded PostgreSQL ships it; on a server without
the extension the table is not created and the semantic cache reports itself
unavailable (exact caching is unaffected).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Per-key opt-in (NULL: as the alias says).
    op.add_column("api_keys", sa.Column("semantic_cache", sa.Boolean, nullable=True))
    bind = op.get_bind()
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    if available is None:
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    # The embedding column is untyped (any dimension): lookups filter on the exact
    # context first and compare vectors only within it, so no ANN index is needed.
    op.execute(
        """
        CREATE TABLE semantic_cache (
            id bigserial PRIMARY KEY,
            namespace varchar(64) NOT NULL,
            alias varchar(200) NOT NULL,
            context_hash char(64) NOT NULL,
            embedding vector NOT NULL,
            query text NOT NULL,
            entry jsonb NOT NULL,
            tenant_id varchar(64) NOT NULL,
            user_id varchar(128) NOT NULL,
            key_id varchar(40) NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_semantic_cache_context "
        "ON semantic_cache (namespace, alias, context_hash, expires_at)"
    )
    op.execute("CREATE INDEX ix_semantic_cache_user ON semantic_cache (tenant_id, user_id)")
    op.execute("CREATE INDEX ix_semantic_cache_expires ON semantic_cache (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS semantic_cache")
    op.drop_column("api_keys", "semantic_cache")
