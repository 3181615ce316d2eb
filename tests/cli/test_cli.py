"""The ``strata`` command against the test PostgreSQL and Redis.

STRATA_DATABASE_URL and STRATA_REDIS_URL point the CLI at the test services, so
nothing embedded starts. Most tests run the Typer app in-process; one runs the
installed console script.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from typer.testing import CliRunner, Result

from strata.cli import app
from strata.security.auth import REVOKED_CHANNEL
from strata.security.keys import KEY_PREFIX, hash_key
from strata.storage.engine import make_engine
from strata.storage.repositories import keys as key_repo
from strata.storage.repositories import usage as usage_repo

SECRET = "sk-live-9f3c-CLI-TEST-SECRET-do-not-print"
DB_PASSWORD = "dbpass-CLI-TEST-SECRET"


@pytest.fixture
def cli_env(
    database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith("STRATA_"):
            monkeypatch.delenv(name)
    env = {
        "STRATA_DATABASE_URL": database_url,
        "STRATA_REDIS_URL": redis_url,
        "STRATA_DATA_DIR": str(tmp_path / "data"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Iterator[Any]:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), catch_exceptions=False)

    yield invoke


def tenant_id() -> str:
    return "t-" + uuid.uuid4().hex[:16]


def create(cli: Any, tenant: str, user: str = "u", *extra: str) -> dict[str, Any]:
    result = cli("keys", "create", "--user", user, "--tenant", tenant, "--json", *extra)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_keys_create_prints_a_key_once(
    cli: Any, cli_env: dict[str, str], database_url: str
) -> None:
    tenant = tenant_id()
    data = create(cli, tenant, "alice", "--name", "laptop")
    # The URLs were set: nothing embedded was started under the data dir.
    data_dir = Path(cli_env["STRATA_DATA_DIR"])
    assert not (data_dir / "postgres").exists()
    assert not (data_dir / "redis").exists()
    assert data["key"].startswith(KEY_PREFIX)
    assert data["id"].startswith("key_")
    assert (data["tenant"], data["user"], data["admin"]) == (tenant, "alice", False)

    async def lookup() -> Any:
        engine = make_engine(database_url, pool_size=1)
        try:
            return await key_repo.find_active(engine, hash_key(data["key"]))
        finally:
            await engine.dispose()

    principal = asyncio.run(lookup())
    assert principal is not None
    assert (principal.key_id, principal.tenant_id, principal.user_id) == (
        data["id"],
        tenant,
        "alice",
    )


def test_keys_create_human_output(cli: Any) -> None:
    result = cli("keys", "create", "--user", "bob", "--tenant", tenant_id(), "--admin")
    assert result.exit_code == 0, result.output
    assert KEY_PREFIX in result.stdout
    assert "admin" in result.stdout


def test_keys_list_shows_prefix_never_the_key(cli: Any) -> None:
    tenant = tenant_id()
    a = create(cli, tenant, "alice")
    b = create(cli, tenant, "bob", "--admin")
    other = create(cli, tenant_id(), "carol")

    result = cli("keys", "list", "--tenant", tenant, "--json")
    assert result.exit_code == 0, result.output
    for new in (a, b, other):
        assert new["key"] not in result.output
    listed = {k["id"]: k for k in json.loads(result.stdout)}
    assert set(listed) == {a["id"], b["id"]}  # only this tenant
    for new in (a, b):
        entry = listed[new["id"]]
        assert new["key"].startswith(entry["prefix"].rstrip("…"))
        assert len(entry["prefix"].rstrip("…")) < len(new["key"]) // 2
        assert entry["tenant"] == tenant
        assert entry["revoked_at"] is None
    assert listed[b["id"]]["admin"] is True
    assert listed[a["id"]]["user"] == "alice"

    table = cli("keys", "list", "--tenant", tenant)
    assert table.exit_code == 0, table.output
    assert a["key"] not in table.output


def test_keys_revoke_then_revoke_again(cli: Any, redis_url: str) -> None:
    tenant = tenant_id()
    new = create(cli, tenant)
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(REVOKED_CHANNEL)
        subscribed = pubsub.get_message(timeout=5)
        assert subscribed is not None
        assert subscribed["type"] == "subscribe"

        result = cli("keys", "revoke", new["id"])
        assert result.exit_code == 0, result.output
        assert new["id"] in result.stdout

        # Running instances hear about it and evict the key from their caches.
        deadline = time.monotonic() + 10
        announced = None
        while announced is None and time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=1)
            if msg and msg["type"] == "message":
                announced = msg["data"].decode()
        assert announced == hash_key(new["key"])
    finally:
        pubsub.close()
        client.close()

    listed = json.loads(cli("keys", "list", "--tenant", tenant, "--json").stdout)
    assert listed[0]["revoked_at"] is not None

    again = cli("keys", "revoke", new["id"])
    assert again.exit_code != 0
    assert f"no active key {new['id']}" in again.stderr
    missing = cli("keys", "revoke", "key_doesnotexist")
    assert missing.exit_code != 0
    assert "key_doesnotexist" in missing.stderr


def _insert_usage(database_url: str, rows: list[dict[str, Any]]) -> None:
    async def run() -> None:
        engine = make_engine(database_url, pool_size=1)
        try:
            await usage_repo.insert_batch(engine, rows)
        finally:
            await engine.dispose()

    asyncio.run(run())


def usage_row(tenant: str, when: datetime, alias: str, user: str, cost: str, **kw: Any) -> Any:
    return {
        "id": uuid.uuid4(),
        "request_id": "req-" + uuid.uuid4().hex,
        "created_at": when,
        "tenant_id": tenant,
        "user_id": user,
        "key_id": "key_cli",
        "endpoint": "chat",
        "alias": alias,
        "provider": "fake",
        "model": "fake-1",
        "prompt_tokens": kw.get("prompt_tokens", 100),
        "completion_tokens": kw.get("completion_tokens", 20),
        "cost_usd": Decimal(cost),
        "latency_ms": 10.0,
        "ttft_ms": None,
        "stream": False,
        "status": kw.get("status", "ok"),
        "status_code": 200,
        "error_type": None,
    }


def test_usage_json_sums_cost_by_day_model_and_user(cli: Any, database_url: str) -> None:
    tenant = tenant_id()
    now = datetime.now(UTC)
    yesterday = now - timedelta(days=1)
    long_ago = now - timedelta(days=30)
    _insert_usage(
        database_url,
        [
            usage_row(tenant, now, "llama-70b", "alice", "0.0001000000"),
            usage_row(tenant, now, "llama-70b", "alice", "0.0002500000", status="error"),
            usage_row(tenant, now, "gpt-3.5-turbo", "alice", "0.0030000000"),
            usage_row(tenant, now, "llama-70b", "bob", "0.0000100000"),
            usage_row(tenant, yesterday, "llama-70b", "alice", "1.5000000000"),
            usage_row(tenant, long_ago, "llama-70b", "alice", "99.0000000000"),
            usage_row(tenant_id(), now, "llama-70b", "alice", "42.0000000000"),  # other tenant
        ],
    )
    result = cli("usage", "--tenant", tenant, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    got = {
        (r["date"], r["model"], r["user"]): (r["requests"], r["errors"], Decimal(r["cost_usd"]))
        for r in out["data"]
    }
    today, yday = now.date().isoformat(), yesterday.date().isoformat()
    assert got == {
        (today, "llama-70b", "alice"): (2, 1, Decimal("0.00035")),
        (today, "gpt-3.5-turbo", "alice"): (1, 0, Decimal("0.003")),
        (today, "llama-70b", "bob"): (1, 0, Decimal("0.00001")),
        (yday, "llama-70b", "alice"): (1, 0, Decimal("1.5")),
    }
    assert Decimal(out["total_cost_usd"]) == Decimal("1.50336")
    row = next(r for r in out["data"] if (r["date"], r["user"]) == (today, "alice"))
    assert row["prompt_tokens"] in (100, 200)

    only_bob = json.loads(cli("usage", "--tenant", tenant, "--user", "bob", "--json").stdout)
    assert [(r["user"], r["requests"]) for r in only_bob["data"]] == [("bob", 1)]
    one_model = json.loads(
        cli("usage", "--tenant", tenant, "--model", "gpt-3.5-turbo", "--json").stdout
    )
    assert Decimal(one_model["total_cost_usd"]) == Decimal("0.003")
    today_only = json.loads(cli("usage", "--tenant", tenant, "--days", "1", "--json").stdout)
    assert {r["date"] for r in today_only["data"]} == {today}

    table = cli("usage", "--tenant", tenant)
    assert table.exit_code == 0, table.output
    assert "1.503360" in table.output


def write_config(tmp_path: Path, data: Any, name: str = "strata.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def valid_config() -> dict[str, Any]:
    return {
        "providers": {
            "fake": {"type": "fake", "price": {"input_per_1m": "1", "output_per_1m": "2"}},
            "openai": {
                "type": "openai_compat",
                "base_url": "https://api.openai.com/v1",
                "api_key": "env:STRATA_CLI_TEST_OPENAI_KEY",
            },
        },
        "models": {
            "fake": {"provider": "fake", "model": "fake-1"},
            "gpt": {"provider": "openai", "model": "gpt-3.5-turbo"},
        },
    }


def test_config_check_valid(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_CLI_TEST_OPENAI_KEY", SECRET)
    path = write_config(tmp_path, valid_config())
    result = cli("config", "check", str(path))
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout
    assert "2 providers" in result.stdout
    assert SECRET not in result.output


@pytest.mark.parametrize(
    ("change", "where"),
    [
        pytest.param(
            lambda c: c["models"]["fake"].update(provider="nope"),
            "models.fake.deployments.0.provider",
            id="unknown-provider",
        ),
        pytest.param(
            lambda c: c["providers"]["fake"].update(type="no_such_type"),
            "providers.fake.type",
            id="unknown-provider-type",
        ),
        pytest.param(
            lambda c: c["providers"]["fake"].update(replyy="typo"),
            # Provider options are reported under their provider: "providers.fake:"
            # then "  replyy: Extra inputs are not permitted".
            "providers.fake: 1 problem(s) replyy:",
            id="unknown-provider-option",
        ),
        pytest.param(
            lambda c: c.update(prot=8080),
            "prot",
            id="unknown-top-level-key",
        ),
        pytest.param(
            lambda c: c["providers"]["openai"].update(api_key="env:STRATA_CLI_TEST_UNSET"),
            "STRATA_CLI_TEST_UNSET",
            id="unset-secret",
        ),
        pytest.param(
            lambda c: c["providers"]["openai"].update(api_key=SECRET),
            "providers.openai.api_key",
            id="literal-secret",
        ),
    ],
)
def test_config_check_invalid(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Any, where: str
) -> None:
    monkeypatch.setenv("STRATA_CLI_TEST_OPENAI_KEY", "x")
    monkeypatch.delenv("STRATA_CLI_TEST_UNSET", raising=False)
    config = valid_config()
    change(config)
    path = write_config(tmp_path, config)
    result = cli("config", "check", str(path))
    assert result.exit_code == 1, result.output
    assert "invalid" in result.stderr
    assert where in " ".join(result.stderr.split())  # Rich may wrap long lines
    assert SECRET not in result.output


def test_config_check_bad_yaml(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("models: {x: [\n")
    result = cli("config", "check", str(path))
    assert result.exit_code == 1
    assert path.name in result.stderr


def test_config_check_uses_strata_config(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = valid_config()
    config["models"]["fake"]["provider"] = "nope"
    monkeypatch.setenv("STRATA_CONFIG", str(write_config(tmp_path, config)))
    result = cli("config", "check")
    assert result.exit_code == 1
    assert "models.fake.deployments.0.provider" in result.stderr


def test_config_show_never_prints_secrets(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("STRATA_CLI_TEST_OPENAI_KEY", SECRET)
    monkeypatch.setenv(
        "STRATA_DATABASE_URL", f"postgresql://strata:{DB_PASSWORD}@127.0.0.1:5432/strata"
    )
    monkeypatch.setenv("STRATA_REDIS_URL", f"redis://:{DB_PASSWORD}-redis@127.0.0.1:6379/0")
    path = write_config(tmp_path, valid_config())
    result = cli("config", "show", str(path))
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert DB_PASSWORD not in result.output
    shown = json.loads(result.stdout)
    # What is shown is the reference, and the rest of the configuration.
    assert shown["providers"]["openai"]["api_key"] == "env:STRATA_CLI_TEST_OPENAI_KEY"
    assert shown["providers"]["fake"]["price"]["input_per_1m"] == "1"
    assert set(shown["models"]) == {"fake", "gpt"}
    assert shown["database_url"].startswith("postgresql://strata:")
    assert "127.0.0.1:5432/strata" in shown["database_url"]


def test_config_show_invalid_file(cli: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, {"bogus": True})
    result = cli("config", "show", str(path))
    assert result.exit_code == 1
    assert "bogus" in result.stderr


def test_commands_report_a_bad_config_without_a_traceback(cli: Any, tmp_path: Path) -> None:
    path = write_config(tmp_path, {"bogus": True})
    result = cli("keys", "list", "--config", str(path))
    assert result.exit_code == 2
    assert "bogus" in result.stderr
    assert "Traceback" not in result.output


def test_installed_console_script(cli_env: dict[str, str]) -> None:
    script = Path(sys.executable).with_name("strata")
    if not script.exists():
        pytest.skip("the strata console script is not installed in this environment")
    tenant = tenant_id()
    env = {**os.environ, **cli_env, "COLUMNS": "200"}
    created = subprocess.run(
        [str(script), "keys", "create", "--user", "dave", "--tenant", tenant, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    data = json.loads(created.stdout)
    assert data["key"].startswith(KEY_PREFIX)
    listed = subprocess.run(
        [str(script), "keys", "list", "--tenant", tenant, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert [k["id"] for k in json.loads(listed.stdout)] == [data["id"]]
    assert data["key"] not in listed.stdout


def test_models_shows_deployments_circuits_and_shared_latency(
    cli: Any, redis_url: str, tmp_path: Path
) -> None:
    import json as _json

    from strata.routing.breaker import PREFIX
    from strata.routing.dispatch import LATENCY_KEY

    a, b = "m-" + uuid.uuid4().hex[:8], "n-" + uuid.uuid4().hex[:8]
    cfg = tmp_path / "strata.yaml"
    cfg.write_text(
        "providers:\n  f: {type: fake}\n"
        f"models:\n  {a}: {{provider: f, model: x}}\n  {b}: {{provider: f, model: y}}\n"
    )
    with redis.Redis.from_url(redis_url) as r:
        r.set(f"{PREFIX}{a}|f|x:open", "1", px=5000)
        r.hset(LATENCY_KEY, f"{b}|f|y", "12.5")
        try:
            result = cli("models", "--json", "--config", str(cfg))
        finally:
            r.delete(f"{PREFIX}{a}|f|x:open")
            r.hdel(LATENCY_KEY, f"{b}|f|y")
    assert result.exit_code == 0, result.output
    rows = {row["alias"]: row for row in _json.loads(result.stdout)}
    assert rows[a]["circuit"] == "open" and rows[b]["circuit"] == "closed"
    assert rows[b]["latency_ms"] == "12.5" and rows[a]["latency_ms"] == ""
