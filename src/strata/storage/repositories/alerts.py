"""Alert deliveries: one row per alert and channel, claimed before sending.

The unique (dedupe_key, channel) constraint is the durable half of "one alert
per threshold per period": whichever instance inserts the row owns delivery to
that channel; every other insert is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.storage.models import Base, UsageRecord

# Core table (created by migration 0008); kept here so alerts need no ORM model.
_meta = Base.metadata  # one metadata: migrations are checked against it
alert_deliveries = sa.Table(
    "alert_deliveries",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("dedupe_key", sa.String(400), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("scope", sa.String(40), nullable=False),
    sa.Column("scope_id", sa.String(200), nullable=False),
    sa.Column("period", sa.String(10), nullable=False),
    sa.Column("period_start", sa.Date, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("channel", sa.String(100), nullable=False),
    sa.Column("channel_type", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("dedupe_key", "channel", name="uq_alert_deliveries_key_channel"),
    sa.Index("ix_alert_deliveries_created", "created_at"),
    sa.Index("ix_alert_deliveries_scope", "scope", "scope_id"),
)

PENDING, SENT, FAILED = "pending", "sent", "failed"


@dataclass(frozen=True)
class Delivery:
    id: int
    dedupe_key: str
    kind: str
    scope: str
    scope_id: str
    period: str
    period_start: date
    threshold: float
    channel: str
    channel_type: str
    status: str
    attempts: int
    error: str | None
    payload: dict[str, Any]
    created_at: datetime
    delivered_at: datetime | None


async def claim(
    engine: AsyncEngine,
    *,
    payload: dict[str, Any],
    channels: list[tuple[str, str]],
) -> dict[str, int]:
    """Insert a pending row per (channel name, channel type); return {channel: row id}
    for the rows this call inserted (those it owns). Existing rows are left alone."""
    if not channels:
        return {}
    now = datetime.now(UTC)
    common = {
        "dedupe_key": payload["dedupe_key"],
        "kind": payload["kind"],
        "scope": payload["scope"],
        "scope_id": payload["scope_id"],
        "period": payload["period"],
        "period_start": date.fromisoformat(payload["period_start"]),
        "threshold": float(payload["threshold"]),
        "status": PENDING,
        "attempts": 0,
        "payload": payload,
        "created_at": now,
    }
    stmt = (
        insert(alert_deliveries)
        .values([{**common, "channel": name, "channel_type": typ} for name, typ in channels])
        .on_conflict_do_nothing(index_elements=["dedupe_key", "channel"])
        .returning(alert_deliveries.c.channel, alert_deliveries.c.id)
    )
    async with engine.begin() as conn:
        rows = (await conn.execute(stmt)).all()
    return {r.channel: r.id for r in rows}


async def record_attempt(
    engine: AsyncEngine,
    row_id: int,
    *,
    attempts: int,
    status: str,
    error: str | None,
) -> None:
    """Update a claimed row after an attempt (``status`` stays pending while retrying)."""
    values: dict[str, Any] = {"attempts": attempts, "status": status, "error": error}
    if status == SENT:
        values["delivered_at"] = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(alert_deliveries).where(alert_deliveries.c.id == row_id).values(**values)
        )


async def list_deliveries(
    engine: AsyncEngine,
    *,
    limit: int = 50,
    dedupe_key: str | None = None,
    scope_id: str | None = None,
) -> list[Delivery]:
    """Newest first."""
    stmt = sa.select(alert_deliveries).order_by(alert_deliveries.c.id.desc()).limit(limit)
    if dedupe_key is not None:
        stmt = stmt.where(alert_deliveries.c.dedupe_key == dedupe_key)
    if scope_id is not None:
        stmt = stmt.where(alert_deliveries.c.scope_id == scope_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [Delivery(**row._mapping) for row in rows]


async def spend_since(engine: AsyncEngine, since: datetime) -> Decimal:
    """Deployment-wide recorded spend (all tenants) in the UTC day that starts at
    ``since``; records dated later (a clock ahead) belong to their own day."""
    stmt = sa.select(sa.func.coalesce(sa.func.sum(UsageRecord.cost_usd), 0)).where(
        UsageRecord.created_at >= since, UsageRecord.created_at < since + timedelta(days=1)
    )
    async with engine.connect() as conn:
        return Decimal((await conn.execute(stmt)).scalar_one())
