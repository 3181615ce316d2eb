"""Budgets against real Redis: concurrent reserves never pass a cap, settles apply
once, periods reset at UTC boundaries, thresholds, and the failure policy."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis

from strata.limits import (
    BudgetCaps,
    BudgetExceeded,
    Budgets,
    BudgetsSettings,
    Crossing,
    Overrides,
    Reservation,
    worst_case_usd,
)
from tests.limits.conftest import DateClock, Proxy, count_calls

MakeRedis = Callable[..., aioredis.Redis]
D = Decimal


def budgets(r: aioredis.Redis, prefix: str, clock: DateClock, **settings: Any) -> Budgets:
    daily_alert = settings.pop("daily_alert_usd", None)
    s = BudgetsSettings(**{"redis_timeout_s": 2.0, **settings})
    return Budgets(r, s, clock=clock, prefix=prefix, daily_alert_usd=daily_alert)


async def hash_of(r: aioredis.Redis, key: str) -> dict[str, Decimal]:
    raw = await r.hgetall(key)
    return {k.decode(): D(int(v)) * D("1e-10") for k, v in raw.items()}


def test_worst_case_usd() -> None:
    # 1000 prompt tokens at $2.50/1M + 4096 at $10/1M.
    assert worst_case_usd(1000, 4096, D("2.50"), D("10")) == D("0.04346")
    assert worst_case_usd(0, 0, D(1), D(1)) == 0


async def test_concurrent_reserves_never_pass_the_cap(make_redis: MakeRedis, prefix: str) -> None:
    clock = DateClock(datetime(2026, 3, 10, 12, tzinfo=UTC))
    caps = {"user": BudgetCaps(daily_usd=D("1.00"))}
    # Two instances with their own clients, as two servers would be.
    a = budgets(make_redis(), prefix, clock, **caps)
    b = budgets(make_redis(), prefix, clock, **caps)
    subjects = a.subjects(tenant="acme", user="alice", key="key_1")

    async def try_reserve(bg: Budgets) -> Reservation | None:
        try:
            return await bg.reserve(subjects, D("0.10"))
        except BudgetExceeded as exc:
            assert (exc.scope, exc.subject, exc.period) == ("user", "acme/alice", "day")
            assert exc.cap == D("1") and exc.status == 429
            assert exc.resets_at == datetime(2026, 3, 11, tzinfo=UTC)
            assert "resets at 2026-03-11T00:00:00Z" in exc.message
            return None

    results = await asyncio.gather(*(try_reserve(a if i % 2 else b) for i in range(50)))
    held = [res for res in results if res is not None]
    assert len(held) == 10  # exactly what fits
    r = make_redis()
    key = f"{prefix}:user:acme/alice:d:20260310"
    assert await hash_of(r, key) == {"reserved": D("1.00")}

    actuals = [D("0.0123456789") * (i + 1) for i in range(10)]
    await asyncio.gather(*(a.settle(res, cost) for res, cost in zip(held, actuals, strict=True)))
    state = await hash_of(r, key)
    assert state == {"spent": sum(actuals), "reserved": 0}
    assert (await b.spend("user", "acme/alice"))["day"] == sum(actuals)


async def test_reserve_and_settle_under_load_end_at_the_sum_of_actuals(
    make_redis: MakeRedis, prefix: str
) -> None:
    """Reserve, call, settle, 50 at once: spent never passes the cap (every actual
    is within its worst case) and ends equal to the sum of what was settled."""
    clock = DateClock(datetime(2026, 3, 10, 12, tzinfo=UTC))
    caps = {"tenant": BudgetCaps(monthly_usd=D("1.00"))}
    a = budgets(make_redis(), prefix, clock, **caps)
    b = budgets(make_redis(), prefix, clock, **caps)
    subjects = a.subjects(tenant="t-load", user="u", key="k")
    charged: list[Decimal] = []
    rng = random.Random(5)

    async def request(bg: Budgets) -> None:
        try:
            res = await bg.reserve(subjects, D("0.10"))
        except BudgetExceeded:
            return
        await asyncio.sleep(rng.random() * 0.01)
        cost = D(rng.randint(1, 100_000)) * D("1e-6")  # at most the worst case
        charged.append(cost)
        await bg.settle(res, cost)

    await asyncio.gather(*(request(a if i % 2 else b) for i in range(50)))
    spent = (await a.spend("tenant", "t-load"))["month"]
    assert spent == sum(charged) <= D("1.00")
    assert len(charged) >= 10
    state = await hash_of(make_redis(), f"{prefix}:tenant:t-load:m:202603")
    assert state["reserved"] == 0


async def test_one_round_trip_each(make_redis: MakeRedis, prefix: str) -> None:
    r = make_redis()
    bg = budgets(
        r,
        prefix,
        DateClock(datetime(2026, 3, 10, tzinfo=UTC)),
        user=BudgetCaps(daily_usd=D(5)),
        daily_alert_usd=D(100),
    )
    subjects = bg.subjects(tenant="acme", user="alice", key="key_1")
    await bg.settle(await bg.reserve(subjects, D("0.01")), D("0.01"))  # scripts loaded
    calls = count_calls(r)
    res = await bg.reserve(subjects, D("0.01"))
    await bg.settle(res, D("0.005"))
    assert calls == ["EVALSHA", "EVALSHA"]


async def test_settle_applies_once(make_redis: MakeRedis, prefix: str) -> None:
    clock = DateClock(datetime(2026, 3, 10, tzinfo=UTC))
    cap = {"key": BudgetCaps(daily_usd=D(100))}  # a held reservation: exactly once
    a = budgets(make_redis(), prefix, clock, **cap)
    b = budgets(make_redis(), prefix, clock, **cap)
    subjects = a.subjects(tenant="acme", user="bob", key="key_2")
    res = await a.reserve(subjects, D("0.50"))
    twin = Reservation(res.id, res.worst_units, res.slots, res.charge_only)
    await a.settle(res, D("0.20"))
    assert await a.settle(res, D("0.20")) == []
    await b.settle(twin, D("0.20"))  # another instance, the same reservation
    for scope, sid in (("key", "key_2"), ("user", "acme/bob"), ("tenant", "acme")):
        assert await a.spend(scope, sid) == {"day": D("0.2"), "month": D("0.2")}
    state = await hash_of(make_redis(), f"{prefix}:key:key_2:d:20260310")
    assert state["reserved"] == 0


async def test_uncapped_requests_hold_nothing_and_are_charged(
    make_redis: MakeRedis, prefix: str
) -> None:
    r = make_redis()
    bg = budgets(r, prefix, DateClock(datetime(2026, 3, 10, tzinfo=UTC)))
    subjects = bg.subjects(tenant="acme", user="una", key="key_9")
    calls = count_calls(r)
    res = await bg.reserve(subjects, D("0.50"))
    assert calls == [] and res.slots == ()  # no cap: no reserve at all
    await bg.settle(res, D("0.20"))
    assert await bg.settle(res, D("0.20")) == []  # once per reservation
    assert calls == ["EVALSHA"]
    for scope, sid in (("key", "key_9"), ("user", "acme/una"), ("tenant", "acme")):
        assert await bg.spend(scope, sid) == {"day": D("0.2"), "month": D("0.2")}
    zero = await bg.reserve(subjects, D("0.50"))
    await bg.settle(zero, D(0))  # a cache hit: nothing to write
    assert calls == ["EVALSHA"]


async def test_day_and_month_reset_at_utc_boundaries(make_redis: MakeRedis, prefix: str) -> None:
    clock = DateClock(datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC))
    bg = budgets(
        make_redis(),
        prefix,
        clock,
        user=BudgetCaps(daily_usd=D("1.00"), monthly_usd=D("1.50")),
        over_budget_status=402,
    )
    subjects = bg.subjects(tenant="acme", user="cy", key=None)
    await bg.settle(await bg.reserve(subjects, D("1.00")), D("1.00"))
    with pytest.raises(BudgetExceeded) as info:
        await bg.reserve(subjects, D("0.01"))
    assert info.value.period == "day" and info.value.status == 402
    assert info.value.resets_at == datetime(2026, 2, 1, tzinfo=UTC)
    assert info.value.retry_after == 1.0

    clock.advance(seconds=1)  # 2026-02-01 00:00:00: a new day and a new month
    await bg.settle(await bg.reserve(subjects, D("1.00")), D("1.00"))
    assert await bg.spend("user", "acme/cy") == {"day": D(1), "month": D(1)}

    clock.advance(days=1)  # a new day, the same month: the monthly cap binds
    with pytest.raises(BudgetExceeded) as info:
        await bg.reserve(subjects, D("0.60"))
    assert info.value.period == "month"
    assert info.value.resets_at == datetime(2026, 3, 1, tzinfo=UTC)
    assert "monthly budget of $1.5" in info.value.message
    assert (await bg.reserve(subjects, D("0.50"))).worst_case_usd == D("0.5")


async def test_soft_limit_is_reported(make_redis: MakeRedis, prefix: str) -> None:
    bg = budgets(
        make_redis(),
        prefix,
        DateClock(datetime(2026, 3, 10, tzinfo=UTC)),
        key=BudgetCaps(daily_usd=D(1), soft_pct=50),
    )
    subjects = bg.subjects(tenant="acme", user="u", key="key_soft")
    first = await bg.reserve(subjects, D("0.40"))
    assert first.soft_exceeded == []
    second = await bg.reserve(subjects, D("0.40"))
    assert second.soft_exceeded == [("key", "key_soft", "day")]


async def test_threshold_crossings_reported_once(make_redis: MakeRedis, prefix: str) -> None:
    clock = DateClock(datetime(2026, 3, 10, 8, tzinfo=UTC))
    bg = budgets(
        make_redis(), prefix, clock, user=BudgetCaps(daily_usd=D(1)), daily_alert_usd=D("0.70")
    )
    subjects = bg.subjects(tenant="acme", user="dee", key=None)

    async def spend(usd: str) -> list[tuple[str, float]]:
        crossings = await bg.settle(await bg.reserve(subjects, D(usd)), D(usd))
        return [(c.scope, c.threshold) for c in crossings]

    assert await spend("0.40") == []
    assert await spend("0.20") == [("user", 0.5)]
    assert await spend("0.10") == [("deployment", 1.0)]  # 0.70 for the whole deployment
    assert await spend("0.10") == [("user", 0.8)]
    crossings = await bg.settle(await bg.reserve(subjects, D("0.2")), D("0.2"))
    assert crossings == [
        Crossing(
            "budget_threshold", "user", "acme/dee", "day", date(2026, 3, 10), 1.0, D("1"), D("1")
        ),
    ]


async def test_unsettled_reservation_released_after_ttl(make_redis: MakeRedis, prefix: str) -> None:
    clock = DateClock(datetime(2026, 3, 10, 8, tzinfo=UTC))
    bg = budgets(make_redis(), prefix, clock, key=BudgetCaps(daily_usd=D(1)), reservation_ttl_s=60)
    subjects = bg.subjects(tenant="acme", user="u", key="key_crash")
    lost = await bg.reserve(subjects, D("0.90"))  # its instance "crashes"
    with pytest.raises(BudgetExceeded):
        await bg.reserve(subjects, D("0.20"))
    clock.advance(seconds=61)
    later = await bg.reserve(subjects, D("0.20"))  # the stale one was released first
    key = f"{prefix}:key:key_crash:d:20260310"
    assert await hash_of(make_redis(), key) == {"reserved": D("0.2")}
    # A late settle of the released reservation still charges, once.
    await bg.settle(lost, D("0.30"))
    await bg.settle(Reservation(lost.id, lost.worst_units, lost.slots), D("0.30"))
    await bg.settle(later, D("0.10"))
    assert await hash_of(make_redis(), key) == {"reserved": 0, "spent": D("0.4")}


async def test_redis_down_enforces_last_known_spend_and_replays_once(
    make_redis: MakeRedis, prefix: str, proxy: Proxy
) -> None:
    clock = DateClock(datetime(2026, 3, 10, 8, tzinfo=UTC))
    replayed: list[Crossing] = []
    bg = Budgets(
        make_redis(proxy.url),
        BudgetsSettings(user=BudgetCaps(daily_usd=D(1)), redis_timeout_s=0.3, down_backoff_s=0),
        clock=clock,
        prefix=prefix,
        on_crossing=replayed.extend,
    )
    subjects = bg.subjects(tenant="acme", user="eve", key="key_e")
    await bg.settle(await bg.reserve(subjects, D("0.40")), D("0.40"))
    in_flight = await bg.reserve(subjects, D("0.20"))  # reserved in Redis

    await proxy.stop()
    local = await bg.reserve(subjects, D("0.30"))  # 0.40 + 0.20 + 0.30 fits
    assert local.local
    with pytest.raises(BudgetExceeded):  # enforced from the last spend seen
        await bg.reserve(subjects, D("0.20"))
    assert await bg.settle(local, D("0.25")) == []
    assert await bg.settle(in_flight, D("0.15")) == []
    assert bg.queued == 2 and bg.errors >= 4
    assert (await bg.spend("user", "acme/eve"))["day"] == D("0.80")  # from memory

    await proxy.start()
    # The first successful call replays the queue (in the background).
    res = await bg.reserve(subjects, D("0.01"))
    await bg.aclose()
    assert bg.queued == 0
    key = f"{prefix}:user:acme/eve:d:20260310"
    r = make_redis()
    assert await hash_of(r, key) == {"spent": D("0.80"), "reserved": D("0.01")}
    assert [(c.scope, c.threshold) for c in replayed] == [("user", 0.5), ("user", 0.8)]
    # Replaying again (a retry whose first attempt reached Redis) charges nothing.
    await bg._settle_in_redis(local, 2_500_000_000)
    await bg._settle_in_redis(in_flight, 1_500_000_000)
    await bg.settle(res, D("0.01"))
    assert await hash_of(r, key) == {"spent": D("0.81"), "reserved": 0}


async def test_subjects_follow_overrides(make_redis: MakeRedis, prefix: str) -> None:
    overrides = Overrides()
    s = BudgetsSettings(user=BudgetCaps(daily_usd=D(5), monthly_usd=D(50)))
    bg = Budgets(make_redis(), s, overrides=overrides, prefix=prefix)
    overrides.set(
        {}, {("user", "acme/vip"): {"daily_usd": "100"}, ("key", "key_x"): {"monthly_usd": "1.5"}}
    )
    by_scope = {sub.scope: sub.caps for sub in bg.subjects(tenant="acme", user="vip", key="key_x")}
    assert by_scope["user"] == BudgetCaps(daily_usd=D(100), monthly_usd=D(50))
    assert by_scope["key"] == BudgetCaps(monthly_usd=D("1.5"))
    assert by_scope["tenant"] == BudgetCaps()
