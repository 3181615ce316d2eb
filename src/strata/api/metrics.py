"""GET /metrics: Prometheus text format (see observability/metrics.py).

Only mounted when metrics are enabled and have no port of their own. Open unless
``hardening.metrics_token`` (a secret reference) is set: then it needs
``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise).
The reference is resolved at start-up and follows secret refreshes.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from strata.api.deps import RuntimeDep
from strata.errors import AuthenticationError, NotFound
from strata.observability.metrics import CONTENT_TYPE
from strata.security.credentials import resolve_secret
from strata.security.hardening import token_matches
from strata.settings import Settings

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, rt: RuntimeDep) -> Response:
    token = request.app.state.metrics_token
    if token is not None and not token_matches(
        request.headers.get("authorization"), token.reveal()
    ):
        raise AuthenticationError("/metrics needs 'Authorization: Bearer <metrics token>'.")
    if rt.metrics is None:
        raise NotFound("metrics are disabled")
    return Response(await rt.metrics.render_async(), headers={"content-type": CONTENT_TYPE})


def install(app: FastAPI, settings: Settings) -> None:
    ref = settings.hardening.metrics_token
    app.state.metrics_token = (
        resolve_secret(ref, "hardening.metrics_token") if ref is not None else None
    )
    m = settings.observability.metrics
    if m.enabled and m.port is None:
        app.include_router(router)
