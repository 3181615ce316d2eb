"""Admin API for API keys (a key with the admin scope is required).

    POST   /v1/admin/keys               create; the answer holds the key, shown once
    GET    /v1/admin/keys               the caller's tenant's keys (never the secrets)
    POST   /v1/admin/keys/{id}/rotate   new secret, same key; {"grace_s": 86400}
    DELETE /v1/admin/keys/{id}          revoke

An admin key administers its own tenant only: keys are created in the caller's
tenant, and another tenant's key id is a 404 (as if it did not exist).

Create body (all optional but ``user``)::

    {"user": "alice", "name": "ci", "admin": false,
     "scopes": ["chat", "usage:read"], "models": ["gpt-4o-mini"],
     "expires_in_s": 7776000, "ip_allow": ["10.0.0.0/8"]}

Rotation keeps the key's id and settings and issues a new secret; the old secret
keeps working for ``grace_s`` seconds (default 0: it stops at once). Rotating
and revoking take effect at once on every instance (cache eviction over Redis;
within ``auth.key_cache_ttl_s`` if Redis is down).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from strata.api.admin_limits import AdminDep
from strata.api.deps import runtime
from strata.errors import InvalidRequest, NotFound, ServiceUnavailable, StrataError
from strata.runtime import Runtime
from strata.security import audit
from strata.security.auth import REVOKED_CHANNEL
from strata.security.keys import Principal
from strata.storage.models import ApiKey
from strata.storage.repositories import keys as key_repo
from strata.util import json_response

log = logging.getLogger("strata.keys")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

router = APIRouter()
MAX_GRACE_S = 30 * 86400


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=128)
    name: str = Field(default="", max_length=200)
    admin: bool = False
    auto_routing: bool = True
    scopes: list[str] | None = None
    models: list[str] | None = None
    expires_in_s: int | None = Field(default=None, gt=0)
    ip_allow: list[str] | None = None


class Rotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_s: int = Field(default=0, ge=0, le=MAX_GRACE_S)


def iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat() if at is not None else None


def key_view(k: ApiKey) -> dict[str, Any]:
    """A key as the API and ``strata keys list --json`` show it (never a secret)."""
    return {
        "object": "api_key",
        "id": k.id,
        "prefix": k.display_prefix,
        "tenant": k.tenant_id,
        "user": k.user_id,
        "name": k.name,
        "admin": k.is_admin,
        "scopes": k.scopes,
        "models": k.allowed_models,
        "ip_allow": k.ip_allow,
        "expires_at": iso(k.expires_at),
        "created_at": iso(k.created_at),
        "rotated_at": iso(k.rotated_at),
        "previous_expires_at": iso(k.previous_expires_at),
        "last_used_at": iso(k.last_used_at),
        "revoked_at": iso(k.revoked_at),
    }


async def _db(what: str, aw: Awaitable[T]) -> T:
    try:
        return await aw
    except StrataError:
        raise
    except Exception as exc:
        raise ServiceUnavailable(
            f"cannot {what} right now ({type(exc).__name__}); try again shortly"
        ) from None


async def _parse(request: Request, model: type[M], *, empty_ok: bool = False) -> M:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() or not empty_ok else {}
    except ValueError:
        raise InvalidRequest("the body must be a JSON object") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise InvalidRequest(f"invalid value for '{param}': {err['msg']}", param=param) from None


async def evict(rt: Runtime, hashes: list[str]) -> None:
    """Drop cached principals here at once and on other instances via Redis."""
    for h in hashes:
        rt.auth.evict(h)
    try:
        redis = rt.redis
        for h in hashes:
            await redis.publish(REVOKED_CHANNEL, h)
    except Exception as exc:
        log.warning("key change not announced on Redis (%s)", type(exc).__name__)


async def _audit(
    rt: Runtime, principal: Principal, action: str, key_id: str, details: dict[str, Any] | None
) -> None:
    await _db(
        "write the audit log",
        audit.record_admin(rt.engine, principal, action, f"key:{key_id}", details),
    )


async def _owned(rt: Runtime, tenant_id: str, key_id: str) -> ApiKey:
    key = await _db("look up the key", key_repo.get_key(rt.engine, key_id))
    if key is None or key.tenant_id != tenant_id:
        raise NotFound(f"no key {key_id!r} in tenant {tenant_id!r}", param="id")
    return key


@router.post("/v1/admin/keys")
async def create_key(request: Request, principal: AdminDep) -> Response:
    rt = runtime(request)
    body = await _parse(request, CreateKey)
    expires_at = (
        datetime.now(UTC) + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    )
    new = await _db(
        "create the key",
        key_repo.create_key(
            rt.engine,
            tenant_id=principal.tenant_id,
            user_id=body.user,
            name=body.name,
            is_admin=body.admin,
            auto_routing=body.auto_routing,
            scopes=body.scopes,
            allowed_models=body.models,
            expires_at=expires_at,
            ip_allow=body.ip_allow,
        ),
    )
    stored = await _owned(rt, principal.tenant_id, new.id)
    await _audit(rt, principal, "key.create", new.id, {"user_id": body.user, "admin": new.is_admin})
    return json_response({**key_view(stored), "key": new.key}, status=201)


@router.get("/v1/admin/keys")
async def list_keys(request: Request, principal: AdminDep) -> Response:
    rt = runtime(request)
    rows = await _db("list keys", key_repo.list_keys(rt.engine, tenant_id=principal.tenant_id))
    return json_response({"object": "list", "data": [key_view(k) for k in rows]})


@router.post("/v1/admin/keys/{key_id}/rotate")
async def rotate_key(request: Request, principal: AdminDep, key_id: str) -> Response:
    rt = runtime(request)
    body = await _parse(request, Rotate, empty_ok=True)
    await _owned(rt, principal.tenant_id, key_id)
    rotated = await _db(
        "rotate the key",
        key_repo.rotate_key(rt.engine, key_id, grace_s=body.grace_s, tenant_id=principal.tenant_id),
    )
    if rotated is None:
        raise NotFound(f"key {key_id!r} is revoked or expired", param="id")
    await evict(rt, rotated.evict)
    await _audit(rt, principal, "key.rotate", key_id, {"grace_s": body.grace_s})
    stored = await _owned(rt, principal.tenant_id, key_id)
    return json_response({**key_view(stored), "key": rotated.key})


@router.delete("/v1/admin/keys/{key_id}")
async def revoke_key(request: Request, principal: AdminDep, key_id: str) -> Response:
    rt = runtime(request)
    await _owned(rt, principal.tenant_id, key_id)
    hashes = await _db(
        "revoke the key",
        key_repo.revoke_key_hashes(rt.engine, key_id, tenant_id=principal.tenant_id),
    )
    await evict(rt, hashes)
    if hashes:
        await _audit(rt, principal, "key.revoke", key_id, None)
    stored = await _owned(rt, principal.tenant_id, key_id)
    return json_response({**key_view(stored), "deleted": bool(hashes)})
