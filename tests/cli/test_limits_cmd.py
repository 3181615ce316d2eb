"""strata limits show|set|clear and strata budgets show|set|clear against real services."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from strata.cli.main import app
from strata.limits.budget import Budgets
from strata.limits.config import BudgetsSettings, LimitsSettings
from strata.storage.repositories.keys import NewKey


@pytest.fixture
def cli(
    database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., Any]:
    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Any:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke


@pytest.fixture
def tenant() -> str:
    return "clim-" + uuid.uuid4().hex[:8]


def shown(cli: Callable[..., Any], *args: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(cli(*args, "--json").stdout)["data"]
    return data


def test_limits_set_show_clear(cli: Callable[..., Any], tenant: str) -> None:
    defaults = LimitsSettings()
    subject = f"{tenant}/alice"
    [user, ten] = shown(cli, "limits", "show", "--user", subject)
    assert (user["scope"], user["subject"]) == ("user", subject)
    assert (ten["scope"], ten["subject"]) == ("tenant", tenant)
    assert user["override"] is None
    assert user["effective"] == defaults.user.model_dump(mode="json")

    out = cli("limits", "set", "--user", subject, "--rps", "5", "--rpm", "0").stdout
    assert subject in out
    [user, _] = shown(cli, "limits", "show", "--user", subject)
    assert user["override"] == {"requests_per_second": 5, "requests_per_minute": None}
    assert user["effective"]["requests_per_second"] == 5

    # set keeps the fields it is not given.
    cli("limits", "set", "--user", subject, "--tpm", "100", "--failure-mode", "closed")
    [user, _] = shown(cli, "limits", "show", "--user", subject)
    assert user["override"] == {
        "requests_per_second": 5,
        "requests_per_minute": None,
        "tokens_per_minute": 100,
        "failure_mode": "closed",
    }
    table = cli("limits", "show", "--user", subject).stdout
    assert "5*" in table and "100*" in table and "closed*" in table and subject in table

    assert "removed" in cli("limits", "clear", "--user", subject).stdout
    [user, _] = shown(cli, "limits", "show", "--user", subject)
    assert user["override"] is None
    assert user["effective"] == defaults.user.model_dump(mode="json")
    assert "had no limit override" in cli("limits", "clear", "--user", subject).stdout


def test_limits_show_key_shows_key_user_and_tenant(
    cli: Callable[..., Any], new_key: Callable[..., NewKey], tenant: str
) -> None:
    key = new_key(tenant=tenant, user="kim")
    cli("limits", "set", key.id, "--burst", "2.5")
    cli("limits", "set", "--tenant", tenant, "--rpm", "600")
    views = shown(cli, "limits", "show", key.id)
    assert [(v["scope"], v["subject"]) for v in views] == [
        ("key", key.id),
        ("user", f"{tenant}/kim"),
        ("tenant", tenant),
    ]
    assert views[0]["effective"]["burst"] == 2.5
    assert views[2]["effective"]["requests_per_minute"] == 600
    cli("limits", "clear", key.id)
    cli("limits", "clear", "--tenant", tenant)


def test_alias_limits(cli: Callable[..., Any]) -> None:
    alias = "alias-" + uuid.uuid4().hex[:6]
    cli("limits", "set", "--alias", alias, "--tpm", "1000")
    [view] = shown(cli, "limits", "show", "--alias", alias)
    assert view["effective"]["tokens_per_minute"] == 1000
    cli("limits", "clear", "--alias", alias)


def test_bad_input(cli: Callable[..., Any], tenant: str) -> None:
    bad = cli("limits", "set", "--tenant", tenant, "--failure-mode", "sideways", code=2)
    assert "failure_mode" in bad.output
    assert "burst" in cli("limits", "set", "--tenant", tenant, "--burst", "1000", code=2).output
    cli("limits", "show", code=2)
    cli("limits", "show", "--tenant", tenant, "--alias", "x", code=2)
    assert "TENANT/USER" in cli("limits", "show", "--user", "nobody", code=2).output
    assert "no key" in cli("limits", "show", "key_doesnotexist", code=1).output
    cli("limits", "set", "--tenant", tenant, code=2)
    assert "--daily" in cli("budgets", "set", "--tenant", tenant, "--daily", "lots", code=2).output
    assert (
        "soft_pct" in cli("budgets", "set", "--tenant", tenant, "--soft-pct", "101", code=2).output
    )
    cli("budgets", "show", "--alias", "x", code=2)
    # Nothing was stored by the failed commands.
    [view] = shown(cli, "limits", "show", "--tenant", tenant)
    assert view["override"] is None


def test_budgets_set_show_clear_with_spend(
    cli: Callable[..., Any], new_key: Callable[..., NewKey], redis_url: str, tenant: str
) -> None:
    key = new_key(tenant=tenant, user="sam")

    async def spend() -> None:
        client = aioredis.from_url(redis_url)
        try:
            budgets = Budgets(client, BudgetsSettings())
            subjects = budgets.subjects(tenant=tenant, user="sam", key=key.id)
            res = await budgets.reserve(subjects, Decimal("1"))
            await budgets.settle(res, Decimal("0.25"))
        finally:
            await client.aclose()

    asyncio.run(spend())
    cli("budgets", "set", "--user", f"{tenant}/sam", "--daily", "2", "--monthly", "$30")
    cli("budgets", "set", "--user", f"{tenant}/sam", "--soft-pct", "50")
    views = shown(cli, "budgets", "show", key.id)
    assert [v["scope"] for v in views] == ["key", "user", "tenant"]
    for v in views:
        assert v["day"]["spent_usd"] == v["month"]["spent_usd"] == "0.25"
    user = views[1]
    assert user["override"] == {"daily_usd": "2", "monthly_usd": "30", "soft_pct": 50.0}
    assert user["day"]["cap_usd"] == "2" and user["day"]["remaining_usd"] == "1.75"
    assert user["month"]["soft_limit_usd"] == "15"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    assert user["day"]["resets_at"] == f"{tomorrow.isoformat()}T00:00:00Z"
    assert user["month"]["resets_at"].endswith("-01T00:00:00Z")

    table = cli("budgets", "show", "--user", f"{tenant}/sam").stdout
    assert "$2*" in table and "$0.25" in table and "$1.75" in table

    # 'none': no cap for that period, even against a default.
    cli("budgets", "set", "--user", f"{tenant}/sam", "--daily", "none")
    [user, _] = shown(cli, "budgets", "show", "--user", f"{tenant}/sam")
    assert user["day"]["cap_usd"] is None and user["month"]["cap_usd"] == "30"

    assert "removed" in cli("budgets", "clear", "--user", f"{tenant}/sam").stdout
    [user, _] = shown(cli, "budgets", "show", "--user", f"{tenant}/sam")
    assert user["override"] is None and user["day"]["spent_usd"] == "0.25"
