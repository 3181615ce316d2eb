"""GDPR export and erasure, and the retention purge (real PostgreSQL, Redis, server).

PII is planted through real requests (exact-cached "fake", semantic-cached
"fake-sem") and a budget override; after erasure every text/jsonb column of every
table, every Redis key and value, and every file under the data dir is searched
for it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from strata.cli.main import app
from strata.limits.config import BudgetCaps
from strata.privacy import retention
from strata.privacy import subject as privacy
from strata.storage.engine import make_engine
from strata.storage.models import UsageRecord
from strata.storage.repositories import limits as limits_repo
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread

TEXT_TYPES = ("text", "character varying", "character", "jsonb", "json", "ARRAY")


@asynccontextmanager
async def services(database_url: str, redis_url: str) -> AsyncIterator[tuple[AsyncEngine, Any]]:
    engine = make_engine(database_url, pool_size=2)
    redis = aioredis.from_url(redis_url)
    try:
        yield engine, redis
    finally:
        await redis.aclose()
        await engine.dispose()


def call(server: ServerThread, method: str, path: str, key: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, server.base_url + path, headers=headers, timeout=60)


async def db_hits(engine: AsyncEngine, needle: str) -> list[str]:
    """table.column of every text-like column holding ``needle``."""
    async with engine.connect() as conn:
        cols = (
            await conn.execute(
                text(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND data_type = ANY(:types) "
                    "AND table_name IN (SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_type = 'BASE TABLE')"
                ),
                {"types": list(TEXT_TYPES)},
            )
        ).all()
        hits = []
        for table, col in cols:
            n = (
                await conn.execute(
                    text(f'SELECT count(*) FROM "{table}" WHERE "{col}"::text LIKE :p'),
                    {"p": f"%{needle}%"},
                )
            ).scalar_one()
            if n:
                hits.append(f"{table}.{col}")
    assert len(cols) > 20  # the search did look at the schema
    return hits


async def redis_hits(redis: Any, needle: str) -> list[str]:
    hits = []
    raw = needle.encode()
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        values: list[bytes] = [key]
        if kind == "string":
            values.append(await redis.get(key) or b"")
        elif kind == "hash":
            for f, v in (await redis.hgetall(key)).items():
                values += [f, v]
        elif kind == "set":
            values += list(await redis.smembers(key))
        elif kind == "zset":
            values += list(await redis.zrange(key, 0, -1))
        elif kind == "list":
            values += list(await redis.lrange(key, 0, -1))
        if any(raw in v for v in values if isinstance(v, bytes)):
            hits.append(key.decode())
    return hits


def file_hits(root: Path, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


async def wait_usage(engine: AsyncEngine, tenant: str, user: str, want: int) -> list[Any]:
    for _ in range(200):
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(UsageRecord).where(
                        UsageRecord.tenant_id == tenant, UsageRecord.user_id == user
                    )
                )
            ).all()
        if len(rows) >= want:
            return list(rows)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{want} usage rows never arrived")


async def test_export_then_erase_leaves_no_trace(
    server: ServerThread,
    new_key: Callable[..., NewKey],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
    database_url: str,
    redis_url: str,
) -> None:
    tenant = "gdpr-" + uuid.uuid4().hex[:8]
    user = "subject-" + uuid.uuid4().hex[:12]
    phrase = "planted-phrase-" + uuid.uuid4().hex
    end_user = "end-user-" + uuid.uuid4().hex[:12]
    key = new_key(tenant=tenant, user=user)
    admin = new_key(tenant=tenant, user="dpo", is_admin=True)
    # Lookups while the embedding model loads are misses that store nothing: wait.
    embedder = server.runtime.providers["local-embed"]
    for _ in range(1200):
        if embedder.ready():
            break
        await asyncio.sleep(0.1)
    client = sdk(server, key.key)
    for alias in ("fake", "fake-sem"):
        for _ in range(2):  # the second is a cache hit
            await asyncio.to_thread(
                client.chat.completions.create,
                model=alias,
                messages=[
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": f"My name is {phrase}. Remember it."},
                ],
                temperature=0,
                user=end_user,
            )
    await server.acall(server.runtime.chat.cache.drain())
    await server.acall(server.runtime.chat.semantic.drain())
    async with services(database_url, redis_url) as (engine, redis):
        await limits_repo.set_budget_caps(
            engine, "user", f"{tenant}/{user}", BudgetCaps(daily_usd=Decimal("3"))
        )
        await wait_usage(engine, tenant, user, 4)
        # The semantic entry is written in the background too.
        for _ in range(100):
            async with engine.connect() as conn:
                n = (
                    await conn.execute(
                        text("SELECT count(*) FROM semantic_cache WHERE user_id = :u"),
                        {"u": user},
                    )
                ).scalar_one()
            if n:
                break
            await asyncio.sleep(0.1)
        async with engine.connect() as conn:
            cost = select(func.sum(UsageRecord.cost_usd), func.count()).where(
                UsageRecord.tenant_id == tenant
            )
            cost_before, n_before = (await conn.execute(cost)).one()
        assert n_before >= 4

        r = await asyncio.to_thread(
            call, server, "GET", f"/v1/admin/privacy/{tenant}/{user}/export", admin.key
        )
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["subject"] == {"tenant_id": tenant, "user_id": user}
        assert [k["id"] for k in data["api_keys"]] == [key.id]
        assert "key_hash" not in json.dumps(data) and key.key not in json.dumps(data)
        assert len(data["usage_records"]) == 4
        assert any(phrase in (e["query"] or "") for e in data["semantic_cache"])
        assert data["exact_cache"], "the exact cache entry is exported"
        assert {(o["kind"], o["scope"]) for o in data["overrides"]} == {("budgets", "user")}
        assert any(f"user:{tenant}/{user}" in k for k in data["budget_spend"])
        # The OpenAI `user` field names the end user on each usage record (exported
        # in clear), but is stored encrypted: no table holds it in plaintext.
        assert {u["end_user"] for u in data["usage_records"]} == {end_user}
        assert not any("end_user_enc" in u or "end_user_hmac" in u for u in data["usage_records"])
        assert await db_hits(engine, end_user) == []
        assert await db_hits(engine, user)
        assert await redis_hits(redis, user)

        r = await asyncio.to_thread(
            call, server, "POST", f"/v1/admin/privacy/{tenant}/{user}/erase", admin.key
        )
        assert r.status_code == 200, r.text
        receipt = r.json()
        counts = receipt["counts"]
        assert counts["users"] == 1 and counts["api_keys"] == 1
        assert counts["usage_records_pseudonymised"] == 4
        assert counts["semantic_cache"] >= 1 and counts["exact_cache"] >= 1
        assert counts["overrides"] == 1 and counts["redis_limit_keys"] >= 1

        for needle in (user, phrase, end_user, key.id):
            assert await db_hits(engine, needle) == [], needle
            assert await redis_hits(redis, needle) == [], needle
            assert file_hits(server.settings.data_dir, needle) == [], needle
        async with engine.connect() as conn:
            cost_after, n_after = (await conn.execute(cost)).one()
            pseudonyms = (
                await conn.execute(
                    select(UsageRecord.user_id, UsageRecord.request_id, UsageRecord.trace_id)
                    .where(UsageRecord.tenant_id == tenant, UsageRecord.user_id != "dpo")
                    .distinct()
                )
            ).all()
            entry = (
                await conn.execute(
                    text(
                        "SELECT actor, target, details FROM audit_log "
                        "WHERE action = 'privacy.erase' AND tenant_id = :t"
                    ),
                    {"t": tenant},
                )
            ).one()
        assert (cost_after, n_after) == (cost_before, n_before)
        assert len(pseudonyms) == 1 and pseudonyms[0][0].startswith("erased-")
        assert pseudonyms[0][1:] == ("erased", None)
        assert entry.actor == admin.id
        assert entry.target == f"subject:{receipt['subject_hash']}"
        assert entry.details["receipt"] == receipt["id"]

        # The erased key no longer works.
        with pytest.raises(openai.AuthenticationError):
            await asyncio.to_thread(
                client.chat.completions.create,
                model="fake",
                messages=[{"role": "user", "content": "hello?"}],
            )

        # Idempotent: nothing left to find, still a receipt.
        again = await privacy.erase(engine, redis, tenant, user, data_dir=server.settings.data_dir)
        assert again.id != receipt["id"] and not any(again.counts.values())
        assert again.subject_hash != receipt["subject_hash"]  # salted anew: unlinkable


async def test_admin_api_tenant_boundary(
    server: ServerThread, new_key: Callable[..., NewKey]
) -> None:
    tenant = "gdpr-" + uuid.uuid4().hex[:8]
    victim = new_key(tenant=tenant, user="carol")
    foreign_admin = new_key(tenant="gdpr-other-" + uuid.uuid4().hex[:6], is_admin=True)
    plain = new_key(tenant=tenant, user="dave")
    for method, action in (("GET", "export"), ("POST", "erase")):
        path = f"/v1/admin/privacy/{tenant}/carol/{action}"
        r = await asyncio.to_thread(call, server, method, path, foreign_admin.key)
        assert r.status_code == 403, r.text
        assert "carol" not in r.text
        r = await asyncio.to_thread(call, server, method, path, plain.key)
        assert r.status_code == 403, r.text
        r = await asyncio.to_thread(call, server, method, path, "sk-strata-bogus")
        assert r.status_code == 401
    # Nothing happened to the victim: the key still authenticates.
    r = await asyncio.to_thread(call, server, "GET", "/v1/models", victim.key)
    assert r.status_code == 200


def test_cli_export_and_erase(
    database_url: str,
    redis_url: str,
    new_key: Callable[..., NewKey],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    monkeypatch.chdir(tmp_path)
    tenant = "gdpr-" + uuid.uuid4().hex[:8]
    key = new_key(tenant=tenant, user="erin")
    runner = CliRunner()
    out = tmp_path / "erin.json"
    args = ["privacy", "export", "--tenant", tenant, "--user", "erin", "-o", str(out)]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["api_keys"][0]["id"] == key.id
    erase = ["privacy", "erase", "--tenant", tenant, "--user", "erin"]
    result = runner.invoke(app, erase, input="n\n", catch_exceptions=False)
    assert result.exit_code == 1  # declined: nothing erased
    result = runner.invoke(app, [*erase, "--yes"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["api_keys"] == 1
    result = runner.invoke(app, [*erase, "--yes"], catch_exceptions=False)
    assert json.loads(result.stdout)["counts"]["api_keys"] == 0


async def test_retention_purge_deletes_old_rows_only(database_url: str) -> None:
    tenant = "ret-" + uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "request_id": f"req-{age}",
            "created_at": now - timedelta(days=age),
            "tenant_id": tenant,
            "user_id": "u",
            "key_id": "key_x",
            "endpoint": "chat",
            "alias": "fake",
            "latency_ms": 1.0,
            "status": "ok",
            "status_code": 200,
        }
        for age in (1, 399, 401, 800)
    ]
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(UsageRecord), rows)
        counts = await retention.purge(engine, retention.RetentionSettings(batch=1))
        assert counts["usage_records"] >= 2
        async with engine.connect() as conn:
            left = (
                await conn.execute(
                    select(UsageRecord.request_id)
                    .where(UsageRecord.tenant_id == tenant)
                    .order_by(UsageRecord.request_id)
                )
            ).scalars()
            assert list(left) == ["req-1", "req-399"]
        off = retention.RetentionSettings(usage_records_days=None)
        assert (await retention.purge(engine, off))["usage_records"] == 0
    finally:
        await engine.dispose()
