"""POST /v1/chat/completions (a fast-lane endpoint; see api/fast.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from strata.api.fast import header, read_json, send_json
from strata.api.sse import SSEResponse
from strata.errors import StrataError
from strata.gateway.chat import Controls
from strata.gateway.schemas import ChatRequest, validate
from strata.observability.logging import request_id_var
from strata.runtime import Runtime

PATH = "/v1/chat/completions"


async def chat_completions(scope: dict[str, Any], receive: Any, send: Any) -> None:
    rt: Runtime = scope["app"].state.runtime
    principal = await rt.auth.authenticate(header(scope, b"authorization"))
    meter = rt.meter(principal, request_id_var.get() or "", "chat")
    try:
        body = await read_json(receive)
        validate(ChatRequest, body)
        controls = Controls(
            header(scope, b"x-strata-tier"),
            header(scope, b"x-strata-cache"),
            header(scope, b"cache-control"),
        )
        if body.get("stream"):
            meter.event.stream = True
            stream = await rt.chat.open_stream(body, meter, controls)
        else:
            out = await rt.chat.complete(body, meter, controls)
    except asyncio.CancelledError:
        meter.cancelled()
        raise
    except Exception as exc:
        meter.failed(exc)
        if isinstance(exc, StrataError) and meter.admission is not None:
            exc.extra_headers = meter.quota_headers()  # x-ratelimit-* on errors too
        raise
    if body.get("stream"):
        # The stream owns the meter and settles it when it ends, however it ends.
        await SSEResponse(stream, meter.headers())(scope, receive, send)
        return
    meter.ok()
    await send_json(send, out, extra=meter.headers())
