"""Traffic by model alias and deployment, for the cost planner's forecast.

Grouped by alias, provider and model only: never by end user (the planner has
no use for who sent a request, and the user column is personal data).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Integer, case, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.storage.models import UsageRecord


@dataclass(frozen=True)
class TrafficRow:
    alias: str
    provider: str | None
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    # cache column: hit-exact / hit-semantic, miss (looked up, not found), other/None.
    cache_hits: int
    cache_misses: int
    streamed: int
    unstreamed_cost_usd: Decimal
    # Requests that were not cache hits, and how many distinct prompt sizes they had.
    uncached: int
    distinct_prompt_sizes: int

    @property
    def repeated_prompt_size_share(self) -> float:
        """Upper bound on the share of requests repeating an earlier prompt exactly.

        Identical prompts to one model have identical token counts, so requests
        whose prompt size was already seen bound the identical ones from above.
        """
        if not self.requests:
            return 0.0
        return max(0, self.uncached - self.distinct_prompt_sizes) / self.requests


async def traffic_by_model(
    engine: AsyncEngine, *, start: datetime, end: datetime, tenant_id: str | None = None
) -> list[TrafficRow]:
    """Requests in [start, end), by alias, provider and model."""
    r = UsageRecord
    hit = r.cache.like("hit%")
    not_hit = func.coalesce(r.cache, "").notlike("hit%")
    stmt = (
        select(
            r.alias,
            r.provider,
            r.model,
            func.count().label("requests"),
            func.coalesce(func.sum(r.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(r.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(r.cost_usd), 0).label("cost_usd"),
            func.count().filter(hit).label("cache_hits"),
            func.count().filter(r.cache == "miss").label("cache_misses"),
            func.count().filter(r.stream.is_(True)).label("streamed"),
            func.coalesce(func.sum(case((r.stream.is_(False), r.cost_usd), else_=0)), 0).label(
                "unstreamed_cost"
            ),
            func.count().filter(not_hit).label("uncached"),
            func.count(distinct(case((not_hit, r.prompt_tokens), else_=None).cast(Integer))).label(
                "distinct_sizes"
            ),
        )
        .where(r.created_at >= start, r.created_at < end)
        .group_by(r.alias, r.provider, r.model)
        .order_by(r.alias, r.provider, r.model)
    )
    if tenant_id is not None:
        stmt = stmt.where(r.tenant_id == tenant_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        TrafficRow(
            alias=x.alias,
            provider=x.provider,
            model=x.model,
            requests=x.requests,
            prompt_tokens=int(x.prompt_tokens),
            completion_tokens=int(x.completion_tokens),
            cost_usd=Decimal(x.cost_usd),
            cache_hits=x.cache_hits,
            cache_misses=x.cache_misses,
            streamed=x.streamed,
            unstreamed_cost_usd=Decimal(x.unstreamed_cost),
            uncached=x.uncached,
            distinct_prompt_sizes=x.distinct_sizes,
        )
        for x in rows
    ]
