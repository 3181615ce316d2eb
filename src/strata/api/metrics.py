"""GET /metrics: Prometheus text format, unauthenticated (see observability/metrics.py).

Only mounted when metrics are enabled and have no port of their own.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.responses import Response

from strata.api.deps import RuntimeDep
from strata.errors import NotFound
from strata.observability.metrics import CONTENT_TYPE
from strata.settings import Settings

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(rt: RuntimeDep) -> Response:
    if rt.metrics is None:
        raise NotFound("metrics are disabled")
    return Response(await rt.metrics.render_async(), headers={"content-type": CONTENT_TYPE})


def install(app: FastAPI, settings: Settings) -> None:
    m = settings.observability.metrics
    if m.enabled and m.port is None:
        app.include_router(router)
