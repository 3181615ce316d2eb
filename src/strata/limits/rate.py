"""Rate limits shared by every instance through Redis: GCRA, one round trip.

Algorithm: GCRA (the generic cell rate algorithm, a token bucket kept as one
timestamp). Each limit stores its theoretical arrival time ``tat`` (ms) under
``strata:rl:{scope}:{subject}:{dim}`` with ``dim`` one of ``rps``, ``rpm``,
``tpm``. A limit of L per period T has emission interval ``E = T/L`` and
tolerance ``tau = max(burst*T, E)``; a request costing n units (1 for request
limits, the estimated tokens for token limits) passes when
``max(tat, now) + n*E - now <= tau``. A key expires once its bucket is full again.

One round trip: every limit that applies to a request (key, user, tenant, alias x
requests/s, requests/min, tokens/min) is checked by one EVALSHA of one Lua
script, all or nothing: if any limit denies, none is consumed. The script is
loaded once; a Redis that lost it (restart, SCRIPT FLUSH) gets it again on
NOSCRIPT.

Tokens: the check consumes an estimate (prompt tokens + max_tokens, as OpenAI
does); ``correct`` moves the token limits by ``actual - estimate`` after the call
(a refund, or a debt that delays later requests).

Clock: by default the script reads Redis' own ``TIME``, so instances on
different machines need no synchronized clocks. Tests inject a clock (seconds,
like ``time.time``); then ``now`` is passed to the script, and every instance
sharing a Redis must use the same clock.

Failure policy: a check waits at most ``redis_timeout_s`` (50 ms). On an error or
timeout the limiter stops asking Redis for ``down_backoff_s`` (2 s), logs once
per outage, and counts ``errors``. Meanwhile each request is decided by the rule
sets' ``failure_mode``: if any applicable rule set is ``closed`` the request is
rejected (``Decision.unavailable``, 503 with Retry-After); otherwise the same
GCRA runs in this instance's memory (per-instance enforcement: N instances may
admit up to N times the limit until Redis answers again). Memory state is
dropped when Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.exceptions import RedisError

from strata.errors import RateLimited, ServiceUnavailable, StrataError
from strata.limits.config import FailureMode, LimitsSettings, RuleSet
from strata.limits.outage import RedisBackoff
from strata.limits.overrides import Overrides, merged, user_subject
from strata.limits.scripts import CHECK_SCRIPT, CORRECT_SCRIPT, evalsha

log = logging.getLogger("strata.limits")

# Redis key prefix of rate-limit state (one string per limit: its tat in ms).
PREFIX = "strata:rl"
# A limit's key outlives its full bucket by this much (ms), so a slow clock read
# never resets a bucket early.
EXPIRY_SLACK_MS = 1000
# Float slack (ms) when comparing times near 1.7e12 ms (double ulp there ~0.25 us).
EPS_MS = 0.01
# Memory fallback and the compiled-limit cache are bounded (entries).
MAX_LOCAL = 100_000

Dim = Literal["rps", "rpm", "tpm"]
DIMS: tuple[tuple[Dim, str, float], ...] = (
    ("rps", "requests_per_second", 1000.0),
    ("rpm", "requests_per_minute", 60_000.0),
    ("tpm", "tokens_per_minute", 60_000.0),
)
UNIT = {"rps": "requests per second", "rpm": "requests per minute", "tpm": "tokens per minute"}


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit of one subject, ready for the script."""

    scope: str
    subject: str
    dim: Dim
    limit: int
    emission_ms: float
    tolerance_ms: float
    failure_mode: FailureMode
    key: str
    spec: str  # "E tau" for the script

    @property
    def tokens(self) -> bool:
        return self.dim == "tpm"

    def describe(self) -> str:
        return f"{self.scope} {self.subject!r}: {self.limit} {UNIT[self.dim]}"


def compile_rules(scope: str, subject: str, rules: RuleSet, prefix: str = PREFIX) -> list[Limit]:
    out = []
    for dim, name, period_ms in DIMS:
        value = getattr(rules, name)
        if value is None:
            continue
        e = period_ms / value
        out.append(
            Limit(
                scope,
                subject,
                dim,
                value,
                e,
                max(rules.burst * period_ms, e),
                rules.failure_mode,
                f"{prefix}:{scope}:{subject}:{dim}",
                f"{e!r} {max(rules.burst * period_ms, e)!r}",
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Quota:
    """One header trio: the limit, what is left of it, and when it is full again."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(slots=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0
    requests: Quota | None = None  # the tightest request limit
    tokens: Quota | None = None  # the tightest token limit
    denied_by: Limit | None = None
    unavailable: bool = False  # a fail-closed limit while Redis is unreachable
    fallback: bool = False  # decided in this instance's memory
    estimate: int = 0
    token_limits: tuple[Limit, ...] = field(default=())

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's ``x-ratelimit-*`` headers (only for the dimensions that apply)."""
        out = []
        for name, q in (("requests", self.requests), ("tokens", self.tokens)):
            if q is None:
                continue
            out += [
                (b"x-ratelimit-limit-" + name.encode(), str(q.limit).encode()),
                (b"x-ratelimit-remaining-" + name.encode(), str(q.remaining).encode()),
                (b"x-ratelimit-reset-" + name.encode(), format_duration(q.reset_s).encode()),
            ]
        return out

    def error(self) -> StrataError:
        """The error to raise for a denied request (429, or 503 when fail-closed)."""
        if self.unavailable:
            return ServiceUnavailable(
                "Rate limits cannot be checked right now (their store is unreachable); "
                "please retry shortly.",
                code="rate_limit_unavailable",
                retry_after=self.retry_after_s,
            )
        what = self.denied_by.describe() if self.denied_by else "a rate limit"
        return RateLimited(
            f"Rate limit reached for {what}. Please try again in "
            f"{format_duration(self.retry_after_s)}.",
            retry_after=self.retry_after_s,
        )


def format_duration(seconds: float) -> str:
    """Durations as OpenAI writes them (Go's style): ``20ms``, ``1s``, ``6m0s``, ``1m26.4s``."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if h:
        return f"{h}h{m}m{s}s"
    if m:
        return f"{m}m{s}s"
    return f"{s}s"


def _tightest(pairs: list[tuple[Limit, int, int]]) -> Quota | None:
    if not pairs:
        return None
    lim, rem, reset = min(pairs, key=lambda p: (p[1], -p[2]))
    return Quota(lim.limit, rem, reset / 1000)


class LocalGcra:
    """The same algorithm in one process's memory (the fallback)."""

    def __init__(self) -> None:
        self.tats: dict[str, float] = {}

    def check(self, limits: Sequence[Limit], costs: Sequence[int], now: float) -> list[Any]:
        if len(self.tats) > MAX_LOCAL:
            self.tats = {k: t for k, t in self.tats.items() if t > now}
        tats, news = [], []
        allowed, retry = 1, 0.0
        for lim, cost in zip(limits, costs, strict=True):
            tat = max(self.tats.get(lim.key, 0.0), now)
            new = tat + min(cost * lim.emission_ms, lim.tolerance_ms)
            wait = new - lim.tolerance_ms - now
            if wait > EPS_MS:
                allowed = 0
                retry = max(retry, wait)
            tats.append(tat)
            news.append(new)
        out: list[Any] = [allowed, math.ceil(retry)]
        for lim, tat, new in zip(limits, tats, news, strict=True):
            if allowed:
                tat = new
                self.tats[lim.key] = new
            rem = math.floor((lim.tolerance_ms - (tat - now)) / lim.emission_ms + 1e-6)
            out += [max(rem, 0), math.ceil(tat - now)]
        return out

    def correct(self, limits: Sequence[Limit], deltas: Sequence[float], now: float) -> None:
        for lim, d in zip(limits, deltas, strict=True):
            new = max(self.tats.get(lim.key, 0.0), now) + d
            if new > now:
                self.tats[lim.key] = new
            else:
                self.tats.pop(lim.key, None)


class RateLimiter(RedisBackoff):
    """Checks every limit of a request in one Redis round trip (see the module doc)."""

    def __init__(
        self,
        redis: Any,
        settings: LimitsSettings,
        *,
        overrides: Overrides | None = None,
        clock: Callable[[], float] | None = None,
        prefix: str = PREFIX,
    ) -> None:
        self.redis = redis
        self.s = settings
        self.overrides = overrides or Overrides()
        self.clock = clock
        self.prefix = prefix
        self.local = LocalGcra()
        self._init_backoff(settings.down_backoff_s)
        self._compiled: dict[tuple[str, str], list[Limit]] = {}
        self._compiled_version = -1
        self._pending: set[asyncio.Task[None]] = set()

    def reconfigure(self, settings: LimitsSettings) -> None:
        """New default limits (a config reload); compiled limits rebuilt."""
        self.s = settings
        self._compiled.clear()
        self._compiled_version = -1

    def limits_for(
        self, *, tenant: str, user: str | None, key: str | None, alias: str | None
    ) -> list[Limit]:
        """Every limit that applies to a request (defaults merged with overrides)."""
        if not self.s.enabled:
            return []
        if self._compiled_version != self.overrides.version or len(self._compiled) > MAX_LOCAL:
            self._compiled.clear()
            self._compiled_version = self.overrides.version
        out: list[Limit] = []
        subjects: list[tuple[str, str | None]] = [
            ("key", key),
            ("user", user_subject(tenant, user) if user is not None else None),
            ("tenant", tenant),
            ("alias", alias),
        ]
        for scope, subject in subjects:
            if subject is None:
                continue
            limits = self._compiled.get((scope, subject))
            if limits is None:
                limits = self._compile(scope, subject)
                self._compiled[(scope, subject)] = limits
            out += limits
        return out

    def _compile(self, scope: str, subject: str) -> list[Limit]:
        if scope == "alias":
            default = self.s.aliases.get(subject)
            if default is None:
                default = RuleSet()
        else:
            default = getattr(self.s, scope)
        rules: RuleSet = merged(default, self.overrides.rules(scope, subject))
        return compile_rules(scope, subject, rules, self.prefix)

    async def check(
        self,
        *,
        tenant: str,
        user: str | None = None,
        key: str | None = None,
        alias: str | None = None,
        tokens: int = 0,
    ) -> Decision:
        """Check and, if every limit allows it, consume. ``tokens``: the estimate."""
        return await self.check_limits(
            self.limits_for(tenant=tenant, user=user, key=key, alias=alias), tokens
        )

    async def check_limits(self, limits: Sequence[Limit], tokens: int = 0) -> Decision:
        if not limits:
            return Decision(True)
        tokens = max(0, tokens)
        if self.redis_usable():
            keys, args = self.check_args(limits, tokens)
            try:
                async with asyncio.timeout(self.s.redis_timeout_s):
                    reply = await evalsha(self.redis, CHECK_SCRIPT, keys, args)
            except (RedisError, OSError, TimeoutError) as exc:
                self.failed(exc)
            else:
                return self.check_reply(limits, reply, tokens)
        return self.check_fallback(limits, tokens)

    # The steps of a check, for callers that send the script themselves (``Gate``
    # pipelines it with the budget reserve): build the call, read its reply, or
    # decide without Redis.

    def check_args(self, limits: Sequence[Limit], tokens: int) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``CHECK_SCRIPT`` for ``limits`` (``tokens`` >= 0)."""
        spec = " ".join([f"{lim.spec} {tokens if lim.tokens else 1}" for lim in limits])
        return [lim.key for lim in limits], [self._now_arg(), EPS_MS, spec, EXPIRY_SLACK_MS]

    def check_reply(self, limits: Sequence[Limit], reply: Any, tokens: int) -> Decision:
        """The decision from the script's reply (Redis answered: any outage is over)."""
        self.recovered()
        return self._decide(limits, reply.split(), tokens, fallback=False)

    def check_fallback(self, limits: Sequence[Limit], tokens: int) -> Decision:
        """Redis unreachable: reject if a limit fails closed, else decide in memory."""
        if any(lim.failure_mode == "closed" for lim in limits):
            return Decision(False, retry_after_s=max(1.0, self.s.down_backoff_s), unavailable=True)
        costs = [tokens if lim.tokens else 1 for lim in limits]
        now = (self.clock or time.time)() * 1000
        return self._decide(limits, self.local.check(limits, costs, now), tokens, fallback=True)

    def _decide(
        self, limits: Sequence[Limit], raw: Sequence[Any], tokens: int, *, fallback: bool
    ) -> Decision:
        allowed = bool(int(raw[0]))
        req: list[tuple[Limit, int, int]] = []
        tok: list[tuple[Limit, int, int]] = []
        denied_by = None
        for i, lim in enumerate(limits):
            rem, reset = int(raw[2 + 2 * i]), int(raw[3 + 2 * i])
            (tok if lim.tokens else req).append((lim, rem, reset))
        if not allowed:
            # The limit that forces the longest wait (the one the script reported).
            cost = {True: tokens, False: 1}
            waits = [
                (reset + min(cost[lim.tokens] * lim.emission_ms, lim.tolerance_ms), lim)
                for lim, _, reset in req + tok
            ]
            denied_by = max(waits, key=lambda w: w[0])[1]
        return Decision(
            allowed,
            retry_after_s=int(raw[1]) / 1000,
            requests=_tightest(req),
            tokens=_tightest(tok),
            denied_by=denied_by,
            fallback=fallback,
            estimate=tokens,
            token_limits=tuple(t[0] for t in tok) if allowed else (),
        )

    async def correct(self, decision: Decision, actual_tokens: int) -> None:
        """Move the token limits by ``actual - estimate`` (never raises)."""
        call = self.correct_args(decision, actual_tokens)
        if call is None:
            return
        try:
            async with asyncio.timeout(self.s.redis_timeout_s * 4):
                await evalsha(self.redis, CORRECT_SCRIPT, *call)
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(exc)

    def correct_args(
        self, decision: Decision, actual_tokens: int
    ) -> tuple[list[str], list[Any]] | None:
        """KEYS and ARGV of ``CORRECT_SCRIPT``, or None when Redis has nothing to do
        (nothing to correct; a decision made in memory, corrected there now; or Redis
        away, when the correction is dropped)."""
        delta = actual_tokens - decision.estimate
        if not decision.allowed or not decision.token_limits or delta == 0:
            return None
        limits = decision.token_limits
        deltas = [delta * lim.emission_ms for lim in limits]
        if decision.fallback:
            now = (self.clock or time.time)() * 1000
            self.local.correct(limits, deltas, now)
            return None
        if not self.redis_usable():
            return None  # consumed in Redis, which is away: the correction is dropped
        keys = [lim.key for lim in limits]
        return keys, [self._now_arg(), " ".join(map(repr, deltas)), EXPIRY_SLACK_MS]

    def correct_later(self, decision: Decision, actual_tokens: int) -> None:
        """``correct`` in the background: the response never waits for it."""
        if not decision.allowed or not decision.token_limits:
            return
        if actual_tokens == decision.estimate:
            return
        task = asyncio.create_task(self.correct(decision, actual_tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def aclose(self) -> None:
        """Wait for background corrections (the Redis client is the caller's)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _now_arg(self) -> float:
        # -1: the script reads Redis' clock (see the module docstring).
        return self.clock() * 1000 if self.clock is not None else -1

    def _went_down(self, exc: BaseException) -> None:
        log.warning(
            "rate limits: Redis unreachable (%s); deciding per instance by failure_mode",
            type(exc).__name__,
        )

    def _came_back(self) -> None:
        self.local = LocalGcra()
        log.warning("rate limits: Redis reachable again")
