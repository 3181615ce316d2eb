"""The one place errors become HTTP: OpenAI's error shape, the right status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from strata.errors import InvalidRequest, NotFound, StrataError
from strata.gateway.schemas import _param
from strata.util import json_response


async def strata_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StrataError):  # registered for StrataError only
        raise exc
    return json_response(exc.to_dict(), exc.status, exc.headers())


async def validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):
        raise exc
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if p not in ("body", "query", "path", "header"))
    param = _param(loc)
    return await strata_error(
        request, InvalidRequest(f"invalid value for '{param}': {err['msg']}", param=param)
    )


async def http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        raise exc
    if exc.status_code == 404:
        err: StrataError = NotFound(
            f"Unknown request URL: {request.method} {request.url.path}", code="unknown_url"
        )
    else:
        err = StrataError(str(exc.detail))
        err.status = exc.status_code
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return json_response(err.to_dict(), err.status, dict(exc.headers or {}))


def install(app: FastAPI) -> None:
    app.add_exception_handler(StrataError, strata_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
