"""Raw ASGI endpoints for the hot path (chat, embeddings).

FastAPI's middleware and routing layers cost about a third of the gateway's CPU
per request (measured with bench/ and py-spy). ``StrataApp`` sends
``POST /v1/chat/completions`` and ``POST /v1/embeddings`` straight to these
endpoints, wrapped only in RequestContextMiddleware (request id, body limit,
access log, errors in OpenAI's shape). Everything else goes through FastAPI,
where the same endpoints are also mounted (so other methods get 405).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import orjson
from fastapi import FastAPI

from strata.errors import InvalidRequest

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_json(receive: Any) -> Any:
    """The body as JSON, strictly (RFC 8259, orjson): NaN, Infinity, comments,
    trailing commas and invalid UTF-8 are 400s. A duplicate key keeps its last
    value, like Python's json, JSON.parse and the OpenAI API (see
    security/hardening.py for why it is not rejected)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc.msg} at position {exc.pos})."
        ) from None


async def send_json(
    send: Any, data: Any, status: int = 200, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(data)
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(extra or ())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Endpoint:
    """An ASGI endpoint Starlette mounts as-is (a plain function it would wrap)."""

    def __init__(self, fn: ASGIApp) -> None:
        self.fn = fn

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.fn(scope, receive, send)


class StrataApp(FastAPI):
    """FastAPI with a fast lane for the hot endpoints."""

    fast_routes: dict[tuple[str, str], ASGIApp]

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            handler = self.fast_routes.get((scope["method"], scope["path"]))
            if handler is not None:
                scope["app"] = self
                await handler(cast(Scope, scope), receive, send)
                return
        await super().__call__(scope, receive, send)
