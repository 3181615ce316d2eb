"""POST /v1/embeddings (a fast-lane endpoint; see api/fast.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from strata.api.fast import header, read_json, send_json
from strata.errors import StrataError
from strata.gateway.schemas import EmbeddingRequest, validate
from strata.observability import sentry
from strata.observability.logging import request_fields, request_id_var
from strata.runtime import Runtime
from strata.security.auth import client_host

PATH = "/v1/embeddings"


async def embeddings(scope: dict[str, Any], receive: Any, send: Any) -> None:
    rt: Runtime = scope["app"].state.runtime
    principal = await rt.auth.authenticate(header(scope, b"authorization"))
    principal.authorize("embeddings", client_host(scope))
    fields = request_fields()
    fields["tenant"] = principal.tenant_id
    meter = rt.meter(principal, request_id_var.get() or "", "embeddings")
    try:
        body = await read_json(receive)
        validate(EmbeddingRequest, body)
        fields["alias"] = body["model"]
        principal.check_model(body["model"])
        out = await rt.embeddings.embed(body, meter)
    except asyncio.CancelledError:
        meter.cancelled()
        raise
    except Exception as exc:
        meter.failed(exc)
        sentry.report_failure(exc, meter.event.provider)
        if isinstance(exc, StrataError) and meter.admission is not None:
            exc.extra_headers = meter.quota_headers()  # x-ratelimit-* on errors too
        raise
    if meter.event.provider:
        fields["provider"] = meter.event.provider
    meter.ok()
    await send_json(send, out, extra=meter.headers())
