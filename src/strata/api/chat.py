"""POST /v1/chat/completions"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from strata.api.deps import authenticate, read_json, request_id, runtime
from strata.api.sse import SSEResponse
from strata.gateway.schemas import ChatRequest, validate
from strata.util import json_response

router = APIRouter()


async def chat_completions(request: Request) -> Response:
    rt = runtime(request)
    principal = await authenticate(request)
    meter = rt.meter(principal, request_id(), "chat")
    try:
        body = await read_json(request)
        validate(ChatRequest, body)
        if body.get("stream"):
            meter.event.stream = True
            # From here the stream owns the meter and settles it when it ends.
            return SSEResponse(await rt.chat.open_stream(body, meter))
        out = await rt.chat.complete(body, meter)
    except asyncio.CancelledError:
        meter.cancelled()
        raise
    except Exception as exc:
        meter.failed(exc)
        raise
    meter.ok()
    return json_response(out)


router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
