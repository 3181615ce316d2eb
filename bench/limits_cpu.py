"""Client CPU and wall time of the rate-limit and budget checks, per request.

    .venv/bin/python -m bench.limits_cpu [--iterations 5000] [--redis-url URL] [--loop asyncio]

Drives ``strata.limits.Gate`` against a local Redis (STRATA_REDIS_URL, else
redis://127.0.0.1:6379/0) in this process, sequentially, on uvloop like
``strata serve``. Settings: the defaults (10 requests/second per user) plus a user
daily budget cap, so every request runs both the rate check and the reserve;
requests rotate over many users so all are allowed. The Redis timeout is widened
to 2 s: a stall of a shared machine must not switch a run to the fallback (a run
in which any Redis call failed is reported void). Cases:

- ``ping``: one Redis PING, the floor of any round trip with redis-py;
- ``admit``: ``Gate.admit`` alone (one round trip: rate check + reserve);
- ``admit+finish``: admit, then finish, waiting for finish's background round trip
  (settle), so its CPU counts: everything the checks cost a request;
- ``admit+finish, tpm``: the same with tokens-per-minute limits on the user and
  the key (finish also corrects the token estimate, in the same round trip);
- ``separate calls``: the same work without the gate (``RateLimiter.check``,
  ``Budgets.reserve``, ``Budgets.settle``: three round trips), for comparison.

Per case: the median and mean client CPU (``time.process_time``) per request, and
the median wall time. The issue's target: at most 300 us of CPU per request for
all checks (``admit+finish``), in one round trip before the call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis

from strata.limits import (
    BudgetCaps,
    Budgets,
    BudgetsSettings,
    Gate,
    LimitsSettings,
    RateLimiter,
    RuleSet,
)

TARGET_CPU_US = 300.0
TIMEOUT_S = 2.0
USERS = 2000  # 5000 requests over 2000 users: a few per user, well under 10/s each
WORST = Decimal("0.0001")
ACTUAL = Decimal("0.00004")


def make_gate(r: aioredis.Redis, prefix: str, *, tpm: bool) -> Gate:
    user = RuleSet(requests_per_second=10)  # the default
    key = RuleSet()
    if tpm:
        user = RuleSet(requests_per_second=10, tokens_per_minute=10_000_000)
        key = RuleSet(tokens_per_minute=10_000_000)
    # A wide timeout: a stall of this (shared) machine must not measure the fallback.
    limits = LimitsSettings(user=user, key=key, redis_timeout_s=TIMEOUT_S)
    rate = RateLimiter(r, limits, prefix=f"{prefix}:rl")
    caps = BudgetCaps(daily_usd=Decimal(1000))
    settings = BudgetsSettings(user=caps, redis_timeout_s=TIMEOUT_S)
    budgets = Budgets(r, settings, prefix=f"{prefix}:budget")
    return Gate(rate, budgets)


async def measure(
    n: int, step: Callable[[int], Awaitable[Any]]
) -> tuple[list[float], list[float], float]:
    """Per-iteration CPU and wall (us), and the mean CPU over the whole run."""
    for i in range(min(200, n)):  # warm up: connections, scripts, caches
        await step(n + i)
    cpu, wall = [], []
    clock, cpu_clock = time.perf_counter, time.process_time
    start = cpu_clock()
    for i in range(n):
        c0, w0 = cpu_clock(), clock()
        await step(i)
        wall.append((clock() - w0) * 1e6)
        cpu.append((cpu_clock() - c0) * 1e6)
    return cpu, wall, (cpu_clock() - start) * 1e6 / n


async def close(g: Gate) -> None:
    """Close ``g``; a run in which Redis failed (fallbacks measured) is void."""
    await g.aclose()
    errors = (g.rate.errors if g.rate else 0) + (g.budgets.errors if g.budgets else 0)
    if errors:
        raise SystemExit(f"{errors} Redis errors during the run: results void")


def request(i: int) -> dict[str, Any]:
    return {
        "tenant": "bench",
        "user": f"u{i % USERS}",
        "key": f"key_{i % 97}",
        "alias": "gpt-4o-mini",
        "tokens": 1200,
        "worst_case_usd": WORST,
    }


async def run(url: str, n: int) -> list[tuple[str, list[float], list[float], float]]:
    r = aioredis.from_url(url)
    prefix = f"bench:limits:{uuid.uuid4().hex[:8]}"
    out = []
    try:
        await r.ping()

        out.append(("ping", *await measure(n, lambda i: r.ping())))

        g = make_gate(r, f"{prefix}:a", tpm=False)
        held = []

        async def admit_only(i: int) -> None:
            held.append(await g.admit(**request(i)))

        out.append(("admit", *await measure(n, admit_only)))
        for i, adm in enumerate(held):
            g.finish(adm, tokens=1000, cost_usd=ACTUAL)
            if i % 50 == 49:
                await g.drain()
        await close(g)

        for name, tpm in (("admit+finish", False), ("admit+finish, tpm", True)):
            g = make_gate(r, f"{prefix}:{name}", tpm=tpm)

            async def pair(i: int, g: Gate = g) -> None:
                adm = await g.admit(**request(i))
                g.finish(adm, tokens=1000, cost_usd=ACTUAL)
                await g.drain()  # its background round trip counts too

            out.append((name, *await measure(n, pair)))
            await close(g)

        g = make_gate(r, f"{prefix}:sep", tpm=False)
        rate, budgets = g.rate, g.budgets
        assert rate is not None and budgets is not None

        async def separate(i: int) -> None:
            req = request(i)
            d = await rate.check(
                tenant=req["tenant"], user=req["user"], key=req["key"], alias=req["alias"]
            )
            assert d.allowed
            subjects = budgets.subjects(tenant=req["tenant"], user=req["user"], key=req["key"])
            res = await budgets.reserve(subjects, WORST)
            await budgets.settle(res, ACTUAL)

        out.append(("separate calls", *await measure(n, separate)))
        await close(g)
    finally:
        keys = [k async for k in r.scan_iter(match=prefix + ":*", count=5000)]
        for i in range(0, len(keys), 1000):
            await r.delete(*keys[i : i + 1000])
        await r.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", "-n", type=int, default=5000)
    parser.add_argument(
        "--redis-url", default=os.environ.get("STRATA_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        results = uvloop.run(run(args.redis_url, args.iterations))
    else:
        results = asyncio.run(run(args.redis_url, args.iterations))

    print(f"limits CPU per request, {args.iterations} iterations, {args.loop}, {args.redis_url}")
    print(f"{'case':<20} {'cpu med us':>10} {'cpu mean us':>11} {'wall med us':>11}")
    for name, cpu, wall, mean in results:
        print(
            f"{name:<20} {statistics.median(cpu):>10.0f} {mean:>11.0f} "
            f"{statistics.median(wall):>11.0f}"
        )
    full = {name: statistics.median(cpu) for name, cpu, _, _ in results}["admit+finish"]
    verdict = "PASS" if full <= TARGET_CPU_US else "FAIL"
    print(f"target: admit+finish <= {TARGET_CPU_US:.0f} us CPU per request: {verdict}")


if __name__ == "__main__":
    main()
