"""Overrides in PostgreSQL: the repository, and the in-memory set refreshed from it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.limits import BudgetCaps, Budgets, BudgetsSettings, LimitsSettings, RateLimiter, RuleSet
from strata.limits.overrides import Overrides
from strata.storage.engine import make_engine
from strata.storage.repositories import limits as repo


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url, pool_size=1)
    yield eng
    await eng.dispose()


@pytest.fixture
def subject() -> str:
    return "t-" + uuid.uuid4().hex[:8]


async def test_limit_overrides_round_trip(engine: AsyncEngine, subject: str) -> None:
    assert await repo.get_limit_override(engine, "tenant", subject) is None
    await repo.set_limit_override(engine, "tenant", subject, RuleSet(requests_per_minute=600))
    assert await repo.get_limit_override(engine, "tenant", subject) == {"requests_per_minute": 600}
    # Setting again replaces the row (only the fields given this time are stored).
    rules = RuleSet(tokens_per_minute=90_000, requests_per_second=None, failure_mode="closed")
    await repo.set_limit_override(engine, "tenant", subject, rules)
    stored = await repo.get_limit_override(engine, "tenant", subject)
    assert stored == {
        "tokens_per_minute": 90_000,
        "requests_per_second": None,
        "failure_mode": "closed",
    }
    assert (await repo.all_limit_overrides(engine))[("tenant", subject)] == stored
    assert await repo.delete_limit_override(engine, "tenant", subject)
    assert not await repo.delete_limit_override(engine, "tenant", subject)
    assert ("tenant", subject) not in await repo.all_limit_overrides(engine)


async def test_budget_caps_round_trip(engine: AsyncEngine, subject: str) -> None:
    user = f"{subject}/alice"
    await repo.set_budget_caps(engine, "user", user, BudgetCaps(daily_usd=Decimal("2.50")))
    assert await repo.get_budget_caps(engine, "user", user) == {"daily_usd": "2.50"}
    assert (await repo.all_budget_caps(engine))[("user", user)] == {"daily_usd": "2.50"}
    assert await repo.delete_budget_caps(engine, "user", user)
    assert await repo.get_budget_caps(engine, "user", user) is None


async def test_scopes_are_checked(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="scope"):
        await repo.set_budget_caps(engine, "alias", "gpt", BudgetCaps(daily_usd=Decimal(1)))
    with pytest.raises(ValueError, match="scope"):
        await repo.set_limit_override(engine, "org", "x", RuleSet())


async def test_overrides_refresh_from_the_database(engine: AsyncEngine, subject: str) -> None:
    overrides = Overrides.from_engine(engine)
    limiter = RateLimiter(None, LimitsSettings(), overrides=overrides)
    budgets = Budgets(None, BudgetsSettings(), overrides=overrides)
    await overrides.refresh()
    version = overrides.version
    await repo.set_limit_override(engine, "user", f"{subject}/bob", RuleSet(requests_per_second=3))
    await repo.set_budget_caps(engine, "key", f"key_{subject}", BudgetCaps(monthly_usd=Decimal(7)))
    await overrides.refresh()
    assert overrides.version > version
    (lim,) = limiter.limits_for(tenant=subject, user="bob", key=None, alias=None)
    assert lim.limit == 3
    (key_sub, *_) = budgets.subjects(tenant=subject, user="bob", key=f"key_{subject}")
    assert key_sub.caps.monthly_usd == Decimal(7)
    await overrides.refresh()  # nothing changed: cached compilations stay valid
    assert overrides.version == version + 1
    await repo.delete_limit_override(engine, "user", f"{subject}/bob")
    await repo.delete_budget_caps(engine, "key", f"key_{subject}")


async def test_invalid_rows_are_ignored() -> None:
    overrides = Overrides()
    overrides.set(
        {("user", "a/b"): {"requests_per_second": -1}, ("user", "a/c"): {"requests_per_second": 4}},
        {("key", "k"): {"bogus": 1}},
    )
    assert overrides.rules("user", "a/b") is None
    assert overrides.rules("user", "a/c") == {"requests_per_second": 4}
    assert overrides.caps("key", "k") is None
