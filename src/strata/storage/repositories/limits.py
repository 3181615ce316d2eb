"""Queries for per-subject overrides of rate limits and budget caps.

A row stores only the fields it overrides (``model_dump(exclude_unset=True)``),
so the rest keeps following strata.yaml. Subjects: a key id, ``tenant/user``, a
tenant id, or (limits only) an alias name.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, DateTime, String, Table, delete, func, select
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.limits.config import BudgetCaps, RuleSet
from strata.storage.models import Base

LIMIT_SCOPES = ("key", "user", "tenant", "alias")
BUDGET_SCOPES = ("key", "user", "tenant")

# Core tables for the queries (created by migration 0007).
_meta = Base.metadata  # one metadata: migrations are checked against it
limit_overrides = Table(
    "limit_overrides",
    _meta,
    Column("scope", String(16), primary_key=True),
    Column("subject", String(256), primary_key=True),
    Column("rules", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)
budget_caps = Table(
    "budget_caps",
    _meta,
    Column("scope", String(16), primary_key=True),
    Column("subject", String(256), primary_key=True),
    Column("caps", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)

Overrides = dict[tuple[str, str], dict[str, Any]]


def _check_scope(scope: str, allowed: tuple[str, ...]) -> None:
    if scope not in allowed:
        raise ValueError(f"scope must be one of {', '.join(allowed)}, not {scope!r}")


async def _upsert(
    engine: AsyncEngine, table: Table, col: str, scope: str, subject: str, fields: dict[str, Any]
) -> None:
    stmt = insert(table).values(scope=scope, subject=subject, **{col: fields})
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.scope, table.c.subject],
        set_={col: stmt.excluded[col], "updated_at": func.now()},
    )
    async with engine.begin() as conn:
        await conn.execute(stmt)


async def _get(
    engine: AsyncEngine, table: Table, col: str, scope: str, subject: str
) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(table.c[col]).where(table.c.scope == scope, table.c.subject == subject)
            )
        ).first()
    return dict(row[0]) if row else None


async def _delete(engine: AsyncEngine, table: Table, scope: str, subject: str) -> bool:
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(table).where(table.c.scope == scope, table.c.subject == subject)
        )
    return bool(result.rowcount)


async def _all(engine: AsyncEngine, table: Table, col: str) -> Overrides:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(table.c.scope, table.c.subject, table.c[col]))).all()
    return {(r[0], r[1]): dict(r[2]) for r in rows}


async def set_limit_override(engine: AsyncEngine, scope: str, subject: str, rules: RuleSet) -> None:
    """Store the fields ``rules`` sets (replacing any earlier override of the subject)."""
    _check_scope(scope, LIMIT_SCOPES)
    fields = rules.model_dump(mode="json", exclude_unset=True)
    await _upsert(engine, limit_overrides, "rules", scope, subject, fields)


async def get_limit_override(
    engine: AsyncEngine, scope: str, subject: str
) -> dict[str, Any] | None:
    return await _get(engine, limit_overrides, "rules", scope, subject)


async def delete_limit_override(engine: AsyncEngine, scope: str, subject: str) -> bool:
    return await _delete(engine, limit_overrides, scope, subject)


async def all_limit_overrides(engine: AsyncEngine) -> Overrides:
    return await _all(engine, limit_overrides, "rules")


async def set_budget_caps(engine: AsyncEngine, scope: str, subject: str, caps: BudgetCaps) -> None:
    """Store the fields ``caps`` sets (replacing any earlier caps of the subject)."""
    _check_scope(scope, BUDGET_SCOPES)
    fields = caps.model_dump(mode="json", exclude_unset=True)
    await _upsert(engine, budget_caps, "caps", scope, subject, fields)


async def get_budget_caps(engine: AsyncEngine, scope: str, subject: str) -> dict[str, Any] | None:
    return await _get(engine, budget_caps, "caps", scope, subject)


async def delete_budget_caps(engine: AsyncEngine, scope: str, subject: str) -> bool:
    return await _delete(engine, budget_caps, scope, subject)


async def all_budget_caps(engine: AsyncEngine) -> Overrides:
    return await _all(engine, budget_caps, "caps")
