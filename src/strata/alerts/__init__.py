"""Spend alerts: thresholds of budgets and a deployment-wide daily amount, sent
once per threshold and period to webhooks, Slack and email.

    dispatcher = AlertDispatcher(redis, engine, settings.alerts)
    await dispatcher.check_budget(scope="user", scope_id="acme/alice", period="month",
                                  spent=spent, cap=cap)   # returns at once
    await dispatcher.aclose()

``strata.settings`` imports ``strata.alerts.config``, so this package imports the
dispatcher (which needs settings, through credentials) only when asked for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from strata.alerts.config import (
    AlertRetry,
    AlertsSettings,
    EmailChannel,
    SlackChannel,
    WebhookChannel,
)
from strata.alerts.events import Alert, crossed, period_start

if TYPE_CHECKING:
    from strata.alerts.dispatcher import AlertDispatcher


def __getattr__(name: str) -> Any:
    if name == "AlertDispatcher":
        from strata.alerts.dispatcher import AlertDispatcher

        return AlertDispatcher
    raise AttributeError(name)


__all__ = [
    "Alert",
    "AlertDispatcher",
    "AlertRetry",
    "AlertsSettings",
    "EmailChannel",
    "SlackChannel",
    "WebhookChannel",
    "crossed",
    "period_start",
]
