"""API key format, hashing and the principal a key resolves to.

A key is ``sk-strata-`` followed by 32 random bytes in URL-safe base64. Only its
SHA-256 hash is stored, with a short display prefix so people can tell keys apart.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

KEY_PREFIX = "sk-strata-"
# 32 bytes of entropy: brute force is out of reach, so a fast hash is enough.
KEY_BYTES = 32
DISPLAY_CHARS = 6


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    tenant_id: str
    user_id: str
    is_admin: bool
    # An operator may turn capability-based routing off for a key (cheap tier).
    auto_routing: bool = True
    # Semantic cache opt-in for this key; None: as the alias says.
    semantic_cache: bool | None = None


def generate_key() -> str:
    raw = secrets.token_bytes(KEY_BYTES)
    return KEY_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + DISPLAY_CHARS] + "…"


def looks_like_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX) and 40 <= len(key) <= 128
