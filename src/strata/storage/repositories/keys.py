"""Queries for tenants, users and API keys (and the key lifecycle: scopes, allowed
aliases, expiry, IP allow-list, rotation with a grace window)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from strata.security.keys import (
    Principal,
    check_scopes,
    display_prefix,
    generate_key,
    hash_key,
    parse_networks,
)
from strata.storage.models import ApiKey, Tenant, User


@dataclass(frozen=True)
class NewKey:
    id: str
    key: str  # shown once, never stored
    tenant_id: str
    user_id: str
    is_admin: bool
    scopes: list[str] | None = None
    allowed_models: list[str] | None = None
    expires_at: datetime | None = None
    ip_allow: list[str] | None = None


@dataclass(frozen=True)
class RotatedKey:
    id: str
    key: str  # the new secret, shown once, never stored
    tenant_id: str
    user_id: str
    name: str
    # Until when the secret it replaces still works (None: not at all).
    previous_expires_at: datetime | None
    # Hashes whose cached principals must go (the replaced secret, and the one
    # before it if a grace window was still open).
    evict: list[str] = field(default_factory=list)


def normalize_scopes(scopes: Sequence[str] | None, is_admin: bool) -> tuple[list[str] | None, bool]:
    """Admin scope and is_admin go together: either implies the other."""
    if scopes is None:
        return None, is_admin
    clean = check_scopes(scopes)
    if is_admin and "admin" not in clean:
        clean = check_scopes([*clean, "admin"])
    return clean, is_admin or "admin" in clean


async def create_key(
    engine: AsyncEngine,
    *,
    tenant_id: str,
    user_id: str,
    name: str = "",
    is_admin: bool = False,
    auto_routing: bool = True,
    scopes: Sequence[str] | None = None,
    allowed_models: Sequence[str] | None = None,
    expires_at: datetime | None = None,
    ip_allow: Sequence[str] | None = None,
) -> NewKey:
    """A new key; None for scopes, allowed_models, expires_at, ip_allow: unrestricted."""
    scope_list, is_admin = normalize_scopes(scopes, is_admin)
    models = list(dict.fromkeys(allowed_models)) if allowed_models is not None else None
    nets = [str(n) for n in parse_networks(ip_allow)] if ip_allow is not None else None
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
                scopes=scope_list,
                allowed_models=models,
                expires_at=expires_at,
                ip_allow=nets,
            )
        )
    return NewKey(
        id=key_id,
        key=key,
        tenant_id=tenant_id,
        user_id=user_id,
        is_admin=is_admin,
        scopes=scope_list,
        allowed_models=models,
        expires_at=expires_at,
        ip_allow=nets,
    )


def _usable(now: Any) -> Any:
    """Not revoked and not expired."""
    return and_(
        ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
    )


async def find_active(engine: AsyncEngine, key_hash: str) -> Principal | None:
    """The principal of a usable key whose current secret, or previous secret within
    its grace window, hashes to ``key_hash``."""
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
                    ApiKey.scopes,
                    ApiKey.allowed_models,
                    ApiKey.expires_at,
                    ApiKey.ip_allow,
                    ApiKey.key_hash,
                    ApiKey.previous_expires_at,
                ).where(
                    or_(
                        ApiKey.key_hash == key_hash,
                        and_(
                            ApiKey.previous_hash == key_hash,
                            ApiKey.previous_expires_at > func.now(),
                        ),
                    ),
                    _usable(func.now()),
                )
            )
        ).first()
    if row is None:
        return None
    expires_at = row.expires_at
    if row.key_hash != key_hash:  # the previous secret: good until its grace ends
        grace_end = row.previous_expires_at
        expires_at = grace_end if expires_at is None else min(expires_at, grace_end)
    return Principal(
        key_id=row.id,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        is_admin=row.is_admin,
        auto_routing=row.auto_routing,
        semantic_cache=row.semantic_cache,
        scopes=frozenset(row.scopes) if row.scopes is not None else None,
        allowed_models=frozenset(row.allowed_models) if row.allowed_models is not None else None,
        expires_at=expires_at,
        ip_allow=parse_networks(row.ip_allow) if row.ip_allow is not None else None,
    )


async def _rotate(
    conn: AsyncConnection, key_id: str, grace_s: float, tenant_id: str | None
) -> RotatedKey | None:
    stmt = (
        select(ApiKey.id, ApiKey.tenant_id, ApiKey.user_id, ApiKey.name)
        .add_columns(ApiKey.key_hash, ApiKey.previous_hash)
        .where(ApiKey.id == key_id, _usable(func.now()))
        .with_for_update()
    )
    if tenant_id is not None:
        stmt = stmt.where(ApiKey.tenant_id == tenant_id)
    row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    now = datetime.now(UTC)
    key = generate_key()
    grace_end = now + timedelta(seconds=grace_s) if grace_s > 0 else None
    await conn.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(
            key_hash=hash_key(key),
            display_prefix=display_prefix(key),
            previous_hash=row.key_hash if grace_end is not None else None,
            previous_expires_at=grace_end,
            rotated_at=now,
        )
    )
    evict = [row.key_hash] + ([row.previous_hash] if row.previous_hash else [])
    return RotatedKey(
        id=row.id,
        key=key,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        name=row.name,
        previous_expires_at=grace_end,
        evict=evict,
    )


async def rotate_key(
    engine: AsyncEngine, key_id: str, *, grace_s: float = 0, tenant_id: str | None = None
) -> RotatedKey | None:
    """A new secret for the same key identity; the old one keeps working for
    ``grace_s`` seconds (0: stops at once). None: no such usable key (in the tenant)."""
    async with engine.begin() as conn:
        return await _rotate(conn, key_id, grace_s, tenant_id)


async def rotate_older_than(
    engine: AsyncEngine, age: timedelta, *, grace_s: float = 0, tenant_id: str | None = None
) -> list[RotatedKey]:
    """Rotate every usable key whose current secret is older than ``age`` (issued at
    creation or by the last rotation); what was rotated, oldest first."""
    issued = func.coalesce(ApiKey.rotated_at, ApiKey.created_at)
    stmt = (
        select(ApiKey.id)
        .where(_usable(func.now()), issued < datetime.now(UTC) - age)
        .order_by(issued, ApiKey.id)
    )
    if tenant_id is not None:
        stmt = stmt.where(ApiKey.tenant_id == tenant_id)
    async with engine.connect() as conn:
        ids = list((await conn.execute(stmt)).scalars())
    out = []
    for key_id in ids:
        async with engine.begin() as conn:
            rotated = await _rotate(conn, key_id, grace_s, tenant_id)
        if rotated is not None:
            out.append(rotated)
    return out


async def set_expiry(engine: AsyncEngine, key_id: str, expires_at: datetime | None) -> list[str]:
    """Set (or clear) a key's expiry; the hashes to evict from caches ([] if no such key)."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .values(expires_at=expires_at)
                .returning(ApiKey.key_hash, ApiKey.previous_hash)
            )
        ).first()
    return [h for h in (row or ()) if h]


async def get_key(engine: AsyncEngine, key_id: str) -> ApiKey | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(ApiKey).where(ApiKey.id == key_id))).first()
    return ApiKey(**row._mapping) if row else None


async def list_keys(engine: AsyncEngine, *, tenant_id: str | None = None) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(ApiKey.created_at)
    if tenant_id is not None:
        stmt = stmt.where(ApiKey.tenant_id == tenant_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [ApiKey(**row._mapping) for row in rows]


async def revoke_key(engine: AsyncEngine, key_id: str) -> str | None:
    """Revoke; returns the key's hash (to evict caches) or None if no such active key.
    A previous secret in its grace window stops working too (the row is revoked);
    ``revoke_key_hashes`` also returns its hash."""
    hashes = await revoke_key_hashes(engine, key_id)
    return hashes[0] if hashes else None


async def revoke_key_hashes(
    engine: AsyncEngine, key_id: str, *, tenant_id: str | None = None
) -> list[str]:
    """Revoke; every hash to evict (current secret first), [] if no such active key."""
    stmt = update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    if tenant_id is not None:
        stmt = stmt.where(ApiKey.tenant_id == tenant_id)
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                stmt.values(revoked_at=datetime.now(UTC)).returning(
                    ApiKey.key_hash, ApiKey.previous_hash
                )
            )
        ).first()
    return [h for h in (row or ()) if h]


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
