"""RAG collections and ingestion: the policy between the API/CLI and the repository.

Ingestion: extract (off the event loop) -> chunk -> skip documents whose content
hash is unchanged -> embed every pending chunk in batches of
``rag.embed_batch_size`` (32) across documents -> write each document as soon as
its last chunk is embedded, while the next batch embeds (the local model runs on
its own thread, so PostgreSQL work and encryption overlap the forward passes).
Each document is written in one transaction that replaces its earlier version.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from strata.errors import InvalidRequest, NotFound, ServiceUnavailable, StrataError
from strata.providers.base import EmbedResult
from strata.rag import extract as ex
from strata.rag.chunking import Chunk, chunk_sections
from strata.rag.config import ChunkingSettings, RagSettings
from strata.rag.lexemes import Lexicon, tsvectors
from strata.security.crypto import DecryptError
from strata.storage.repositories import rag as repo
from strata.storage.repositories.semantic_cache import _connection, vector_text

EmbedFn = Callable[[str, list[str]], Awaitable[EmbedResult]]
MAX_SOURCE_CHARS = 1000
MAX_META_KEYS = 64
# Embedding batches sorted by length together (see _embed_and_write).
WINDOW_BATCHES = 8
META_TYPES = ("string", "number", "boolean")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def aad(document_id: str, field_: str, position: int | None = None) -> bytes:
    """Associated data: a ciphertext opens only in its own document (and chunk) field."""
    where = "" if position is None else f"\0{position}"
    return f"rag\0{document_id}\0{field_}{where}".encode()


def _of_type(kind: str, value: Any) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def _norm(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class DocumentInput:
    data: bytes
    format: str
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestResult:
    id: str
    source: str
    status: str  # created | replaced | unchanged
    chunks: int

    def to_json(self) -> dict[str, Any]:
        return {"object": "rag.document", **self.__dict__}


@dataclass
class _Pending:
    source: str
    text: str
    fmt: str
    size: int
    metadata: dict[str, Any]
    source_hmac: str
    content_hmac: str
    chunks: list[Chunk]


class RagService:
    def __init__(
        self,
        engine: Any,
        crypto: Any,
        settings: RagSettings,
        embed: EmbedFn,
        embedding_aliases: Callable[[], set[str]] | None = None,
    ) -> None:
        self.engine = engine
        self.crypto = crypto
        self.settings = settings
        self.embed = embed
        self.embedding_aliases = embedding_aliases
        self.lexicon = Lexicon(crypto)
        self._iterative: bool | None = None

    # -- helpers -------------------------------------------------------------------

    def _ready(self) -> None:
        if not self.crypto.ready:
            raise ServiceUnavailable("document storage is not ready (no data key loaded yet)")

    def meta_hashes(self, collection_id: str, key: str, values: list[Any]) -> list[str]:
        return [
            self.crypto.blind_index(
                f"rag-meta\0{collection_id}\0{key}\0{orjson.dumps(_norm(v)).decode()}"
            )[:32]
            for v in values
        ]

    def _meta_index(self, collection_id: str, metadata: dict[str, Any]) -> list[str]:
        return sorted(
            h
            for k, v in metadata.items()
            for h in self.meta_hashes(collection_id, k, v if isinstance(v, list) else [v])
        )

    async def iterative_scans(self) -> bool:
        if self._iterative is None:
            self._iterative = await repo.pgvector_version(self.engine) >= (0, 8)
        return self._iterative

    # -- collections ---------------------------------------------------------------

    async def create_collection(
        self,
        tenant: str,
        name: str,
        embedding_model: str | None = None,
        chunking: ChunkingSettings | None = None,
        metadata_schema: Mapping[str, str] | None = None,
    ) -> repo.CollectionRow:
        alias = embedding_model or self.settings.embeddings
        if self.embedding_aliases is not None and alias not in self.embedding_aliases():
            raise InvalidRequest(
                f"'{alias}' is not an embedding model of this server", param="embedding_model"
            )
        # One embedding tells the dimension count (and proves the model answers).
        dims = len((await self.embed(alias, ["dimension probe"])).vectors[0])
        settings = {
            "chunking": (chunking or self.settings.chunking).model_dump(),
            "metadata_schema": dict(metadata_schema or {}),
        }
        row = await repo.create_collection(
            self.engine,
            id=new_id("col"),
            tenant_id=tenant,
            name=name,
            embedding_model=alias,
            dimensions=dims,
            settings=orjson.dumps(settings).decode(),
        )
        if row is None:
            raise InvalidRequest(
                f"a collection named '{name}' already exists", param="name", code="already_exists"
            )
        await repo.ensure_hnsw(self.engine, dims)
        return row

    async def collection(self, tenant: str, ident: str) -> repo.CollectionRow:
        row = await repo.get_collection(self.engine, tenant, ident)
        if row is None:
            raise NotFound(f"no collection '{ident}'", param="collection", code="not_found")
        return row

    # -- ingestion -----------------------------------------------------------------

    def _check_metadata(self, col: repo.CollectionRow, metadata: dict[str, Any]) -> None:
        if len(metadata) > MAX_META_KEYS:
            raise InvalidRequest(f"at most {MAX_META_KEYS} metadata keys", param="metadata")
        schema: dict[str, str] = col.settings.get("metadata_schema") or {}
        for k, v in metadata.items():
            values = v if isinstance(v, list) else [v]
            if not all(isinstance(x, str | int | float | bool) for x in values):
                raise InvalidRequest(
                    f"metadata '{k}': values are strings, numbers, booleans or lists of them",
                    param="metadata",
                )
            if schema:
                kind = schema.get(k)
                if kind is None:
                    raise InvalidRequest(
                        f"metadata '{k}' is not in the collection's schema", param="metadata"
                    )
                if not all(_of_type(kind, x) for x in values):
                    raise InvalidRequest(f"metadata '{k}' must be a {kind}", param="metadata")

    def _prepare(self, col: repo.CollectionRow, doc: DocumentInput) -> list[_Pending]:
        """Extract and chunk one upload (CPU work: runs in a thread)."""
        if len(doc.data) > self.settings.max_document_bytes:
            raise InvalidRequest(
                f"the document is larger than {self.settings.max_document_bytes} bytes"
            )
        base = doc.source or "sha256:" + hashlib.sha256(doc.data).hexdigest()[:32]
        if len(base) > MAX_SOURCE_CHARS:
            raise InvalidRequest(f"source: at most {MAX_SOURCE_CHARS} characters", param="source")
        chunking = ChunkingSettings(**col.settings.get("chunking", {}))
        out = []
        for item in ex.extract(doc.data, doc.format):
            source = base if item.key is None else f"{base}#{item.key}"
            metadata = {**item.metadata, **doc.metadata}
            self._check_metadata(col, metadata)
            text = item.text
            chunks = chunk_sections(item.sections, chunking.max_tokens, chunking.overlap_tokens)
            if not chunks:
                raise InvalidRequest(f"no text could be extracted from '{source}'")
            digest = hashlib.sha256(
                orjson.dumps([text, metadata, col.embedding_model, chunking.model_dump()])
            ).hexdigest()
            out.append(
                _Pending(
                    source,
                    text,
                    doc.format,
                    len(doc.data),
                    metadata,
                    self.crypto.blind_index(f"rag-source\0{col.id}\0{source}"),
                    self.crypto.blind_index(f"rag-content\0{col.id}\0{digest}"),
                    chunks,
                )
            )
        return out

    async def ingest(
        self,
        col: repo.CollectionRow,
        user_id: str,
        docs: list[DocumentInput],
        on_document: Callable[[IngestResult], None] | None = None,
    ) -> list[IngestResult]:
        """Ingest uploads into a collection (one result per document; a JSONL upload
        holds several). Unchanged documents (same content hash) are skipped."""
        self._ready()
        pending: list[_Pending] = []
        results: dict[str, IngestResult] = {}
        order: list[str] = []
        for doc in docs:
            for p in await asyncio.to_thread(self._prepare, col, doc):
                order.append(p.source)
                state = await repo.document_state(self.engine, col.id, p.source_hmac)
                if state is not None and state[1] == p.content_hmac:
                    results[p.source] = IngestResult(state[0], p.source, "unchanged", len(p.chunks))
                    if on_document is not None:
                        on_document(results[p.source])
                else:
                    pending.append(p)

        def done(r: IngestResult) -> None:
            results[r.source] = r
            if on_document is not None:
                on_document(r)

        await self._embed_and_write(col, user_id, pending, done)
        return [results[s] for s in dict.fromkeys(order)]

    async def _embed_and_write(
        self,
        col: repo.CollectionRow,
        user_id: str,
        pending: list[_Pending],
        done: Callable[[IngestResult], None],
    ) -> None:
        queue: asyncio.Queue[tuple[_Pending, list[list[float]]] | None] = asyncio.Queue()

        async def writer() -> None:
            while (item := await queue.get()) is not None:
                done(await self._write(col, user_id, *item))

        task = asyncio.create_task(writer())
        try:
            size = self.settings.embed_batch_size
            items = [
                (i, j, c.embed_text) for i, p in enumerate(pending) for j, c in enumerate(p.chunks)
            ]
            vectors: list[list[list[float]]] = [[[] for _ in p.chunks] for p in pending]
            left = [len(p.chunks) for p in pending]
            ready = 0  # documents handed to the writer so far
            # Within a window of a few batches, texts of similar length share a batch:
            # less padding per forward pass (sentence-transformers sorts a whole input
            # the same way), while finished documents still reach the writer early.
            window = size * WINDOW_BATCHES
            for w in range(0, len(items), window):
                part = sorted(items[w : w + window], key=lambda x: -len(x[2]))
                for b in range(0, len(part), size):
                    batch = part[b : b + size]
                    result = await self.embed(col.embedding_model, [t for _, _, t in batch])
                    for (i, j, _), vec in zip(batch, result.vectors, strict=True):
                        if len(vec) != col.dimensions:
                            raise StrataError(
                                f"the embedding model '{col.embedding_model}' now returns "
                                f"{len(vec)}-dimensional vectors; the collection holds "
                                f"{col.dimensions}: recreate it to change models"
                            )
                        vectors[i][j] = vec
                        left[i] -= 1
                    while ready < len(pending) and left[ready] == 0:
                        if task.done():
                            task.result()  # the writer failed: raise its error
                        queue.put_nowait((pending[ready], vectors[ready]))
                        ready += 1
            queue.put_nowait(None)
            await task
        finally:
            if not task.done():
                task.cancel()

    async def _write(
        self, col: repo.CollectionRow, user_id: str, p: _Pending, vectors: list[list[float]]
    ) -> IngestResult:
        async with _connection(self.engine) as conn:
            tsv = await tsvectors(conn, self.lexicon, [c.embed_text for c in p.chunks])
        state = await repo.document_state(self.engine, col.id, p.source_hmac)
        doc_id = state[0] if state is not None else new_id("doc")
        enc = self.crypto.encrypt_text
        doc = repo.DocumentWrite(
            id=doc_id,
            collection_id=col.id,
            tenant_id=col.tenant_id,
            user_id=user_id,
            source_hmac=p.source_hmac,
            content_hmac=p.content_hmac,
            source_enc=enc(p.source, aad(doc_id, "source")),
            text_enc=enc(p.text, aad(doc_id, "text")),
            metadata_enc=self.crypto.encrypt(orjson.dumps(p.metadata), aad(doc_id, "metadata")),
            meta_index=self._meta_index(col.id, p.metadata),
            format=p.fmt,
            size=p.size,
            dek_id=int(self.crypto.active_id),
            dims=col.dimensions,
            positions=[c.position for c in p.chunks],
            vectors=[vector_text(v) for v in vectors],
            tsvectors=tsv,
            texts=[enc(c.text, aad(doc_id, "chunk", c.position)) for c in p.chunks],
            headings=[
                enc(orjson.dumps(list(c.heading)).decode(), aad(doc_id, "heading", c.position))
                for c in p.chunks
            ],
        )
        written, replaced = await repo.replace_document(self.engine, doc)
        if written != doc_id:  # a concurrent first upload of this source won the race
            return await self._write(col, user_id, p, vectors)
        return IngestResult(doc_id, p.source, "replaced" if replaced else "created", len(p.chunks))

    # -- reading documents ---------------------------------------------------------

    def decrypt_document(self, row: Any, with_text: bool = False) -> dict[str, Any]:
        return decrypt_document(self.crypto, row, with_text)


def decrypt_document(crypto: Any, row: Any, with_text: bool = False) -> dict[str, Any]:
    """A document row as JSON; fields that no longer open (a retired key) are null."""
    doc_id = row["id"]
    try:
        source: str | None = crypto.decrypt_text(bytes(row["source_enc"]), aad(doc_id, "source"))
        metadata = orjson.loads(crypto.decrypt(bytes(row["metadata_enc"]), aad(doc_id, "metadata")))
        text = (
            crypto.decrypt_text(bytes(row["text_enc"]), aad(doc_id, "text")) if with_text else None
        )
    except DecryptError:
        source, metadata, text = None, None, None
    out = {
        "object": "rag.document",
        "id": doc_id,
        "collection_id": row["collection_id"],
        "source": source,
        "metadata": metadata,
        "format": row["format"],
        "chunks": row["chunks"],
        "created_at": int(row["created_at"].timestamp()),
    }
    if "bytes" in row:
        out["bytes"] = row["bytes"]
    if with_text:
        out["text"] = text
    return out


async def export_documents(
    engine: Any, crypto: Any, tenant: str, user: str
) -> list[dict[str, Any]]:
    """Every document a subject uploaded, decrypted (GDPR export); [] without pgvector."""
    if not await repo.available(engine):
        return []
    rows = await repo.documents_of_user(engine, tenant, user)
    out = []
    for r in rows:
        doc = decrypt_document(crypto, r, with_text=True)
        doc["collection"] = r["collection"]
        out.append(doc)
    return out


async def erase_documents(engine: Any, tenant: str, user: str) -> tuple[int, int]:
    """Delete every document a subject uploaded, with its chunks and vectors."""
    if not await repo.available(engine):
        return 0, 0
    return await repo.delete_user(engine, tenant, user)


def reencrypt_document(
    crypto: Any, doc: Any, chunks: list[Any]
) -> tuple[tuple[bytes, bytes, bytes], list[tuple[int, bytes, bytes]]] | None:
    """New ciphertext of a document's fields and chunks under the active key (key
    rotation); None if any field no longer opens."""
    d = doc["id"]
    try:
        fields = tuple(
            crypto.encrypt(crypto.decrypt(bytes(doc[f"{name}_enc"]), aad(d, name)), aad(d, name))
            for name in ("source", "text", "metadata")
        )
        out = []
        for c in chunks:
            p = c["position"]
            t = crypto.decrypt(bytes(c["text_enc"]), aad(d, "chunk", p))
            h = crypto.decrypt(bytes(c["heading_enc"]), aad(d, "heading", p))
            new_t = crypto.encrypt(t, aad(d, "chunk", p))
            out.append((c["id"], new_t, crypto.encrypt(h, aad(d, "heading", p))))
    except DecryptError:
        return None
    return (fields[0], fields[1], fields[2]), out
