"""Uploaded files: encrypted at rest in PostgreSQL, read back in order.

Where contents live, and why PostgreSQL (bytea chunks) rather than the data dir:
workers on other machines (``strata worker`` pods, Ray tasks) must read batch
inputs and write outputs, and only the database is shared by all of them; one
store also means one backup, one retention purge and one GDPR erasure. Contents
are AES-256-GCM ciphertext under the data keys (strata.security.crypto), each
chunk bound to its file and position, so the database never holds plaintext.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from strata.errors import NotFound, ServiceUnavailable
from strata.security.crypto import Crypto
from strata.storage.repositories import files as repo

PURPOSES = ("batch", "user_data")  # what clients may upload
OUTPUT_PURPOSES = ("batch_output",)  # what Strata writes


def new_id() -> str:
    return "file-" + secrets.token_hex(12)


def crypto_of(rt: Any) -> Crypto:
    """The runtime's field encryption (the key ring the caches use too)."""
    crypto: Crypto | None = rt.chat.cache.crypto
    if crypto is None:  # only runtimes built without field encryption (tools)
        raise ServiceUnavailable("file storage needs field encryption, which is not set up")
    return crypto


def _ready(crypto: Crypto) -> None:
    if not crypto.ready:
        raise ServiceUnavailable(
            "files cannot be stored or read right now: the data keys are not loaded "
            "(the database was unreachable at start-up); retry shortly"
        )


def seal(crypto: Crypto, file_id: str, filename: str, data: bytes) -> tuple[bytes, list[bytes]]:
    _ready(crypto)
    name = crypto.encrypt_text(filename, repo.name_aad(file_id))
    size = repo.CHUNK_BYTES
    parts = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return name, [crypto.encrypt(p, repo.chunk_aad(file_id, i)) for i, p in enumerate(parts)]


async def save(
    engine: AsyncEngine,
    crypto: Crypto,
    *,
    tenant_id: str,
    user_id: str,
    key_id: str,
    purpose: str,
    filename: str,
    data: bytes,
    lines: int = 0,
    conn: Any = None,
) -> repo.FileRow:
    file_id = new_id()
    name, chunks = seal(crypto, file_id, filename, data)
    meta = {
        "id": file_id,
        "tenant_id": tenant_id,
        "user_id": user_id,
        "key_id": key_id,
        "purpose": purpose,
        "filename_enc": name,
        "bytes": len(data),
        "lines": lines,
    }
    await repo.insert(engine, meta, chunks, conn=conn)
    return repo.FileRow(created_at=datetime.now().astimezone(), **meta)  # type: ignore[arg-type]


async def find(engine: AsyncEngine, tenant_id: str, file_id: str) -> repo.FileRow:
    row = await repo.get(engine, tenant_id, file_id)
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return row


async def read(engine: AsyncEngine, crypto: Crypto, file_id: str) -> bytes:
    _ready(crypto)
    out = bytearray()
    async for seq, blob in repo.chunks(engine, file_id):
        out += crypto.decrypt(blob, repo.chunk_aad(file_id, seq))
    return bytes(out)


def filename(crypto: Crypto, row: repo.FileRow) -> str:
    return crypto.decrypt_text(row.filename_enc, repo.name_aad(row.id))


def to_openai(crypto: Crypto, row: repo.FileRow) -> dict[str, Any]:
    """OpenAI's File object."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": filename(crypto, row),
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }
