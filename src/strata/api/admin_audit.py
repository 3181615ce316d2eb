"""Admin API for the audit log (an admin key is required).

    GET /v1/admin/audit?action=key.create&limit=100

An admin key reads its own tenant's entries only, newest first (``limit`` 1 to
1000, default 100). Each entry carries its ``prev_hash`` and ``hash``, so a
client can check the links it received; ``strata audit verify`` checks the
whole chain.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from strata.api.admin_limits import AdminDep, _db
from strata.api.deps import runtime
from strata.errors import InvalidRequest
from strata.security import audit
from strata.util import json_response

router = APIRouter()

MAX_LIMIT = 1000


@router.get("/v1/admin/audit")
async def list_audit(
    request: Request, principal: AdminDep, action: str | None = None, limit: str = "100"
) -> Response:
    try:
        n = int(limit)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", param="limit")
    rt = runtime(request)
    entries = await _db(
        "read the audit log",
        audit.list_entries(rt.engine, tenant=principal.tenant_id, limit=n, action=action),
    )
    return json_response({"object": "list", "data": [e.to_json() for e in entries]})
