"""GET /v1/models and /v1/models/{id}: the configured aliases."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from strata.api.deps import PrincipalDep, RuntimeDep
from strata.errors import ModelNotFound
from strata.runtime import Runtime
from strata.settings import Alias
from strata.util import json_response

router = APIRouter()

# Aliases have no creation time; a fixed one keeps responses stable.
CREATED = 1_764_288_000


def _model(rt: Runtime, name: str, alias: Alias) -> dict[str, Any]:
    d = rt.dispatcher
    deployments = [
        {
            "provider": t.provider.name,
            "model": t.model,
            "rank": t.rank,
            "weight": t.weight,
            "circuit": d.breakers.state(t.key),
            "in_flight": d.inflight.get(t.key, 0),
            # This instance's recent latency (exponential average), if it has seen any.
            "latency_ms": round(d.latency[t.key] * 1000, 1) if t.key in d.latency else None,
        }
        for t in rt.router.candidates(name, alias.kind)
    ]
    out = {
        "id": name,
        "object": "model",
        "created": CREATED,
        "owned_by": "strata",
        "kind": alias.kind,
        "description": alias.description,
        "deployments": deployments,
    }
    if alias.route is not None:
        out["route"] = alias.route.model_dump()
    return out


@router.get("/v1/models")
async def list_models(rt: RuntimeDep, principal: PrincipalDep) -> Response:
    allowed = principal.allowed_models
    data = [
        _model(rt, n, a)
        for n, a in rt.router.aliases.items()
        if allowed is None or n in allowed  # a key limited to some aliases sees only those
    ]
    return json_response({"object": "list", "data": data})


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, rt: RuntimeDep, principal: PrincipalDep) -> Response:
    alias = rt.router.aliases.get(model_id)
    allowed = principal.allowed_models
    if alias is None or (allowed is not None and model_id not in allowed):
        # Not listed for this key: the same answer as an alias that does not exist.
        raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")
    return json_response(_model(rt, model_id, alias))
