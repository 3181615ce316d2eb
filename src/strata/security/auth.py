"""API key verification with an in-process cache.

The hot path does not touch PostgreSQL: a verified key is trusted for
``auth.key_cache_ttl_s`` seconds, then checked again (one query per key per TTL,
shared by concurrent requests). Revocation is published on Redis so every
instance evicts the key at once; the TTL bounds the delay when Redis is down.

Policy when PostgreSQL is unreachable or slow: keys verified within
``auth.stale_grace_s`` keep working (a re-check waits at most 0.25 s, and none
is tried for 2 s after a failure); unknown keys get 503 (not 401: the key may be
fine) within 3 s, at once while the database is marked down. Unknown keys are
cached as unknown for the TTL too, so a flood of bad keys cannot turn into a
flood of queries.

Expiry (a key's ``expires_at``, or the end of a rotated secret's grace window) is
checked on every use, not only when the key is loaded, so a cached key stops
working the moment it expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from strata.errors import AuthenticationError, ServiceUnavailable
from strata.observability import tracing
from strata.security.keys import Principal, hash_key, looks_like_key

log = logging.getLogger("strata.auth")

Lookup = Callable[[str], Awaitable[Principal | None]]
# Cap on cached entries (known and unknown keys); cleared wholesale past it.
MAX_CACHE = 100_000
REVOKED_CHANNEL = "strata:keys:revoked"
# Bounds on how long a request waits for PostgreSQL to verify a key: briefly for
# a key verified before (it can fall back to the cached answer), longer for a new one.
STALE_WAIT_S = 0.25
LOOKUP_WAIT_S = 3.0
# After a failed lookup, skip the database for this long (fail fast, no pile-up).
DOWN_BACKOFF_S = 2.0


class Authenticator:
    def __init__(self, lookup: Lookup, *, ttl_s: float, stale_grace_s: float) -> None:
        self._lookup = lookup
        self.ttl_s = ttl_s
        self.stale_grace_s = stale_grace_s
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._inflight: dict[str, asyncio.Task[Principal | None]] = {}
        self._down_until = 0.0

    async def authenticate(self, authorization: str | None) -> Principal:
        with tracing.span("auth"):
            token = _bearer(authorization)
            key_hash = hash_key(token)
            now = time.monotonic()
            hit = self._cache.get(key_hash)
            if hit is not None and now - hit[1] < self.ttl_s:
                principal = hit[0]
            else:
                principal = await self._refresh(key_hash, hit, now)
            if principal is None:
                raise AuthenticationError(f"Incorrect API key provided: {_mask(token)}.")
            if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
                raise AuthenticationError(
                    f"The API key {_mask(token)} has expired.", code="expired_api_key"
                )
            return principal

    async def _refresh(
        self, key_hash: str, hit: tuple[Principal | None, float] | None, now: float
    ) -> Principal | None:
        stale_ok = hit is not None and hit[0] is not None and now - hit[1] < self.stale_grace_s
        if now < self._down_until:
            # The database failed moments ago: answer now instead of queueing on it.
            return self._stale(hit, now, ConnectionError("database marked down"))
        task = self._inflight.get(key_hash)
        if task is None:
            task = asyncio.create_task(self._lookup_and_cache(key_hash))
            self._inflight[key_hash] = task
            task.add_done_callback(lambda t: self._settled(key_hash, t))
        try:
            # A key we already trust waits briefly; an unknown one a little longer.
            wait = STALE_WAIT_S if stale_ok else LOOKUP_WAIT_S
            return await asyncio.wait_for(asyncio.shield(task), wait)
        except Exception as exc:
            self._down_until = time.monotonic() + DOWN_BACKOFF_S
            return self._stale(hit, now, exc)

    async def _lookup_and_cache(self, key_hash: str) -> Principal | None:
        principal = await self._lookup(key_hash)
        if len(self._cache) >= MAX_CACHE:
            self._cache.clear()
        self._cache[key_hash] = (principal, time.monotonic())
        return principal

    def _settled(self, key_hash: str, task: asyncio.Task[Principal | None]) -> None:
        self._inflight.pop(key_hash, None)
        if not task.cancelled():
            task.exception()  # retrieved here; waiters handle it themselves

    def _stale(
        self, hit: tuple[Principal | None, float] | None, now: float, exc: Exception
    ) -> Principal | None:
        if hit is not None and hit[0] is not None and now - hit[1] < self.stale_grace_s:
            return hit[0]
        log.warning("cannot verify API key: %s", type(exc).__name__)
        raise ServiceUnavailable(
            "API keys cannot be verified right now (database unreachable); retry shortly"
        ) from None

    def evict(self, key_hash: str) -> None:
        self._cache.pop(key_hash, None)

    async def listen_for_revocations(self, redis: object) -> None:
        """Evict revoked keys as instances announce them; reconnects forever."""
        while True:
            try:
                pubsub = redis.pubsub()  # type: ignore[attr-defined]
                await pubsub.subscribe(REVOKED_CHANNEL)
                async for msg in pubsub.listen():
                    if msg.get("type") == "message":
                        data = msg["data"]
                        self.evict(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("revocation listener lost Redis (%s); retrying", type(exc).__name__)
                await asyncio.sleep(2)


def client_host(scope: Mapping[str, Any]) -> str | None:
    """The peer address of an ASGI connection (what IP allow-lists are checked against)."""
    client = scope.get("client")
    return str(client[0]) if isinstance(client, tuple | list) and client else None


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-strata-...'.",
            code="missing_api_key",
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("The Authorization header must be 'Bearer <API key>'.")
    if not looks_like_key(token):
        raise AuthenticationError(f"Incorrect API key provided: {_mask(token)}.")
    return token


def _mask(token: str) -> str:
    # Enough to recognise a key, never enough to use it.
    if len(token) <= 12:
        return "****"
    return token[:10] + "****" + token[-4:]
