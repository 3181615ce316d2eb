"""GDPR export and erasure of a subject's files and batches (strata.privacy.subject).

Export: every file the user uploaded or a batch of theirs produced, with its name
and content decrypted, and their batches (status, counts, metadata). Erasure:
the batches (their results go with them) and the files are deleted; the usage
records of batch requests are pseudonymised with the user's other usage.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.files import store
from strata.security.crypto import DecryptError
from strata.storage.repositories import batches as batch_repo
from strata.storage.repositories import files as file_repo


async def export_subject(
    engine: AsyncEngine, crypto: Any, tenant: str, user: str
) -> dict[str, Any]:
    """``crypto`` opens names and contents; without it (or a retired key) they are null."""
    files: list[dict[str, Any]] = []
    for row in await file_repo.of_user(engine, tenant, user):
        item: dict[str, Any] = {
            "id": row.id,
            "purpose": row.purpose,
            "bytes": row.bytes,
            "created_at": row.created_at.isoformat(),
            "filename": None,
            "content": None,
        }
        with contextlib.suppress(DecryptError, AttributeError, RuntimeError):
            item["filename"] = store.filename(crypto, row)
            item["content"] = (await store.read(engine, crypto, row.id)).decode(
                "utf-8", errors="replace"
            )
        files.append(item)
    batches: list[dict[str, Any]] = []
    for b in await batch_repo.of_user(engine, tenant, user):
        metadata = None
        if b.metadata_enc is not None:
            with contextlib.suppress(DecryptError, AttributeError):
                metadata = orjson.loads(
                    crypto.decrypt(b.metadata_enc, batch_repo.metadata_aad(b.id))
                )
        batches.append(
            {
                "id": b.id,
                "endpoint": b.endpoint,
                "status": b.status,
                "input_file_id": b.input_file_id,
                "output_file_id": b.output_file_id,
                "error_file_id": b.error_file_id,
                "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
                "metadata": metadata,
                "created_at": b.created_at.isoformat(),
            }
        )
    return {"files": files, "batches": batches}


async def erase_subject(engine: AsyncEngine, tenant: str, user: str) -> dict[str, int]:
    """Delete the subject's batches (and results) and files; counts."""
    batches = await batch_repo.delete_user(engine, tenant, user)
    files = await file_repo.delete_user(engine, tenant, user)
    return {"batches": batches, "files": files}
