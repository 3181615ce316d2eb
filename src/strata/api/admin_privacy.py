"""Admin API for GDPR requests about one data subject (an admin key is required).

    GET  /v1/admin/privacy/{tenant}/{user}/export   everything stored about the user (JSON)
    POST /v1/admin/privacy/{tenant}/{user}/erase    delete or anonymise it; an erasure receipt
    GET  /v1/admin/privacy/{tenant}/end-users/{id}/export   usage records naming an end user
    POST /v1/admin/privacy/{tenant}/end-users/{id}/erase    unlink that end user; a receipt

(An end user is the person a client names in OpenAI's ``user`` field.)

An admin key acts on its own tenant only: another tenant's subject is a 403,
whether or not it exists. Both are recorded in the audit log (``privacy.export``,
``privacy.erase``) with the subject hashed, never named. Erasure is idempotent.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from strata.api.admin_limits import AdminDep, _db
from strata.api.deps import runtime
from strata.errors import PermissionDenied, ServiceUnavailable
from strata.observability.logging import request_id_var
from strata.privacy import end_user as end_user_privacy
from strata.privacy import subject as privacy
from strata.security.crypto import Crypto
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
            crypto=rt.crypto,
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


def _crypto(request: Request) -> Crypto:
    crypto = runtime(request).crypto
    if crypto is None or not crypto.ready:
        raise ServiceUnavailable("end-user data cannot be read right now (no data key loaded)")
    return crypto


@router.get("/v1/admin/privacy/{tenant}/end-users/{end_user}/export")
async def export_end_user(
    request: Request, principal: AdminDep, tenant: str, end_user: str
) -> Response:
    _own(principal, tenant)
    rt = runtime(request)
    data = await _db(
        "export the end user's data",
        end_user_privacy.export(
            rt.engine,
            tenant,
            end_user,
            _crypto(request),
            actor=principal.key_id,
            request_id=request_id_var.get(),
            data_dir=rt.settings.data_dir,
        ),
    )
    return json_response(data)


@router.post("/v1/admin/privacy/{tenant}/end-users/{end_user}/erase")
async def erase_end_user(
    request: Request, principal: AdminDep, tenant: str, end_user: str
) -> Response:
    _own(principal, tenant)
    rt = runtime(request)
    receipt = await _db(
        "erase the end user's data",
        end_user_privacy.erase(
            rt.engine,
            tenant,
            end_user,
            _crypto(request),
            actor=principal.key_id,
            request_id=request_id_var.get(),
            data_dir=rt.settings.data_dir,
        ),
    )
    return json_response(receipt.to_json())
