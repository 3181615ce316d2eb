"""The Batch API (OpenAI-compatible): create, retrieve, list, cancel.

    POST /v1/batches                 {input_file_id, endpoint, completion_window, metadata}
    GET  /v1/batches/{batch_id}
    GET  /v1/batches                 ?after=&limit=
    POST /v1/batches/{batch_id}/cancel

Scope ``batches``. Creating one checks the input file (the caller's tenant, purpose
``batch``) and queues the batch; workers do the rest (strata.jobs). Request counts
move as results are committed. Another tenant's batch is 404.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from strata.api.deps import PrincipalDep, RuntimeDep
from strata.api.files import crypto_of, page
from strata.errors import InvalidRequest, NotFound
from strata.files import store
from strata.files.validate import ENDPOINTS
from strata.jobs.queue import enqueue_batch, make_queue
from strata.security.crypto import Crypto
from strata.storage.repositories import batches as repo
from strata.util import json_response

router = APIRouter()
PATH = "/v1/batches"
WINDOWS = {"24h": timedelta(hours=24)}


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=40)
    endpoint: str
    completion_window: str
    # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def to_openai(crypto: Crypto, b: repo.BatchRow) -> dict[str, Any]:
    """OpenAI's Batch object."""
    metadata = None
    if b.metadata_enc is not None:
        metadata = orjson.loads(crypto.decrypt(b.metadata_enc, repo.metadata_aad(b.id)))
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": b.errors,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": _ts(b.created_at),
        "in_progress_at": _ts(b.in_progress_at),
        "expires_at": _ts(b.expires_at),
        "finalizing_at": _ts(b.finalizing_at),
        "completed_at": _ts(b.completed_at),
        "failed_at": _ts(b.failed_at),
        "expired_at": _ts(b.expired_at),
        "cancelling_at": _ts(b.cancelling_at),
        "cancelled_at": _ts(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": metadata,
    }


async def _enqueue(request: Request, batch_id: str) -> None:
    rt = request.app.state.runtime
    queue = getattr(request.app.state, "jobs_queue", None)
    if queue is None:
        queue = request.app.state.jobs_queue = make_queue(rt.settings)
    await enqueue_batch(queue, rt.settings, batch_id)


async def _find(rt: Any, tenant_id: str, batch_id: str) -> repo.BatchRow:
    row = await repo.get(rt.engine, tenant_id, batch_id)
    if row is None:
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return row


@router.post(PATH)
async def create_batch(
    request: Request, rt: RuntimeDep, principal: PrincipalDep, body: CreateBatch
) -> Response:
    principal.require_any_scope(("batches",))
    if body.endpoint not in ENDPOINTS:
        raise InvalidRequest(f"'endpoint' must be one of {', '.join(ENDPOINTS)}", param="endpoint")
    if body.completion_window not in WINDOWS:
        raise InvalidRequest("'completion_window' must be \"24h\"", param="completion_window")
    for k, v in (body.metadata or {}).items():
        if len(k) > 64 or len(v) > 512:
            raise InvalidRequest(
                "metadata keys are at most 64 characters, values 512", param="metadata"
            )
    file = await store.repo.get(rt.engine, principal.tenant_id, body.input_file_id)
    if file is None:
        raise NotFound(f"No such File object: {body.input_file_id}", param="input_file_id")
    if file.purpose != "batch":
        raise InvalidRequest(
            f"file {file.id} has purpose '{file.purpose}'; a batch needs purpose 'batch'",
            param="input_file_id",
        )
    crypto = crypto_of(rt)
    batch_id = "batch_" + secrets.token_hex(12)
    meta = None
    if body.metadata is not None:
        meta = crypto.encrypt(orjson.dumps(body.metadata), repo.metadata_aad(batch_id))
    await repo.create(
        rt.engine,
        {
            "id": batch_id,
            "tenant_id": principal.tenant_id,
            "user_id": principal.user_id,
            "key_id": principal.key_id,
            "endpoint": body.endpoint,
            "input_file_id": file.id,
            "completion_window": body.completion_window,
            "status": "validating",
            "queue": rt.settings.jobs.queue,
            "total": file.lines,
            "metadata_enc": meta,
            "expires_at": datetime.now(UTC) + WINDOWS[body.completion_window],
        },
    )
    await _enqueue(request, batch_id)
    row = await _find(rt, principal.tenant_id, batch_id)
    return json_response(to_openai(crypto, row))


@router.get(PATH + "/{batch_id}")
async def retrieve_batch(rt: RuntimeDep, principal: PrincipalDep, batch_id: str) -> Response:
    principal.require_any_scope(("batches",))
    return json_response(to_openai(crypto_of(rt), await _find(rt, principal.tenant_id, batch_id)))


@router.get(PATH)
async def list_batches(
    rt: RuntimeDep, principal: PrincipalDep, after: str | None = None, limit: int = 20
) -> Response:
    principal.require_any_scope(("batches",))
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be between 1 and 100", param="limit")
    rows = await repo.list_batches(rt.engine, principal.tenant_id, after=after, limit=limit + 1)
    crypto = crypto_of(rt)
    return page([to_openai(crypto, r) for r in rows[:limit]], len(rows) > limit)


@router.post(PATH + "/{batch_id}/cancel")
async def cancel_batch(
    request: Request, rt: RuntimeDep, principal: PrincipalDep, batch_id: str
) -> Response:
    principal.require_any_scope(("batches",))
    row = await _find(rt, principal.tenant_id, batch_id)
    if row.status in ("validating", "in_progress"):
        moved = await repo.transition(
            rt.engine,
            batch_id,
            "cancelling",
            only_from=("validating", "in_progress"),
            tenant_id=principal.tenant_id,
        )
        if moved is not None:
            # The worker running it stops within a lease tick; if none is, this job
            # finalises it.
            await _enqueue(request, batch_id)
    elif row.status not in ("cancelling", "cancelled"):
        raise InvalidRequest(
            f"batch {batch_id} is {row.status}; only a validating or in-progress batch "
            "can be cancelled",
            param="batch_id",
        )
    return json_response(to_openai(crypto_of(rt), await _find(rt, principal.tenant_id, batch_id)))
