"""Queries for uploaded files: metadata rows and their encrypted content chunks.

File contents (batch inputs, batch outputs) are personal data: they are stored
only as AES-256-GCM ciphertext (strata.security.crypto), cut into chunks of
``CHUNK_BYTES`` so no single row or statement carries 200 MB. Each chunk's
associated data binds it to its file and position: a chunk copied to another
file, or moved within one, does not decrypt. The file name is encrypted the
same way (a name such as ``alice-smith-tickets.jsonl`` says who it is about).

Every query takes the tenant: another tenant's file is simply not found.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
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
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.storage.models import Base

# 4 MiB of plaintext per row: large enough that a 200 MB file is 50 rows, small
# enough that writing or reading one never holds much memory in asyncpg.
CHUNK_BYTES = 4 * 1024 * 1024
# Files Strata keeps for its own jobs (strata.rag.background), not listed by default.
INTERNAL_PURPOSES = ("rag-ingest",)

files = Table(
    "files",
    Base.metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant_id", String(64), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("filename_enc", LargeBinary, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("lines", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Index("ix_files_tenant_created", "tenant_id", "created_at"),
    Index("ix_files_tenant_user", "tenant_id", "user_id"),
)
file_chunks = Table(
    "file_chunks",
    Base.metadata,
    Column("file_id", String(40), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)


@dataclass(frozen=True, slots=True)
class FileRow:
    id: str
    tenant_id: str
    user_id: str
    key_id: str
    purpose: str
    filename_enc: bytes
    bytes: int
    lines: int
    created_at: datetime


def name_aad(file_id: str) -> bytes:
    return f"files.filename\x00{file_id}".encode()


def chunk_aad(file_id: str, seq: int) -> bytes:
    return f"file_chunks.data\x00{file_id}\x00{seq}".encode()


def _row(r: Any) -> FileRow:
    return FileRow(
        id=r.id,
        tenant_id=r.tenant_id,
        user_id=r.user_id,
        key_id=r.key_id,
        purpose=r.purpose,
        filename_enc=bytes(r.filename_enc),
        bytes=int(r.bytes),
        lines=int(r.lines),
        created_at=r.created_at,
    )


async def insert(
    engine: AsyncEngine, meta: dict[str, Any], chunks: list[bytes], conn: Any = None
) -> None:
    """One file and its (already encrypted) chunks, in one transaction."""

    async def go(c: Any) -> None:
        await c.execute(files.insert().values(**meta))
        for seq, data in enumerate(chunks):
            await c.execute(file_chunks.insert().values(file_id=meta["id"], seq=seq, data=data))

    if conn is not None:
        await go(conn)
        return
    async with engine.begin() as c:
        await go(c)


async def get(engine: AsyncEngine, tenant_id: str, file_id: str) -> FileRow | None:
    async with engine.connect() as conn:
        r = (
            await conn.execute(
                select(files).where(files.c.id == file_id, files.c.tenant_id == tenant_id)
            )
        ).first()
    return _row(r) if r is not None else None


async def list_files(
    engine: AsyncEngine,
    tenant_id: str,
    *,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 100,
    order: str = "desc",
) -> list[FileRow]:
    """Newest first (``order="desc"``), keyset-paginated by ``after`` (a file id)."""
    stmt = select(files).where(files.c.tenant_id == tenant_id)
    if purpose is not None:
        stmt = stmt.where(files.c.purpose == purpose)
    else:  # Strata's transient copies (background RAG uploads) only when asked for
        stmt = stmt.where(files.c.purpose.not_in(INTERNAL_PURPOSES))
    desc = order != "asc"
    cols = (files.c.created_at, files.c.id)
    async with engine.connect() as conn:
        if after is not None:
            anchor = (
                await conn.execute(
                    select(*cols).where(files.c.id == after, files.c.tenant_id == tenant_id)
                )
            ).first()
            if anchor is None:  # an id this tenant does not have: nothing after it
                return []
            key = tuple_(*cols)
            stmt = stmt.where(key < tuple(anchor) if desc else key > tuple(anchor))
        stmt = stmt.order_by(*(c.desc() if desc else c.asc() for c in cols)).limit(limit)
        return [_row(r) for r in (await conn.execute(stmt)).all()]


async def chunks(engine: AsyncEngine, file_id: str) -> AsyncIterator[tuple[int, bytes]]:
    """The encrypted chunks in order, one query each (bounded memory)."""
    async with engine.connect() as conn:
        seqs = (
            await conn.execute(
                select(file_chunks.c.seq)
                .where(file_chunks.c.file_id == file_id)
                .order_by(file_chunks.c.seq)
            )
        ).scalars()
        for seq in list(seqs):
            data = (
                await conn.execute(
                    select(file_chunks.c.data).where(
                        file_chunks.c.file_id == file_id, file_chunks.c.seq == seq
                    )
                )
            ).scalar_one()
            yield seq, bytes(data)


async def delete_file(engine: AsyncEngine, tenant_id: str, file_id: str) -> bool:
    async with engine.begin() as conn:
        n = (
            await conn.execute(
                delete(files).where(files.c.id == file_id, files.c.tenant_id == tenant_id)
            )
        ).rowcount
    return bool(n)


async def of_user(engine: AsyncEngine, tenant_id: str, user_id: str) -> list[FileRow]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(files)
                .where(files.c.tenant_id == tenant_id, files.c.user_id == user_id)
                .order_by(files.c.created_at)
            )
        ).all()
    return [_row(r) for r in rows]


async def delete_user(engine: AsyncEngine, tenant_id: str, user_id: str) -> int:
    async with engine.begin() as conn:
        return int(
            (
                await conn.execute(
                    delete(files).where(files.c.tenant_id == tenant_id, files.c.user_id == user_id)
                )
            ).rowcount
        )
