"""Semantic cache rows in PostgreSQL (pgvector): nearest earlier questions per context.

Raw asyncpg on the request path: the ORM's parameter processing would cost more
CPU than the query. Vectors travel as pgvector's text form (``[0.1,0.2,...]``),
so no codec needs registering on pooled connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

NEAREST_SQL = """
SELECT query, entry::text AS entry, 1 - (embedding <=> $1::text::vector) AS similarity
FROM semantic_cache
WHERE namespace = $2 AND alias = $3 AND context_hash = $4 AND expires_at > now()
ORDER BY embedding <=> $1::text::vector
LIMIT $5
"""

# One text per context: a refreshed answer replaces the old one.
DELETE_SAME_SQL = """
DELETE FROM semantic_cache
WHERE namespace = $1 AND alias = $2 AND context_hash = $3 AND query = $4
"""

INSERT_SQL = """
INSERT INTO semantic_cache
    (namespace, alias, context_hash, embedding, query, entry, tenant_id, user_id, key_id,
     expires_at)
VALUES ($1, $2, $3, $4::text::vector, $5, $6::jsonb, $7, $8, $9,
        now() + make_interval(secs => $10))
"""

# Keep the newest ``limit`` rows of a context: bounds what a lookup compares.
TRIM_SQL = """
DELETE FROM semantic_cache WHERE id IN (
    SELECT id FROM semantic_cache
    WHERE namespace = $1 AND alias = $2 AND context_hash = $3
    ORDER BY id DESC OFFSET $4
)
"""


@dataclass(frozen=True, slots=True)
class Candidate:
    query: str
    entry: str  # JSON text (cast in SQL: the dialect would parse it with stdlib json)
    similarity: float


def vector_text(vec: list[float]) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vec) + "]"


async def _driver(conn: Any) -> Any:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if driver is None:  # never for asyncpg; keeps the type checker honest
        raise RuntimeError("no driver connection")
    return driver


@asynccontextmanager
async def _connection(db: Any) -> AsyncIterator[Any]:
    """An asyncpg connection from an asyncpg pool (the request path: no pre-ping, no
    greenlet) or from a SQLAlchemy engine (commands)."""
    if isinstance(db, AsyncEngine):
        async with db.connect() as conn:
            yield await _driver(conn)
    else:
        async with db.acquire() as conn:
            yield conn


async def nearest(
    engine: Any,
    namespace: str,
    alias: str,
    context: str,
    vector: list[float],
    limit: int,
) -> list[Candidate]:
    async with _connection(engine) as driver:
        rows = await driver.fetch(
            NEAREST_SQL, vector_text(vector), namespace, alias, context, limit
        )
    return [Candidate(r["query"], r["entry"], float(r["similarity"])) for r in rows]


async def insert(
    engine: Any,
    *,
    namespace: str,
    alias: str,
    context: str,
    vector: list[float],
    query: str,
    entry: str,
    tenant_id: str,
    user_id: str,
    key_id: str,
    ttl_s: float,
    keep: int | None = None,
) -> None:
    async with _connection(engine) as driver, driver.transaction():
        await driver.execute(DELETE_SAME_SQL, namespace, alias, context, query)
        await driver.execute(
            INSERT_SQL,
            namespace,
            alias,
            context,
            vector_text(vector),
            query,
            entry,
            tenant_id,
            user_id,
            key_id,
            float(ttl_s),
        )
        if keep is not None:
            await driver.execute(TRIM_SQL, namespace, alias, context, keep)


async def available(engine: Any) -> bool:
    """Whether the table exists (it needs pgvector, see migration 0006)."""
    async with _connection(engine) as driver:
        return bool(await driver.fetchval("SELECT to_regclass('semantic_cache') IS NOT NULL"))


async def delete_expired(engine: Any, batch: int = 5000) -> int:
    async with _connection(engine) as driver:
        status = await driver.execute(
            "DELETE FROM semantic_cache WHERE id IN ("
            "SELECT id FROM semantic_cache WHERE expires_at <= now() LIMIT $1)",
            batch,
        )
    return _count(status)


async def purge(engine: AsyncEngine, namespace: str | None = None, alias: str | None = None) -> int:
    async with engine.connect() as conn:
        driver = await _driver(conn)
        async with driver.transaction():
            status = await driver.execute(
                "DELETE FROM semantic_cache WHERE ($1::text IS NULL OR namespace = $1) "
                "AND ($2::text IS NULL OR alias = $2)",
                namespace,
                alias,
            )
    return _count(status)


async def delete_user(engine: AsyncEngine, tenant_id: str, user_id: str) -> int:
    """Every entry a user's requests created, in any namespace (erasure)."""
    async with engine.connect() as conn:
        driver = await _driver(conn)
        async with driver.transaction():
            status = await driver.execute(
                "DELETE FROM semantic_cache WHERE tenant_id = $1 AND user_id = $2",
                tenant_id,
                user_id,
            )
    return _count(status)


async def stats(engine: AsyncEngine) -> list[tuple[str, str, int, int]]:
    """(namespace, alias, live entries, bytes of their answers) per namespace and alias."""
    async with engine.connect() as conn:
        driver = await _driver(conn)
        rows = await driver.fetch(
            "SELECT namespace, alias, count(*) AS n, sum(pg_column_size(entry)) AS size "
            "FROM semantic_cache WHERE expires_at > now() "
            "GROUP BY namespace, alias ORDER BY namespace, alias"
        )
    return [(r["namespace"], r["alias"], int(r["n"]), int(r["size"] or 0)) for r in rows]


def _count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3".
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
