"""Queries for batches (the state of record) and their per-request results.

``batch_results`` has one row per input line at most: its primary key is
(batch_id, line), and custom ids are unique within a batch (checked when the
batch starts), so "one result per custom_id" is enforced by the database, not by
care. A worker killed after a commit cannot write the same result twice, and one
resuming reads which lines are done from here.

Ownership of a running batch is a lease (``lease_owner``, ``lease_until``) taken
and renewed by the worker running it; another worker takes over only once the
lease has lapsed (its owner died). Result bodies are encrypted like files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.storage.models import Base

# OpenAI's statuses; the ones a worker still has work in.
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "failed", "expired", "cancelled")

batches = Table(
    "batches",
    Base.metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(40), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    # The job queue (``jobs.queue``) whose workers run it: deployments sharing a
    # database but not a queue never take each other's batches.
    Column("queue", String(64), nullable=False),
    Column("output_file_id", String(40)),
    Column("error_file_id", String(40)),
    Column("total", Integer, nullable=False, server_default="0"),
    Column("completed", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    # Client metadata may name people: encrypted like file contents.
    Column("metadata_enc", LargeBinary),
    # Batch-level errors (OpenAI's ``errors``): codes, messages and line numbers.
    Column("errors", JSONB),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("in_progress_at", DateTime(timezone=True)),
    Column("finalizing_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("failed_at", DateTime(timezone=True)),
    Column("expired_at", DateTime(timezone=True)),
    Column("cancelling_at", DateTime(timezone=True)),
    Column("cancelled_at", DateTime(timezone=True)),
    Column("lease_owner", String(80)),
    Column("lease_until", DateTime(timezone=True)),
    Index("ix_batches_tenant_created", "tenant_id", "created_at"),
    Index("ix_batches_status", "status"),
)
batch_results = Table(
    "batch_results",
    Base.metadata,
    Column("batch_id", String(40), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("ok", Boolean, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
)


@dataclass(frozen=True, slots=True)
class BatchRow:
    id: str
    tenant_id: str
    user_id: str
    key_id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    queue: str
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    metadata_enc: bytes | None
    errors: Any
    created_at: datetime
    expires_at: datetime
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None


def _row(r: Any) -> BatchRow:
    d = dict(r._mapping)
    if d.get("metadata_enc") is not None:
        d["metadata_enc"] = bytes(d["metadata_enc"])
    return BatchRow(**d)


def metadata_aad(batch_id: str) -> bytes:
    return f"batches.metadata\x00{batch_id}".encode()


def result_aad(batch_id: str, line: int) -> bytes:
    return f"batch_results.body\x00{batch_id}\x00{line}".encode()


async def create(engine: AsyncEngine, values: dict[str, Any]) -> None:
    async with engine.begin() as conn:
        await conn.execute(batches.insert().values(**values))


async def get(engine: AsyncEngine, tenant_id: str | None, batch_id: str) -> BatchRow | None:
    """``tenant_id`` None: any tenant (workers and operator tools only)."""
    stmt = select(batches).where(batches.c.id == batch_id)
    if tenant_id is not None:
        stmt = stmt.where(batches.c.tenant_id == tenant_id)
    async with engine.connect() as conn:
        r = (await conn.execute(stmt)).first()
    return _row(r) if r is not None else None


async def list_batches(
    engine: AsyncEngine, tenant_id: str | None, *, after: str | None = None, limit: int = 20
) -> list[BatchRow]:
    """Newest first, keyset-paginated by ``after`` (a batch id)."""
    stmt = select(batches)
    if tenant_id is not None:
        stmt = stmt.where(batches.c.tenant_id == tenant_id)
    async with engine.connect() as conn:
        if after is not None:
            anchor = (
                await conn.execute(
                    stmt.with_only_columns(batches.c.created_at, batches.c.id).where(
                        batches.c.id == after
                    )
                )
            ).first()
            if anchor is None:  # an id this tenant does not have: nothing after it
                return []
            stmt = stmt.where(tuple_(batches.c.created_at, batches.c.id) < tuple(anchor))
        stmt = stmt.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit)
        return [_row(r) for r in (await conn.execute(stmt)).all()]


async def transition(
    engine: AsyncEngine,
    batch_id: str,
    to: str,
    *,
    only_from: tuple[str, ...],
    tenant_id: str | None = None,
    **values: Any,
) -> BatchRow | None:
    """Move to status ``to`` (stamping ``<to>_at``) if the batch is in ``only_from``;
    the new row, or None when it was not (a concurrent change won)."""
    stmt = (
        update(batches)
        .where(batches.c.id == batch_id, batches.c.status.in_(only_from))
        .values(status=to, **{f"{to}_at": func.now()}, **values)
        .returning(*batches.c)
    )
    if tenant_id is not None:
        stmt = stmt.where(batches.c.tenant_id == tenant_id)
    async with engine.begin() as conn:
        r = (await conn.execute(stmt)).first()
    return _row(r) if r is not None else None


async def update_fields(engine: AsyncEngine, batch_id: str, **values: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(batches).where(batches.c.id == batch_id).values(**values))


async def claim(engine: AsyncEngine, batch_id: str, owner: str, lease_s: float) -> BatchRow | None:
    """Take (or renew) the lease of an unfinished batch; None if another live worker
    holds it, or it is finished."""
    lease = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, lease_s)
    stmt = (
        update(batches)
        .where(
            batches.c.id == batch_id,
            batches.c.status.in_(ACTIVE),
            (batches.c.lease_until.is_(None))
            | (batches.c.lease_until < func.now())
            | (batches.c.lease_owner == owner),
        )
        .values(lease_owner=owner, lease_until=lease)
        .returning(*batches.c)
    )
    async with engine.begin() as conn:
        r = (await conn.execute(stmt)).first()
    return _row(r) if r is not None else None


async def release(engine: AsyncEngine, batch_id: str, owner: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(batches)
            .where(batches.c.id == batch_id, batches.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )


async def orphaned(engine: AsyncEngine, queue: str) -> list[str]:
    """Unfinished batches of this queue nobody holds (a worker died, or the job was
    lost)."""
    stmt = select(batches.c.id).where(
        batches.c.queue == queue,
        batches.c.status.in_(ACTIVE),
        (batches.c.lease_until.is_(None)) | (batches.c.lease_until < func.now()),
    )
    async with engine.connect() as conn:
        return list((await conn.execute(stmt)).scalars())


async def done_lines(engine: AsyncEngine, batch_id: str) -> set[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(batch_results.c.line).where(batch_results.c.batch_id == batch_id)
        )
        return set(rows.scalars())


INSERT_RESULTS = text(
    """
WITH ins AS (
    INSERT INTO batch_results (batch_id, line, ok, body)
    SELECT :batch_id, r.line, r.ok, r.body
    FROM unnest(CAST(:lines AS int[]), CAST(:oks AS bool[]), CAST(:bodies AS bytea[]))
        AS r(line, ok, body)
    ON CONFLICT (batch_id, line) DO NOTHING
    RETURNING line, ok
), counted AS (
    UPDATE batches SET
        completed = completed + (SELECT count(*) FROM ins WHERE ok),
        failed = failed + (SELECT count(*) FROM ins WHERE NOT ok)
    WHERE id = :batch_id
)
SELECT line FROM ins
"""
)


async def insert_results(
    engine: AsyncEngine, batch_id: str, rows: list[tuple[int, bool, bytes]]
) -> set[int]:
    """Store results (one statement, one transaction, counts moved with them); the
    lines actually inserted (a line already stored is skipped, not replaced)."""
    if not rows:
        return set()
    params = {
        "batch_id": batch_id,
        "lines": [r[0] for r in rows],
        "oks": [r[1] for r in rows],
        "bodies": [r[2] for r in rows],
    }
    async with engine.begin() as conn:
        return set((await conn.execute(INSERT_RESULTS, params)).scalars())


async def results(engine: AsyncEngine, batch_id: str, ok: bool) -> list[tuple[int, bytes]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(batch_results.c.line, batch_results.c.body)
            .where(batch_results.c.batch_id == batch_id, batch_results.c.ok.is_(ok))
            .order_by(batch_results.c.line)
        )
        return [(int(r.line), bytes(r.body)) for r in rows]


async def counts(engine: AsyncEngine, batch_id: str) -> tuple[int, int]:
    """(completed, failed) as stored in the results (the truth the counters follow)."""
    async with engine.connect() as conn:
        r = (
            await conn.execute(
                select(
                    func.count().filter(batch_results.c.ok.is_(True)),
                    func.count().filter(batch_results.c.ok.is_(False)),
                ).where(batch_results.c.batch_id == batch_id)
            )
        ).one()
    return int(r[0]), int(r[1])


async def of_user(engine: AsyncEngine, tenant_id: str, user_id: str) -> list[BatchRow]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(batches)
            .where(batches.c.tenant_id == tenant_id, batches.c.user_id == user_id)
            .order_by(batches.c.created_at)
        )
        return [_row(r) for r in rows]


async def delete_user(engine: AsyncEngine, tenant_id: str, user_id: str) -> int:
    async with engine.begin() as conn:
        return int(
            (
                await conn.execute(
                    delete(batches).where(
                        batches.c.tenant_id == tenant_id, batches.c.user_id == user_id
                    )
                )
            ).rowcount
        )
