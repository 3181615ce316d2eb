"""The gate against real Redis: every limit and budget of a request in one round
trip before the call and one after it, denials undoing each other's effects,
concurrent admits across two instances, and the failure policies."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from strata.errors import RateLimited, ServiceUnavailable
from strata.limits import (
    Admission,
    BudgetCaps,
    BudgetExceeded,
    Budgets,
    BudgetsSettings,
    Crossing,
    Gate,
    LimitsSettings,
    RateLimiter,
    RuleSet,
)
from strata.limits import gate as gate_module
from strata.limits.scripts import CHECK_SCRIPT, SHAS
from tests.limits.conftest import Clock, DateClock, Proxy, count_round_trips

MakeRedis = Callable[..., aioredis.Redis]
D = Decimal
DAY = datetime(2026, 3, 10, 12, tzinfo=UTC)


def make_gate(
    r: aioredis.Redis,
    prefix: str,
    *,
    limits: dict[str, Any] | None = None,
    budgets: dict[str, Any] | None = None,
    clock: Clock | None = None,
    date_clock: DateClock | None = None,
    on_crossing: Callable[[list[Crossing]], Any] | None = None,
    timeout_s: float = 2.0,
    down_backoff_s: float = 2.0,
) -> Gate:
    common = {"redis_timeout_s": timeout_s, "down_backoff_s": down_backoff_s}
    rate = RateLimiter(
        r,
        LimitsSettings(**{**common, **(limits or {})}),
        clock=clock or Clock(),
        prefix=f"{prefix}:rl",
    )
    bg = Budgets(
        r,
        BudgetsSettings(**{**common, **(budgets or {})}),
        clock=date_clock or DateClock(DAY),
        prefix=f"{prefix}:budget",
        on_crossing=on_crossing,
    )
    return Gate(rate, bg)


async def admit(g: Gate, user: str = "alice", **kwargs: Any) -> Admission:
    args: dict[str, Any] = {
        "tenant": "acme",
        "user": user,
        "key": "key_1",
        "alias": None,
        "tokens": 100,
        "worst_case_usd": D("0.10"),
    }
    return await g.admit(**{**args, **kwargs})


async def budget_hash(r: aioredis.Redis, prefix: str, user: str = "alice") -> dict[str, Decimal]:
    raw = await r.hgetall(f"{prefix}:budget:user:acme/{user}:d:20260310")
    return {
        (k.decode() if isinstance(k, bytes) else k): D(int(v)) * D("1e-10") for k, v in raw.items()
    }


async def test_one_round_trip_to_admit_and_one_to_finish(
    make_redis: MakeRedis, prefix: str
) -> None:
    r = make_redis()
    crossings: list[Crossing] = []
    g = make_gate(
        r,
        prefix,
        limits={"user": RuleSet(requests_per_second=10, tokens_per_minute=10_000)},
        budgets={"user": BudgetCaps(daily_usd=D(1))},
        on_crossing=crossings.extend,
    )
    g.finish(await admit(g), tokens=100, cost_usd=D("0.01"))  # scripts loaded
    await g.drain()
    trips = count_round_trips(r)

    admission = await admit(g, tokens=500, worst_case_usd=D("0.60"))
    assert trips == [["EVALSHA", "EVALSHA"]]  # rate check and reserve, pipelined
    assert admission.decision.allowed and admission.reservation is not None
    headers = dict(admission.headers())
    assert headers[b"x-ratelimit-remaining-requests"] == b"8"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"9400"
    assert (await budget_hash(make_redis(), prefix))["reserved"] == D("0.6")

    g.finish(admission, tokens=200, cost_usd=D("0.55"))  # returns at once
    g.finish(admission, tokens=200, cost_usd=D("0.55"))  # a second finish does nothing
    await g.drain()
    assert trips[1:] == [["EVALSHA", "EVALSHA"]]  # settle and token correction
    assert await budget_hash(make_redis(), prefix) == {"spent": D("0.56"), "reserved": 0}
    # The settle crossed 50% of the user's daily cap: reported from the background.
    assert [(c.scope, c.scope_id, c.threshold) for c in crossings] == [("user", "acme/alice", 0.5)]
    # 300 of the 500 estimated tokens came back.
    assert g.rate is not None
    after = await g.rate.check(tenant="acme", user="alice", tokens=0)
    assert after.tokens is not None and after.tokens.remaining == 9700
    await g.aclose()


async def test_round_trips_follow_what_applies(make_redis: MakeRedis, prefix: str) -> None:
    r = make_redis()
    nothing = make_gate(r, prefix, limits={"user": RuleSet()}, budgets={"enabled": False})
    rate_only = make_gate(r, prefix, budgets={"enabled": False})
    budget_only = make_gate(
        r, prefix, limits={"enabled": False}, budgets={"user": BudgetCaps(daily_usd=D(5))}
    )
    uncapped = make_gate(r, prefix, limits={"enabled": False})
    assert budget_only.rate is None and rate_only.budgets is None
    for g in (rate_only, budget_only):
        g.finish(await admit(g), tokens=100, cost_usd=D(0))  # scripts loaded
        await g.drain()
    trips = count_round_trips(r)

    a = await admit(nothing)
    assert trips == [] and a.headers() == [] and a.reservation is None
    nothing.finish(a, tokens=5, cost_usd=D(1))
    assert nothing.pending == 0

    a = await admit(rate_only)
    assert trips == [["EVALSHA"]] and a.reservation is None
    rate_only.finish(a, tokens=100, cost_usd=D(1))  # estimate right, no budget: no trip
    assert rate_only.pending == 0

    a = await admit(budget_only, worst_case_usd=D("0.2"))
    assert trips[1:] == [["EVALSHA"]] and a.headers() == []
    budget_only.finish(a, tokens=7, cost_usd=D("0.1"))
    await budget_only.drain()
    assert trips[2:] == [["EVALSHA"]]
    assert await budget_hash(r, prefix) == {"spent": D("0.1"), "reserved": 0}

    # No cap applies: the admission holds nothing (no trip); the spend is charged.
    before = len(trips)
    a = await admit(uncapped, worst_case_usd=D("0.2"))
    assert trips[before:] == [] and a.reservation is not None and a.reservation.slots == ()
    uncapped.finish(a, tokens=7, cost_usd=D("0.1"))
    await uncapped.drain()
    assert trips[before:] == [["EVALSHA"]]
    for g in (nothing, rate_only, budget_only, uncapped):
        await g.aclose()


async def test_rate_denial_releases_the_reservation(make_redis: MakeRedis, prefix: str) -> None:
    r = make_redis()
    g = make_gate(
        r,
        prefix,
        limits={"user": RuleSet(requests_per_second=1)},
        budgets={"user": BudgetCaps(daily_usd=D(5))},
    )
    first = await admit(g, worst_case_usd=D("0.30"))
    with pytest.raises(RateLimited) as info:
        await admit(g, worst_case_usd=D("0.40"))
    err = info.value
    assert err.status == 429 and err.headers()["retry-after"] == "1"
    assert dict(err.extra_headers) == {
        b"x-ratelimit-limit-requests": b"1",
        b"x-ratelimit-remaining-requests": b"0",
        b"x-ratelimit-reset-requests": b"1s",
    }
    await g.drain()  # the release runs in the background
    assert await budget_hash(r, prefix) == {"reserved": D("0.3"), "spent": 0}
    g.finish(first, tokens=100, cost_usd=D("0.25"))
    await g.aclose()
    assert await budget_hash(r, prefix) == {"reserved": 0, "spent": D("0.25")}


async def test_budget_denial_refunds_the_token_estimate(make_redis: MakeRedis, prefix: str) -> None:
    r = make_redis()
    g = make_gate(
        r,
        prefix,
        limits={"user": RuleSet(requests_per_second=10, tokens_per_minute=1000)},
        budgets={"user": BudgetCaps(daily_usd=D("0.10")), "over_budget_status": 402},
    )
    first = await admit(g, tokens=300, worst_case_usd=D("0.06"))
    with pytest.raises(BudgetExceeded) as info:
        await admit(g, tokens=300, worst_case_usd=D("0.06"))
    err = info.value
    assert err.status == 402 and (err.scope, err.subject, err.period) == (
        "user",
        "acme/alice",
        "day",
    )
    assert "resets at 2026-03-11T00:00:00Z" in err.message
    headers = dict(err.extra_headers)
    assert headers[b"x-ratelimit-remaining-requests"] == b"8"  # the denied request counted
    assert headers[b"x-ratelimit-remaining-tokens"] == b"400"
    await g.drain()
    rate = g.rate
    assert rate is not None
    after = await rate.check(tenant="acme", user="alice", tokens=0)
    assert after.tokens is not None and after.tokens.remaining == 700  # 300 came back
    assert await budget_hash(r, prefix) == {"reserved": D("0.06")}
    g.finish(first, tokens=300, cost_usd=D("0.05"))
    await g.aclose()
    assert await budget_hash(r, prefix) == {"reserved": 0, "spent": D("0.05")}


async def test_soft_limit_header(make_redis: MakeRedis, prefix: str) -> None:
    g = make_gate(make_redis(), prefix, budgets={"user": BudgetCaps(daily_usd=D(1), soft_pct=50)})
    first = await admit(g, worst_case_usd=D("0.4"))
    assert first.soft_exceeded == [] and b"x-strata-budget-soft" not in dict(first.headers())
    second = await admit(g, worst_case_usd=D("0.4"))
    assert second.soft_exceeded == [("user", "acme/alice", "day")]
    assert dict(second.headers())[b"x-strata-budget-soft"] == b"user acme/alice day"
    for a in (first, second):
        g.finish(a, tokens=100, cost_usd=D(0))
    await g.aclose()


async def test_50_concurrent_admits_from_two_instances(make_redis: MakeRedis, prefix: str) -> None:
    settings: dict[str, Any] = {
        "limits": {"user": RuleSet(requests_per_second=1000)},
        "budgets": {"user": BudgetCaps(daily_usd=D("1.00"))},
    }
    a = make_gate(make_redis(), prefix, **settings)
    b = make_gate(make_redis(), prefix, **settings)

    async def one(g: Gate) -> tuple[Gate, Admission] | None:
        try:
            return g, await admit(g, worst_case_usd=D("0.10"))
        except BudgetExceeded as exc:
            assert exc.status == 429
            return None

    results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(50)))
    admitted = [x for x in results if x is not None]
    assert len(admitted) == 10  # exactly what fits
    r = make_redis()
    assert await budget_hash(r, prefix) == {"reserved": D("1.00")}
    actuals = [D("0.0123456789") * (i + 1) for i in range(10)]
    for (g, adm), cost in zip(admitted, actuals, strict=True):
        g.finish(adm, tokens=50, cost_usd=cost)
    await asyncio.gather(a.aclose(), b.aclose())
    assert await budget_hash(r, prefix) == {"spent": sum(actuals), "reserved": 0}


async def test_lost_script_loaded_again_and_only_it_resent(
    make_redis: MakeRedis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = make_redis()
    g = make_gate(r, prefix, budgets={"user": BudgetCaps(daily_usd=D(1))})
    g.finish(await admit(g), tokens=100, cost_usd=D(0))  # scripts loaded
    await g.drain()
    # A check script Redis has never seen (as after a restart or SCRIPT FLUSH).
    fresh = CHECK_SCRIPT + f"-- {prefix}\n"
    monkeypatch.setattr(gate_module, "CHECK_SCRIPT", fresh)
    monkeypatch.setattr(
        gate_module, "SHAS", {**SHAS, fresh: hashlib.sha1(fresh.encode()).hexdigest()}
    )
    trips = count_round_trips(r)
    adm = await admit(g, worst_case_usd=D("0.2"))
    assert trips == [["EVALSHA", "EVALSHA"], ["SCRIPT LOAD", "EVALSHA"]]
    assert adm.decision.allowed and not adm.decision.fallback
    assert adm.decision.requests is not None and adm.decision.requests.remaining == 8
    assert g.rate is not None and g.rate.errors == 0
    assert await budget_hash(r, prefix) == {"reserved": D("0.2"), "spent": 0}  # reserved once
    g.finish(adm, tokens=100, cost_usd=D(0))
    await g.aclose()


async def test_redis_down_follows_each_failure_policy_and_replays_once(
    make_redis: MakeRedis, prefix: str, proxy: Proxy
) -> None:
    crossings: list[Crossing] = []
    settings: dict[str, Any] = {
        "budgets": {"user": BudgetCaps(daily_usd=D(1))},
        "timeout_s": 0.3,
        "down_backoff_s": 0,
        "on_crossing": crossings.extend,
    }
    g = make_gate(make_redis(proxy.url), prefix, **settings)
    closed = make_gate(
        make_redis(proxy.url),
        prefix,
        limits={"user": RuleSet(requests_per_second=10, failure_mode="closed")},
        **settings,
    )
    g.finish(await admit(g, worst_case_usd=D("0.4")), tokens=100, cost_usd=D("0.4"))
    await g.drain()
    in_flight = await admit(g, worst_case_usd=D("0.2"))  # reserved in Redis

    await proxy.stop()
    local = await admit(g, worst_case_usd=D("0.3"))  # open: decided in memory
    assert local.decision.allowed and local.decision.fallback
    assert local.reservation is not None and local.reservation.local
    with pytest.raises(BudgetExceeded):  # 0.4 + 0.2 + 0.3 + 0.2 > 1: last known spend
        await admit(g, worst_case_usd=D("0.2"))
    with pytest.raises(ServiceUnavailable) as info:  # closed: 503
        await admit(closed, user="bob")
    assert info.value.status == 503 and info.value.extra_headers == []
    g.finish(local, tokens=100, cost_usd=D("0.25"))
    g.finish(in_flight, tokens=100, cost_usd=D("0.15"))
    await g.drain()
    assert g.budgets is not None and g.budgets.queued == 2
    assert g.rate is not None and g.rate.errors >= 2 and g.budgets.errors >= 2
    await closed.drain()
    assert closed.budgets is not None and closed.budgets.queued == 0  # released in memory

    await proxy.start()
    again = await admit(g, worst_case_usd=D("0.01"))  # Redis answers: the queue replays
    assert not again.decision.fallback and again.reservation is not None
    assert not again.reservation.local
    g.finish(again, tokens=100, cost_usd=D("0.01"))
    await g.aclose()
    await closed.aclose()
    assert g.budgets.queued == 0
    r = make_redis()
    assert await budget_hash(r, prefix) == {"spent": D("0.81"), "reserved": 0}
    assert await budget_hash(r, prefix, "bob") == {}
    assert [(c.scope, c.threshold) for c in crossings] == [("user", 0.5), ("user", 0.8)]


def test_rate_and_budgets_must_share_a_client() -> None:
    a, b = object(), object()
    rate = RateLimiter(a, LimitsSettings())
    bg = Budgets(b, BudgetsSettings())
    with pytest.raises(ValueError, match="one Redis client"):
        Gate(rate, bg)
    assert Gate(rate, Budgets(b, BudgetsSettings(enabled=False))).budgets is None


def test_packed_calls_match_redis_py() -> None:
    from redis.asyncio.connection import Connection

    from strata.limits.gate import _pack

    calls: list[tuple[str, list[str], list[Any]]] = [
        (CHECK_SCRIPT, ["a:rl:user:acme/zoë:rps"], [-1, 0.01, "100.0 1000.0 1", 1000]),
        (CHECK_SCRIPT, ["a:rl:key:k:rps"], [1.8e12 + 0.25, 0.01, "x", 7]),
    ]
    conn = Connection()
    for batch in (calls[:1], calls[1:], calls):
        expected = b"".join(
            b"".join(conn.pack_command("EVALSHA", SHAS[s], len(k), *k, *a)) for s, k, a in batch
        )
        assert _pack(batch) == expected


async def test_non_ascii_subjects(make_redis: MakeRedis, prefix: str) -> None:
    r = make_redis()
    g = make_gate(r, prefix, budgets={"user": BudgetCaps(daily_usd=D(1))})
    a = await admit(g, user="zoë", worst_case_usd=D("0.3"))
    assert a.decision.requests is not None and a.decision.requests.remaining == 9
    g.finish(a, tokens=100, cost_usd=D("0.2"))
    await g.aclose()
    assert await budget_hash(r, prefix, "zoë") == {"spent": D("0.2"), "reserved": 0}


async def test_reserve_without_reply_released_when_redis_answers(
    make_redis: MakeRedis, prefix: str, proxy: Proxy
) -> None:
    g = make_gate(
        make_redis(proxy.url),
        prefix,
        budgets={"user": BudgetCaps(daily_usd=D(1))},
        timeout_s=0.3,
        down_backoff_s=0,
    )
    g.finish(await admit(g, worst_case_usd=D("0.1")), tokens=100, cost_usd=D("0.1"))
    await g.drain()
    proxy.muted = True  # Redis runs the scripts; their replies are lost
    lost = await admit(g, worst_case_usd=D("0.3"))
    assert lost.decision.fallback and lost.reservation is not None and lost.reservation.local
    r = make_redis()
    assert await budget_hash(r, prefix) == {"spent": D("0.1"), "reserved": D("0.3")}
    proxy.muted = False
    g.finish(lost, tokens=100, cost_usd=D("0.2"))  # reaches Redis: the copy is released
    await g.aclose()
    assert await budget_hash(r, prefix) == {"spent": D("0.3"), "reserved": 0}
    assert g.budgets is not None and g.budgets.queued == 0
