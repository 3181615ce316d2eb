"""Search a collection: vector (HNSW, cosine) and full text (GIN, hashed lexemes),
fused by reciprocal rank, filtered by metadata, floored by similarity.

Modes: ``hybrid`` (default), ``vector``, ``lexical`` (full text only: no query
embedding, no similarity floor; for evaluation and keyword lookups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from strata.errors import InvalidRequest
from strata.observability import tracing
from strata.rag.config import MAX_FILTER_KEYS, MAX_TOP_K
from strata.rag.fusion import rrf
from strata.rag.lexemes import tsquery
from strata.rag.service import RagService, aad
from strata.security.crypto import DecryptError
from strata.storage.repositories import rag as repo
from strata.storage.repositories.semantic_cache import _connection

log = logging.getLogger("strata.rag")

Mode = Literal["hybrid", "vector", "lexical"]
MODES = ("hybrid", "vector", "lexical")
MAX_QUERY_CHARS = 4000


@dataclass
class Hit:
    chunk_id: int
    document_id: str
    position: int
    score: float
    similarity: float | None
    text: str
    heading: list[str]
    source: str | None
    metadata: dict[str, Any]
    vector_rank: int | None = None
    lexical_rank: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "rag.chunk",
            "chunk_id": self.chunk_id,
            "document_id": self.document_id,
            "chunk": self.position,
            "score": round(self.score, 6),
            "similarity": None if self.similarity is None else round(self.similarity, 6),
            "text": self.text,
            "heading": self.heading,
            "source": self.source,
            "metadata": self.metadata,
            "ranks": {"vector": self.vector_rank, "lexical": self.lexical_rank},
        }


@dataclass
class SearchResult:
    hits: list[Hit] = field(default_factory=list)
    embed_ms: float = 0.0
    retrieval_ms: float = 0.0


def parse_filters(rag: RagService, collection_id: str, filters: Any) -> list[list[str]]:
    """``{"key": value | [values]}`` -> hashed alternatives per key (every key must
    match, any of its values)."""
    if filters is None:
        return []
    if not isinstance(filters, dict):
        raise InvalidRequest("filters must be an object of metadata values", param="filters")
    if len(filters) > MAX_FILTER_KEYS:
        raise InvalidRequest(f"at most {MAX_FILTER_KEYS} filter keys", param="filters")
    out = []
    for key, value in filters.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str | int | float | bool) for v in values):
            raise InvalidRequest(
                f"filters.{key}: a string, number or boolean, or a non-empty list of them",
                param=f"filters.{key}",
            )
        out.append(rag.meta_hashes(collection_id, str(key), values))
    return out


async def search(
    rag: RagService,
    col: repo.CollectionRow,
    query: str,
    *,
    top_k: int | None = None,
    mode: Mode = "hybrid",
    filters: Any = None,
    min_similarity: float | None = None,
) -> SearchResult:
    if not isinstance(query, str) or not query.strip():
        raise InvalidRequest("query must be a non-empty string", param="query")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidRequest(f"query: at most {MAX_QUERY_CHARS} characters", param="query")
    if mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}", param="mode")
    s = rag.settings
    k = s.top_k if top_k is None else top_k
    if not 1 <= k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be between 1 and {MAX_TOP_K}", param="top_k")
    floor = s.min_similarity if min_similarity is None else min_similarity
    hashed = parse_filters(rag, col.id, filters)
    n = max(s.candidates, k)
    out = SearchResult()

    async def by_text() -> list[tuple[int, float]]:
        async with _connection(rag.engine) as conn:
            q = await tsquery(conn, rag.lexicon, query)
            return await repo.lexical_search(conn, col.id, q, n, hashed) if q else []

    # Full-text search needs no embedding: it runs in PostgreSQL while the query
    # embeds here (hybrid latency: the longer of the two, not their sum).
    lexical = asyncio.ensure_future(by_text()) if mode != "vector" else None
    try:
        vector: list[float] | None = None
        if mode != "lexical":
            t0 = time.perf_counter()
            with tracing.span("rag.embed", {"strata.rag.collection": col.id}):
                vector = (await rag.embed(col.embedding_model, [query])).vectors[0]
            out.embed_ms = (time.perf_counter() - t0) * 1000
    except BaseException:
        if lexical is not None:
            lexical.cancel()
            with contextlib.suppress(BaseException):
                await lexical
        raise

    t1 = time.perf_counter()
    with tracing.span("rag.retrieve", {"strata.rag.mode": mode}) as span:
        iterative = await rag.iterative_scans()

        async def by_vector(conn: Any) -> list[tuple[int, float]]:
            if vector is None:
                return []
            return await repo.vector_search(
                conn, col.id, col.dimensions, vector, n, hashed, s.ef_search, iterative
            )

        async def by_text_result() -> list[tuple[int, float]]:
            return await lexical if lexical is not None else []

        # Both retrievers at once, on two connections; the first also fetches.
        async with _connection(rag.engine) as conn:
            vec, lex = await asyncio.gather(by_vector(conn), by_text_result())
            vrank = {cid: i for i, (cid, _) in enumerate(vec, 1)}
            lrank = {cid: i for i, (cid, _) in enumerate(lex, 1)}
            fused = rrf([[c for c, _ in vec], [c for c, _ in lex]])
            # The floor may drop some: fetch a few more than asked for.
            ids = [cid for cid, _ in fused[: k * 3 if floor > -1 and vector is not None else k]]
            rows: dict[int, Any] = {}
            if ids:
                rows = await repo.fetch_chunks(conn, col.id, ids, vector)
        for cid, score in fused:
            if len(out.hits) == k:
                break
            row = rows.get(cid)
            if row is None:
                continue
            sim = None if row["sim"] is None else float(row["sim"])
            if vector is not None and sim is not None and sim < floor:
                continue
            hit = _decrypt(rag, row, score, sim)
            if hit is not None:
                hit.vector_rank, hit.lexical_rank = vrank.get(cid), lrank.get(cid)
                out.hits.append(hit)
        if span is not None:
            span.set_attributes(
                {"strata.rag.hits": len(out.hits), "strata.rag.candidates": len(fused)}
            )
    out.retrieval_ms = (time.perf_counter() - t1) * 1000
    return out


def _decrypt(rag: RagService, row: Any, score: float, sim: float | None) -> Hit | None:
    d, p = row["document_id"], row["position"]
    c = rag.crypto
    try:
        text = c.decrypt_text(bytes(row["text_enc"]), aad(d, "chunk", p))
        heading = c.decrypt_text(bytes(row["heading_enc"]), aad(d, "heading", p))
        source = c.decrypt_text(bytes(row["source_enc"]), aad(d, "source"))
        metadata = orjson.loads(c.decrypt(bytes(row["metadata_enc"]), aad(d, "metadata")))
    except DecryptError as exc:  # a retired or foreign data key: the chunk is unreadable
        log.warning("rag chunk %s does not decrypt (%s)", row["id"], exc)
        return None
    return Hit(
        int(row["id"]),
        d,
        p,
        score,
        sim,
        text,
        orjson.loads(heading),
        source,
        metadata,
    )
