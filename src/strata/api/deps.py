"""Dependencies routes receive through ``Annotated`` (async: sync ones cost a thread hop).

The two hot endpoints (chat, embeddings) skip FastAPI altogether: see api/fast.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from strata.runtime import Runtime
from strata.security.auth import client_host
from strata.security.keys import Principal


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


async def authenticate(request: Request) -> Principal:
    """401 without a valid key; 403 from an address outside the key's IP allow-list."""
    principal = await runtime(request).auth.authenticate(request.headers.get("authorization"))
    principal.check_ip(client_host(request.scope))
    return principal


async def get_runtime(request: Request) -> Runtime:
    return runtime(request)


async def get_principal(request: Request) -> Principal:
    return await authenticate(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
