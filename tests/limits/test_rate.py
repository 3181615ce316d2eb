"""Rate limits against real Redis: shared across instances, one round trip, all
or nothing, token correction, headers, and the failure policy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from strata.errors import RateLimited, ServiceUnavailable
from strata.limits import LimitsSettings, Overrides, RateLimiter, RuleSet, format_duration
from strata.limits.rate import compile_rules
from tests.limits.conftest import Clock, Proxy, count_calls

MakeRedis = Callable[..., aioredis.Redis]


def limiter(r: aioredis.Redis, prefix: str, clock: Clock | None, **settings: Any) -> RateLimiter:
    # A generous timeout: a loaded test machine must not trip the fallback.
    s = LimitsSettings(**{"redis_timeout_s": 2.0, **settings})
    return RateLimiter(r, s, clock=clock, prefix=prefix)


async def test_two_instances_share_10_per_second(make_redis: MakeRedis, prefix: str) -> None:
    """Two "servers" (own clients, own limiters) under concurrent load from both:
    10 requests/second for the user in total, not 10 per instance."""
    clock = Clock()
    a = limiter(make_redis(), prefix, clock)  # defaults: user 10/s, burst 1.0
    b = limiter(make_redis(), prefix, clock)
    tick = 0.02
    allowed_at: list[float] = []

    async def one(rl: RateLimiter) -> None:
        d = await rl.check(tenant="acme", user="alice", key="key_a" if rl is a else "key_b")
        if d.allowed:
            allowed_at.append(clock.now - start)

    start = clock.now
    for _ in range(int(6.0 / tick)):
        await asyncio.gather(*(one(rl) for rl in (a, b, a, b, a, b)))
        clock.advance(tick)
    # The first second also drains the burst (10 at once); then 10/s exactly.
    window = [t for t in allowed_at if 1.0 <= t < 6.0]
    assert 49 <= len(window) <= 51, len(window)
    assert 69 <= len(allowed_at) <= 71, len(allowed_at)
    assert a.errors == b.errors == 0


async def test_two_instances_on_redis_time(make_redis: MakeRedis, prefix: str) -> None:
    """Without an injected clock the script reads Redis' TIME (no clock skew)."""
    rules = {"user": RuleSet(requests_per_second=10, burst=0.1)}
    a = limiter(make_redis(), prefix, None, **rules)
    b = limiter(make_redis(), prefix, None, **rules)
    allowed = 0
    end = time.monotonic() + 1.0

    async def hammer(rl: RateLimiter) -> None:
        nonlocal allowed
        while time.monotonic() < end:
            d = await rl.check(tenant="acme", user="bob")
            allowed += d.allowed
            await asyncio.sleep(0.002)

    await asyncio.gather(hammer(a), hammer(b), hammer(a), hammer(b))
    assert 9 <= allowed <= 12, allowed


async def test_one_round_trip_for_every_limit(make_redis: MakeRedis, prefix: str) -> None:
    r = make_redis()
    full = RuleSet(requests_per_second=50, requests_per_minute=1000, tokens_per_minute=100_000)
    rl = limiter(r, prefix, Clock(), key=full, user=full, tenant=full, aliases={"gpt": full})
    limits = rl.limits_for(tenant="acme", user="alice", key="key_1", alias="gpt")
    assert len(limits) == 12
    await rl.check(tenant="acme", user="alice", key="key_1", alias="gpt", tokens=100)
    calls = count_calls(r)
    for _ in range(5):
        d = await rl.check(tenant="acme", user="alice", key="key_1", alias="gpt", tokens=100)
        assert d.allowed
    assert calls == ["EVALSHA"] * 5
    # No applicable limit: no round trip at all.
    empty = limiter(r, prefix, Clock(), user=RuleSet())
    assert (await empty.check(tenant="acme", user="alice")).allowed
    assert calls == ["EVALSHA"] * 5


async def test_lost_script_is_loaded_again(
    make_redis: MakeRedis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = make_redis()
    rl = limiter(r, prefix, Clock())
    real = r.evalsha
    failures = [NoScriptError("NOSCRIPT No matching script")]

    async def flaky(*args: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(*args)

    monkeypatch.setattr(r, "evalsha", flaky)
    calls = count_calls(r)
    assert (await rl.check(tenant="acme", user="alice")).allowed
    assert calls == ["SCRIPT LOAD", "EVALSHA"]
    assert rl.errors == 0


async def test_all_or_nothing(make_redis: MakeRedis, prefix: str) -> None:
    clock = Clock()
    rl = limiter(
        make_redis(),
        prefix,
        clock,
        key=RuleSet(requests_per_second=5),
        user=RuleSet(requests_per_second=1),
    )
    assert (await rl.check(tenant="acme", user="alice", key="key_1")).allowed
    denied = await rl.check(tenant="acme", user="alice", key="key_1")
    assert not denied.allowed
    assert denied.denied_by is not None and denied.denied_by.scope == "user"
    # The key's limit was not consumed by the denied request: 5 - 1 left.
    (key_limit,) = [
        lim
        for lim in rl.limits_for(tenant="acme", user=None, key="key_1", alias=None)
        if lim.scope == "key"
    ]
    d = await rl.check_limits([key_limit])
    assert d.allowed and d.requests is not None and d.requests.remaining == 3


async def test_denied_request_headers_and_retry(make_redis: MakeRedis, prefix: str) -> None:
    clock = Clock()
    rl = limiter(make_redis(), prefix, clock)
    for i in range(10):
        d = await rl.check(tenant="acme", user="carol")
        assert d.allowed and d.requests is not None and d.requests.remaining == 9 - i
    assert dict(d.headers()) == {
        b"x-ratelimit-limit-requests": b"10",
        b"x-ratelimit-remaining-requests": b"0",
        b"x-ratelimit-reset-requests": b"1s",
    }
    d = await rl.check(tenant="acme", user="carol")
    assert not d.allowed
    assert d.retry_after_s == pytest.approx(0.1, abs=0.002)
    err = d.error()
    assert isinstance(err, RateLimited) and err.status == 429
    assert err.headers() == {"retry-after": "1"}
    assert "10 requests per second" in err.message
    clock.advance(0.1)
    assert (await rl.check(tenant="acme", user="carol")).allowed


async def test_tokens_estimated_then_corrected(make_redis: MakeRedis, prefix: str) -> None:
    clock = Clock()
    r = make_redis()
    rl = limiter(r, prefix, clock, user=RuleSet(tokens_per_minute=1000))
    first = await rl.check(tenant="acme", user="dan", tokens=600)
    assert first.allowed and first.tokens is not None and first.tokens.remaining == 400
    assert first.requests is None
    assert (b"x-ratelimit-limit-tokens", b"1000") in first.headers()
    denied = await rl.check(tenant="acme", user="dan", tokens=600)
    assert not denied.allowed
    assert denied.retry_after_s == pytest.approx(12.0, abs=0.01)  # 200 tokens at 1000/min
    # The call used 200 tokens, not 600: 400 come back.
    await rl.correct(first, 200)
    second = await rl.check(tenant="acme", user="dan", tokens=600)
    assert second.allowed and second.tokens is not None and second.tokens.remaining == 200
    # It used 1500: a debt that blocks even a zero-token estimate until paid off.
    rl.correct_later(second, 1500)
    await rl.aclose()
    blocked = await rl.check(tenant="acme", user="dan", tokens=0)
    assert not blocked.allowed
    # 200 + 1500 used of 1000: 700 over, paid off at 1000 per minute.
    assert blocked.retry_after_s == pytest.approx(42.0, abs=0.01)
    clock.advance(42.0)
    assert (await rl.check(tenant="acme", user="dan", tokens=0)).allowed


async def test_overrides_replace_defaults_per_subject(make_redis: MakeRedis, prefix: str) -> None:
    overrides = Overrides()
    s = LimitsSettings(redis_timeout_s=2.0)
    rl = RateLimiter(make_redis(), s, overrides=overrides, clock=Clock(), prefix=prefix)
    (lim,) = rl.limits_for(tenant="acme", user="erin", key="k", alias=None)
    assert (lim.scope, lim.limit) == ("user", 10)
    overrides.set(
        {
            ("user", "acme/erin"): {"requests_per_second": 2},
            ("key", "k"): {"tokens_per_minute": 5000},
        },
        {},
    )
    limits = rl.limits_for(tenant="acme", user="erin", key="k", alias=None)
    assert sorted((x.scope, x.dim, x.limit) for x in limits) == [
        ("key", "tpm", 5000),
        ("user", "rps", 2),
    ]
    other = rl.limits_for(tenant="acme", user="frank", key=None, alias=None)
    assert [(x.scope, x.limit) for x in other] == [("user", 10)]


async def test_alias_limit_is_shared_by_everyone(make_redis: MakeRedis, prefix: str) -> None:
    rl = limiter(
        make_redis(),
        prefix,
        Clock(),
        user=RuleSet(),
        aliases={"big": RuleSet(requests_per_minute=3)},
    )
    results = [
        (await rl.check(tenant=t, user=u, alias="big")).allowed
        for t, u in [("a", "x"), ("b", "y"), ("c", "z"), ("d", "w")]
    ]
    assert results == [True, True, True, False]
    assert (await rl.check(tenant="a", user="x", alias="small")).allowed


async def test_redis_down_fails_open_per_instance(
    make_redis: MakeRedis, prefix: str, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    rl = limiter(make_redis(proxy.url), prefix, clock, redis_timeout_s=0.3, down_backoff_s=0)
    assert not (await rl.check(tenant="acme", user="gina")).fallback
    await proxy.stop()
    caplog.set_level(logging.WARNING, "strata.limits")
    results = [await rl.check(tenant="acme", user="gina") for _ in range(11)]
    assert all(d.fallback for d in results)
    # Enforced in memory: the 10/s limit (fresh state) still holds on this instance.
    assert [d.allowed for d in results] == [True] * 10 + [False]
    assert rl.errors == 11
    unreachable = [m for m in caplog.messages if "unreachable" in m]
    assert len(unreachable) == 1  # logged once per outage, counted every time
    await proxy.start()
    clock.advance(1.0)
    d = await rl.check(tenant="acme", user="gina")
    assert d.allowed and not d.fallback
    assert any("reachable again" in m for m in caplog.messages)


async def test_redis_down_fails_closed_when_configured(
    make_redis: MakeRedis, prefix: str, proxy: Proxy
) -> None:
    closed = RuleSet(requests_per_second=10, failure_mode="closed")
    rl = limiter(
        make_redis(proxy.url), prefix, Clock(), user=closed, redis_timeout_s=0.3, down_backoff_s=5
    )
    await proxy.stop()
    start = time.monotonic()
    d = await rl.check(tenant="acme", user="hal")
    assert not d.allowed and d.unavailable
    err = d.error()
    assert isinstance(err, ServiceUnavailable) and err.status == 503
    assert err.headers() == {"retry-after": "5"}
    # Backing off: the next request does not wait on the dead Redis again.
    again = time.monotonic()
    assert not (await rl.check(tenant="acme", user="hal")).allowed
    assert time.monotonic() - again < 0.05 < again - start + 0.05
    assert rl.errors == 1


def test_compile_rules_burst() -> None:
    (rps,) = compile_rules("user", "a/b", RuleSet(requests_per_second=10))
    assert (rps.emission_ms, rps.tolerance_ms) == (100.0, 1000.0)
    (smooth,) = compile_rules("user", "a/b", RuleSet(requests_per_second=10, burst=0.01))
    assert smooth.tolerance_ms == 100.0  # never less than one request


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (0.0004, "1ms"),
        (1, "1s"),
        (8.64, "8.64s"),
        (360, "6m0s"),
        (86.4, "1m26.4s"),
        (3600, "1h0m0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
