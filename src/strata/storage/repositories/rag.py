"""RAG rows in PostgreSQL: collections, documents, chunks (pgvector + full text).

Raw asyncpg, like the semantic cache (``vector`` columns the ORM does not know;
vectors travel as pgvector's text form). Every statement that reads or changes
tenant data names the tenant or a collection id already checked against it.

Encrypted at rest (strata.security.crypto): a document's source name, text and
metadata, and each chunk's text and heading path (``*_enc``; ``dek_id`` names the
data key). In clear: ids, counts, the embedding (pgvector must compare it; it is
deleted with its document), the hashed-lexeme ``tsvector`` (rag.lexemes) and
``meta_index``, keyed hashes of metadata ``key=value`` pairs for equality
filters, and the uploading user's id (as usage records and the semantic cache
hold it), for GDPR export and erasure.

Vector search uses one partial HNSW index per dimension count (cosine, on
``embedding::vector(N)`` where ``dims = N``): migration 0014 creates the 384 one
(MiniLM), :func:`ensure_hnsw` the others when a collection first needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strata.storage.repositories.semantic_cache import _connection, _count, vector_text

# pgvector's HNSW index takes at most 2000 dimensions; larger collections are
# searched exactly (still correct, slower).
HNSW_MAX_DIMS = 2000


@dataclass(frozen=True, slots=True)
class CollectionRow:
    id: str
    tenant_id: str
    name: str
    embedding_model: str
    dimensions: int
    settings: dict[str, Any]
    created_at: Any
    documents: int = 0
    chunks: int = 0


def _collection(r: Any) -> CollectionRow:
    import orjson

    s = r["settings"]
    return CollectionRow(
        r["id"],
        r["tenant_id"],
        r["name"],
        r["embedding_model"],
        int(r["dimensions"]),
        orjson.loads(s) if isinstance(s, str | bytes) else dict(s or {}),
        r["created_at"],
        int(r.get("documents") or 0),
        int(r.get("chunks") or 0),
    )


async def available(db: Any) -> bool:
    async with _connection(db) as conn:
        return bool(await conn.fetchval("SELECT to_regclass('rag_chunks') IS NOT NULL"))


async def ensure_hnsw(db: Any, dims: int) -> None:
    """The partial HNSW index for ``dims``-dimensional vectors (idempotent)."""
    if not 0 < dims <= HNSW_MAX_DIMS:
        return
    d = int(dims)
    async with _connection(db) as conn:
        await conn.execute(
            f"CREATE INDEX IF NOT EXISTS ix_rag_chunks_hnsw_{d} ON rag_chunks "
            f"USING hnsw ((embedding::vector({d})) vector_cosine_ops) WHERE dims = {d}"
        )


_COLLECTION_COLS = "c.id, c.tenant_id, c.name, c.embedding_model, c.dimensions, c.settings, " \
    "c.created_at"  # fmt: skip
_COUNTS = (
    "(SELECT count(*) FROM rag_documents d WHERE d.collection_id = c.id) AS documents, "
    "(SELECT coalesce(sum(d.chunks), 0) FROM rag_documents d "
    "WHERE d.collection_id = c.id) AS chunks"
)


async def create_collection(
    db: Any,
    *,
    id: str,
    tenant_id: str,
    name: str,
    embedding_model: str,
    dimensions: int,
    settings: str,
) -> CollectionRow | None:
    """The new collection; None when the tenant already has one of that name."""
    async with _connection(db) as conn:
        r = await conn.fetchrow(
            "INSERT INTO rag_collections (id, tenant_id, name, embedding_model, dimensions, "
            "settings) VALUES ($1, $2, $3, $4, $5, $6::jsonb) "
            "ON CONFLICT (tenant_id, name) DO NOTHING "
            "RETURNING id, tenant_id, name, embedding_model, dimensions, settings, created_at",
            id,
            tenant_id,
            name,
            embedding_model,
            dimensions,
            settings,
        )
    return _collection(r) if r is not None else None


async def get_collection(db: Any, tenant_id: str, ident: str) -> CollectionRow | None:
    """By id or by name, within the tenant."""
    async with _connection(db) as conn:
        r = await conn.fetchrow(
            f"SELECT {_COLLECTION_COLS}, {_COUNTS} FROM rag_collections c "
            "WHERE c.tenant_id = $1 AND (c.id = $2 OR c.name = $2) "
            "ORDER BY (c.id = $2) DESC LIMIT 1",
            tenant_id,
            ident,
        )
    return _collection(r) if r is not None else None


async def list_collections(db: Any, tenant_id: str) -> list[CollectionRow]:
    async with _connection(db) as conn:
        rows = await conn.fetch(
            f"SELECT {_COLLECTION_COLS}, {_COUNTS} FROM rag_collections c "
            "WHERE c.tenant_id = $1 ORDER BY c.created_at, c.id",
            tenant_id,
        )
    return [_collection(r) for r in rows]


async def delete_collection(db: Any, tenant_id: str, collection_id: str) -> bool:
    """Deletes its documents, chunks and vectors with it (ON DELETE CASCADE)."""
    async with _connection(db) as conn:
        status = await conn.execute(
            "DELETE FROM rag_collections WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            collection_id,
        )
    return _count(status) > 0


async def document_state(db: Any, collection_id: str, source_hmac: str) -> tuple[str, str] | None:
    """(document id, content hash) of the document from this source, if any."""
    async with _connection(db) as conn:
        r = await conn.fetchrow(
            "SELECT id, content_hmac FROM rag_documents "
            "WHERE collection_id = $1 AND source_hmac = $2",
            collection_id,
            source_hmac,
        )
    return (r["id"], r["content_hmac"]) if r is not None else None


@dataclass(slots=True)
class DocumentWrite:
    id: str
    collection_id: str
    tenant_id: str
    user_id: str
    source_hmac: str
    content_hmac: str
    source_enc: bytes
    text_enc: bytes
    metadata_enc: bytes
    meta_index: list[str]
    format: str
    size: int
    dek_id: int
    dims: int
    # Per chunk: position, vector text, tsvector literal, text and heading ciphertext.
    positions: list[int]
    vectors: list[str]
    tsvectors: list[str]
    texts: list[bytes]
    headings: list[bytes]


INSERT_CHUNKS_SQL = """
INSERT INTO rag_chunks (document_id, collection_id, position, dims, embedding, tsv,
                        meta_index, text_enc, heading_enc, dek_id)
SELECT $1, $2, u.pos, $3, u.emb::vector, u.tsv::tsvector, $4::text[], u.txt, u.head, $5
FROM unnest($6::int[], $7::text[], $8::text[], $9::bytea[], $10::bytea[])
     AS u(pos, emb, tsv, txt, head)
"""


async def replace_document(db: Any, doc: DocumentWrite) -> tuple[str, bool]:
    """Write a document and its chunks, replacing any earlier version from the same
    source in one transaction (readers see the old chunks or the new, never a mix).
    Returns (document id, replaced); a replaced document keeps its id."""
    async with _connection(db) as conn, conn.transaction():
        # Two uploads of one source at once: the second waits, then replaces.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"rag:{doc.collection_id}")
        old = await conn.fetchval(
            "SELECT id FROM rag_documents WHERE collection_id = $1 AND source_hmac = $2 FOR UPDATE",
            doc.collection_id,
            doc.source_hmac,
        )
        doc_id = old or doc.id
        if old is not None:
            await conn.execute("DELETE FROM rag_chunks WHERE document_id = $1", old)
            await conn.execute(
                "UPDATE rag_documents SET user_id = $2, content_hmac = $3, source_enc = $4, "
                "text_enc = $5, metadata_enc = $6, meta_index = $7::text[], format = $8, "
                "chunks = $9, bytes = $10, dek_id = $11, updated_at = now() WHERE id = $1",
                old,
                doc.user_id,
                doc.content_hmac,
                doc.source_enc,
                doc.text_enc,
                doc.metadata_enc,
                doc.meta_index,
                doc.format,
                len(doc.positions),
                doc.size,
                doc.dek_id,
            )
        else:
            await conn.execute(
                "INSERT INTO rag_documents (id, collection_id, tenant_id, user_id, "
                "source_hmac, content_hmac, source_enc, text_enc, metadata_enc, meta_index, "
                "format, chunks, bytes, dek_id) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text[], $11, $12, $13, $14)",
                doc.id,
                doc.collection_id,
                doc.tenant_id,
                doc.user_id,
                doc.source_hmac,
                doc.content_hmac,
                doc.source_enc,
                doc.text_enc,
                doc.metadata_enc,
                doc.meta_index,
                doc.format,
                len(doc.positions),
                doc.size,
                doc.dek_id,
            )
        if doc.positions:
            await conn.execute(
                INSERT_CHUNKS_SQL,
                doc_id,
                doc.collection_id,
                doc.dims,
                doc.meta_index,
                doc.dek_id,
                doc.positions,
                doc.vectors,
                doc.tsvectors,
                doc.texts,
                doc.headings,
            )
    return doc_id, old is not None


_DOC_COLS = (
    "id, collection_id, source_enc, metadata_enc, format, chunks, bytes, created_at, updated_at"
)


async def list_documents(
    db: Any, collection_id: str, limit: int, after: str | None = None
) -> list[Any]:
    """A page of a collection's documents by id (the collection is the caller's)."""
    async with _connection(db) as conn:
        return list(
            await conn.fetch(
                f"SELECT {_DOC_COLS} FROM rag_documents WHERE collection_id = $1 "
                "AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
                collection_id,
                after,
                limit,
            )
        )


async def get_document(db: Any, collection_id: str, document_id: str) -> Any:
    async with _connection(db) as conn:
        return await conn.fetchrow(
            f"SELECT {_DOC_COLS}, text_enc FROM rag_documents WHERE collection_id = $1 AND id = $2",
            collection_id,
            document_id,
        )


async def delete_document(db: Any, collection_id: str, document_id: str) -> bool:
    """Its chunks and vectors go with it (ON DELETE CASCADE)."""
    async with _connection(db) as conn:
        status = await conn.execute(
            "DELETE FROM rag_documents WHERE collection_id = $1 AND id = $2",
            collection_id,
            document_id,
        )
    return _count(status) > 0


def _filters(filters: list[list[str]], first: int) -> tuple[str, list[Any]]:
    """One ``meta_index && $n`` per filtered key: any of its values, every key."""
    sql = "".join(f" AND meta_index && ${first + i}::text[]" for i in range(len(filters)))
    return sql, list(filters)


async def vector_search(
    conn: Any,
    collection_id: str,
    dims: int,
    vector: list[float],
    limit: int,
    filters: list[list[str]],
    ef_search: int,
    iterative: bool,
) -> list[tuple[int, float]]:
    """(chunk id, cosine similarity), nearest first, through the HNSW index.

    Filtering happens in the index scan; with pgvector 0.8+ (``iterative``) the scan
    goes on until ``limit`` rows pass the filter, instead of returning fewer."""
    d = int(dims)
    where, params = _filters(filters, 4)
    cast = f"vector({d})" if d <= HNSW_MAX_DIMS else "vector"
    async with conn.transaction():
        # One round trip (simple query protocol: several statements, no parameters).
        await conn.execute(
            f"SET LOCAL hnsw.ef_search = {max(int(ef_search), int(limit))}"
            + ("; SET LOCAL hnsw.iterative_scan = relaxed_order" if iterative else "")
        )
        rows = await conn.fetch(
            f"SELECT id, embedding::{cast} <=> $1::text::{cast} AS dist FROM rag_chunks "
            f"WHERE collection_id = $2 AND dims = {d}{where} "
            f"ORDER BY embedding::{cast} <=> $1::text::{cast} LIMIT $3",
            vector_text(vector),
            collection_id,
            limit,
            *params,
        )
    out = [(int(r["id"]), 1.0 - float(r["dist"])) for r in rows]
    out.sort(key=lambda x: -x[1])  # relaxed_order may return near-ties out of order
    return out


async def lexical_search(
    conn: Any, collection_id: str, tsquery: str, limit: int, filters: list[list[str]]
) -> list[tuple[int, float]]:
    """(chunk id, ts_rank), best first, through the GIN index."""
    where, params = _filters(filters, 4)
    rows = await conn.fetch(
        "SELECT id, ts_rank(tsv, $1::tsquery, 1) AS rank FROM rag_chunks "
        f"WHERE collection_id = $2 AND tsv @@ $1::tsquery{where} "
        "ORDER BY rank DESC, id LIMIT $3",
        tsquery,
        collection_id,
        limit,
        *params,
    )
    return [(int(r["id"]), float(r["rank"])) for r in rows]


async def fetch_chunks(
    conn: Any, collection_id: str, ids: list[int], vector: list[float] | None
) -> dict[int, Any]:
    """The chunks, with their document's source and metadata and their similarity
    (NULL without a query vector)."""
    rows = await conn.fetch(
        "SELECT c.id, c.document_id, c.position, c.text_enc, c.heading_enc, "
        "d.source_enc, d.metadata_enc, 1 - (c.embedding <=> $3::text::vector) AS sim "
        "FROM rag_chunks c JOIN rag_documents d ON d.id = c.document_id "
        "WHERE c.collection_id = $1 AND c.id = ANY($2::bigint[])",
        collection_id,
        ids,
        vector_text(vector) if vector is not None else None,
    )
    return {int(r["id"]): r for r in rows}


async def pgvector_version(db: Any) -> tuple[int, ...]:
    async with _connection(db) as conn:
        v = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    try:
        return tuple(int(x) for x in str(v or "0").split("."))
    except ValueError:
        return (0,)


# -- privacy: export, erasure, key rotation -------------------------------------------


async def documents_of_user(db: Any, tenant_id: str, user_id: str) -> list[Any]:
    async with _connection(db) as conn:
        return list(
            await conn.fetch(
                "SELECT d.id, d.collection_id, c.name AS collection, d.source_enc, d.text_enc, "
                "d.metadata_enc, d.format, d.chunks, d.created_at, d.updated_at "
                "FROM rag_documents d JOIN rag_collections c ON c.id = d.collection_id "
                "WHERE d.tenant_id = $1 AND d.user_id = $2 ORDER BY d.created_at, d.id",
                tenant_id,
                user_id,
            )
        )


async def delete_user(db: Any, tenant_id: str, user_id: str) -> tuple[int, int]:
    """Every document the subject uploaded, with its chunks and vectors:
    (documents, chunks) deleted."""
    async with _connection(db) as conn, conn.transaction():
        chunks = await conn.fetchval(
            "SELECT coalesce(sum(chunks), 0) FROM rag_documents "
            "WHERE tenant_id = $1 AND user_id = $2",
            tenant_id,
            user_id,
        )
        status = await conn.execute(
            "DELETE FROM rag_documents WHERE tenant_id = $1 AND user_id = $2",
            tenant_id,
            user_id,
        )
    return _count(status), int(chunks or 0)


async def key_ids_in_use(db: Any) -> set[int]:
    async with _connection(db) as conn:
        rows = await conn.fetch(
            "SELECT dek_id FROM rag_documents UNION SELECT dek_id FROM rag_chunks"
        )
    return {int(r["dek_id"]) for r in rows}


async def reencrypt_batch(db: Any, crypto: Any, batch: int = 200) -> int:
    """Re-encrypt up to ``batch`` documents (and their chunks) not under the active
    data key (``strata crypto rotate``); how many. A document whose fields no
    longer open is left alone (it is data, not a cache: never deleted here)."""
    from strata.rag.service import reencrypt_document

    active = crypto.active_id
    done = 0
    async with _connection(db) as conn, conn.transaction():
        docs = await conn.fetch(
            "SELECT id, source_enc, text_enc, metadata_enc FROM rag_documents "
            "WHERE (dek_id <> $1 OR EXISTS (SELECT 1 FROM rag_chunks c "
            "WHERE c.document_id = rag_documents.id AND c.dek_id <> $1)) "
            "AND dek_id = ANY($3::int[]) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            active,
            batch,
            sorted(crypto.key_ids()),
        )
        for d in docs:
            chunks = await conn.fetch(
                "SELECT id, position, text_enc, heading_enc FROM rag_chunks WHERE document_id = $1",
                d["id"],
            )
            new = reencrypt_document(crypto, d, chunks)
            if new is None:
                continue
            doc_fields, chunk_fields = new
            await conn.execute(
                "UPDATE rag_documents SET source_enc = $2, text_enc = $3, metadata_enc = $4, "
                "dek_id = $5 WHERE id = $1",
                d["id"],
                *doc_fields,
                active,
            )
            await conn.executemany(
                "UPDATE rag_chunks SET text_enc = $2, heading_enc = $3, dek_id = $4 WHERE id = $1",
                [(cid, t, h, active) for cid, t, h in chunk_fields],
            )
            done += 1
    return done
