"""Every table that holds field-encrypted data, for ``strata crypto rotate``.

A feature that stores ciphertext (``security.crypto``) adds its store here: how to
re-encrypt a batch of rows under the active data key, and which data keys its rows
still use (a key is retired only when no store uses it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


async def _always(engine: Any) -> bool:
    return True


@dataclass(frozen=True)
class EncryptedStore:
    name: str
    # (engine, crypto, batch) -> rows rewritten; 0 when none is left.
    reencrypt_batch: Callable[[Any, Any, int], Awaitable[int]]
    key_ids_in_use: Callable[[Any], Awaitable[set[int]]]
    # False when the store's table does not exist (a raw-SQL table not yet created).
    available: Callable[[Any], Awaitable[bool]] = _always


def encrypted_stores() -> list[EncryptedStore]:
    # Imported here: the repositories import strata.security.crypto.
    from strata.files import rotation as files_rotation
    from strata.storage.repositories import rag, semantic_cache, usage

    return [
        EncryptedStore(
            "semantic_cache",
            semantic_cache.reencrypt_batch,
            semantic_cache.key_ids_in_use,
            semantic_cache.available,
        ),
        EncryptedStore("usage_records.end_user", usage.reencrypt_end_users, usage.end_user_key_ids),
        # Files (names, contents), batch metadata and batch result lines.
        EncryptedStore("files", files_rotation.reencrypt_batch, files_rotation.key_ids_in_use),
        # RAG documents and their chunks (source, text, metadata, chunk text, headings).
        EncryptedStore("rag", rag.reencrypt_batch, rag.key_ids_in_use, rag.available),
    ]
