"""Forecast from usage records: real PostgreSQL with planted rows, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from strata.cli import app
from strata.planner.catalog import load_table
from strata.planner.forecast import forecast, parse_growth
from strata.storage.engine import make_engine
from strata.storage.repositories import usage as usage_repo
from strata.storage.repositories.usage_traffic import TrafficRow, traffic_by_model

D = Decimal
LLAMA_70B = "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"


def row(tenant: str, when: datetime, alias: str, provider: str, model: str, **kw: Any) -> Any:
    return {
        "id": uuid.uuid4(),
        "request_id": "req-" + uuid.uuid4().hex,
        "created_at": when,
        "tenant_id": tenant,
        "user_id": kw.get("user", "someone"),
        "key_id": "key_fc",
        "endpoint": "chat",
        "alias": alias,
        "provider": provider,
        "model": model,
        "prompt_tokens": kw.get("prompt", 100),
        "completion_tokens": kw.get("completion", 50),
        "cost_usd": D(kw.get("cost", "0.001")),
        "latency_ms": 10.0,
        "ttft_ms": None,
        "stream": kw.get("stream", False),
        "status": "ok",
        "status_code": 200,
        "error_type": None,
        "cache": kw.get("cache"),
    }


def plant(database_url: str, rows: list[Any]) -> None:
    async def run() -> None:
        engine = make_engine(database_url, pool_size=1)
        try:
            await usage_repo.insert_batch(engine, rows)
        finally:
            await engine.dispose()

    asyncio.run(run())


def read(database_url: str, tenant: str, days: int) -> list[TrafficRow]:
    async def run() -> list[TrafficRow]:
        engine = make_engine(database_url, pool_size=1)
        end = datetime.now(UTC) + timedelta(seconds=1)
        try:
            return await traffic_by_model(
                engine, start=end - timedelta(days=days), end=end, tenant_id=tenant
            )
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture
def tenant(database_url: str) -> str:
    """A tenant with planted traffic over the last 10 days (plus noise outside it)."""
    t = "fc-" + uuid.uuid4().hex[:12]
    now = datetime.now(UTC)
    rows = []
    # chat-70b: cache off; prompt sizes 100, 100, 100, 200, 300, 300 (3 repeat an
    # earlier size); two users, which the forecast must not split.
    for i, size in enumerate([100, 100, 100, 200, 300, 300]):
        rows.append(
            row(
                t,
                now - timedelta(days=i),
                "chat-70b",
                "together",
                LLAMA_70B,
                prompt=size,
                stream=i >= 4,
                user=f"user-{i % 2}",
            )
        )
    # gpt: cache on; 3 misses and 1 hit (a hit costs nothing).
    for i in range(3):
        rows.append(
            row(
                t,
                now - timedelta(hours=i),
                "gpt",
                "openai",
                "gpt-3.5-turbo",
                cost="0.002",
                cache="miss",
            )
        )
    rows.append(row(t, now, "gpt", "openai", "gpt-3.5-turbo", cost="0", cache="hit-exact"))
    # Outside the window, and another tenant: neither counts.
    rows.append(row(t, now - timedelta(days=11), "chat-70b", "together", LLAMA_70B, cost="99"))
    rows.append(row("other-" + t, now, "chat-70b", "together", LLAMA_70B, cost="42"))
    plant(database_url, rows)
    return t


def test_traffic_by_model_groups_by_alias_and_deployment(database_url: str, tenant: str) -> None:
    rows = read(database_url, tenant, 10)
    assert [(r.alias, r.provider, r.model) for r in rows] == [
        ("chat-70b", "together", LLAMA_70B),
        ("gpt", "openai", "gpt-3.5-turbo"),
    ]
    chat, gpt = rows
    assert (chat.requests, chat.prompt_tokens, chat.completion_tokens) == (6, 1100, 300)
    assert chat.cost_usd == D("0.006")
    assert (chat.cache_hits, chat.cache_misses, chat.streamed) == (0, 0, 2)
    assert (chat.uncached, chat.distinct_prompt_sizes) == (6, 3)
    assert chat.repeated_prompt_size_share == 0.5
    assert chat.unstreamed_cost_usd == D("0.004")
    assert (gpt.requests, gpt.cache_hits, gpt.cache_misses) == (4, 1, 3)
    assert gpt.cost_usd == D("0.006")


def test_forecast_projects_and_recommends(database_url: str, tenant: str) -> None:
    fc = forecast(read(database_url, tenant, 10), 10, parse_growth("3x"), load_table())
    # 30 days / 10 measured, x3 growth: x9.
    assert fc.by_alias() == {"chat-70b": D("0.054"), "gpt": D("0.054")}
    assert fc.total == D("0.108")
    recs = {(r.alias, r.strategy): r for r in fc.recommendations}
    assert set(recs) == {("chat-70b", "cache"), ("chat-70b", "model"), ("gpt", "batch")}
    cache = recs[("chat-70b", "cache")]
    assert cache.saving == D("0.027") and cache.upper_bound  # 50% of $0.054
    assert "identical prompts are at most 50% of its traffic" in cache.text
    # 9,900 prompt + 2,700 completion tokens: $0.011574 at 70B prices, $0.002268 at 8B.
    assert recs[("chat-70b", "model")].saving == D("0.009306")
    # OpenAI's batch API, half off the non-streamed $0.006 x 9.
    assert recs[("gpt", "batch")].saving == D("0.027")
    # gpt's cache found a repeat: no cache advice for it.
    assert not any(n.startswith("gpt: the cache") for n in fc.notes)
    assert fc.recommendations == sorted(fc.recommendations, key=lambda r: -r.saving)


def traffic(alias: str, provider: str, model: str, **kw: Any) -> TrafficRow:
    """A TrafficRow: every request streamed and uncached, no prompt size repeated."""
    n = kw.pop("requests")
    base: dict[str, Any] = {
        "cache_hits": 0,
        "cache_misses": 0,
        "streamed": n,
        "unstreamed_cost_usd": D(0),
        "uncached": n,
        "distinct_prompt_sizes": n,
    }
    return TrafficRow(alias, provider, model, requests=n, **{**base, **kw})


def test_forecast_recommends_self_hosting_when_it_pays() -> None:
    big = traffic(
        "bulk",
        "together",
        LLAMA_70B,
        requests=100_000,
        prompt_tokens=700_000_000,
        completion_tokens=300_000_000,
        cost_usd=D(5000),
    )
    fc = forecast([big], 30, D(1), load_table())
    (hosted,) = [r for r in fc.recommendations if r.strategy == "self_host"]
    # 1B tokens need two H100s at 525.6M each: $3,000 a month instead of $5,000.
    assert hosted.own_cost == D(3000)
    assert hosted.saving == D(2000)


def test_a_cache_that_finds_nothing_is_not_recommended() -> None:
    quiet = traffic(
        "q",
        "openai",
        "gpt-3.5-turbo",
        requests=10,
        prompt_tokens=1000,
        completion_tokens=500,
        cost_usd=D(1),
        cache_misses=10,
        distinct_prompt_sizes=1,
    )
    fc = forecast([quiet], 30, D(1), load_table())
    assert not [r for r in fc.recommendations if r.strategy == "cache"]
    assert any("q: the cache is on and found no identical prompt" in n for n in fc.notes)


def test_a_provider_named_otherwise_matches_by_its_host() -> None:
    row = traffic(
        "a", "tg", LLAMA_70B, requests=1, prompt_tokens=10**6, completion_tokens=0, cost_usd=D(1)
    )
    assert not forecast([row], 30, D(1), load_table()).recommendations
    urls = {"tg": "https://api.together.xyz/v1"}
    (rec,) = forecast([row], 30, D(1), load_table(), urls).recommendations
    # 1M prompt tokens: $0.88 at 70B prices, $0.18 at 8B.
    assert rec.strategy == "model" and rec.saving == D("0.70")


@pytest.mark.parametrize(
    ("text", "value"), [("10x", "10"), ("1.5", "1.5"), ("150%", "1.5"), (" 2X ", "2")]
)
def test_parse_growth(text: str, value: str) -> None:
    assert parse_growth(text) == D(value)


@pytest.mark.parametrize("text", ["0x", "-1", "lots", "x"])
def test_parse_growth_rejects(text: str) -> None:
    with pytest.raises(Exception, match="--growth"):
        parse_growth(text)


@pytest.fixture
def cli_env(
    database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("STRATA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    monkeypatch.setenv("STRATA_DATA_DIR", str(tmp_path / "data"))
    yield


def test_cli_forecast(cli_env: None, tenant: str) -> None:
    runner = CliRunner()
    args = ["cost", "forecast", "--days", "10", "--growth", "3x", "--tenant", tenant]
    result = runner.invoke(app, [*args, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total_usd"] == "0.108"
    assert [r["strategy"] for r in data["recommendations"]] == ["cache", "batch", "model"]
    assert "user" not in result.stdout  # never by end user
    table = runner.invoke(app, args, catch_exceptions=False)
    assert table.exit_code == 0
    assert "chat-70b" in table.stdout and "Recommendations" in table.stdout
    md = runner.invoke(app, [*args, "-f", "md"], catch_exceptions=False)
    assert "| **total** | | | | | **$0.11** |" in md.stdout
    bad = runner.invoke(app, ["cost", "forecast", "--growth", "none"])
    assert bad.exit_code == 2 and "--growth" in bad.stderr
