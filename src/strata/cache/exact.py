"""Exact response cache in Redis.

A request is cacheable when its answer is reproducible: ``temperature`` 0 (the
API's default is 1) and one choice, unless the alias or the caller opts in to
caching sampled answers. Tool calls and errors are never stored. Entries are
bounded (``cache.max_entry_bytes``) and expire (per-alias TTL); Redis runs with
an LRU eviction policy when embedded.

Client controls: ``x-strata-cache: off`` bypasses the cache, ``refresh`` (or
``Cache-Control: no-cache``) skips the lookup but stores the fresh answer,
``on`` caches a sampled request, ``Cache-Control: no-store`` skips storing.
Several may be given, comma-separated (with ``semantic`` / ``no-semantic``,
see strata.cache.semantic).

Every entry is also listed under its user (``strata:cache:owner:{tenant}:{user}``)
so a user's entries can be erased (``strata cache forget``).

Values are encrypted at rest (strata.security.crypto, AES-256-GCM under the
active data key, associated data = the cache key, so a value copied under
another key does not open). ``entry()`` is the plaintext form (the semantic
cache encrypts it for its own table); ``put`` encrypts and ``get`` decrypts. A
value that does not open (damaged, or under a data key retired by ``strata
crypto rotate``) is a miss and is overwritten by the fresh answer; entries under
an old key otherwise simply expire with their TTL.

Policy when Redis is unreachable: requests go uncached (header ``bypass``,
logged, counted in ``errors``); after a failure the cache is skipped for a few
seconds so no request waits on a dead Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from strata.cache.keys import exact_key, owner_key
from strata.errors import InvalidRequest
from strata.security.crypto import Crypto, DecryptError
from strata.security.keys import Principal
from strata.settings import Alias, CacheSettings

log = logging.getLogger("strata.cache")

# A cache lookup may not hold a request longer than this.
LOOKUP_TIMEOUT_S = 0.05
DOWN_BACKOFF_S = 2.0


@dataclass(slots=True)
class Plan:
    """What to do for one request."""

    key: str | None  # None: bypass
    lookup: bool
    store: bool
    failed: bool = False  # Redis failed: served uncached
    namespace: str = ""

    @property
    def status(self) -> str:
        return "bypass" if self.key is None or self.failed else "miss"


@dataclass(slots=True)
class Hit:
    body: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    provider: str
    model: str
    cost_usd: Decimal  # what the original (missed) call cost
    similarity: float | None = None  # semantic hits only


CONTROLS = frozenset({"off", "refresh", "on", "semantic", "no-semantic"})


def control_tokens(control: str | None) -> set[str]:
    """``x-strata-cache`` values: comma-separated, case-insensitive."""
    return {t.strip().lower() for t in (control or "").split(",") if t.strip()}


def check_control(control: str | None) -> None:
    """Reject an ``x-strata-cache`` value Strata does not know (a typo would
    silently cache or not)."""
    unknown = control_tokens(control) - CONTROLS
    if unknown:
        raise InvalidRequest(
            f"unknown x-strata-cache value {sorted(unknown)[0]!r}: use "
            + ", ".join(sorted(CONTROLS)),
            param="x-strata-cache",
        )


BYPASS = Plan(None, False, False)


class ExactCache:
    def __init__(self, redis: Any, settings: CacheSettings, crypto: Crypto | None = None) -> None:
        self.redis = redis
        self.crypto = crypto  # None: values stored in clear (tools and tests only)
        self.s = settings
        self._down_until = 0.0
        self._pending: set[asyncio.Task[None]] = set()
        self.hits = self.misses = self.errors = 0

    def plan(
        self,
        tenant: str,
        alias_name: str,
        alias: Alias,
        deployments: list[str],
        body: dict[str, Any],
        control: str | None,
        cache_control: str | None,
    ) -> Plan:
        tokens = control_tokens(control)
        if not self.s.enabled or not alias.cache.enabled or "off" in tokens:
            return BYPASS
        sampled = (body.get("temperature", 1.0) or 0) > 0 or (body.get("n") or 1) > 1
        if sampled and not (alias.cache.cache_sampled or "on" in tokens):
            return BYPASS
        directives = control_tokens(cache_control)
        namespace = "shared" if alias.cache.shared else tenant
        return Plan(
            exact_key(namespace, alias_name, deployments, body),
            lookup="refresh" not in tokens and "no-cache" not in directives,
            store="no-store" not in directives,
            namespace=namespace,
        )

    async def get(self, plan: Plan) -> Hit | None:
        if plan.key is None:
            return None
        if time.monotonic() < self._down_until:
            plan.failed = True
            return None
        if not plan.lookup:
            return None
        try:
            # asyncio.timeout: no extra task per lookup (wait_for makes one on 3.11).
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                raw = await self.redis.get(plan.key)
        except Exception as exc:
            self._failed(exc)
            plan.failed = True
            return None
        if raw is not None and self.crypto is not None:
            try:
                raw = self.crypto.decrypt(raw, plan.key.encode())
            except DecryptError as exc:
                log.info("cache entry skipped (%s)", exc)
                raw = None
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        entry = orjson.loads(raw)
        return Hit(
            entry["body"],
            entry["prompt_tokens"],
            entry["completion_tokens"],
            entry["provider"],
            entry["model"],
            Decimal(entry["cost_usd"]),
        )

    def entry(
        self,
        body: dict[str, Any],
        tokens: tuple[int, int],
        provider: str,
        model: str,
        cost: Decimal,
    ) -> bytes | None:
        """The stored form of an answer; None when it must not be cached."""
        if not storable(body):
            return None
        raw = orjson.dumps(
            {
                "body": body,
                "prompt_tokens": tokens[0],
                "completion_tokens": tokens[1],
                "provider": provider,
                "model": model,
                "cost_usd": str(cost),
            }
        )
        return raw if len(raw) <= self.s.max_entry_bytes else None

    def put(self, plan: Plan, alias: Alias, raw: bytes, principal: Principal) -> None:
        """Store in the background: a miss never waits for the write."""
        if plan.key is None or plan.failed or not plan.store:
            return
        ttl = max(1, int(alias.cache.ttl_s or self.s.default_ttl_s))
        owner = owner_key(principal.tenant_id, principal.user_id)
        if self.crypto is not None:
            if not self.crypto.ready:  # data keys not loaded yet: never store in clear
                return
            raw = self.crypto.encrypt(raw, plan.key.encode())
        task = asyncio.create_task(self._set(plan.key, raw, ttl, owner))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _set(self, key: str, raw: bytes, ttl: int, owner: str) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, raw, ex=ttl)
                pipe.sadd(owner, key)
                # The owner list outlives its entries by at most one TTL; erasure
                # skips the keys already gone.
                pipe.expire(owner, ttl, gt=True)
                pipe.expire(owner, ttl, nx=True)
                await pipe.execute()
        except Exception as exc:
            self._failed(exc)

    async def forget_user(self, tenant: str, user: str) -> int:
        """Delete every entry a user's requests stored (any namespace); how many."""
        owner = owner_key(tenant, user)
        keys = await self.redis.smembers(owner)
        deleted = 0
        batch = list(keys)
        for i in range(0, len(batch), 500):
            deleted += await self.redis.delete(*batch[i : i + 500])
        await self.redis.delete(owner)
        return int(deleted)

    async def drain(self) -> None:
        """Wait for background writes (shutdown, tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + DOWN_BACKOFF_S
        log.warning("cache unavailable (%s); serving uncached", type(exc).__name__)


def storable(body: dict[str, Any]) -> bool:
    """Tool calls are actions, not answers: never replay them."""
    for choice in body.get("choices") or ():
        if choice.get("finish_reason") == "tool_calls":
            return False
        if (choice.get("message") or {}).get("tool_calls"):
            return False
    return bool(body.get("choices"))


def replay_chunks(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A cached completion as ``chat.completion.chunk`` events."""
    base = {
        "id": body.get("id", ""),
        "object": "chat.completion.chunk",
        "created": body.get("created", 0),
        "model": body.get("model", ""),
    }
    chunks = []
    for choice in body["choices"]:
        i = choice.get("index", 0)
        content = (choice.get("message") or {}).get("content") or ""
        chunks.append(
            {
                **base,
                "choices": [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            }
        )
        if content:
            chunks.append(
                {
                    **base,
                    "choices": [{"index": i, "delta": {"content": content}, "finish_reason": None}],
                }
            )
        chunks.append(
            {
                **base,
                "choices": [
                    {
                        "index": i,
                        "delta": {},
                        "finish_reason": choice.get("finish_reason") or "stop",
                    }
                ],
            }
        )
    if include_usage:
        for c in chunks:
            c["usage"] = None
        chunks.append({**base, "choices": [], "usage": body.get("usage")})
    return chunks
