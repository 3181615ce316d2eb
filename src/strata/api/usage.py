"""GET /v1/usage: the caller's own usage (an admin key sees its whole tenant).

Scopes: ``usage:read``, ``admin``, or any scope that spends (``chat``,
``embeddings``), so a key can always see what it costs.

``end_user=ID`` narrows to the requests a client sent with OpenAI's ``user`` field
set to ID; ``group_by=end_user`` splits rows by end user. End-user ids are stored
encrypted with a blind index (strata.usage.sealing), so both work by keyed hash."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from strata.api.deps import PrincipalDep, RuntimeDep
from strata.errors import InvalidRequest, PermissionDenied, ServiceUnavailable
from strata.security.crypto import sync_keys
from strata.storage.repositories import usage as usage_repo
from strata.usage.sealing import Opener, end_user_index
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
    end_user: Annotated[str | None, Query(max_length=256)] = None,
    group_by: str | None = None,
) -> Response:
    principal.require_any_scope(USAGE_SCOPES)
    if day is not None:
        start = end = day
    if start and end and end < start:
        raise InvalidRequest("'end' is before 'start'", param="end")
    if user is not None and not principal.is_admin and user != principal.user_id:
        raise PermissionDenied("only an admin key can read another user's usage", param="user")
    user_id = user if principal.is_admin else principal.user_id
    if group_by not in (None, "end_user"):
        raise InvalidRequest("'group_by' must be 'end_user'", param="group_by")
    by_end_user = group_by == "end_user" or end_user is not None
    crypto = rt.crypto
    if by_end_user and (crypto is None or not crypto.ready):
        raise ServiceUnavailable("end-user usage cannot be read right now (no data key loaded)")
    hmac = end_user_index(crypto, principal.tenant_id, end_user) if crypto and end_user else None
    try:
        # Read-your-writes: records still buffered in this process go first.
        await rt.recorder.flush()
        opener = Opener(crypto) if crypto and by_end_user else None
        for attempt in range(2):
            rows = await usage_repo.summarize(
                rt.engine,
                tenant_id=principal.tenant_id,
                user_id=user_id,
                alias=model,
                start=start,
                end=end,
                end_user_hmac=hmac,
                by_end_user=by_end_user,
                open_end_user=opener,
            )
            if attempt or opener is None or not opener.unknown_key or crypto is None:
                break
            # A rotation elsewhere: load the new data key and read again.
            await sync_keys(rt.engine, crypto)
            opener.unknown_key = False
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
