"""Re-encryption of files and batches under the active data key (``strata crypto
rotate``), and the data keys their rows still use.

The ciphertext header names its data key (version byte, then the key id as four
big-endian bytes: ``security.crypto``), so the database finds rows under an old
key by ``substring(col from 2 for 4)`` without a key-id column. Registered in
``strata.security.stores`` as the ``files`` store.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.security.crypto import DecryptError
from strata.storage.repositories import batches as batch_repo
from strata.storage.repositories import files as file_repo

# (table, ciphertext column, key columns, associated data of a row).
COLUMNS: list[tuple[str, str, tuple[str, ...], Any]] = [
    ("files", "filename_enc", ("id",), lambda r: file_repo.name_aad(r[0])),
    ("file_chunks", "data", ("file_id", "seq"), lambda r: file_repo.chunk_aad(r[0], r[1])),
    ("batches", "metadata_enc", ("id",), lambda r: batch_repo.metadata_aad(r[0])),
    ("batch_results", "body", ("batch_id", "line"), lambda r: batch_repo.result_aad(r[0], r[1])),
]


async def reencrypt_batch(engine: AsyncEngine, crypto: Any, batch: int) -> int:
    """Rewrite up to ``batch`` ciphertexts not under the active key; how many. Rows
    under keys this ring does not hold, or that no longer open, are left alone."""
    active = int(crypto.active_id)
    known = sorted(crypto.key_ids())
    done = 0
    for table, col, keys, aad in COLUMNS:
        if done >= batch:
            break
        # Names come from COLUMNS, never from input.
        select = text(
            f"SELECT {', '.join(keys)}, {col} FROM {table} "
            f"WHERE {col} IS NOT NULL AND substring({col} from 2 for 4) <> int4send(:active) "
            f"AND ('x' || encode(substring({col} from 2 for 4), 'hex'))::bit(32)::int "
            f"= ANY(:known) LIMIT :n FOR UPDATE SKIP LOCKED"
        )
        where = " AND ".join(f"{k} = :k{i}" for i, k in enumerate(keys))
        update = text(f"UPDATE {table} SET {col} = :v WHERE {where}")
        async with engine.begin() as conn:
            rows = (
                await conn.execute(select, {"active": active, "known": known, "n": batch - done})
            ).all()
            for r in rows:
                ad = aad(r)
                try:
                    new = crypto.encrypt(crypto.decrypt(bytes(r[-1]), ad), ad)
                except DecryptError:
                    continue
                params = {f"k{i}": r[i] for i in range(len(keys))}
                await conn.execute(update, {"v": new, **params})
                done += 1
    return done


async def key_ids_in_use(engine: AsyncEngine) -> set[int]:
    out: set[int] = set()
    async with engine.connect() as conn:
        for table, col, _, _ in COLUMNS:
            rows = await conn.execute(
                text(
                    f"SELECT DISTINCT ('x' || encode(substring({col} from 2 for 4), 'hex'))"
                    f"::bit(32)::int FROM {table} WHERE {col} IS NOT NULL"
                )
            )
            out |= {int(k) for (k,) in rows}
    return out
