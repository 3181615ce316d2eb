"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task per request).

Request id: accept ``X-Request-ID`` (if sane) or make one; return it on every
response and put it on every log line. Body limit: 413 past ``max_body_bytes``.
Access log: one JSON line per request, written when the response is done
(streams included: the SSE body is sent inside this call), with the fields the
request path put in ``request_context`` (tenant, alias). Last-resort errors: any
exception that escapes the app becomes a 500 in OpenAI's error shape, never a
traceback, and is reported to Sentry when it is on. Hardening
(``security/hardening.py``): security headers on every response, CORS for the
configured origins (preflights answered here), nothing for other origins.
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
from strata.security.hardening import NO_STORE, SECURITY_HEADERS, Cors, HardeningSettings

log = logging.getLogger("strata.access")
Scope = dict[str, Any]

_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,200}$")


class RequestContextMiddleware:
    def __init__(
        self,
        app: Any,
        max_body_bytes: int,
        hardening: HardeningSettings | None = None,
        upload_limits: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Paths with a body limit of their own (file uploads), POST only.
        self.upload_limits = upload_limits or {}
        self.cors = Cors.of((hardening or HardeningSettings()).cors)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = b""
        origin = b""
        preflight = False
        length = -1
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value
            elif name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = True
        rid_s = rid.decode() if rid and _SAFE_ID.match(rid) else uuid.uuid4().hex
        token = request_id_var.set(rid_s)
        fields: dict[str, Any] = {}
        ctx_token = request_context.set(fields)
        extra = [(b"x-request-id", rid_s.encode()), *SECURITY_HEADERS]
        cors = self.cors
        if cors is not None and origin and cors.allowed(origin.rstrip(b"/")):
            extra += cors.headers(origin)
            if preflight and scope["method"] == "OPTIONS":
                extra += cors.preflight
        else:
            preflight = False
        start = time.perf_counter()
        state = {"status": 0}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = [*message.get("headers", ()), *extra]
                for name, _ in headers:
                    if name == b"cache-control":
                        break
                else:
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        received = 0
        limit = self.max_body_bytes
        if self.upload_limits and scope["method"] == "POST":
            limit = self.upload_limits.get(scope["path"], limit)

        async def receive_wrapper() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(f"request body exceeds {limit} bytes")
            return message

        try:
            if preflight and scope["method"] == "OPTIONS":
                # An allowed origin's preflight: answered here, no key needed
                # (browsers never send one on a preflight).
                await send_wrapper({"type": "http.response.start", "status": 204, "headers": []})
                await send_wrapper({"type": "http.response.body", "body": b""})
            elif length > limit:
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
