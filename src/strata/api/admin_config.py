"""POST /v1/admin/config/reload: re-read the config file and apply what can change
without a restart (see strata.reload). Audited.

The config is deployment-wide: like alias limits, a reload is open to any admin key
(an admin key is an operator's; tenants that must not reload the operator's file
get keys without the ``admin`` scope). It only re-reads the file the operator
wrote: the caller supplies nothing."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from strata import reload as config_reload
from strata.api.admin_limits import AdminDep
from strata.api.deps import runtime
from strata.errors import ConfigError, InvalidRequest
from strata.observability.logging import request_id_var
from strata.util import json_response

router = APIRouter()


@router.post("/v1/admin/config/reload")
async def reload_config(request: Request, principal: AdminDep) -> Response:
    rt = runtime(request)
    try:
        result = await config_reload.reload(
            rt, actor=principal.key_id, request_id=request_id_var.get()
        )
    except ConfigError as exc:
        raise InvalidRequest(
            f"config not reloaded, nothing changed: {exc.message}", code="invalid_config"
        ) from None
    return json_response(result.to_json())
