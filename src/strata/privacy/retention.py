"""Retention: how long each data class is kept, and the purge that enforces it.

``retention:`` in strata.yaml sets days per class (null: kept). Semantic cache
entries follow their alias's cache TTL (``semantic_cache.expires_at``); exact
cache entries expire in Redis. The audit log is kept: it is append-only and
holds no personal data. Prompts and completions reach no store but the caches;
if the log level samples them, the log pipeline's retention applies (Loki: 7 days
in deploy/observability/loki/loki.yml). docs/data-retention.md lists every class.

The purge deletes expired rows in batches (short transactions, no long locks),
every ``interval_s`` in each server, and once with ``strata privacy purge``.
Several instances purging at once only share the work.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.storage.repositories import semantic_cache as semantic_repo

log = logging.getLogger("strata.privacy")

# Table and time column of each class purged by age.
AGED = {
    "usage_records": ("usage_records", "created_at"),
    "alert_deliveries": ("alert_deliveries", "created_at"),
    # Batches first: a batch's results go with it (cascade), then its files.
    "batches": ("batches", "created_at"),
    "files": ("files", "created_at"),
}


class RetentionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Days to keep each class; null keeps it. Usage records: 400 days covers a
    # year of invoices plus a month of disputes.
    usage_records_days: int | None = Field(default=400, gt=0)
    alert_deliveries_days: int | None = Field(default=90, gt=0)
    # Uploaded files, batch outputs and batches (with their per-request results):
    # 30 days, as OpenAI keeps batch output files.
    files_days: int | None = Field(default=30, gt=0)
    batches_days: int | None = Field(default=30, gt=0)
    interval_s: float = Field(default=3600.0, gt=0)
    batch: int = Field(default=5000, gt=0)
    enabled: bool = True


async def _purge_aged(engine: AsyncEngine, table: str, column: str, days: int, batch: int) -> int:
    total = 0
    # Table and column come from AGED, never from input.
    stmt = text(
        f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} "
        f"WHERE {column} < now() - make_interval(days => :days) LIMIT :n)"
    )
    while True:
        async with engine.begin() as conn:
            n = (await conn.execute(stmt, {"days": days, "n": batch})).rowcount
        total += n
        if n < batch:
            return total


async def purge(engine: AsyncEngine, settings: RetentionSettings) -> dict[str, int]:
    """Delete what outlived its retention; rows deleted per class."""
    out: dict[str, int] = {}
    for name, (table, column) in AGED.items():
        days = getattr(settings, f"{name}_days")
        out[name] = await _purge_aged(engine, table, column, days, settings.batch) if days else 0
    n = 0
    if await semantic_repo.available(engine):
        while (step := await semantic_repo.delete_expired(engine, settings.batch)) > 0:
            n += step
            if step < settings.batch:
                break
    out["semantic_cache"] = n
    return out


async def purge_forever(engine: AsyncEngine, settings: RetentionSettings) -> None:
    """The scheduled purge (a server task); errors are logged and retried next time."""
    if not settings.enabled:
        return
    while True:
        try:
            counts = await purge(engine, settings)
            if any(counts.values()):
                log.info("retention purge: %s", counts)
        except Exception as exc:
            log.warning("retention purge failed (%s); retrying later", type(exc).__name__)
        await asyncio.sleep(settings.interval_s)
