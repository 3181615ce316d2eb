"""Large RAG uploads as a job on the queue (SAQ) instead of inside the request.

The request checks the upload as a synchronous one would (sizes, names, metadata
against the collection's schema: a 400 before anything is queued), stores each
document's bytes in the encrypted files store (purpose ``rag-ingest``: a worker
may run on another machine, and only PostgreSQL is shared), records the ingestion
(``rag_ingestions``) and queues ``ingest_documents``. Extraction runs in the
worker, so an upload whose text cannot be extracted (a scanned PDF) ends as a
failed ingestion with the message, not as a 400.

The worker ingests through RagService.ingest (the synchronous path: embedding in
batches of ``rag.embed_batch_size``, unchanged documents skipped by content hash,
so a retry after a dead worker redoes only what was not written), writes the counts
as documents finish, and deletes the stored copies once the ingestion is finished:
they are transient, the documents themselves are kept by RAG (encrypted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from strata.errors import InvalidRequest, StrataError
from strata.files import store
from strata.rag.service import MAX_SOURCE_CHARS, DocumentInput, IngestResult, RagService, new_id
from strata.security.crypto import DecryptError
from strata.storage.repositories import files as file_repo
from strata.storage.repositories import rag as rag_repo
from strata.storage.repositories import rag_ingestions as repo

log = logging.getLogger("strata.jobs")

PURPOSE = "rag-ingest"
# Finished ingestion rows stay readable (GET .../ingestions/ID) this long.
KEEP_FINISHED_S = 86_400


def should_run_in_background(rag: RagService, docs: list[DocumentInput], asked: bool) -> bool:
    return asked or sum(len(d.data) for d in docs) > rag.settings.background_bytes


def check(rag: RagService, col: rag_repo.CollectionRow, docs: list[DocumentInput]) -> None:
    """What RagService._prepare checks before extracting: a 400 now, not a failed job."""
    for doc in docs:
        if len(doc.data) > rag.settings.max_document_bytes:
            raise InvalidRequest(
                f"the document is larger than {rag.settings.max_document_bytes} bytes"
            )
        if doc.source is not None and len(doc.source) > MAX_SOURCE_CHARS:
            raise InvalidRequest(f"source: at most {MAX_SOURCE_CHARS} characters", param="source")
        rag._check_metadata(col, doc.metadata)


async def start(
    rag: RagService,
    principal: Any,
    col: rag_repo.CollectionRow,
    docs: list[DocumentInput],
    queue_name: str,
) -> repo.IngestionRow:
    """Store the uploads and record the ingestion (one transaction); the caller queues
    the job. The row is what GET .../ingestions/ID shows."""
    check(rag, col, docs)
    rag._ready()
    crypto = rag.crypto
    ingestion_id = new_id("ing")
    spec = []
    async with rag.engine.begin() as conn:
        for i, doc in enumerate(docs):
            f = await store.save(
                rag.engine,
                crypto,
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                key_id=principal.key_id or "",
                purpose=PURPOSE,
                filename=doc.source or f"{ingestion_id}-{i}",
                data=doc.data,
                conn=conn,
            )
            spec.append(
                {"file": f.id, "format": doc.format, "source": doc.source, "metadata": doc.metadata}
            )
        await repo.insert(
            rag.engine,
            conn,
            id=ingestion_id,
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            collection_id=col.id,
            queue=queue_name,
            uploads=len(docs),
            spec_enc=crypto.encrypt(orjson.dumps(spec), repo.spec_aad(ingestion_id)),
        )
    row = await repo.get(rag.engine, principal.tenant_id, ingestion_id)
    assert row is not None
    return row


def to_json(crypto: Any, row: repo.IngestionRow) -> dict[str, Any]:
    error = None
    if row.error_enc is not None:
        try:
            error = {"message": crypto.decrypt_text(row.error_enc, repo.error_aad(row.id))}
        except (DecryptError, AttributeError):
            error = {"message": None}

    def ts(v: Any) -> int | None:
        return int(v.timestamp()) if v is not None else None

    return {
        "object": "rag.ingestion",
        "id": row.id,
        "collection_id": row.collection_id,
        "status": row.status,
        "uploads": row.uploads,
        "documents": row.documents,
        "chunks": row.chunks,
        "error": error,
        "created_at": ts(row.created_at),
        "started_at": ts(row.started_at),
        "finished_at": ts(row.finished_at),
    }


def _spec(crypto: Any, row: repo.IngestionRow) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = orjson.loads(crypto.decrypt(row.spec_enc, repo.spec_aad(row.id)))
    return data


async def _drop_uploads(engine: Any, row: repo.IngestionRow, spec: list[dict[str, Any]]) -> None:
    for item in spec:
        with contextlib.suppress(Exception):  # a leftover is purged with the user's files
            await file_repo.delete_file(engine, row.tenant_id, item["file"])


async def run(
    rt: Any,
    ingestion_id: str,
    owner: str,
    heartbeat: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """The worker's side; returns the ingestion's status, or "busy" when there is
    nothing to do here (another live worker holds it, it is finished, or erased)."""
    from strata.rag import wiring

    engine = rt.engine
    lease_s = float(rt.settings.batch.lease_s)
    row = await repo.claim(engine, ingestion_id, owner, lease_s)
    if row is None:
        return "busy"
    rag: RagService | None = getattr(rt.chat, "rag", None) or wiring.attach(rt)
    counts = {"documents": 0, "chunks": 0}

    async def fail(message: str, spec: list[dict[str, Any]] | None = None) -> str:
        enc = store.crypto_of(rt).encrypt_text(message, repo.error_aad(row.id))
        await repo.finish(
            engine, row.id, owner, "failed", counts["documents"], counts["chunks"], enc
        )
        if spec is not None:
            await _drop_uploads(engine, row, spec)
        log.info("rag ingestion %s failed: %s", row.id, message)
        return "failed"

    if rag is None:
        return await fail("RAG is disabled on the worker (rag.enabled)")
    spec = _spec(rag.crypto, row)
    col = await rag_repo.get_collection(engine, row.tenant_id, row.collection_id)
    if col is None:
        return await fail("the collection was deleted before its documents were ingested", spec)
    docs = []
    for item in spec:
        if await file_repo.get(engine, row.tenant_id, item["file"]) is None:
            return await fail("the uploaded documents are no longer stored (erased)", spec)
        data = await store.read(engine, rag.crypto, item["file"])
        docs.append(DocumentInput(data, item["format"], item["source"], item["metadata"] or {}))

    def on_document(r: IngestResult) -> None:
        counts["documents"] += 1
        counts["chunks"] += r.chunks

    async def keep_alive() -> None:
        # Progress and the lease in one write, a few times per lease.
        while True:
            await asyncio.sleep(min(1.0, lease_s / 3))
            await repo.progress(
                engine, row.id, owner, counts["documents"], counts["chunks"], lease_s
            )
            if heartbeat is not None:
                await heartbeat()

    ticker = asyncio.create_task(keep_alive())
    try:
        await rag.ingest(col, row.user_id, docs, on_document)
    except StrataError as exc:
        return await fail(exc.message, spec)
    except Exception as exc:
        log.exception("rag ingestion %s failed", row.id)
        return await fail(f"ingestion failed ({type(exc).__name__})", spec)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ticker
    await repo.finish(engine, row.id, owner, "completed", counts["documents"], counts["chunks"])
    await _drop_uploads(engine, row, spec)
    return "completed"


async def export_ingestions(engine: Any, crypto: Any, tenant: str, user: str) -> list[Any]:
    """A subject's ingestions (GDPR export): status, counts, sources and metadata."""
    out = []
    for row in await repo.of_user(engine, tenant, user):
        item = to_json(crypto, row)
        try:
            item["documents_uploaded"] = [
                {"source": s["source"], "format": s["format"], "metadata": s["metadata"]}
                for s in _spec(crypto, row)
            ]
        except (DecryptError, AttributeError):
            item["documents_uploaded"] = None
        out.append(item)
    return out


async def erase_ingestions(engine: Any, tenant: str, user: str) -> int:
    """Delete a subject's ingestion rows (their stored uploads are files of the user,
    deleted by the files erasure)."""
    return await repo.delete_user(engine, tenant, user)
