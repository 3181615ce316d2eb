"""The queue's recurring jobs: which are scheduled, and the daily spend check."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from croniter import croniter

from strata.jobs.scheduled import FUNCTIONS, cron_jobs, evaluate_alerts
from strata.settings import Settings
from strata.storage.engine import make_engine
from strata.storage.repositories import usage as usage_repo
from strata.usage.recorder import UsageEvent


def _names(settings: Settings) -> dict[str, str]:
    return {c.function.__name__: c.cron for c in cron_jobs(settings)}


def test_cron_jobs(settings_factory: Callable[..., Settings]) -> None:
    plain = _names(settings_factory())
    assert set(plain) == {"reconcile_batches", "purge_retention"}
    assert set(_names(settings_factory(retention={"enabled": False}))) == {"reconcile_batches"}
    alerts = _names(settings_factory(alerts={"daily_alert_usd": "10", "daily_check_interval_s": 5}))
    assert alerts["evaluate_alerts"] == "* * * * * */5"
    assert all(croniter.is_valid(c) for c in alerts.values())
    assert {f.__name__ for f in FUNCTIONS} >= set(alerts)


async def test_evaluate_alerts_checks_todays_spend(database_url: str) -> None:
    day = datetime(2031, 3, 4, tzinfo=UTC)  # a day no other test writes usage on
    tenant = "alerts-job-" + uuid.uuid4().hex[:6]
    rows = [
        dataclasses.asdict(
            UsageEvent(
                request_id="r",
                tenant_id=tenant,
                user_id="u",
                key_id="k",
                endpoint="chat",
                alias="fake",
                cost_usd=cost,
                created_at=at,
            )
        )
        for at, cost in (
            (day - timedelta(minutes=5), Decimal("100")),  # the day before
            (day + timedelta(hours=1), Decimal("1.25")),
            (day + timedelta(hours=2), Decimal("2.5")),
        )
    ]
    seen: list[tuple[Decimal, datetime]] = []

    async def check(spent: Decimal, at: datetime) -> None:
        seen.append((spent, at))

    engine = make_engine(database_url, pool_size=1)
    try:
        await usage_repo.insert_batch(engine, rows)
        now = day + timedelta(hours=3)
        alerts = SimpleNamespace(clock=lambda: now, check_daily_spend=check)
        ctx: dict[str, Any] = {"runtime": SimpleNamespace(engine=engine, alerts=alerts)}
        assert await evaluate_alerts(ctx) == "3.7500000000"
    finally:
        await engine.dispose()
    assert seen == [(Decimal("3.75"), now)]
