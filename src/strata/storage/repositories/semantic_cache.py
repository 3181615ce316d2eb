"""Semantic cache rows in PostgreSQL (pgvector): nearest earlier questions per context.

Raw asyncpg on the request path: the ORM's parameter processing would cost more
CPU than the query. Vectors travel as pgvector's text form (``[0.1,0.2,...]``),
so no codec needs registering on pooled connections.

The question and the answer are stored encrypted (strata.security.crypto, migration
0012): ``query_enc`` / ``entry_enc`` are AES-256-GCM ciphertext bound (associated
data, ``aad``) to the row's namespace, alias and context; ``query_hmac`` is a keyed
blind index of the question for the one-row-per-question dedupe; ``dek_id`` names
the data key, for rotation. The embedding stays in clear (pgvector must compare
it): it is not the text, but it is personal-data-adjacent and is erased with the
user's rows (``delete_user``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

NEAREST_SQL = """
SELECT query_enc, entry_enc, 1 - (embedding <=> $1::text::vector) AS similarity
FROM semantic_cache
WHERE namespace = $2 AND alias = $3 AND context_hash = $4 AND expires_at > now()
ORDER BY embedding <=> $1::text::vector
LIMIT $5
"""

# One text per context: a refreshed answer replaces the old one.
DELETE_SAME_SQL = """
DELETE FROM semantic_cache
WHERE namespace = $1 AND alias = $2 AND context_hash = $3 AND query_hmac = $4
"""

INSERT_SQL = """
INSERT INTO semantic_cache
    (namespace, alias, context_hash, embedding, query_enc, entry_enc, query_hmac, dek_id,
     tenant_id, user_id, key_id, expires_at)
VALUES ($1, $2, $3, $4::text::vector, $5, $6, $7, $8, $9, $10, $11,
        now() + make_interval(secs => $12))
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
    query_enc: bytes  # ciphertext of the question (aad(..., "q"))
    entry_enc: bytes  # ciphertext of the JSON entry (aad(..., "e"))
    similarity: float


def aad(namespace: str, alias: str, context: str, field: str) -> bytes:
    """Associated data of a row's field: a ciphertext only opens in its own row's place."""
    return f"semantic_cache\0{namespace}\0{alias}\0{context}\0{field}".encode()


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
    return [
        Candidate(bytes(r["query_enc"]), bytes(r["entry_enc"]), float(r["similarity"]))
        for r in rows
    ]


async def insert(
    engine: Any,
    *,
    namespace: str,
    alias: str,
    context: str,
    vector: list[float],
    query_enc: bytes,
    entry_enc: bytes,
    query_hmac: str,
    dek_id: int,
    tenant_id: str,
    user_id: str,
    key_id: str,
    ttl_s: float,
    keep: int | None = None,
) -> None:
    async with _connection(engine) as driver, driver.transaction():
        await driver.execute(DELETE_SAME_SQL, namespace, alias, context, query_hmac)
        await driver.execute(
            INSERT_SQL,
            namespace,
            alias,
            context,
            vector_text(vector),
            query_enc,
            entry_enc,
            query_hmac,
            dek_id,
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
            "SELECT namespace, alias, count(*) AS n, sum(pg_column_size(entry_enc)) AS size "
            "FROM semantic_cache WHERE expires_at > now() "
            "GROUP BY namespace, alias ORDER BY namespace, alias"
        )
    return [(r["namespace"], r["alias"], int(r["n"]), int(r["size"] or 0)) for r in rows]


async def rows_for_user(
    engine: AsyncEngine, tenant_id: str, user_id: str, crypto: Any
) -> list[dict[str, Any]]:
    """A user's rows, decrypted (export): namespace, alias, query, entry (the stored
    JSON object), created_at, expires_at. Rows that no longer open (a retired key)
    come back with query and entry None."""
    from strata.security.crypto import DecryptError

    async with engine.connect() as conn:
        driver = await _driver(conn)
        rows = await driver.fetch(
            "SELECT namespace, alias, context_hash, query_enc, entry_enc, created_at, "
            "expires_at FROM semantic_cache WHERE tenant_id = $1 AND user_id = $2 ORDER BY id",
            tenant_id,
            user_id,
        )
    out = []
    for r in rows:
        where = (r["namespace"], r["alias"], r["context_hash"])
        try:
            query: str | None = crypto.decrypt_text(bytes(r["query_enc"]), aad(*where, "q"))
            entry = orjson.loads(crypto.decrypt(bytes(r["entry_enc"]), aad(*where, "e")))
        except DecryptError:
            query = entry = None
        out.append(
            {
                "namespace": r["namespace"],
                "alias": r["alias"],
                "query": query,
                "entry": entry,
                "created_at": r["created_at"].isoformat(),
                "expires_at": r["expires_at"].isoformat(),
            }
        )
    return out


async def reencrypt_batch(engine: AsyncEngine, crypto: Any, batch: int = 500) -> int:
    """Re-encrypt up to ``batch`` rows not under the active data key (rotation); how
    many. Row by row under ``FOR UPDATE SKIP LOCKED``: online, lookups keep working
    (any known key id decrypts). Only rows under keys this ring holds are touched (a
    master key never rewrites what it cannot read); a row under such a key that no
    longer opens (damaged) is deleted (a cache)."""
    from strata.security.crypto import DecryptError

    active = crypto.active_id
    done = 0
    async with engine.connect() as conn:
        driver = await _driver(conn)
        async with driver.transaction():
            rows = await driver.fetch(
                "SELECT id, namespace, alias, context_hash, query_enc, entry_enc "
                "FROM semantic_cache WHERE dek_id <> $1 AND dek_id = ANY($3::int[]) "
                "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                active,
                batch,
                sorted(crypto.key_ids()),
            )
            for r in rows:
                where = (r["namespace"], r["alias"], r["context_hash"])
                qa, ea = aad(*where, "q"), aad(*where, "e")
                try:
                    query = crypto.decrypt(bytes(r["query_enc"]), qa)
                    entry = crypto.decrypt(bytes(r["entry_enc"]), ea)
                except DecryptError:
                    await driver.execute("DELETE FROM semantic_cache WHERE id = $1", r["id"])
                    done += 1
                    continue
                await driver.execute(
                    "UPDATE semantic_cache SET query_enc = $2, entry_enc = $3, dek_id = $4 "
                    "WHERE id = $1",
                    r["id"],
                    crypto.encrypt(query, qa),
                    crypto.encrypt(entry, ea),
                    active,
                )
                done += 1
    return done


async def key_ids_in_use(engine: AsyncEngine) -> set[int]:
    async with engine.connect() as conn:
        driver = await _driver(conn)
        rows = await driver.fetch("SELECT DISTINCT dek_id FROM semantic_cache")
    return {int(r["dek_id"]) for r in rows}


def _count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3".
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0
