"""Alert settings: secrets are references, choices are unambiguous."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from strata.alerts import Alert, AlertsSettings, crossed, period_start

MAIL = {"type": "email", "name": "m", "host": "smtp", "from": "a@x.test", "to": ["b@x.test"]}


def parse(**kw: Any) -> AlertsSettings:
    return AlertsSettings.model_validate(kw)


def test_defaults_and_parsing() -> None:
    s = parse(
        thresholds=[1.0, 0.5, 0.8, 0.5],
        channels=[
            {"type": "slack", "name": "s", "url": "env:SLACK_WEBHOOK_URL"},
            {**MAIL, "password": "file:/run/secrets/smtp", "username": "u"},
        ],
    )
    assert s.thresholds == [0.5, 0.8, 1.0]
    assert s.channels[1].from_addr == "a@x.test"  # type: ignore[union-attr]
    assert s.retry.attempts == 5
    assert parse().channels == [] and parse().daily_alert_usd is None


@pytest.mark.parametrize(
    ("channel", "needle"),
    [
        ({**MAIL, "username": "u", "password": "hunter2"}, "references"),
        ({**MAIL, "password": "env:P"}, "password needs username"),
        ({**MAIL, "ssl": True}, "not both"),
        ({**MAIL, "to": []}, "at least 1"),
        ({"type": "webhook", "name": "w", "url": "hooks.example"}, "http(s) URL"),
        ({"type": "webhook", "name": "w", "url": "http://x", "bearer_token": "t"}, "references"),
        ({"type": "pager", "name": "p"}, "does not match any of the expected tags"),
        ({"type": "slack", "name": "s", "url": "http://x", "extra": 1}, "Extra inputs"),
    ],
)
def test_rejects(channel: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse(channels=[channel])
    assert needle in str(err.value)
    assert "hunter2" not in str(err.value).split("input_value")[0]


def test_unique_names_and_sane_thresholds() -> None:
    hook = {"type": "webhook", "name": "dup", "url": "http://x"}
    with pytest.raises(ValidationError, match="unique: dup"):
        parse(channels=[hook, hook])
    with pytest.raises(ValidationError, match="fractions"):
        parse(thresholds=[80])


def test_alert_keys_periods_and_crossing() -> None:
    a = Alert(
        kind="budget_threshold",
        scope="tenant",
        scope_id="acme",
        period="day",
        period_start=date(2026, 11, 28),
        threshold=0.5,
        spent=Decimal("5"),
        cap=Decimal("10"),
    )
    assert a.dedupe_key == "budget_threshold:tenant:acme:day:2026-11-28:0.5"
    assert "50%" in a.text and "$5.00 of $10.00" in a.text
    t1, t2 = Alert.test(), Alert.test()
    assert t1.dedupe_key != t2.dedupe_key
    at = datetime(2026, 11, 28, 23, 59, tzinfo=UTC)
    assert period_start("day", at) == date(2026, 11, 28)
    assert period_start("month", at) == date(2026, 11, 1)
    assert crossed(Decimal("8"), Decimal("10"), [0.5, 0.8, 1.0]) == [0.5, 0.8]
    assert crossed(Decimal("1"), Decimal("0"), [0.5]) == []
