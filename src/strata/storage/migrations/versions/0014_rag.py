"""RAG: collections, documents, chunks with pgvector and full-text indexes.

Needs pgvector, like the semantic cache (0006): on a server without the extension
the tables are not created and RAG reports itself unavailable.

Personal data is encrypted by the application (``*_enc``, AES-256-GCM, see
strata.security.crypto); the full-text index holds keyed hashes of lexemes, not
words (strata.rag.lexemes); metadata filters use keyed hashes too
(``meta_index``). Embeddings are deleted with their document (cascade).

Vectors: one untyped ``vector`` column with the row's dimension count (collections
use different models); search goes through partial HNSW indexes (cosine) on
``embedding::vector(N) WHERE dims = N``: 384 (the default MiniLM) here, others
created when a collection first needs them.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    if available is None:
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(
        """
        CREATE TABLE rag_collections (
            id varchar(40) PRIMARY KEY,
            tenant_id varchar(64) NOT NULL,
            name varchar(128) NOT NULL,
            embedding_model varchar(200) NOT NULL,
            dimensions integer NOT NULL,
            settings jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_rag_collections_tenant_name UNIQUE (tenant_id, name)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE rag_documents (
            id varchar(40) PRIMARY KEY,
            collection_id varchar(40) NOT NULL
                REFERENCES rag_collections (id) ON DELETE CASCADE,
            tenant_id varchar(64) NOT NULL,
            user_id varchar(128) NOT NULL,
            source_hmac char(64) NOT NULL,
            content_hmac char(64) NOT NULL,
            source_enc bytea NOT NULL,
            text_enc bytea NOT NULL,
            metadata_enc bytea NOT NULL,
            meta_index text[] NOT NULL DEFAULT '{}',
            format varchar(16) NOT NULL,
            chunks integer NOT NULL,
            bytes integer NOT NULL,
            dek_id integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT uq_rag_documents_source UNIQUE (collection_id, source_hmac)
        )
        """
    )
    op.execute("CREATE INDEX ix_rag_documents_user ON rag_documents (tenant_id, user_id)")
    op.execute("CREATE INDEX ix_rag_documents_dek ON rag_documents (dek_id)")
    op.execute(
        """
        CREATE TABLE rag_chunks (
            id bigserial PRIMARY KEY,
            document_id varchar(40) NOT NULL REFERENCES rag_documents (id) ON DELETE CASCADE,
            collection_id varchar(40) NOT NULL,
            position integer NOT NULL,
            dims integer NOT NULL,
            embedding vector NOT NULL,
            tsv tsvector NOT NULL,
            meta_index text[] NOT NULL DEFAULT '{}',
            text_enc bytea NOT NULL,
            heading_enc bytea NOT NULL,
            dek_id integer NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX ix_rag_chunks_document ON rag_chunks (document_id, position)")
    op.execute("CREATE INDEX ix_rag_chunks_collection ON rag_chunks (collection_id)")
    op.execute("CREATE INDEX ix_rag_chunks_dek ON rag_chunks (dek_id)")
    op.execute("CREATE INDEX ix_rag_chunks_tsv ON rag_chunks USING gin (tsv)")
    op.execute("CREATE INDEX ix_rag_chunks_meta ON rag_chunks USING gin (meta_index)")
    op.execute(
        "CREATE INDEX ix_rag_chunks_hnsw_384 ON rag_chunks "
        "USING hnsw ((embedding::vector(384)) vector_cosine_ops) WHERE dims = 384"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS rag_chunks")
    op.execute("DROP TABLE IF EXISTS rag_documents")
    op.execute("DROP TABLE IF EXISTS rag_collections")
