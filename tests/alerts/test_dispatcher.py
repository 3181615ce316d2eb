"""Alerts arrive exactly once per threshold and period, across instances, at a
local webhook receiver, a fake Slack and a local SMTP server; retries, failures
and their records; the request path never waits for delivery."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.alerts import Alert, AlertsSettings
from strata.alerts.dispatcher import AlertDispatcher
from strata.errors import ConfigError
from strata.storage.repositories import alerts as repo
from strata.storage.repositories import usage as usage_repo
from tests.alerts.conftest import Mailbox, Receiver, scope_id
from tests.conftest import free_port

SECRET = "xoxb-ALERT-TEST-SECRET-never-print"
FAST = {"attempts": 3, "backoff_s": 0.01, "max_backoff_s": 0.05}


def settings(*channels: dict[str, Any], **kw: Any) -> AlertsSettings:
    return AlertsSettings.model_validate({"channels": list(channels), "retry": FAST, **kw})


def all_channels(receiver: Receiver, smtp_port: int) -> AlertsSettings:
    return settings(
        {"type": "webhook", "name": "hook", "url": receiver.url("hook")},
        {"type": "slack", "name": "slack", "url": receiver.url("slack")},
        {
            "type": "email",
            "name": "mail",
            "host": "127.0.0.1",
            "port": smtp_port,
            "starttls": False,
            "from": "strata@example.test",
            "to": ["ops@example.test", "cfo@example.test"],
        },
    )


def budget_alert(sid: str, threshold: float = 0.8, **kw: Any) -> Alert:
    fields: dict[str, Any] = {
        "kind": "budget_threshold",
        "scope": "user",
        "scope_id": sid,
        "period": "month",
        "period_start": date(2026, 11, 1),
        "threshold": threshold,
        "spent": Decimal("80.50"),
        "cap": Decimal("100"),
        **kw,
    }
    return Alert(**fields)


async def rows(engine: AsyncEngine, sid: str) -> dict[str, repo.Delivery]:
    return {
        f"{r.channel}@{r.threshold:g}/{r.period}/{r.period_start}": r
        for r in await repo.list_deliveries(engine, scope_id=sid, limit=100)
    }


async def test_two_instances_deliver_exactly_once(
    receiver: Receiver,
    smtp: tuple[Mailbox, int],
    make_dispatcher: Callable[..., AlertDispatcher],
    engine: AsyncEngine,
) -> None:
    box, port = smtp
    cfg = all_channels(receiver, port)
    a, b = make_dispatcher(cfg), make_dispatcher(cfg)
    sid = scope_id()
    # Many requests on both instances cross the same threshold at once.
    await asyncio.gather(*(d.fire(budget_alert(sid)) for d in (a, b) for _ in range(5)))
    await asyncio.gather(a.wait_idle(), b.wait_idle())

    assert len(receiver.posts["hook"]) == 1
    body = receiver.posts["hook"][0]
    assert body["kind"] == "budget_threshold"
    assert body["scope_id"] == sid
    assert body["threshold"] == 0.8
    assert body["spent_usd"] == "80.50" and body["cap_usd"] == "100"
    assert body["dedupe_key"] == f"budget_threshold:user:{sid}:month:2026-11-01:0.8"
    assert receiver.posts["slack"] == [{"text": receiver.posts["slack"][0]["text"]}]
    assert "80%" in receiver.posts["slack"][0]["text"]
    assert len(box.messages) == 1
    msg = box.messages[0]
    assert sid in msg["Subject"] and "80%" in msg["Subject"]
    assert box.envelopes[0].rcpt_tos == ["ops@example.test", "cfo@example.test"]
    assert "$80.50 of $100.00" in msg.get_payload()

    recorded = await rows(engine, sid)
    assert sorted(r.channel for r in recorded.values()) == ["hook", "mail", "slack"]
    for r in recorded.values():
        assert (r.status, r.attempts, r.error) == ("sent", 1, None)
        assert r.delivered_at is not None
        assert r.payload["dedupe_key"] == body["dedupe_key"]

    # A later instance (fresh process memory) still finds the alert taken.
    c = make_dispatcher(cfg)
    await c.fire(budget_alert(sid))
    await c.wait_idle()
    assert len(receiver.posts["hook"]) == 1 and len(box.messages) == 1


async def test_redis_down_dedupes_through_postgres(
    receiver: Receiver,
    smtp: tuple[Mailbox, int],
    make_dispatcher: Callable[..., AlertDispatcher],
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    box, port = smtp
    cfg = all_channels(receiver, port)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    a, b = make_dispatcher(cfg, redis=dead), make_dispatcher(cfg, redis=dead)
    sid = scope_id()
    with caplog.at_level(logging.WARNING, logger="strata.alerts"):
        await asyncio.gather(*(d.fire(budget_alert(sid)) for d in (a, b) for _ in range(3)))
        await asyncio.gather(a.wait_idle(), b.wait_idle())
    assert len(receiver.posts["hook"]) == 1
    assert len(receiver.posts["slack"]) == 1
    assert len(box.messages) == 1
    assert {r.status for r in (await rows(engine, sid)).values()} == {"sent"}
    assert "Redis unavailable" in caplog.text


async def test_postgres_down_still_delivers_once(
    receiver: Receiver,
    make_dispatcher: Callable[..., AlertDispatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = settings({"type": "webhook", "name": "hook", "url": receiver.url("hook")})
    dead = f"postgresql://strata@127.0.0.1:{free_port()}/strata"
    a, b = make_dispatcher(cfg, database=dead), make_dispatcher(cfg, database=dead)
    with caplog.at_level(logging.WARNING, logger="strata.alerts"):
        await asyncio.gather(*(d.fire(budget_alert(scope_id())) for d in (a, b)))
    # Different alerts above; the same one below: Redis alone keeps it to one.
    sid = scope_id()
    await asyncio.gather(*(d.fire(budget_alert(sid)) for d in (a, b) for _ in range(3)))
    await asyncio.gather(a.wait_idle(), b.wait_idle())
    assert len(receiver.posts["hook"]) == 3
    assert sum(p["scope_id"] == sid for p in receiver.posts["hook"]) == 1
    assert "alert not recorded" in caplog.text


async def test_retries_until_the_receiver_recovers(
    receiver: Receiver,
    make_dispatcher: Callable[..., AlertDispatcher],
    engine: AsyncEngine,
) -> None:
    receiver.fail["flaky"] = 2
    d = make_dispatcher(
        settings({"type": "webhook", "name": "flaky", "url": receiver.url("flaky")})
    )
    sid = scope_id()
    await d.fire(budget_alert(sid))
    await d.wait_idle()
    assert len(receiver.posts["flaky"]) == 1
    (row,) = (await rows(engine, sid)).values()
    assert (row.status, row.attempts, row.error) == ("sent", 3, None)


async def test_failing_channels_are_recorded_without_secrets(
    receiver: Receiver,
    make_dispatcher: Callable[..., AlertDispatcher],
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.status["down"] = 500
    receiver.status["forbidden"] = 403
    monkeypatch.setenv("ALERT_TEST_TOKEN", SECRET)
    monkeypatch.setenv("ALERT_TEST_PASSWORD", SECRET)
    # The Slack URL carries its token, as real ones do.
    monkeypatch.setenv("ALERT_TEST_SLACK_URL", receiver.url("down") + f"?token={SECRET}")
    closed = free_port()
    cfg = settings(
        {
            "type": "webhook",
            "name": "down",
            "url": "env:ALERT_TEST_SLACK_URL",
            "bearer_token": "env:ALERT_TEST_TOKEN",
        },
        {"type": "slack", "name": "forbidden", "url": receiver.url("forbidden")},
        {
            "type": "email",
            "name": "nosmtp",
            "host": "127.0.0.1",
            "port": closed,
            "starttls": False,
            "username": "alerts",
            "password": "env:ALERT_TEST_PASSWORD",
            "from": "strata@example.test",
            "to": ["ops@example.test"],
        },
        {
            "type": "webhook",
            "name": "unreachable",
            "url": f"http://127.0.0.1:{closed}/{SECRET}",
        },
    )
    d = make_dispatcher(cfg)
    sid = scope_id()
    with caplog.at_level(logging.DEBUG, logger="strata.alerts"):
        await d.fire(budget_alert(sid))
        await d.wait_idle()
    got = {r.channel: r for r in (await rows(engine, sid)).values()}
    assert {c: (r.status, r.attempts) for c, r in got.items()} == {
        "down": ("failed", 3),
        "forbidden": ("failed", 1),  # a 4xx will not change on retry
        "nosmtp": ("failed", 3),
        "unreachable": ("failed", 3),
    }
    assert got["down"].error == "HTTP 500"
    assert got["forbidden"].error == "HTTP 403"
    assert got["nosmtp"].error and "ConnectionRefused" in got["nosmtp"].error
    assert got["unreachable"].error and "ClientConnectorError" in got["unreachable"].error
    for r in got.values():
        assert SECRET not in (r.error or "")
        assert SECRET not in str(r.payload)
        assert r.delivered_at is None
    assert "alert delivery failed" in caplog.text
    assert SECRET not in caplog.text
    assert not receiver.posts


async def test_each_threshold_and_period_alerts_once(
    receiver: Receiver,
    make_dispatcher: Callable[..., AlertDispatcher],
    engine: AsyncEngine,
) -> None:
    cfg = settings({"type": "webhook", "name": "hook", "url": receiver.url("hook")})
    a, b = make_dispatcher(cfg), make_dispatcher(cfg)
    sid = scope_id()
    nov = datetime(2026, 11, 15, 12, tzinfo=UTC)
    common: dict[str, Any] = {"scope": "user", "scope_id": sid, "cap": Decimal(10)}

    await a.check_budget(period="month", spent=Decimal("4.99"), at=nov, **common)
    await a.wait_idle()
    assert "hook" not in receiver.posts  # below 50%

    # 85%: the 50% and 80% thresholds, once each, whichever instance sees it.
    for d in (a, b, a, b):
        await d.check_budget(period="month", spent=Decimal("8.5"), at=nov, **common)
    # The day budget is another budget: its thresholds alert too.
    await b.check_budget(period="day", spent=Decimal("5"), at=nov, **common)
    # A new month: the same thresholds again.
    await a.check_budget(period="month", spent=Decimal("10"), at=nov + timedelta(days=20), **common)
    await asyncio.gather(a.wait_idle(), b.wait_idle())

    got = sorted((p["period"], p["period_start"], p["threshold"]) for p in receiver.posts["hook"])
    assert got == [
        ("day", "2026-11-15", 0.5),
        ("month", "2026-11-01", 0.5),
        ("month", "2026-11-01", 0.8),
        ("month", "2026-12-01", 0.5),
        ("month", "2026-12-01", 0.8),
        ("month", "2026-12-01", 1.0),
    ]
    assert len(await rows(engine, sid)) == 6


async def test_daily_deployment_spend_alerts_once_a_day(
    receiver: Receiver,
    make_dispatcher: Callable[..., AlertDispatcher],
    engine: AsyncEngine,
) -> None:
    cfg = settings(
        {"type": "webhook", "name": "hook", "url": receiver.url("hook")}, daily_alert_usd="25"
    )
    a, b = make_dispatcher(cfg), make_dispatcher(cfg)
    # A day no other test (or run against a kept database) uses.
    day = datetime(2031, 1, 1, tzinfo=UTC) + timedelta(days=int.from_bytes(os.urandom(2)))
    await a.check_daily_spend(Decimal("24.99"), day)
    await a.check_daily_spend(Decimal("25.00"), day + timedelta(hours=1))
    await a.wait_idle()
    await b.check_daily_spend(Decimal("31"), day + timedelta(hours=2))
    await a.check_daily_spend(Decimal("26"), day + timedelta(days=1))
    await asyncio.gather(a.wait_idle(), b.wait_idle())
    posts = sorted(receiver.posts["hook"], key=lambda p: p["period_start"])
    assert [(p["kind"], p["period_start"], p["spent_usd"]) for p in posts] == [
        ("daily_spend", day.date().isoformat(), "25.00"),
        ("daily_spend", (day + timedelta(days=1)).date().isoformat(), "26"),
    ]
    assert posts[0]["cap_usd"] == "25"


async def test_daily_watch_sums_recorded_usage(
    receiver: Receiver,
    make_dispatcher: Callable[..., AlertDispatcher],
    engine: AsyncEngine,
) -> None:
    # A day of its own, far from real traffic in the shared database.
    day = datetime(2040, 1, 1, tzinfo=UTC) + timedelta(days=int.from_bytes(os.urandom(2)))
    base: dict[str, Any] = {
        "tenant_id": "acme",
        "user_id": "alice",
        "key_id": "key_alerts",
        "endpoint": "chat",
        "alias": "fake",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "latency_ms": 1.0,
        "stream": False,
        "status": "ok",
        "status_code": 200,
    }
    await usage_repo.insert_batch(
        engine,
        [
            {
                **base,
                "id": uuid.uuid4(),
                "request_id": "alerts-watch",
                "created_at": at,
                "cost_usd": c,
            }
            for at, c in (
                (day - timedelta(minutes=1), Decimal(100)),  # yesterday: not counted
                (day + timedelta(hours=1), Decimal("12.5")),
                (day + timedelta(hours=2), Decimal("12.5")),
            )
        ],
    )
    cfg = settings(
        {"type": "webhook", "name": "hook", "url": receiver.url("hook")},
        daily_alert_usd="25",
        daily_check_interval_s=0.02,
    )
    clock = day + timedelta(hours=3)
    dispatchers = [make_dispatcher(cfg, clock=lambda: clock) for _ in range(2)]
    for d in dispatchers:
        d.start_daily_watch()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if receiver.posts.get("hook"):
            break
    await asyncio.sleep(0.1)  # more checks on both instances: still one alert
    (post,) = receiver.posts["hook"]
    assert (post["kind"], post["period_start"], post["spent_usd"]) == (
        "daily_spend",
        day.date().isoformat(),
        "25.0000000000",
    )


async def test_fire_does_not_wait_for_delivery(
    receiver: Receiver,
    make_dispatcher: Callable[..., AlertDispatcher],
    engine: AsyncEngine,
) -> None:
    receiver.gate["slow"] = asyncio.Event()
    d = make_dispatcher(settings({"type": "webhook", "name": "slow", "url": receiver.url("slow")}))
    sid = scope_id()
    await d.fire(budget_alert(sid))
    await asyncio.sleep(0.2)
    assert "slow" not in receiver.posts  # fire returned; delivery still in flight
    receiver.gate["slow"].set()
    await d.wait_idle()
    assert len(receiver.posts["slow"]) == 1


async def test_aclose_cancels_stuck_deliveries(
    receiver: Receiver,
    make_dispatcher: Callable[..., AlertDispatcher],
    engine: AsyncEngine,
) -> None:
    receiver.gate["stuck"] = asyncio.Event()
    d = make_dispatcher(
        settings({"type": "webhook", "name": "stuck", "url": receiver.url("stuck")})
    )
    sid = scope_id()
    await d.fire(budget_alert(sid))
    await asyncio.sleep(0.2)
    await d.aclose(grace_s=0.1)
    assert not d._tasks
    (row,) = (await rows(engine, sid)).values()
    assert (row.status, row.attempts) == ("pending", 0)
    await d.fire(budget_alert(sid, threshold=1.0))  # closed: ignored
    assert not d._tasks


async def test_send_reports_each_channel(
    receiver: Receiver,
    smtp: tuple[Mailbox, int],
    make_dispatcher: Callable[..., AlertDispatcher],
) -> None:
    box, port = smtp
    receiver.status["slack"] = 404
    d = make_dispatcher(all_channels(receiver, port))
    assert await d.send(Alert.test()) == {"hook": None, "slack": "HTTP 404", "mail": None}
    assert await d.send(Alert.test("only mail"), channel="mail") == {"mail": None}
    assert receiver.posts["hook"][0]["kind"] == "test"
    assert len(box.messages) == 2
    assert "only mail" in box.messages[1].get_payload()


async def test_missing_secret_fails_at_start_with_the_fix(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALERT_TEST_UNSET", raising=False)
    cfg = settings({"type": "slack", "name": "ops", "url": "env:ALERT_TEST_UNSET"})
    with pytest.raises(ConfigError) as err:
        AlertDispatcher(None, engine, cfg)
    assert "alerts.channels.ops.url" in err.value.message
    assert "export ALERT_TEST_UNSET" in err.value.message
