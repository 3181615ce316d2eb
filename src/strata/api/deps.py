"""Dependencies routes receive through ``Annotated`` (async: sync ones cost a thread hop).

The two hot endpoints (chat, embeddings) are plain Starlette routes that call
``runtime`` and ``authenticate`` directly: FastAPI's dependency solving costs
about a tenth of the gateway's CPU per request there (measured with bench/).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from strata.errors import InvalidRequest
from strata.observability.logging import request_id_var
from strata.runtime import Runtime
from strata.security.keys import Principal


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def authenticate(request: Request) -> Principal:
    return await runtime(request).auth.authenticate(request.headers.get("authorization"))


async def get_runtime(request: Request) -> Runtime:
    return runtime(request)


async def get_principal(request: Request) -> Principal:
    return await authenticate(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def request_id() -> str:
    return request_id_var.get() or ""


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc.msg} at position {exc.pos})."
        ) from None
