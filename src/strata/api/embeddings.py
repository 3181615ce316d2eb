"""POST /v1/embeddings"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from strata.api.deps import authenticate, read_json, request_id, runtime
from strata.gateway.schemas import EmbeddingRequest, validate
from strata.util import json_response

router = APIRouter()


async def embeddings(request: Request) -> Response:
    rt = runtime(request)
    principal = await authenticate(request)
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


router.add_route("/v1/embeddings", embeddings, methods=["POST"])
