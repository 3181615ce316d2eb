"""POST /v1/embeddings"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from strata.api.deps import PrincipalDep, RuntimeDep, read_json, request_id
from strata.gateway.schemas import EmbeddingRequest, validate
from strata.util import json_response

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(request: Request, rt: RuntimeDep, principal: PrincipalDep) -> Response:
    meter = rt.meter(principal, request_id(), "embeddings")
    try:
        body = await read_json(request)
        validate(EmbeddingRequest, body)
        out = await rt.embeddings.embed(body, meter)
    except asyncio.CancelledError:
        meter.cancelled()
        raise
    except Exception as exc:
        meter.failed(exc)
        raise
    meter.ok()
    return json_response(out)
