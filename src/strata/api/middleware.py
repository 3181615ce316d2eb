"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task per request).

Request id: accept ``X-Request-ID`` (if sane) or make one; return it on every
response and put it on every log line. Body limit: 413 past ``max_body_bytes``.
Access log: one JSON line per request, written when the response is done
(streams included: the SSE body is sent inside this call), with the fields the
request path put in ``request_context`` (tenant, alias). Last-resort errors: any
exception that escapes the app becomes a 500 in OpenAI's error shape, never a
traceback, and is reported to Sentry when it is on.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson

from strata.errors import BodyTooLarge, StrataError
from strata.observability.logging import request_context, request_id_var
from strata.observability.sentry import capture_unhandled

log = logging.getLogger("strata.access")
Scope = dict[str, Any]

_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,200}$")


class RequestContextMiddleware:
    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        length = -1
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
        rid_s = rid.decode() if rid and _SAFE_ID.match(rid) else uuid.uuid4().hex
        token = request_id_var.set(rid_s)
        fields: dict[str, Any] = {}
        ctx_token = request_context.set(fields)
        rid_header = (b"x-request-id", rid_s.encode())
        start = time.perf_counter()
        state = {"status": 0}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        received = 0
        limit = self.max_body_bytes

        async def receive_wrapper() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"request body exceeds {limit} bytes")
            return message

        try:
            if length > limit:
                await _send_error(send_wrapper, BodyTooLarge(f"request body exceeds {limit} bytes"))
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:
            if not isinstance(exc, StrataError):
                log.exception("unhandled error")
                capture_unhandled(exc)
                exc = StrataError("The server had an error while processing your request.")
            if state["status"] == 0:
                await _send_error(send_wrapper, exc)
        finally:
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": state["status"],
                    "latency_ms": round((time.perf_counter() - start) * 1000, 3),
                },
            )
            request_context.reset(ctx_token)
            request_id_var.reset(token)


async def _send_error(send: Any, exc: StrataError) -> None:
    body = orjson.dumps(exc.to_dict())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in exc.headers().items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
