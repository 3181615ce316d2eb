"""GET /healthz (process up) and /readyz (database, Redis and default models ready)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from sqlalchemy import text
from starlette.responses import Response

from strata.api.deps import RuntimeDep
from strata.util import json_response

router = APIRouter()
CHECK_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(rt: RuntimeDep) -> Response:
    async def db() -> None:
        async with rt.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await rt.redis.ping()

    checks: dict[str, str] = {}
    for name, probe in (("database", db), ("redis", redis)):
        try:
            await asyncio.wait_for(probe(), CHECK_TIMEOUT_S)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"
    for name in ("default", "embed-default"):
        alias = rt.router.aliases.get(name)
        if alias is not None and alias.deployments:
            target = rt.router.candidates(name, alias.kind)[0]
            checks[f"model:{name}"] = "ok" if target.provider.ready() else "loading"
    ready = all(v == "ok" for v in checks.values())
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )
