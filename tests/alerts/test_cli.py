"""strata alerts test | list, against the test PostgreSQL and Redis and local
receivers. The CLI runs in a thread (it has its own event loop) while the
receivers keep serving on the test loop."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner, Result

from strata.alerts.config import AlertsSettings
from strata.cli import alerts_cmd
from strata.settings import Settings
from tests.alerts.conftest import Mailbox, Receiver


@pytest.fixture
def run_cli(
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine: AsyncEngine,
) -> Any:
    for name in list(os.environ):
        if name.startswith("STRATA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    monkeypatch.setenv("STRATA_DATA_DIR", str(tmp_path / "data"))

    async def run(alerts: dict[str, Any], *args: str) -> Result:
        cfg = tmp_path / "strata.yaml"
        if "alerts" in Settings.model_fields:
            cfg.write_text(yaml.safe_dump({"alerts": alerts}))
        else:  # until the settings tree carries `alerts`
            cfg.write_text("{}")
            parsed = AlertsSettings.model_validate(alerts)
            monkeypatch.setattr(alerts_cmd, "alerts_settings", lambda _s: parsed)
        return await asyncio.to_thread(
            CliRunner().invoke, alerts_cmd.app, [*args, "--config", str(cfg)]
        )

    return run


async def test_alerts_test_and_list(
    run_cli: Any, receiver: Receiver, smtp: tuple[Mailbox, int]
) -> None:
    box, port = smtp
    receiver.status["broken"] = 500
    alerts = {
        "retry": {"attempts": 2, "backoff_s": 0.01},
        "channels": [
            {"type": "webhook", "name": "hook", "url": receiver.url("hook")},
            {"type": "slack", "name": "broken", "url": receiver.url("broken")},
            {
                "type": "email",
                "name": "mail",
                "host": "127.0.0.1",
                "port": port,
                "starttls": False,
                "from": "strata@example.test",
                "to": ["ops@example.test"],
            },
        ],
    }
    res = await run_cli(alerts, "test", "--message", "hello from the CLI test")
    assert res.exit_code == 1, res.output  # one channel failed
    assert "hook" in res.output and "sent" in res.output
    assert "broken" in res.output and "HTTP 500" in res.output
    assert receiver.posts["hook"][0]["message"] == "hello from the CLI test"
    assert len(box.messages) == 1

    res = await run_cli(alerts, "test", "--channel", "mail")
    assert res.exit_code == 0, res.output
    assert len(box.messages) == 2 and len(receiver.posts["hook"]) == 1

    res = await run_cli(alerts, "test", "--channel", "nope")
    assert res.exit_code == 2 and "configured: hook, broken, mail" in res.output

    res = await run_cli(alerts, "list", "--limit", "500", "--json")
    assert res.exit_code == 0, res.output
    mine = [r for r in json.loads(res.output) if r["message"] == "hello from the CLI test"]
    assert sorted((r["channel"], r["status"], r["attempts"]) for r in mine) == [
        ("broken", "failed", 2),
        ("hook", "sent", 1),
        ("mail", "sent", 1),
    ]
    res = await run_cli(alerts, "list", "-n", "3")
    assert res.exit_code == 0 and "test" in res.output


async def test_alerts_test_without_channels(run_cli: Any) -> None:
    res = await run_cli({}, "test")
    assert res.exit_code == 2 and "no alert channels configured" in res.output
