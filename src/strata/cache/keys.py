"""Cache keys: a stable hash of everything that can change a chat answer.

Only parameters known not to change the output are left out of the key; an
unknown parameter is assumed to matter. Entries are namespaced by tenant (or
"shared" when an operator enables a shared namespace for an alias).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

PREFIX = "strata:cache:exact:"
# Known not to change what the model says; everything else is part of the key.
OUTPUT_NEUTRAL = frozenset({"model", "stream", "stream_options", "user", "metadata", "store"})


def exact_key(namespace: str, alias: str, deployments: list[str], body: dict[str, Any]) -> str:
    canonical = orjson.dumps(
        {
            "deployments": deployments,
            "body": {k: v for k, v in body.items() if k not in OUTPUT_NEUTRAL},
        },
        option=orjson.OPT_SORT_KEYS,
    )
    digest = hashlib.sha256(canonical).hexdigest()
    return f"{PREFIX}{namespace}:{alias}:{digest}"


OWNER_PREFIX = "strata:cache:owner:"


def owner_key(tenant: str, user: str) -> str:
    """The set of exact-cache keys a user's requests stored (for erasure)."""
    return f"{OWNER_PREFIX}{tenant}:{user}"


def pattern(namespace: str | None = None, alias: str | None = None) -> str:
    """A SCAN pattern for purges and stats."""
    return f"{PREFIX}{namespace or '*'}:{alias or '*'}:*"
