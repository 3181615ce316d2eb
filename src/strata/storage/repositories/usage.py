"""Queries for usage records: batched inserts and summaries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Date, cast, func, literal_column, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.storage.models import UsageRecord

UTC = UTC


COLUMNS = tuple(c.name for c in UsageRecord.__table__.columns)
INSERT_SQL = (
    f"INSERT INTO usage_records ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) "
    "ON CONFLICT (id) DO NOTHING"
)

# Columns added after 0001: rows spilled by an older version lack them.
DEFAULTS: dict[str, Any] = {
    "attempts": 0,
    "fallback": False,
    "route": None,
    "failed_cost_usd": Decimal(0),
    "cache": None,
    "saved_usd": Decimal(0),
    "trace_id": None,
    "end_user_enc": None,
    "end_user_hmac": None,
    "end_user_dek": None,
}


async def insert_batch(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    """Idempotent: a row whose id is already stored is skipped (spill replays).

    Uses asyncpg's executemany directly: the ORM's parameter processing cost
    several times more CPU per row, on the same event loop as the requests.
    """
    if not rows:
        return
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if driver is None:  # never for asyncpg; keeps the type checker honest
            raise RuntimeError("no driver connection")
        # executemany is atomic: all rows or none.
        await driver.executemany(
            INSERT_SQL, [tuple(r.get(c, DEFAULTS.get(c)) for c in COLUMNS) for r in rows]
        )


@dataclass(frozen=True)
class UsageRow:
    day: date
    alias: str
    user_id: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    cache_hits: int = 0
    saved_usd: Decimal = Decimal(0)
    # Set when grouped by end user: the id (decrypted), or None when unknown.
    end_user: str | None = None
    by_end_user: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = {
            "date": self.day.isoformat(),
            "model": self.alias,
            "user": self.user_id,
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            # A string: JSON numbers would lose Decimal's exactness.
            "cost_usd": decimal_str(self.cost_usd),
            "cache_hits": self.cache_hits,
            "cache_hit_rate": round(self.cache_hits / self.requests, 4) if self.requests else 0.0,
            "saved_usd": decimal_str(self.saved_usd),
        }
        if self.by_end_user:
            out["end_user"] = self.end_user
        return out


def decimal_str(value: Decimal) -> str:
    return str(value.normalize()) if value else "0"


async def summarize(
    engine: AsyncEngine,
    *,
    tenant_id: str | None,
    user_id: str | None = None,
    alias: str | None = None,
    start: date | None = None,
    end: date | None = None,
    end_user_hmac: str | None = None,
    by_end_user: bool = False,
    open_end_user: Callable[[str, Any, bytes], str | None] | None = None,
) -> list[UsageRow]:
    """Cost and tokens by UTC day, alias and user (and end user with
    ``by_end_user``: its blind index groups, ``open_end_user(tenant, row id,
    ciphertext)`` names the group); ``end`` is inclusive."""
    day = cast(func.timezone("UTC", UsageRecord.created_at), Date).label("day")
    group: list[Any] = [literal_column("1"), UsageRecord.alias, UsageRecord.user_id]
    extra: list[Any] = []
    if by_end_user:
        group.append(UsageRecord.end_user_hmac)
        first = UsageRecord.id
        extra = [
            func.array_agg(aggregate_order_by(UsageRecord.tenant_id, first))[1].label("eu_t"),
            func.array_agg(aggregate_order_by(UsageRecord.id, first))[1].label("eu_id"),
            func.array_agg(aggregate_order_by(UsageRecord.end_user_enc, first))[1].label("eu"),
        ]
    stmt = (
        select(
            day,
            UsageRecord.alias,
            UsageRecord.user_id,
            *extra,
            func.count().label("requests"),
            func.count().filter(UsageRecord.status != "ok").label("errors"),
            func.coalesce(func.sum(UsageRecord.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(UsageRecord.cost_usd), 0).label("cost_usd"),
            func.count().filter(UsageRecord.cache.like("hit%")).label("cache_hits"),
            func.coalesce(func.sum(UsageRecord.saved_usd), 0).label("saved_usd"),
        )
        .group_by(*group)
        .order_by(*group)
    )
    if tenant_id is not None:
        stmt = stmt.where(UsageRecord.tenant_id == tenant_id)
    if user_id is not None:
        stmt = stmt.where(UsageRecord.user_id == user_id)
    if alias is not None:
        stmt = stmt.where(UsageRecord.alias == alias)
    if end_user_hmac is not None:
        stmt = stmt.where(UsageRecord.end_user_hmac == end_user_hmac)
    if start is not None:
        stmt = stmt.where(UsageRecord.created_at >= datetime.combine(start, time(), UTC))
    if end is not None:
        stmt = stmt.where(
            UsageRecord.created_at < datetime.combine(end + timedelta(days=1), time(), UTC)
        )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        UsageRow(
            day=r.day,
            alias=r.alias,
            user_id=r.user_id,
            requests=r.requests,
            errors=r.errors,
            prompt_tokens=int(r.prompt_tokens),
            completion_tokens=int(r.completion_tokens),
            cost_usd=Decimal(r.cost_usd),
            cache_hits=r.cache_hits,
            saved_usd=Decimal(r.saved_usd),
            end_user=_end_user(r, open_end_user) if by_end_user else None,
            by_end_user=by_end_user,
        )
        for r in rows
    ]


def _end_user(r: Any, open_end_user: Callable[[str, Any, bytes], str | None] | None) -> str | None:
    if r.eu is None or open_end_user is None:
        return None
    return open_end_user(r.eu_t, r.eu_id, bytes(r.eu))


async def count_for_request(engine: AsyncEngine, request_id: str) -> int:
    async with engine.connect() as conn:
        stmt = select(func.count()).where(UsageRecord.request_id == request_id)
        return int((await conn.execute(stmt)).scalar_one())


async def reencrypt_end_users(engine: AsyncEngine, crypto: Any, batch: int = 500) -> int:
    """Re-encrypt up to ``batch`` end-user ids not under the active data key
    (rotation); how many. Rows under keys this ring does not hold are left alone; an
    id that no longer opens (damaged) is dropped from its row (the numbers stay)."""
    from strata.security.crypto import DecryptError
    from strata.usage.sealing import end_user_aad

    active = crypto.active_id
    done = 0
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if driver is None:
            raise RuntimeError("no driver connection")
        async with driver.transaction():
            rows = await driver.fetch(
                "SELECT id, tenant_id, end_user_enc FROM usage_records "
                "WHERE end_user_dek <> $1 AND end_user_dek = ANY($3::int[]) "
                "LIMIT $2 FOR UPDATE SKIP LOCKED",
                active,
                batch,
                sorted(crypto.key_ids()),
            )
            for r in rows:
                aad = end_user_aad(r["tenant_id"], r["id"])
                try:
                    plain = crypto.decrypt(bytes(r["end_user_enc"]), aad)
                    new: tuple[Any, ...] = (crypto.encrypt(plain, aad), active)
                except DecryptError:
                    new = (None, None)
                await driver.execute(
                    "UPDATE usage_records SET end_user_enc = $2, end_user_dek = $3 WHERE id = $1",
                    r["id"],
                    *new,
                )
                done += 1
    return done


async def end_user_key_ids(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        result = await conn.execute(
            select(UsageRecord.end_user_dek).where(UsageRecord.end_user_dek.is_not(None)).distinct()
        )
        return {int(k) for (k,) in result if k is not None}
