"""Admin API for GDPR requests about one data subject (an admin key is required).

    GET  /v1/admin/privacy/{tenant}/{user}/export   everything stored about the user (JSON)
    POST /v1/admin/privacy/{tenant}/{user}/erase    delete or anonymise it; an erasure receipt

An admin key acts on its own tenant only: another tenant's subject is a 403,
whether or not it exists. Both are recorded in the audit log (``privacy.export``,
``privacy.erase``) with the subject hashed, never named. Erasure is idempotent.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from strata.api.admin_limits import AdminDep, _db
from strata.api.deps import runtime
from strata.errors import PermissionDenied
from strata.observability.logging import request_id_var
from strata.privacy import subject as privacy
from strata.security.keys import Principal
from strata.util import json_response

router = APIRouter()


def _own(principal: Principal, tenant: str) -> None:
    if tenant != principal.tenant_id:
        raise PermissionDenied("an admin key acts on its own tenant's users only")


@router.get("/v1/admin/privacy/{tenant}/{user}/export")
async def export_subject(request: Request, principal: AdminDep, tenant: str, user: str) -> Response:
    _own(principal, tenant)
    rt = runtime(request)
    data = await _db(
        "export the subject's data",
        privacy.export(
            rt.engine,
            rt.redis,
            tenant,
            user,
            actor=principal.key_id,
            request_id=request_id_var.get(),
            data_dir=rt.settings.data_dir,
            crypto=rt.chat.cache.crypto,
        ),
    )
    return json_response(data)


@router.post("/v1/admin/privacy/{tenant}/{user}/erase")
async def erase_subject(request: Request, principal: AdminDep, tenant: str, user: str) -> Response:
    _own(principal, tenant)
    rt = runtime(request)
    receipt = await _db(
        "erase the subject's data",
        privacy.erase(
            rt.engine,
            rt.redis,
            tenant,
            user,
            actor=principal.key_id,
            request_id=request_id_var.get(),
            data_dir=rt.settings.data_dir,
        ),
    )
    return json_response(receipt.to_json())
