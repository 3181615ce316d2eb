"""Admin API for rate-limit overrides and budget caps (an admin key is required).

    GET|PUT|DELETE /v1/admin/limits/{scope}/{subject}    scope: key|user|tenant|alias
    GET|PUT|DELETE /v1/admin/budgets/{scope}/{subject}   scope: key|user|tenant

Subjects: a key id (``key_…``), a user as ``TENANT/USER`` (two path segments,
``/v1/admin/limits/user/acme/alice``; ``acme%2Falice`` is the same path), a
tenant id, an alias name.

Who may do what: an admin key administers its own tenant, so key, user and tenant
subjects must belong to the caller's tenant (another tenant's key is a 404, its
user or tenant a 403). Alias limits are deployment-wide and open to any admin key.

GET answers the defaults (strata.yaml), the override (only the fields it sets,
or null) and the effective values (defaults with the override's fields
replaced); budgets add, per UTC day and month, the cap, the spend so far, what is
left and when the period resets. PUT replaces the subject's override with the
body's fields (a partial ``RuleSet`` / ``BudgetCaps``; ``null`` sets "unlimited"
against a default); DELETE removes it, so the defaults apply again. A write is in
force at once on the instance that took it and on every other instance within
``limits.overrides_refresh_s``.

The view builders (``limits_view``, ``budget_view``) are shared with the CLI.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response

from strata.api.deps import authenticate, runtime
from strata.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    StrataError,
)
from strata.limits.config import BudgetCaps, BudgetsSettings, LimitsSettings, RuleSet
from strata.limits.overrides import merged
from strata.limits.units import Period, period_end, period_start
from strata.runtime import Runtime
from strata.security import audit
from strata.security.auth import client_host
from strata.security.keys import Principal
from strata.storage.models import ApiKey
from strata.storage.repositories import limits as repo
from strata.util import json_response

log = logging.getLogger("strata.limits")
T = TypeVar("T")

LIMIT_SCOPES = repo.LIMIT_SCOPES
BUDGET_SCOPES = repo.BUDGET_SCOPES
MAX_SUBJECT = 256  # the column's length

router = APIRouter()


async def require_admin(request: Request) -> Principal:
    """401 without a valid key, 403 for a key without the admin scope (admin keys
    made before scopes existed have it) or used from outside its IP allow-list."""
    principal = await authenticate(request)
    principal.authorize("admin", client_host(request.scope))
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


# ---- views (shared with the CLI) ---------------------------------------------------


def money(value: Decimal | None) -> str | None:
    if value is None:
        return None
    # Plain notation: 40, not Decimal's normalized 4E+1.
    return f"{value.normalize():f}" if value else "0"


def utc_iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_subject(scope: str, subject: str, scopes: tuple[str, ...]) -> None:
    """400 for an unknown scope or a malformed subject."""
    if scope not in scopes:
        raise InvalidRequest(
            f"scope must be one of {', '.join(scopes)}, not {scope!r}", param="scope"
        )
    parts = subject.split("/")
    want = 2 if scope == "user" else 1
    if len(parts) != want or not all(p.strip() for p in parts) or len(subject) > MAX_SUBJECT:
        form = "TENANT/USER" if scope == "user" else f"a {scope} id without '/'"
        raise InvalidRequest(f"a {scope} subject must be {form}, not {subject!r}", param="subject")


def default_rules(limits: LimitsSettings, scope: str, subject: str) -> RuleSet:
    if scope == "alias":
        return limits.aliases.get(subject) or RuleSet()
    rules: RuleSet = getattr(limits, scope)
    return rules


def _effective(default: BaseModel, override: dict[str, Any] | None) -> tuple[Any, str | None]:
    try:
        return merged(default, override), None
    except ValidationError as exc:  # a row written by hand: ignored, as requests do
        return default, exc.errors()[0]["msg"]


def limits_view(
    limits: LimitsSettings, scope: str, subject: str, override: dict[str, Any] | None
) -> dict[str, Any]:
    default = default_rules(limits, scope, subject)
    effective, error = _effective(default, override)
    out: dict[str, Any] = {
        "object": "limits",
        "scope": scope,
        "subject": subject,
        "enabled": limits.enabled,
        "default": default.model_dump(mode="json"),
        "override": override,
        "effective": effective.model_dump(mode="json"),
    }
    if error is not None:
        out["override_error"] = error
    return out


def budget_view(
    budgets: BudgetsSettings,
    scope: str,
    subject: str,
    override: dict[str, Any] | None,
    spend: dict[str, Decimal],
    now: datetime,
) -> dict[str, Any]:
    default: BudgetCaps = getattr(budgets, scope)
    caps, error = _effective(default, override)
    periods: dict[str, Any] = {}
    period: Period
    for period, cap in (("day", caps.daily_usd), ("month", caps.monthly_usd)):
        start = period_start(period, now)
        spent = spend.get(period, Decimal(0))
        soft = None
        if cap is not None and caps.soft_pct is not None:
            soft = cap * Decimal(str(caps.soft_pct)) / 100
        periods[period] = {
            "start": start.isoformat(),
            "resets_at": utc_iso(period_end(period, start)),
            "cap_usd": money(cap),
            "soft_limit_usd": money(soft),
            "spent_usd": money(spent),
            "remaining_usd": money(max(Decimal(0), cap - spent)) if cap is not None else None,
        }
    out: dict[str, Any] = {
        "object": "budget",
        "scope": scope,
        "subject": subject,
        "enabled": budgets.enabled,
        "default": default.model_dump(mode="json"),
        "override": override,
        "effective": caps.model_dump(mode="json"),
        "day": periods["day"],
        "month": periods["month"],
    }
    if error is not None:
        out["override_error"] = error
    return out


def parse_fields(model: type[RuleSet] | type[BudgetCaps], body: Any) -> Any:
    """Validate a partial body; 400 naming the first bad field."""
    if not isinstance(body, dict) or not body:
        raise InvalidRequest(
            f"the body must be a JSON object with at least one of: {', '.join(model.model_fields)}"
        )
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise InvalidRequest(f"invalid value for '{param}': {err['msg']}", param=param) from None


async def key_owner(engine: AsyncEngine, key_id: str) -> tuple[str, str] | None:
    """(tenant, user) of a key id, revoked or not; None if there is no such key."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(ApiKey.tenant_id, ApiKey.user_id).where(ApiKey.id == key_id))
        ).first()
    return (row[0], row[1]) if row else None


# ---- endpoints ----------------------------------------------------------------------


async def _db(what: str, aw: Awaitable[T]) -> T:
    try:
        return await aw
    except StrataError:
        raise
    except Exception as exc:
        raise ServiceUnavailable(
            f"cannot {what} right now ({type(exc).__name__}); try again shortly"
        ) from None


async def _authorize(
    rt: Runtime, principal: Principal, scope: str, subject: str, scopes: tuple[str, ...]
) -> None:
    check_subject(scope, subject, scopes)
    if scope == "alias":
        return
    if scope == "key":
        owner = await _db("look up the key", key_owner(rt.engine, subject))
        if owner is None or owner[0] != principal.tenant_id:
            raise NotFound(f"no key {subject!r} in tenant {principal.tenant_id!r}", param="subject")
        return
    tenant = subject.split("/", 1)[0]
    if tenant != principal.tenant_id:
        raise PermissionDenied(
            f"an admin key of tenant {principal.tenant_id!r} cannot manage tenant {tenant!r}",
            param="subject",
        )


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("the body must be a JSON object") from None


async def _refresh(rt: Runtime) -> None:
    # This instance applies the change at once; the others within overrides_refresh_s.
    try:
        await rt.overrides.refresh()
    except Exception as exc:
        log.warning("limit overrides not refreshed after a change (%s)", type(exc).__name__)


async def _limits(rt: Runtime, scope: str, subject: str) -> dict[str, Any]:
    override = await _db("read limits", repo.get_limit_override(rt.engine, scope, subject))
    return limits_view(rt.settings.limits, scope, subject, override)


async def _changed(
    rt: Runtime,
    principal: Principal,
    action: str,
    scope: str,
    subject: str,
    details: dict[str, Any],
) -> None:
    """After a write: the audit entry, then this instance applies it at once."""
    await _db(
        "write the audit log",
        audit.record_admin(rt.engine, principal, action, f"{scope}:{subject}", details),
    )
    await _refresh(rt)


async def _budget(rt: Runtime, scope: str, subject: str) -> dict[str, Any]:
    override = await _db("read budget caps", repo.get_budget_caps(rt.engine, scope, subject))
    spend = await rt.budgets.spend(scope, subject)
    return budget_view(rt.settings.budgets, scope, subject, override, spend, rt.budgets.clock())


@router.get("/v1/admin/limits/{scope}/{subject:path}")
async def get_limits(request: Request, principal: AdminDep, scope: str, subject: str) -> Response:
    rt = runtime(request)
    await _authorize(rt, principal, scope, subject, LIMIT_SCOPES)
    return json_response(await _limits(rt, scope, subject))


@router.put("/v1/admin/limits/{scope}/{subject:path}")
async def put_limits(request: Request, principal: AdminDep, scope: str, subject: str) -> Response:
    rt = runtime(request)
    await _authorize(rt, principal, scope, subject, LIMIT_SCOPES)
    rules = parse_fields(RuleSet, await _body(request))
    await _db("store limits", repo.set_limit_override(rt.engine, scope, subject, rules))
    await _changed(
        rt,
        principal,
        "limits.set",
        scope,
        subject,
        rules.model_dump(mode="json", exclude_unset=True),
    )
    return json_response(await _limits(rt, scope, subject))


@router.delete("/v1/admin/limits/{scope}/{subject:path}")
async def delete_limits(
    request: Request, principal: AdminDep, scope: str, subject: str
) -> Response:
    rt = runtime(request)
    await _authorize(rt, principal, scope, subject, LIMIT_SCOPES)
    deleted = await _db("delete limits", repo.delete_limit_override(rt.engine, scope, subject))
    await _changed(rt, principal, "limits.clear", scope, subject, {"deleted": deleted})
    return json_response({**await _limits(rt, scope, subject), "deleted": deleted})


@router.get("/v1/admin/budgets/{scope}/{subject:path}")
async def get_budget(request: Request, principal: AdminDep, scope: str, subject: str) -> Response:
    rt = runtime(request)
    await _authorize(rt, principal, scope, subject, BUDGET_SCOPES)
    return json_response(await _budget(rt, scope, subject))


@router.put("/v1/admin/budgets/{scope}/{subject:path}")
async def put_budget(request: Request, principal: AdminDep, scope: str, subject: str) -> Response:
    rt = runtime(request)
    await _authorize(rt, principal, scope, subject, BUDGET_SCOPES)
    caps = parse_fields(BudgetCaps, await _body(request))
    await _db("store budget caps", repo.set_budget_caps(rt.engine, scope, subject, caps))
    await _changed(
        rt,
        principal,
        "budgets.set",
        scope,
        subject,
        caps.model_dump(mode="json", exclude_unset=True),
    )
    return json_response(await _budget(rt, scope, subject))


@router.delete("/v1/admin/budgets/{scope}/{subject:path}")
async def delete_budget(
    request: Request, principal: AdminDep, scope: str, subject: str
) -> Response:
    rt = runtime(request)
    await _authorize(rt, principal, scope, subject, BUDGET_SCOPES)
    deleted = await _db("delete budget caps", repo.delete_budget_caps(rt.engine, scope, subject))
    await _changed(rt, principal, "budgets.clear", scope, subject, {"deleted": deleted})
    return json_response({**await _budget(rt, scope, subject), "deleted": deleted})
