"""GET /v1/usage: the caller's own usage (an admin key sees its whole tenant).

Scopes: ``usage:read``, ``admin``, or any scope that spends (``chat``,
``embeddings``), so a key can always see what it costs."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from fastapi import APIRouter
from starlette.responses import Response

from strata.api.deps import PrincipalDep, RuntimeDep
from strata.errors import InvalidRequest, PermissionDenied, ServiceUnavailable
from strata.storage.repositories import usage as usage_repo
from strata.util import json_response

router = APIRouter()
USAGE_SCOPES = ("usage:read", "chat", "embeddings", "admin")


@router.get("/v1/usage")
async def get_usage(
    rt: RuntimeDep,
    principal: PrincipalDep,
    start: date | None = None,
    end: date | None = None,
    day: date | None = None,
    model: str | None = None,
    user: str | None = None,
) -> Response:
    principal.require_any_scope(USAGE_SCOPES)
    if day is not None:
        start = end = day
    if start and end and end < start:
        raise InvalidRequest("'end' is before 'start'", param="end")
    if user is not None and not principal.is_admin and user != principal.user_id:
        raise PermissionDenied("only an admin key can read another user's usage", param="user")
    user_id = user if principal.is_admin else principal.user_id
    try:
        # Read-your-writes: records still buffered in this process go first.
        await rt.recorder.flush()
        rows = await usage_repo.summarize(
            rt.engine,
            tenant_id=principal.tenant_id,
            user_id=user_id,
            alias=model,
            start=start,
            end=end,
        )
    except Exception as exc:
        raise ServiceUnavailable(
            f"usage cannot be read right now ({type(exc).__name__}); records are kept and "
            "will be written when the database returns"
        ) from None
    data = [r.as_dict() for r in rows]
    total = sum((r.cost_usd for r in rows), start=Decimal(0))
    return json_response(
        {
            "object": "list",
            "data": data,
            "total_requests": sum(r.requests for r in rows),
            "total_cost_usd": usage_repo.decimal_str(total),
        }
    )
