"""Semantic response cache: answer from an earlier request that means the same.

Opt-in, per alias (``cache.semantic``), per key (``strata keys semantic-cache``)
or per request (``x-strata-cache: semantic`` / ``no-semantic``); the request
wins over the key, the key over the alias. It applies only where the exact
cache would (same cacheability rules and client controls) and only on an
exact miss.

What must match exactly is the *context*: alias and its deployments, the
embedding model, every parameter, the system prompt and, for multi-turn
requests (``cache.multi_turn``), every earlier turn. Only the last user text
varies: it is embedded (the embedded MiniLM by default) and compared with the
earlier questions of the same context in PostgreSQL (pgvector). A hit needs
cosine similarity at or above the threshold *and* the lexical guard
(strata.cache.guard): on the labelled pairs in bench/cache no threshold alone
reaches 99% precision, because embeddings barely see word order, numbers or
negations.

At rest, the question and the answer are encrypted (strata.security.crypto):
lookups fetch the nearest candidates' ciphertext and decrypt only the questions of
those above the threshold (at most ``CANDIDATES``) for the guard, and the answer
of the hit. The embedding is stored in clear (see the repository's docstring).

Failure policy: a lookup that fails or exceeds ``lookup_timeout_s`` is a miss
(nothing stored for that request, counted in ``errors``, logged); after a
database error the semantic cache is skipped for a few seconds. Requests never
fail because of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.cache.exact import Hit, control_tokens, storable
from strata.cache.keys import OUTPUT_NEUTRAL
from strata.security import crypto as crypto_mod
from strata.security.crypto import Crypto, DecryptError, UnknownKeyError
from strata.security.keys import Principal
from strata.settings import Alias, SemanticCacheSettings
from strata.storage.repositories import semantic_cache as repo

log = logging.getLogger("strata.cache")

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]
Guard = Callable[[str, str], bool]

DOWN_BACKOFF_S = 2.0
# Nearest earlier questions checked against the guard, most similar first.
CANDIDATES = 5
# One insert in this many trims its context to ``max_entries_per_context``.
TRIM_EVERY = 20
SYSTEM_ROLES = ("system", "developer")


@dataclass(slots=True)
class SemanticPlan:
    namespace: str
    alias: str
    context: str  # SHA-256 of everything but the last user text
    query: str
    threshold: float
    ttl_s: float
    lookup: bool
    store: bool
    principal: Principal
    vector: list[float] | None = None
    failed: bool = False


def opted_in(alias: Alias, principal: Principal, control: str | None) -> bool:
    """The request's choice wins over the key's, the key's over the alias's."""
    tokens = control_tokens(control)
    if "no-semantic" in tokens:
        return False
    if "semantic" in tokens:
        return True
    if principal.semantic_cache is not None:
        return principal.semantic_cache
    return alias.cache.semantic


def user_text(message: dict[str, Any]) -> str | None:
    """The text of a user message (plain, or text-only content parts); else None."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None  # images, audio: not comparable by text
            texts.append(str(part.get("text") or ""))
        return "\n".join(texts)
    return None


def split_request(body: dict[str, Any], multi_turn: bool) -> tuple[str, bytes] | None:
    """(the varying user text, the canonical context) or None when not eligible."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    text = user_text(last)
    if text is None or not text.strip():
        return None
    earlier = messages[:-1]
    if not multi_turn and any(
        not isinstance(m, dict) or m.get("role") not in SYSTEM_ROLES for m in earlier
    ):
        return None
    context = orjson.dumps(
        {
            "body": {k: v for k, v in body.items() if k not in OUTPUT_NEUTRAL and k != "messages"},
            "earlier": earlier,
            "last": {k: v for k, v in last.items() if k != "content"},
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return text, context


class SemanticCache:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: SemanticCacheSettings,
        default_ttl_s: float,
        embed: Embed | None,
        embed_label: str,
        guard: Guard | None,
        crypto: Crypto | None = None,
    ) -> None:
        self.engine = engine
        self.crypto = crypto  # None: nothing can be stored or read (rows are ciphertext)
        self._synced_at = 0.0
        # Lookups and writes go through a small asyncpg pool of their own (no
        # pre-ping round trip, no greenlet per query); the engine until it is up.
        self.db: Any = engine
        self._pool: Any = None
        self._opening: asyncio.Task[None] | None = None
        self.s = settings
        self.default_ttl_s = default_ttl_s
        self.embed = embed  # None: no embedding alias, the semantic cache is off
        self.embed_label = embed_label
        self.guard = guard if settings.guard else None
        self.available = embed is not None  # the table is checked at start
        self._down_until = 0.0
        self._inserts = 0
        self._pending: set[asyncio.Task[None]] = set()
        self.hits = self.misses = self.errors = 0

    async def start(self) -> None:
        if self.embed is None:
            return
        try:
            self.available = await repo.available(self.engine)
        except Exception as exc:
            log.warning("semantic cache: cannot check its table (%s)", type(exc).__name__)
            return
        if not self.available:
            log.warning("semantic cache unavailable: PostgreSQL has no pgvector table")

    def plan(
        self,
        principal: Principal,
        namespace: str,
        alias_name: str,
        alias: Alias,
        deployments: list[str],
        body: dict[str, Any],
        lookup: bool,
        store: bool,
        control: str | None,
    ) -> SemanticPlan | None:
        if not self.available or not opted_in(alias, principal, control):
            return None
        split = split_request(body, alias.cache.multi_turn)
        if split is None:
            return None
        if self._opening is None:  # first use: the pool opens in the background
            self._opening = asyncio.create_task(self._open_pool())
        text, context = split
        if len(text) > self.s.max_query_chars:
            return None
        digest = hashlib.sha256(
            orjson.dumps([deployments, self.embed_label]) + b"\0" + context
        ).hexdigest()
        return SemanticPlan(
            namespace=namespace,
            alias=alias_name,
            context=digest,
            query=text,
            threshold=alias.cache.similarity or self.s.threshold,
            ttl_s=alias.cache.ttl_s or self.default_ttl_s,
            lookup=lookup,
            store=store,
            principal=principal,
        )

    async def get(self, plan: SemanticPlan) -> Hit | None:
        if not plan.lookup:
            return None
        if time.monotonic() < self._down_until:
            plan.failed = True
            return None
        try:
            async with asyncio.timeout(self.s.lookup_timeout_s):
                plan.vector = await self._embed(plan.query)
                candidates = await repo.nearest(
                    self.db, plan.namespace, plan.alias, plan.context, plan.vector, CANDIDATES
                )
        except TimeoutError:
            self.errors += 1
            plan.failed = True
            log.info("semantic cache lookup timed out; serving uncached")
            return None
        except Exception as exc:
            self._failed(exc)
            plan.failed = True
            return None
        crypto = self.crypto
        if crypto is None:
            self.misses += 1
            return None
        where = (plan.namespace, plan.alias, plan.context)
        for c in candidates:
            if c.similarity < plan.threshold:
                break
            try:
                try:
                    query = crypto.decrypt_text(c.query_enc, repo.aad(*where, "q"))
                except UnknownKeyError:
                    # Re-encrypted by a rotation elsewhere: load the new key (at most
                    # once a second) and try again.
                    if time.monotonic() - self._synced_at < 1.0:
                        raise
                    self._synced_at = time.monotonic()
                    await crypto_mod.sync_keys(self.engine, crypto)
                    query = crypto.decrypt_text(c.query_enc, repo.aad(*where, "q"))
                if self.guard is not None and not self.guard(plan.query, query):
                    continue
                entry = orjson.loads(crypto.decrypt(c.entry_enc, repo.aad(*where, "e")))
            except DecryptError as exc:  # a retired key or a damaged row: not an answer
                log.info("semantic cache: skipped a row (%s)", exc)
                continue
            self.hits += 1
            return Hit(
                entry["body"],
                entry["prompt_tokens"],
                entry["completion_tokens"],
                entry["provider"],
                entry["model"],
                Decimal(entry["cost_usd"]),
                similarity=c.similarity,
            )
        self.misses += 1
        return None

    def put(self, plan: SemanticPlan, entry: bytes, body: dict[str, Any]) -> None:
        """Store in the background (the exact cache's serialised entry)."""
        if plan.failed or not plan.store or not storable(body):
            return
        task = asyncio.create_task(self._insert(plan, entry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _insert(self, plan: SemanticPlan, entry: bytes) -> None:
        try:
            crypto = self._crypto()
            vector = plan.vector or await self._embed(plan.query)
            self._inserts += 1
            trim = self._inserts % TRIM_EVERY == 1
            where = (plan.namespace, plan.alias, plan.context)
            query_enc = crypto.encrypt_text(plan.query, repo.aad(*where, "q"))
            await repo.insert(
                self.db,
                namespace=plan.namespace,
                alias=plan.alias,
                context=plan.context,
                vector=vector,
                query_enc=query_enc,
                entry_enc=crypto.encrypt(entry, repo.aad(*where, "e")),
                query_hmac=crypto.blind_index(plan.query),
                dek_id=crypto.active_id or 0,
                tenant_id=plan.principal.tenant_id,
                user_id=plan.principal.user_id,
                key_id=plan.principal.key_id,
                ttl_s=plan.ttl_s,
                keep=self.s.max_entries_per_context if trim else None,
            )
        except Exception as exc:
            self._failed(exc)

    def _crypto(self) -> Crypto:
        if self.crypto is None:
            raise RuntimeError("the semantic cache needs field encryption keys")
        return self.crypto

    async def _embed(self, text: str) -> list[float]:
        if self.embed is None:
            raise RuntimeError("no embedding model for the semantic cache")
        (vector,) = await self.embed([text])
        return vector

    async def expire_forever(self, interval_s: float = 60.0) -> None:
        """Delete expired rows now and then (lookups already ignore them)."""
        while True:
            await asyncio.sleep(interval_s)
            if not self.available:
                continue
            try:
                # In batches, so no single statement holds locks for long.
                deleted = await repo.delete_expired(self.engine)
                while deleted:
                    deleted = await repo.delete_expired(self.engine)
            except Exception as exc:
                log.info("semantic cache expiry failed (%s)", type(exc).__name__)

    async def _open_pool(self) -> None:
        import asyncpg

        url = self.engine.url.set(drivername="postgresql")
        try:
            self._pool = await asyncpg.create_pool(
                url.render_as_string(hide_password=False),
                min_size=1,
                max_size=4,
                command_timeout=30,
                timeout=5,
                # After five runs PostgreSQL may switch a prepared statement to a
                # generic plan; for the nearest-question query that plan is ten
                # times slower (10 ms instead of 1 ms with a few hundred rows).
                server_settings={"plan_cache_mode": "force_custom_plan"},
            )
        except Exception as exc:  # the engine keeps serving the cache
            log.warning("semantic cache: no pool of its own (%s)", type(exc).__name__)
            return
        self.db = self._pool

    async def close(self) -> None:
        await self.drain()
        if self._opening is not None:
            await asyncio.gather(self._opening, return_exceptions=True)
        if self._pool is not None:
            self.db = self.engine
            pool, self._pool = self._pool, None
            await pool.close()

    async def drain(self) -> None:
        """Wait for background writes (shutdown, tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + DOWN_BACKOFF_S
        log.warning("semantic cache unavailable (%s); serving uncached", type(exc).__name__)
