"""Circuit breakers per deployment, shared by every instance through Redis.

closed ─(``failures`` within ``window_s``)→ open ─(``cooldown_s``)→ half-open
half-open: exactly one request, on one instance, probes (``SET NX``); success
closes the circuit everywhere, failure opens it again. So a dead provider costs
one failed attempt per cool-down across the fleet, not one per request.

The happy path never touches Redis: each instance mirrors the shared state and
re-reads it at most every ``sync_s`` per deployment (that is also how a second
instance learns a circuit opened). If Redis is unreachable, each instance keeps
the same breaker locally; the policy degrades to per-instance, never to none.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from strata.settings import BreakerSettings

log = logging.getLogger("strata.breaker")

PREFIX = "strata:cb:"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# KEYS: fails, open, tripped, probe. ARGV: window_ms, threshold, cooldown_ms, tripped_ms.
# One failure: count it in the window; open when the count reaches the threshold,
# or at once if the circuit had tripped before (a failed probe re-opens it).
FAILURE_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
redis.call('DEL', KEYS[4])
if n >= tonumber(ARGV[2]) or redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


@dataclass(slots=True)
class _Mirror:
    state: str = CLOSED
    open_until: float = 0.0
    synced_at: float = 0.0
    # Local-only counting, used while Redis is unreachable.
    fails: int = 0
    window_start: float = 0.0


class CircuitBreakers:
    def __init__(self, redis: Any, settings: BreakerSettings) -> None:
        self.redis = redis
        self.s = settings
        self._mirror: dict[str, _Mirror] = {}
        self._failure_script = redis.register_script(FAILURE_LUA)

    def _keys(self, key: str) -> list[str]:
        base = PREFIX + key
        return [base + ":fails", base + ":open", base + ":tripped", base + ":probe"]

    def state(self, key: str) -> str:
        m = self._mirror.get(key)
        if m is None:
            return CLOSED
        if m.state == OPEN and time.time() >= m.open_until:
            return HALF_OPEN
        return m.state

    async def allow(self, key: str) -> bool:
        """May a request go to this deployment now? (Half-open: only the probe.)"""
        m = self._mirror.setdefault(key, _Mirror())
        now = time.time()
        if now - m.synced_at >= self.s.sync_s:
            await self._sync(key, m, now)
        if m.state == CLOSED:
            return True
        if m.state == OPEN and now < m.open_until:
            return False
        return await self._claim_probe(key, m)

    async def success(self, key: str) -> None:
        m = self._mirror.get(key)
        if m is None or (m.state == CLOSED and m.fails == 0):
            return  # the happy path: nothing to tell anyone
        m.state, m.fails, m.open_until = CLOSED, 0, 0.0
        try:
            await self.redis.delete(*self._keys(key))
        except Exception as exc:
            log.info("breaker reset not shared (%s)", type(exc).__name__)

    async def failure(self, key: str) -> None:
        m = self._mirror.setdefault(key, _Mirror())
        now = time.time()
        try:
            opened = await self._failure_script(
                keys=self._keys(key),
                args=[
                    int(self.s.window_s * 1000),
                    self.s.failures,
                    int(self.s.cooldown_s * 1000),
                    int(self.s.cooldown_s * 4000),
                ],
            )
        except Exception as exc:
            log.info("breaker state not shared (%s); counting locally", type(exc).__name__)
            opened = self._local_failure(m, now)
        if opened:
            if m.state != OPEN:
                log.warning("circuit opened for %s for %.0fs", key, self.s.cooldown_s)
            m.state, m.open_until = OPEN, now + self.s.cooldown_s
        m.synced_at = now

    def _local_failure(self, m: _Mirror, now: float) -> bool:
        if now - m.window_start > self.s.window_s:
            m.window_start, m.fails = now, 0
        m.fails += 1
        return m.fails >= self.s.failures or m.state != CLOSED

    async def _sync(self, key: str, m: _Mirror, now: float) -> None:
        m.synced_at = now
        _, open_k, tripped_k, _ = self._keys(key)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.pttl(open_k)
            pipe.exists(tripped_k)
            open_ms, tripped = await pipe.execute()
        except Exception:
            return  # keep the local view
        if open_ms and open_ms > 0:
            m.state, m.open_until = OPEN, now + open_ms / 1000
        elif tripped:
            m.state, m.open_until = OPEN, now  # cool-down over: half-open
        elif m.fails == 0 or now - m.window_start > self.s.window_s:
            m.state, m.fails = CLOSED, 0

    async def _claim_probe(self, key: str, m: _Mirror) -> bool:
        try:
            won = await self.redis.set(
                self._keys(key)[3], "1", nx=True, px=int(self.s.cooldown_s * 1000)
            )
        except Exception:
            # Redis is gone: let this instance probe on its own.
            m.open_until = time.time() + self.s.cooldown_s
            return True
        return bool(won)

    def snapshot(self) -> dict[str, str]:
        return {key: self.state(key) for key in self._mirror}
