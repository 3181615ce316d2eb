"""The Files API (OpenAI-compatible): upload, list, retrieve, content, delete.

    POST   /v1/files                     multipart: file, purpose ("batch" is validated)
    GET    /v1/files                     ?purpose=&limit=&after=&order=
    GET    /v1/files/{file_id}
    GET    /v1/files/{file_id}/content
    DELETE /v1/files/{file_id}

Scope ``files``. Files belong to the tenant of the key that uploaded them: any key
of that tenant may read them (as an OpenAI project's), another tenant's id is 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from strata.api.deps import PrincipalDep, RuntimeDep
from strata.errors import InvalidRequest, StrataError
from strata.files import store
from strata.files.store import crypto_of
from strata.files.validate import validate_batch_file
from strata.security.keys import Principal
from strata.storage.repositories import files as repo
from strata.util import json_response

router = APIRouter()
PATH = "/v1/files"
# Multipart framing around the file itself (boundaries, part headers, purpose).
MULTIPART_SLACK = 64 * 1024


def _files_scope(principal: Principal) -> None:
    principal.require_any_scope(("files", "batches"))


def _fields(form: Any, max_bytes: int) -> tuple[UploadFile, str]:
    upload = form.get("file")
    purpose = form.get("purpose")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("'file' is required (a multipart file field)", param="file")
    if not isinstance(purpose, str) or not purpose:
        raise InvalidRequest("'purpose' is required", param="purpose")
    if purpose not in store.PURPOSES:
        raise InvalidRequest(
            f"'purpose' must be one of {', '.join(store.PURPOSES)}", param="purpose"
        )
    if upload.size is not None and upload.size > max_bytes:
        raise InvalidRequest(
            f"the file is {upload.size} bytes; the limit is {max_bytes}", param="file"
        )
    return upload, purpose


async def _read_upload(request: Request, max_bytes: int) -> tuple[bytes, str, str]:
    """The file's bytes, its name and the purpose; the spooled upload is always closed."""
    try:
        form_cm = request.form(max_files=1, max_fields=4)
        form = await form_cm.__aenter__()
    except StrataError:
        raise
    except Exception as exc:
        raise InvalidRequest(
            f"expected a multipart/form-data body with 'file' and 'purpose' ({exc})",
            param="file",
        ) from None
    try:
        upload, purpose = _fields(form, max_bytes)
        return await upload.read(), upload.filename or "upload.jsonl", purpose
    finally:
        await form_cm.__aexit__(None, None, None)


@router.post(PATH)
async def create_file(request: Request, rt: RuntimeDep, principal: PrincipalDep) -> Response:
    _files_scope(principal)
    limit = rt.settings.batch.max_file_bytes
    data, filename, purpose = await _read_upload(request, limit)
    if len(data) > limit:
        raise InvalidRequest(f"the file is {len(data)} bytes; the limit is {limit}", param="file")
    lines = 0
    if purpose == "batch":
        lines = validate_batch_file(data, rt.settings.batch.max_requests)
    crypto = crypto_of(rt)
    row = await store.save(
        rt.engine,
        crypto,
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        key_id=principal.key_id,
        purpose=purpose,
        filename=filename,
        data=data,
        lines=lines,
    )
    return json_response(store.to_openai(crypto, row))


@router.get(PATH)
async def list_files(
    rt: RuntimeDep,
    principal: PrincipalDep,
    purpose: str | None = None,
    limit: int = 100,
    after: str | None = None,
    order: str = "desc",
) -> Response:
    _files_scope(principal)
    if not 1 <= limit <= 10_000:
        raise InvalidRequest("'limit' must be between 1 and 10000", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be asc or desc", param="order")
    rows = await repo.list_files(
        rt.engine, principal.tenant_id, purpose=purpose, after=after, limit=limit + 1, order=order
    )
    crypto = crypto_of(rt)
    return page([store.to_openai(crypto, r) for r in rows[:limit]], len(rows) > limit)


def page(data: list[dict[str, Any]], has_more: bool) -> Response:
    """OpenAI's list envelope (cursor pagination by id)."""
    return json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


@router.get(PATH + "/{file_id}")
async def retrieve_file(rt: RuntimeDep, principal: PrincipalDep, file_id: str) -> Response:
    _files_scope(principal)
    row = await store.find(rt.engine, principal.tenant_id, file_id)
    return json_response(store.to_openai(crypto_of(rt), row))


@router.get(PATH + "/{file_id}/content")
async def file_content(rt: RuntimeDep, principal: PrincipalDep, file_id: str) -> Response:
    _files_scope(principal)
    row = await store.find(rt.engine, principal.tenant_id, file_id)
    data = await store.read(rt.engine, crypto_of(rt), row.id)
    return Response(data, media_type="application/octet-stream")


@router.delete(PATH + "/{file_id}")
async def delete_file(rt: RuntimeDep, principal: PrincipalDep, file_id: str) -> Response:
    _files_scope(principal)
    await store.find(rt.engine, principal.tenant_id, file_id)
    deleted = await repo.delete_file(rt.engine, principal.tenant_id, file_id)
    return json_response({"id": file_id, "object": "file", "deleted": deleted})
