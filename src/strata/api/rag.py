"""RAG API: collections, documents, search and grounded answers (scope ``rag``).

    POST   /v1/rag/collections                                 create
    GET    /v1/rag/collections                                 list (the caller's tenant)
    GET    /v1/rag/collections/{collection_id}                 one (id or name)
    DELETE /v1/rag/collections/{collection_id}                 with its documents and vectors
    POST   /v1/rag/collections/{collection_id}/documents       JSON or multipart upload
                       (?background=true, or past rag.background_bytes: 202, a job)
    GET    /v1/rag/collections/{collection_id}/ingestions/{ingestion_id}   its status
    GET    /v1/rag/collections/{collection_id}/documents       ?limit=&after=
    GET    /v1/rag/collections/{collection_id}/documents/{document_id}   ?include_text=true
    DELETE /v1/rag/collections/{collection_id}/documents/{document_id}
    POST   /v1/rag/collections/{collection_id}/search          ranked chunks
    POST   /v1/rag/collections/{collection_id}/answer          a cited chat completion

Collections belong to a tenant: any key of the tenant with the ``rag`` scope may
use them; another tenant's collection is a 404, whether or not it exists.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import Response

from strata.api.deps import PrincipalDep, RuntimeDep
from strata.api.sse import SSEResponse
from strata.errors import InvalidRequest, ServiceUnavailable, StrataError
from strata.gateway.chat import Controls
from strata.gateway.schemas import validate
from strata.jobs.queue import enqueue_ingestion, make_queue
from strata.observability.logging import request_id_var
from strata.rag import background
from strata.rag import extract as ex
from strata.rag.config import MAX_TOP_K, ChunkingSettings, MetaType
from strata.rag.retrieve import search
from strata.rag.service import DocumentInput, RagService
from strata.runtime import Runtime
from strata.security.keys import Principal
from strata.storage.repositories import rag as repo
from strata.storage.repositories import rag_ingestions as ingestion_repo
from strata.util import json_response

log = logging.getLogger("strata.rag")
router = APIRouter()
PREFIX = "/v1/rag/collections"
MAX_DOCUMENTS_PER_REQUEST = 100
MAX_PAGE = 100


class CollectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    embedding_model: str | None = Field(default=None, max_length=200)
    chunking: ChunkingSettings | None = None
    metadata_schema: dict[str, MetaType] | None = None


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    source: str | None = Field(default=None, min_length=1, max_length=1000)
    format: str = "text"
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000)
    top_k: int | None = Field(default=None, ge=1, le=MAX_TOP_K)
    mode: str = "hybrid"
    filters: dict[str, Any] | None = None
    min_similarity: float | None = Field(default=None, ge=-1, le=1)


def _rag(rt: Runtime, principal: Principal) -> RagService:
    principal.require_any_scope(("rag",))
    rag: RagService | None = getattr(rt.chat, "rag", None)
    if rag is None:
        raise ServiceUnavailable("RAG is not available (it needs pgvector in PostgreSQL)")
    return rag


async def _json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc.msg})") from None


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return validate(model, body)
    except ValidationError:  # validate() already maps these; kept for safety
        raise InvalidRequest("invalid request body") from None


async def _db(aw: Any) -> Any:
    """Storage failures are a 503 naming what failed, never a 500 with internals."""
    try:
        return await aw
    except StrataError:
        raise
    except Exception as exc:
        raise ServiceUnavailable(f"document storage failed ({type(exc).__name__})") from None


def _collection_json(c: repo.CollectionRow) -> dict[str, Any]:
    return {
        "object": "rag.collection",
        "id": c.id,
        "name": c.name,
        "embedding_model": c.embedding_model,
        "dimensions": c.dimensions,
        "chunking": c.settings.get("chunking"),
        "metadata_schema": c.settings.get("metadata_schema") or {},
        "documents": c.documents,
        "chunks": c.chunks,
        "created_at": int(c.created_at.timestamp()),
    }


@router.post(PREFIX)
async def create_collection(request: Request, rt: RuntimeDep, principal: PrincipalDep) -> Response:
    rag = _rag(rt, principal)
    body: CollectionIn = _parse(CollectionIn, await _json(request))
    col = await _db(
        rag.create_collection(
            principal.tenant_id, body.name, body.embedding_model, body.chunking,
            body.metadata_schema,
        )
    )  # fmt: skip
    return json_response(_collection_json(col))


@router.get(PREFIX)
async def list_collections(rt: RuntimeDep, principal: PrincipalDep) -> Response:
    rag = _rag(rt, principal)
    rows = await _db(repo.list_collections(rag.engine, principal.tenant_id))
    return json_response({"object": "list", "data": [_collection_json(c) for c in rows]})


@router.get(PREFIX + "/{collection_id}")
async def get_collection(rt: RuntimeDep, principal: PrincipalDep, collection_id: str) -> Response:
    rag = _rag(rt, principal)
    return json_response(
        _collection_json(await _db(rag.collection(principal.tenant_id, collection_id)))
    )


@router.delete(PREFIX + "/{collection_id}")
async def delete_collection(
    rt: RuntimeDep, principal: PrincipalDep, collection_id: str
) -> Response:
    rag = _rag(rt, principal)
    col = await _db(rag.collection(principal.tenant_id, collection_id))
    await _db(repo.delete_collection(rag.engine, principal.tenant_id, col.id))
    return json_response({"object": "rag.collection.deleted", "id": col.id, "deleted": True})


def _flag(value: Any, name: str = "background") -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0", ""):
        return value.lower() in ("true", "1")
    raise InvalidRequest(f"{name} must be true or false", param=name)


async def _uploads(request: Request, max_bytes: int) -> tuple[list[DocumentInput], bool]:
    """The documents, and whether the client asked for a background ingestion."""
    asked = _flag(request.query_params.get("background"))
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        return await _multipart(request, max_bytes), asked
    body = await _json(request)
    if isinstance(body, dict) and "background" in body:
        body = dict(body)
        asked = _flag(body.pop("background")) or asked
    items = body.get("documents") if isinstance(body, dict) and "documents" in body else [body]
    if not isinstance(items, list) or not items:
        raise InvalidRequest("documents must be a non-empty list", param="documents")
    if len(items) > MAX_DOCUMENTS_PER_REQUEST:
        raise InvalidRequest(
            f"at most {MAX_DOCUMENTS_PER_REQUEST} documents per request", param="documents"
        )
    out = []
    for item in items:
        doc: DocumentIn = _parse(DocumentIn, item)
        if doc.format not in ex.FORMATS or doc.format == "pdf":
            raise InvalidRequest(
                "format: text, markdown, html or jsonl (upload PDFs as multipart files)",
                param="format",
            )
        out.append(DocumentInput(doc.text.encode(), doc.format, doc.source, doc.metadata))
    return out, asked


async def _multipart(request: Request, max_bytes: int) -> list[DocumentInput]:
    try:
        async with request.form(max_files=MAX_DOCUMENTS_PER_REQUEST, max_fields=8) as form:
            return await _form_documents(form, max_bytes)
    except StrataError:
        raise
    except Exception as exc:
        raise InvalidRequest(
            f"expected multipart/form-data with one or more 'file' fields ({type(exc).__name__})",
            param="file",
        ) from None


async def _form_documents(form: Any, max_bytes: int) -> list[DocumentInput]:
    metadata: dict[str, Any] = {}
    raw_meta = form.get("metadata")
    if isinstance(raw_meta, str) and raw_meta:
        try:
            metadata = orjson.loads(raw_meta)
        except orjson.JSONDecodeError:
            raise InvalidRequest("metadata must be a JSON object", param="metadata") from None
        if not isinstance(metadata, dict):
            raise InvalidRequest("metadata must be a JSON object", param="metadata")
    fmt = form.get("format")
    if fmt is not None and fmt not in ex.FORMATS:
        raise InvalidRequest(f"format: one of {', '.join(ex.FORMATS)}", param="format")
    out = []
    for upload in form.getlist("file"):
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("'file' must be a file field", param="file")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise InvalidRequest(f"'{upload.filename}' is larger than {max_bytes} bytes")
        f = fmt or ex.detect_format(upload.filename, upload.content_type)
        out.append(DocumentInput(data, f, upload.filename or None, dict(metadata)))
    if not out:
        raise InvalidRequest("'file' is required (a multipart file field)", param="file")
    return out


@router.post(PREFIX + "/{collection_id}/documents")
async def add_documents(
    request: Request, rt: RuntimeDep, principal: PrincipalDep, collection_id: str
) -> Response:
    rag = _rag(rt, principal)
    col = await _db(rag.collection(principal.tenant_id, collection_id))
    docs, asked = await _uploads(request, rag.settings.max_document_bytes)
    if background.should_run_in_background(rag, docs, asked):
        return await _in_background(request, rt, rag, principal, col, docs)
    results = await _db(rag.ingest(col, principal.user_id, docs))
    return json_response({"object": "list", "data": [r.to_json() for r in results]})


async def _in_background(
    request: Request,
    rt: Runtime,
    rag: RagService,
    principal: Principal,
    col: repo.CollectionRow,
    docs: list[DocumentInput],
) -> Response:
    row = await _db(background.start(rag, principal, col, docs, rt.settings.jobs.queue))
    queue = getattr(request.app.state, "jobs_queue", None)
    try:
        if queue is None:
            queue = request.app.state.jobs_queue = make_queue(rt.settings)
        await enqueue_ingestion(queue, rt.settings, row.id)
    except Exception as exc:  # recorded: the reconcile job queues it once Redis answers
        log.warning("rag ingestion %s not queued yet (%s)", row.id, type(exc).__name__)
    return json_response(background.to_json(rag.crypto, row), status=202)


@router.get(PREFIX + "/{collection_id}/ingestions/{ingestion_id}")
async def get_ingestion(
    rt: RuntimeDep, principal: PrincipalDep, collection_id: str, ingestion_id: str
) -> Response:
    rag = _rag(rt, principal)
    col = await _db(rag.collection(principal.tenant_id, collection_id))
    row = await _db(ingestion_repo.get(rag.engine, principal.tenant_id, ingestion_id))
    if row is None or row.collection_id != col.id:
        from strata.errors import NotFound

        raise NotFound(f"no ingestion '{ingestion_id}' in this collection", param="ingestion_id")
    return json_response(background.to_json(rag.crypto, row))


@router.get(PREFIX + "/{collection_id}/documents")
async def list_documents(
    rt: RuntimeDep,
    principal: PrincipalDep,
    collection_id: str,
    limit: int = 20,
    after: str | None = None,
) -> Response:
    rag = _rag(rt, principal)
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}", param="limit")
    col = await _db(rag.collection(principal.tenant_id, collection_id))
    rows = await _db(repo.list_documents(rag.engine, col.id, limit + 1, after))
    data = [rag.decrypt_document(r) for r in rows[:limit]]
    return json_response(
        {
            "object": "list",
            "data": data,
            "has_more": len(rows) > limit,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@router.get(PREFIX + "/{collection_id}/documents/{document_id}")
async def get_document(
    rt: RuntimeDep,
    principal: PrincipalDep,
    collection_id: str,
    document_id: str,
    include_text: bool = False,
) -> Response:
    rag = _rag(rt, principal)
    col = await _db(rag.collection(principal.tenant_id, collection_id))
    row = await _db(repo.get_document(rag.engine, col.id, document_id))
    if row is None:
        from strata.errors import NotFound

        raise NotFound(f"no document '{document_id}' in this collection", param="document_id")
    return json_response(rag.decrypt_document(row, with_text=include_text))


@router.delete(PREFIX + "/{collection_id}/documents/{document_id}")
async def delete_document(
    rt: RuntimeDep, principal: PrincipalDep, collection_id: str, document_id: str
) -> Response:
    rag = _rag(rt, principal)
    col = await _db(rag.collection(principal.tenant_id, collection_id))
    if not await _db(repo.delete_document(rag.engine, col.id, document_id)):
        from strata.errors import NotFound

        raise NotFound(f"no document '{document_id}' in this collection", param="document_id")
    return json_response({"object": "rag.document.deleted", "id": document_id, "deleted": True})


@router.post(PREFIX + "/{collection_id}/search")
async def search_collection(
    request: Request, rt: RuntimeDep, principal: PrincipalDep, collection_id: str
) -> Response:
    rag = _rag(rt, principal)
    body: SearchIn = _parse(SearchIn, await _json(request))
    col = await _db(rag.collection(principal.tenant_id, collection_id))
    result = await _db(
        search(
            rag, col, body.query, top_k=body.top_k, mode=body.mode,  # type: ignore[arg-type]
            filters=body.filters, min_similarity=body.min_similarity,
        )
    )  # fmt: skip
    return json_response(
        {
            "object": "list",
            "collection_id": col.id,
            "data": [h.to_json() for h in result.hits],
            "timings": {
                "embed_ms": round(result.embed_ms, 3),
                "retrieval_ms": round(result.retrieval_ms, 3),
            },
        }
    )


@router.post(PREFIX + "/{collection_id}/answer")
async def answer(
    request: Request, rt: RuntimeDep, principal: PrincipalDep, collection_id: str
) -> Response:
    """A chat completion grounded on the collection: ``{"query" | "messages", "model",
    "top_k", "filters", "min_similarity", "mode", "stream", ...chat parameters}``."""
    _rag(rt, principal)
    principal.require_any_scope(("chat",))
    body = await _json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    rag_keys = ("top_k", "filters", "min_similarity", "mode")
    chat = {k: v for k, v in body.items() if k not in (*rag_keys, "query")}
    if "query" in body:
        if not isinstance(body["query"], str) or not body["query"].strip():
            raise InvalidRequest("query must be a non-empty string", param="query")
        chat["messages"] = [*chat.get("messages", []), {"role": "user", "content": body["query"]}]
    chat.setdefault("model", rt.settings.rag.answer_model)
    chat["rag"] = {"collection": collection_id, **{k: body[k] for k in rag_keys if k in body}}
    from strata.gateway.schemas import ChatRequest

    validate(ChatRequest, chat)
    principal.check_model(chat["model"])
    meter = rt.meter(principal, request_id_var.get() or "", "chat")
    try:
        if chat.get("stream"):
            meter.event.stream = True
            stream = await rt.chat.open_stream(chat, meter, Controls())
            return SSEResponse(stream, meter.headers())
        out = await rt.chat.complete(chat, meter, Controls())
    except asyncio.CancelledError:
        meter.cancelled()
        raise
    except Exception as exc:
        meter.failed(exc)
        raise
    meter.ok()
    return json_response(out, headers={k.decode(): v.decode() for k, v in meter.headers()})
