"""The exact cache end to end: hits, misses, bypasses, controls, tenants, streams."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx

from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread, usage_rows


def msg() -> list[dict[str, str]]:
    return [{"role": "user", "content": "cache me " + uuid.uuid4().hex}]


async def ask(
    srv: ServerThread,
    key: NewKey,
    messages: list[dict[str, str]],
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(
            srv.base_url + "/v1/chat/completions",
            json={"model": "fake", "messages": messages, "temperature": 0, **kw},
            headers={"authorization": f"Bearer {key.key}", **(headers or {})},
        )


async def test_repeat_is_a_hit_that_costs_nothing_and_records_the_saving(
    server: ServerThread, api_key: NewKey, database_url: str
) -> None:
    m = msg()
    first = await ask(server, api_key, m, {"x-request-id": (r1 := "c1-" + uuid.uuid4().hex)})
    second = await ask(server, api_key, m, {"x-request-id": (r2 := "c2-" + uuid.uuid4().hex)})
    assert first.headers["x-strata-cache"] == "miss"
    assert second.headers["x-strata-cache"] == "hit-exact"
    assert second.json() == first.json()
    [miss] = await usage_rows(database_url, r1)
    [hit] = await usage_rows(database_url, r2)
    assert miss.cache == "miss" and miss.cost_usd > 0
    assert hit.cache == "hit-exact" and hit.cost_usd == 0 and hit.saved_usd == miss.cost_usd
    assert hit.prompt_tokens == miss.prompt_tokens and hit.provider == "fake"


async def test_any_output_parameter_changes_the_key(server: ServerThread, api_key: NewKey) -> None:
    m = msg()
    assert (await ask(server, api_key, m)).headers["x-strata-cache"] == "miss"
    assert (await ask(server, api_key, m, max_tokens=3)).headers["x-strata-cache"] == "miss"
    assert (await ask(server, api_key, m, seed=7)).headers["x-strata-cache"] == "miss"
    assert (await ask(server, api_key, m, user="someone")).headers["x-strata-cache"] == "hit-exact"


async def test_sampled_requests_are_not_cached_unless_asked(
    server: ServerThread, api_key: NewKey
) -> None:
    m = msg()
    r = await ask(server, api_key, m, temperature=0.7)
    assert r.headers["x-strata-cache"] == "bypass"
    assert (await ask(server, api_key, m, {"x-strata-cache": "on"}, temperature=0.7)).headers[
        "x-strata-cache"
    ] == "miss"
    assert (await ask(server, api_key, m, {"x-strata-cache": "on"}, temperature=0.7)).headers[
        "x-strata-cache"
    ] == "hit-exact"
    assert (await ask(server, api_key, m, n=2)).headers["x-strata-cache"] == "bypass"


async def test_tenants_never_share_entries(
    server: ServerThread, api_key: NewKey, new_key: Callable[..., NewKey]
) -> None:
    m = msg()
    await ask(server, api_key, m)
    other = new_key(tenant="other-" + uuid.uuid4().hex[:6], user="eve")
    assert (await ask(server, other, m)).headers["x-strata-cache"] == "miss"
    # Same tenant, another user: shared within the tenant.
    colleague = new_key(tenant=api_key.tenant_id, user="bob-" + uuid.uuid4().hex[:6])
    assert (await ask(server, colleague, m)).headers["x-strata-cache"] == "hit-exact"


async def test_client_controls(server: ServerThread, api_key: NewKey) -> None:
    m = msg()
    assert (await ask(server, api_key, m, {"cache-control": "no-store"})).headers[
        "x-strata-cache"
    ] == "miss"
    assert (await ask(server, api_key, m)).headers["x-strata-cache"] == "miss"  # not stored
    assert (await ask(server, api_key, m, {"cache-control": "no-cache"})).headers[
        "x-strata-cache"
    ] == "miss"  # refreshed
    assert (await ask(server, api_key, m, {"x-strata-cache": "off"})).headers[
        "x-strata-cache"
    ] == "bypass"
    assert (await ask(server, api_key, m)).headers["x-strata-cache"] == "hit-exact"


async def test_streams_are_cached_and_replayed(server: ServerThread, api_key: NewKey) -> None:
    m = msg()
    first = await ask(server, api_key, m, stream=True)
    assert first.headers["x-strata-cache"] == "miss"
    replay = await ask(server, api_key, m, stream=True, stream_options={"include_usage": True})
    assert replay.headers["x-strata-cache"] == "hit-exact"

    def text(r: httpx.Response) -> str:
        import orjson

        out = ""
        for line in r.text.splitlines():
            if line.startswith("data: {"):
                chunk = orjson.loads(line[6:])
                for c in chunk.get("choices") or ():
                    out += c["delta"].get("content") or ""
        return out

    assert text(replay) == text(first) != ""
    assert '"usage":{"prompt_tokens"' in replay.text and replay.text.rstrip().endswith("[DONE]")
    # A streamed answer serves a later non-streamed request too.
    plain = await ask(server, api_key, m)
    assert plain.headers["x-strata-cache"] == "hit-exact"
    assert plain.json()["choices"][0]["message"]["content"] == text(first)


async def test_redis_down_means_uncached_not_failed(
    start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    import asyncio

    srv = await asyncio.to_thread(start_server, redis_url="redis://127.0.0.1:1/0")
    m = msg()
    for _ in range(2):
        r = await ask(srv, api_key, m)
        assert r.status_code == 200
        assert r.headers["x-strata-cache"] == "bypass"


def test_usage_shows_hit_rate_and_savings(
    server: ServerThread, new_key: Callable[..., NewKey]
) -> None:
    import asyncio

    key = new_key(tenant="cache-" + uuid.uuid4().hex[:6], user="ann")
    m = msg()

    async def run() -> None:
        for _ in range(4):  # one miss, three hits
            await ask(server, key, m)

    asyncio.run(run())
    r = httpx.get(server.base_url + "/v1/usage", headers={"authorization": f"Bearer {key.key}"})
    [row] = r.json()["data"]
    assert (row["requests"], row["cache_hits"], row["cache_hit_rate"]) == (4, 3, 0.75)
    assert float(row["saved_usd"]) == 3 * float(row["cost_usd"])


def test_cache_stats_and_purge_by_tenant(
    server: ServerThread,
    new_key: Callable[..., NewKey],
    redis_url: str,
    database_url: str,
    monkeypatch: Any,
) -> None:
    import asyncio

    from typer.testing import CliRunner

    from strata.cli.main import app

    tenant = "purge-" + uuid.uuid4().hex[:6]
    key = new_key(tenant=tenant, user="pat")
    m = msg()

    async def run() -> list[str]:
        return [(await ask(server, key, m)).headers["x-strata-cache"] for _ in range(2)]

    assert asyncio.run(run()) == ["miss", "hit-exact"]
    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    runner = CliRunner()
    stats = runner.invoke(app, ["cache", "stats"], catch_exceptions=False)
    assert stats.exit_code == 0 and tenant in stats.stdout
    purged = runner.invoke(app, ["cache", "purge", "--tenant", tenant], catch_exceptions=False)
    assert purged.exit_code == 0 and "purged 1 " in purged.stdout
    assert asyncio.run(run()) == ["miss", "hit-exact"]
