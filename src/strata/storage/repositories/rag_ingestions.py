"""Queries for background RAG ingestions (the state of record of one upload).

An ingestion row says what a worker must ingest (``spec_enc``: the documents'
stored file ids, formats, sources and metadata, encrypted: sources and metadata
may name people) and how far it got. Like batches, a worker runs one only while
it holds the lease (``lease_owner``/``lease_until``); a dead worker's ingestion is
handed on by the reconcile job once the lease lapses.

Every read takes the tenant: another tenant's ingestion is simply not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.storage.models import Base

ACTIVE = ("queued", "running")
FINAL = ("completed", "failed")

rag_ingestions = Table(
    "rag_ingestions",
    Base.metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("collection_id", String(40), nullable=False),
    Column("queue", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("uploads", Integer, nullable=False),
    Column("documents", Integer, nullable=False, server_default="0"),
    Column("chunks", Integer, nullable=False, server_default="0"),
    Column("spec_enc", LargeBinary, nullable=False),
    # The failure's message (it may quote a document's name): encrypted too.
    Column("error_enc", LargeBinary),
    Column("lease_owner", String(80)),
    Column("lease_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Index("ix_rag_ingestions_tenant_user", "tenant_id", "user_id"),
    Index("ix_rag_ingestions_status", "status"),
)


@dataclass(frozen=True, slots=True)
class IngestionRow:
    id: str
    tenant_id: str
    user_id: str
    collection_id: str
    queue: str
    status: str
    uploads: int
    documents: int
    chunks: int
    spec_enc: bytes
    error_enc: bytes | None
    lease_owner: str | None
    lease_until: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def _row(r: Any) -> IngestionRow:
    d = dict(r._mapping)
    d["spec_enc"] = bytes(d["spec_enc"])
    d["error_enc"] = bytes(d["error_enc"]) if d["error_enc"] is not None else None
    return IngestionRow(**d)


def _from_now(seconds: float) -> Any:
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def spec_aad(ingestion_id: str) -> bytes:
    return f"rag_ingestions.spec\x00{ingestion_id}".encode()


def error_aad(ingestion_id: str) -> bytes:
    return f"rag_ingestions.error\x00{ingestion_id}".encode()


async def insert(engine: AsyncEngine, conn: Any = None, **values: Any) -> None:
    stmt = rag_ingestions.insert().values(status="queued", **values)
    if conn is not None:
        await conn.execute(stmt)
        return
    async with engine.begin() as c:
        await c.execute(stmt)


async def get(engine: AsyncEngine, tenant_id: str, ingestion_id: str) -> IngestionRow | None:
    stmt = select(rag_ingestions).where(
        rag_ingestions.c.id == ingestion_id, rag_ingestions.c.tenant_id == tenant_id
    )
    async with engine.connect() as conn:
        r = (await conn.execute(stmt)).first()
    return _row(r) if r is not None else None


async def claim(
    engine: AsyncEngine, ingestion_id: str, owner: str, lease_s: float
) -> IngestionRow | None:
    """Take (or renew) the lease of an unfinished ingestion and mark it running,
    its counts reset (a retry counts again: unchanged documents are skipped fast);
    None if another live worker holds it, or it is finished."""
    c = rag_ingestions.c
    stmt = (
        update(rag_ingestions)
        .where(
            c.id == ingestion_id,
            c.status.in_(ACTIVE),
            c.lease_until.is_(None) | (c.lease_until < func.now()) | (c.lease_owner == owner),
        )
        .values(
            status="running",
            documents=0,
            chunks=0,
            lease_owner=owner,
            lease_until=_from_now(lease_s),
            started_at=func.coalesce(c.started_at, func.now()),
        )
        .returning(*rag_ingestions.c)
    )
    async with engine.begin() as conn:
        r = (await conn.execute(stmt)).first()
    return _row(r) if r is not None else None


async def progress(
    engine: AsyncEngine, ingestion_id: str, owner: str, documents: int, chunks: int, lease_s: float
) -> bool:
    """Write the counts and renew the lease; False if the lease was lost."""
    c = rag_ingestions.c
    stmt = (
        update(rag_ingestions)
        .where(c.id == ingestion_id, c.lease_owner == owner, c.status == "running")
        .values(
            documents=documents,
            chunks=chunks,
            lease_until=_from_now(lease_s),
        )
    )
    async with engine.begin() as conn:
        return bool((await conn.execute(stmt)).rowcount)


async def finish(
    engine: AsyncEngine,
    ingestion_id: str,
    owner: str,
    status: str,
    documents: int,
    chunks: int,
    error_enc: bytes | None = None,
) -> bool:
    c = rag_ingestions.c
    stmt = (
        update(rag_ingestions)
        .where(c.id == ingestion_id, c.lease_owner == owner, c.status == "running")
        .values(
            status=status,
            documents=documents,
            chunks=chunks,
            error_enc=error_enc,
            lease_owner=None,
            lease_until=None,
            finished_at=func.now(),
        )
    )
    async with engine.begin() as conn:
        return bool((await conn.execute(stmt)).rowcount)


async def orphaned(engine: AsyncEngine, queue: str) -> list[str]:
    """Unfinished ingestions of this queue nobody holds (a worker died, or the job
    was lost with Redis)."""
    c = rag_ingestions.c
    stmt = select(c.id).where(
        c.queue == queue,
        c.status.in_(ACTIVE),
        c.lease_until.is_(None) | (c.lease_until < func.now()),
    )
    async with engine.connect() as conn:
        return list((await conn.execute(stmt)).scalars())


async def purge_finished(engine: AsyncEngine, older_than_s: float) -> int:
    """Delete finished ingestion rows (their uploads are already gone)."""
    c = rag_ingestions.c
    stmt = delete(rag_ingestions).where(
        c.status.in_(FINAL),
        c.finished_at < _from_now(-older_than_s),
    )
    async with engine.begin() as conn:
        return int((await conn.execute(stmt)).rowcount)


async def of_user(engine: AsyncEngine, tenant_id: str, user_id: str) -> list[IngestionRow]:
    c = rag_ingestions.c
    stmt = (
        select(rag_ingestions)
        .where(c.tenant_id == tenant_id, c.user_id == user_id)
        .order_by(c.created_at)
    )
    async with engine.connect() as conn:
        return [_row(r) for r in (await conn.execute(stmt)).all()]


async def delete_user(engine: AsyncEngine, tenant_id: str, user_id: str) -> int:
    c = rag_ingestions.c
    stmt = delete(rag_ingestions).where(c.tenant_id == tenant_id, c.user_id == user_id)
    async with engine.begin() as conn:
        return int((await conn.execute(stmt)).rowcount)
