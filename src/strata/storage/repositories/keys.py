"""Queries for tenants, users and API keys."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.security.keys import Principal, display_prefix, generate_key, hash_key
from strata.storage.models import ApiKey, Tenant, User


@dataclass(frozen=True)
class NewKey:
    id: str
    key: str  # shown once, never stored
    tenant_id: str
    user_id: str
    is_admin: bool


async def create_key(
    engine: AsyncEngine,
    *,
    tenant_id: str,
    user_id: str,
    name: str = "",
    is_admin: bool = False,
    auto_routing: bool = True,
) -> NewKey:
    key = generate_key()
    key_id = "key_" + secrets.token_hex(8)
    async with engine.begin() as conn:
        await conn.execute(insert(Tenant).values(id=tenant_id).on_conflict_do_nothing())
        await conn.execute(
            insert(User).values(tenant_id=tenant_id, id=user_id).on_conflict_do_nothing()
        )
        await conn.execute(
            insert(ApiKey).values(
                id=key_id,
                tenant_id=tenant_id,
                user_id=user_id,
                name=name,
                display_prefix=display_prefix(key),
                key_hash=hash_key(key),
                is_admin=is_admin,
                auto_routing=auto_routing,
            )
        )
    return NewKey(id=key_id, key=key, tenant_id=tenant_id, user_id=user_id, is_admin=is_admin)


async def find_active(engine: AsyncEngine, key_hash: str) -> Principal | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    ApiKey.id,
                    ApiKey.tenant_id,
                    ApiKey.user_id,
                    ApiKey.is_admin,
                    ApiKey.auto_routing,
                    ApiKey.semantic_cache,
                ).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            )
        ).first()
    if row is None:
        return None
    return Principal(
        key_id=row.id,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        is_admin=row.is_admin,
        auto_routing=row.auto_routing,
        semantic_cache=row.semantic_cache,
    )


async def list_keys(engine: AsyncEngine, *, tenant_id: str | None = None) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(ApiKey.created_at)
    if tenant_id is not None:
        stmt = stmt.where(ApiKey.tenant_id == tenant_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [ApiKey(**row._mapping) for row in rows]


async def revoke_key(engine: AsyncEngine, key_id: str) -> str | None:
    """Revoke; returns the key's hash (to evict caches) or None if no such active key."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
                .returning(ApiKey.key_hash)
            )
        ).first()
    return row.key_hash if row else None


async def set_auto_routing(engine: AsyncEngine, key_id: str, on: bool) -> str | None:
    """Turn capability-based routing on or off for a key; returns its hash (to evict
    caches) or None if there is no such active key."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(auto_routing=on)
                .returning(ApiKey.key_hash)
            )
        ).first()
    return row.key_hash if row else None


async def set_semantic_cache(engine: AsyncEngine, key_id: str, on: bool | None) -> str | None:
    """Opt a key in to (True) or out of (False) the semantic cache, or back to the
    alias's setting (None); returns its hash (to evict caches) or None if no such key."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(semantic_cache=on)
                .returning(ApiKey.key_hash)
            )
        ).first()
    return row.key_hash if row else None


async def count_keys(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(ApiKey))).scalar_one())


async def touch_last_used(engine: AsyncEngine, last_used: dict[str, datetime]) -> None:
    if not last_used:
        return
    async with engine.begin() as conn:
        for key_id, at in last_used.items():
            await conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .values(last_used_at=func.greatest(func.coalesce(ApiKey.last_used_at, at), at))
            )
