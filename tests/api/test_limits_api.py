"""Rate limits and budgets through the API: real Redis shared by two real servers."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from strata.providers.base import estimate_prompt_tokens
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread, usage_rows

BODY: dict[str, Any] = {
    "model": "fake",
    "messages": [{"role": "user", "content": "count me"}],
    "max_tokens": 50,
}


async def post(
    http: httpx.AsyncClient, srv: ServerThread, key: NewKey, body: dict[str, Any] | None = None
) -> httpx.Response:
    return await http.post(
        srv.base_url + "/v1/chat/completions",
        json=body or BODY,
        headers={"authorization": f"Bearer {key.key}"},
    )


def limited(start_server: Callable[..., ServerThread], **limits: Any) -> ServerThread:
    return start_server(limits={"user": limits})


async def test_every_response_carries_openai_rate_limit_headers(
    start_server: Callable[..., ServerThread], new_key: Callable[..., NewKey]
) -> None:
    # The shipped defaults: 10 requests/s per user.
    srv = await asyncio.to_thread(start_server, limits={})
    key = new_key(tenant="rl-" + uuid.uuid4().hex[:6])
    async with httpx.AsyncClient(timeout=30) as http:
        first = await post(http, srv, key)
        started = time.monotonic()
        replies = await asyncio.gather(*(post(http, srv, key) for _ in range(30)))
        elapsed = time.monotonic() - started
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "10"
    assert int(first.headers["x-ratelimit-remaining-requests"]) == 9
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    # Ten at once fit the default burst; the rest wait for the bucket to refill
    # (ten more per second the burst took to arrive: a loaded machine is slow).
    codes = [r.status_code for r in replies]
    assert set(codes) == {200, 429}
    assert codes.count(200) <= 11 + math.ceil(10 * elapsed), (codes.count(200), elapsed)
    denied = next(r for r in replies if r.status_code == 429)
    err = denied.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert "requests per second" in err["message"] or "request" in err["message"]
    assert int(denied.headers["retry-after"]) >= 1
    assert denied.headers["x-ratelimit-remaining-requests"] == "0"


async def test_two_instances_share_one_limit(
    start_server: Callable[..., ServerThread], new_key: Callable[..., NewKey]
) -> None:
    a = await asyncio.to_thread(limited, start_server, requests_per_second=10)
    b = await asyncio.to_thread(limited, start_server, requests_per_second=10)
    key = new_key(tenant="rl2-" + uuid.uuid4().hex[:6])
    # One second drains the initial burst (a bucket of 10), then 5 s are counted by
    # when each request was sent.
    warmup_s, window_s = 1.5, 5.0
    t0 = time.monotonic()
    counted = {200: 0, 429: 0}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=16)) as http:

        async def hammer(srv: ServerThread) -> None:
            while (sent := time.monotonic()) < t0 + warmup_s + window_s:
                r = await post(http, srv, key)
                if sent >= t0 + warmup_s:
                    counted[r.status_code] = counted.get(r.status_code, 0) + 1

        await asyncio.gather(*(hammer(srv) for srv in (a, b) for _ in range(4)))
    assert counted[429] > counted[200]  # the load was well over the limit
    # 10/s for 5 s across both instances, not 10/s each.
    assert 49 <= counted[200] <= 51, (counted, a.runtime.rate.errors, b.runtime.rate.errors)


async def test_concurrent_requests_never_overshoot_a_budget(
    start_server: Callable[..., ServerThread],
    new_key: Callable[..., NewKey],
    database_url: str,
) -> None:
    srv = await asyncio.to_thread(start_server)
    quota = srv.runtime.chat.quota
    worst = quota.worst_case("fake", "chat", estimate_prompt_tokens(BODY), BODY["max_tokens"])
    cap = worst * 10  # ten calls' worst case
    tenant = "bud-" + uuid.uuid4().hex[:6]
    key = new_key(tenant=tenant, user="bo")
    await asyncio.to_thread(_set_user_cap, srv, tenant, "bo", cap)
    async with httpx.AsyncClient(timeout=30) as http:
        ids = ["b-" + uuid.uuid4().hex for _ in range(50)]
        replies = await asyncio.gather(
            *(
                http.post(
                    srv.base_url + "/v1/chat/completions",
                    json=BODY,
                    headers={"authorization": f"Bearer {key.key}", "x-request-id": rid},
                )
                for rid in ids
            )
        )
    ok = [r for r in replies if r.status_code == 200]
    over = [r for r in replies if r.status_code == 429]
    assert len(ok) >= 10 and len(ok) + len(over) == 50
    err = over[0].json()["error"]
    assert err["type"] == "insufficient_quota" and "daily" in err["message"].lower()
    assert "resets" in err["message"]
    rows = [row for rid in ids for row in await usage_rows(database_url, rid)]
    recorded = sum((Decimal(r.cost_usd) for r in rows), Decimal(0))
    assert recorded <= cap
    await srv.acall(srv.runtime.gate.drain())  # the settles are in
    spent = await srv.acall(srv.runtime.budgets.spend("user", f"{tenant}/bo"))
    assert spent["day"] == recorded


def _set_user_cap(srv: ServerThread, tenant: str, user: str, cap: Decimal) -> None:
    from strata.limits.config import BudgetCaps
    from strata.storage.repositories import limits as repo

    caps = BudgetCaps(daily_usd=cap)
    srv.call(repo.set_budget_caps(srv.runtime.engine, "user", f"{tenant}/{user}", caps))
    srv.call(srv.runtime.overrides.refresh())


@pytest.mark.parametrize("status", [429, 402])
async def test_over_budget_status_is_configurable(
    start_server: Callable[..., ServerThread], new_key: Callable[..., NewKey], status: int
) -> None:
    srv = await asyncio.to_thread(
        start_server,
        budgets={"over_budget_status": status, "tenant": {"daily_usd": "0.0000001"}},
    )
    key = new_key(tenant="tiny-" + uuid.uuid4().hex[:6])
    async with httpx.AsyncClient(timeout=30) as http:
        r = await post(http, srv, key)
    assert r.status_code == status
    assert r.json()["error"]["type"] == "insufficient_quota"
    assert int(r.headers["retry-after"]) >= 1


async def test_redis_down_limits_fall_back_to_this_instance(
    start_server: Callable[..., ServerThread], new_key: Callable[..., NewKey]
) -> None:
    srv = await asyncio.to_thread(
        start_server,
        redis_url="redis://127.0.0.1:1/0",
        limits={"user": {"requests_per_second": 2, "burst": 1}},
    )
    key = new_key(tenant="down-" + uuid.uuid4().hex[:6])
    async with httpx.AsyncClient(timeout=30) as http:
        codes = [(await post(http, srv, key)).status_code for _ in range(4)]
    # Fail-open: enforced in this instance's memory, never a 500.
    assert codes[:2] == [200, 200] and 429 in codes[2:]
    assert srv.runtime.rate.errors >= 1


async def test_fail_closed_limit_rejects_while_redis_is_down(
    start_server: Callable[..., ServerThread], new_key: Callable[..., NewKey]
) -> None:
    srv = await asyncio.to_thread(
        start_server,
        redis_url="redis://127.0.0.1:1/0",
        limits={"user": {"requests_per_second": 100, "failure_mode": "closed"}},
    )
    key = new_key(tenant="closed-" + uuid.uuid4().hex[:6])
    async with httpx.AsyncClient(timeout=30) as http:
        r = await post(http, srv, key)
    assert r.status_code == 503 and "retry-after" in r.headers
