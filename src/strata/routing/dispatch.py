"""Run one request against an alias's deployments: balance, retry, fall back.

Order: deployments are grouped by rank; within a rank they are tried weighted at
random (or fewest in flight first), then the next rank. Each failure that may
succeed elsewhere (429, 5xx, timeouts, connection errors) moves on to the next
deployment at once; coming back to one already tried waits an exponential
backoff with jitter, or the upstream's Retry-After. Attempts are bounded by the
alias's ``retries`` and ``deadline_s``. Errors a retry cannot fix (400, 401,
403) return at once; a context-length error moves on only to deployments with
a larger declared ``max_context``. Open circuits are skipped without an attempt.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from strata.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    StrataError,
)
from strata.observability import tracing
from strata.providers.base import Provider
from strata.routing.breaker import CircuitBreakers
from strata.routing.router import Router, Target
from strata.settings import RetrySettings

T = TypeVar("T")
# Recent latency per deployment, shared for `strata models` (any instance's latest).
LATENCY_KEY = "strata:latency"
LATENCY_PUBLISH_S = 2.0
# Recent latency per deployment (seconds), for /v1/models: an exponential average.
LATENCY_WEIGHT = 0.2


@dataclass
class Outcome:
    """What happened, for response headers and the usage record."""

    attempts: int = 0
    fallback: bool = False
    target: Target | None = None
    errors: list[str] = field(default_factory=list)
    # Attempts that timed out after the upstream had the request: it probably
    # processed (and billed) the prompt. Other failures are not billed upstream.
    billed_failures: list[Target] = field(default_factory=list)


class Dispatcher:
    def __init__(self, router: Router, breakers: CircuitBreakers, retry: RetrySettings) -> None:
        self.router = router
        self.breakers = breakers
        self.retry = retry
        self.inflight: dict[str, int] = {}
        self.latency: dict[str, float] = {}

    def order(
        self,
        alias: str,
        kind: str,
        capable: Callable[[Provider], bool] | None = None,
        need: str | None = None,
    ) -> list[Target]:
        targets = self.router.candidates(alias, kind)
        if capable is not None:
            targets = [t for t in targets if capable(t.provider)]
            if not targets:
                raise InvalidRequest(f"model '{alias}' does not support {need}", param=need)
        if len(targets) == 1:
            return targets
        strategy = self.router.aliases[alias].strategy
        out: list[Target] = []
        for rank in sorted({t.rank for t in targets}):
            group = [t for t in targets if t.rank == rank]
            if strategy == "least_inflight":
                group.sort(key=lambda t: self.inflight.get(t.key, 0) / t.weight)
            else:
                group = _weighted_shuffle(group)
            out.extend(group)
        return out

    async def run(
        self,
        alias: str,
        kind: str,
        call: Callable[[Target], Awaitable[T]],
        outcome: Outcome,
        on_target: Callable[[Target], None] | None = None,
        capable: Callable[[Provider], bool] | None = None,
        need: str | None = None,
    ) -> T:
        # Raises ModelNotFound for unknown aliases, InvalidRequest if none is capable.
        order = self.order(alias, kind, capable, need)
        spec = self.router.aliases[alias]
        deadline = time.monotonic() + spec.deadline_s
        budget = 1 + spec.retries
        tried: dict[str, int] = {}
        last: StrataError | None = None
        min_context = 0
        attempt = tracing.traced_attempts(self._attempt, kind)
        while outcome.attempts < budget:
            target = await self._next(order, tried, min_context)
            if target is None:
                break
            wait = self._backoff(tried.get(target.key, 0), last)
            if time.monotonic() + wait >= deadline:
                break
            if wait:
                await asyncio.sleep(wait)
            tried[target.key] = tried.get(target.key, 0) + 1
            outcome.attempts += 1
            outcome.target = target
            outcome.fallback = target is not order[0]
            if on_target is not None:
                on_target(target)
            try:
                result = await attempt(target, call, deadline)
            except ContextLengthExceeded as exc:
                # Only a deployment with a larger window can help.
                last = exc
                min_context = max(min_context, target.max_context or 1)
                outcome.errors.append(f"{target.key}: {type(exc).__name__}")
                if not any((t.max_context or 0) > min_context for t in order):
                    raise
                continue
            except ProviderAuthError:
                raise
            except (ProviderError, TimeoutError) as exc:
                err = exc if isinstance(exc, StrataError) else _timeout(target)
                if isinstance(err, ProviderTimeout):
                    outcome.billed_failures.append(target)
                await self.breakers.failure(target.key)
                outcome.errors.append(f"{target.key}: {type(err).__name__}")
                last = err
                continue
            await self.breakers.success(target.key)
            return result
        if last is not None:
            raise last
        raise ProviderUnavailable(
            f"no deployment of '{alias}' is available (circuit open); retry shortly",
            provider=alias,
            retry_after=self.breakers.s.cooldown_s,
        )

    async def publish_latency(self, redis: Any) -> None:
        """Every few seconds, share this instance's recent latencies (best effort)."""
        while True:
            await asyncio.sleep(LATENCY_PUBLISH_S)
            if not self.latency:
                continue
            try:
                ms = {k: f"{v * 1000:.1f}" for k, v in self.latency.items()}
                await redis.hset(LATENCY_KEY, mapping=ms)
                await redis.expire(LATENCY_KEY, 600)
            except Exception:
                continue  # Redis down: the API still shows this instance's view

    async def _attempt(
        self, target: Target, call: Callable[[Target], Awaitable[T]], deadline: float
    ) -> T:
        timeout = deadline - time.monotonic()
        if target.timeout_s is not None:
            timeout = min(timeout, target.timeout_s)
        self.inflight[target.key] = self.inflight.get(target.key, 0) + 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                result = await call(target)
        finally:
            self.inflight[target.key] -= 1
        took = time.monotonic() - started
        prev = self.latency.get(target.key)
        self.latency[target.key] = took if prev is None else prev + LATENCY_WEIGHT * (took - prev)
        return result

    async def _next(
        self, order: list[Target], tried: dict[str, int], min_context: int
    ) -> Target | None:
        """The least-tried allowed deployment, in order; None if circuits block all."""
        eligible = [t for t in order if (t.max_context or 0) > min_context or not min_context]
        for t in sorted(eligible, key=lambda t: tried.get(t.key, 0)):
            if await self.breakers.allow(t.key):
                return t
        return None

    def _backoff(self, times_tried: int, last: StrataError | None) -> float:
        if times_tried == 0:
            return 0.0  # a fresh deployment is tried at once
        if last is not None and last.retry_after is not None:
            return float(last.retry_after)
        base = min(self.retry.max_s, self.retry.base_s * 2 ** (times_tried - 1))
        return base * random.uniform(0.5, 1.0)  # jitter: instances don't retry in step


def _weighted_shuffle(group: list[Target]) -> list[Target]:
    # Efraimidis-Spirakis: sort by u^(1/w); one pass, unbiased for any weights.
    return sorted(group, key=lambda t: random.random() ** (1.0 / t.weight), reverse=True)


def _timeout(target: Target) -> ProviderTimeout:
    return ProviderTimeout(
        f"no answer within the deployment's timeout ({target.model})", provider=target.provider.name
    )
