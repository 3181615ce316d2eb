"""End-user ids (OpenAI's ``user`` field) on usage records: encrypted at rest,
reportable by blind index, exportable and erasable per end user, re-encrypted by
``strata crypto rotate`` (real PostgreSQL, Redis and server; the openai SDK)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from strata.cli.main import app
from strata.security import crypto as crypto_mod
from strata.security.crypto import Crypto
from strata.storage.engine import make_engine
from strata.storage.models import UsageRecord
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread
from tests.security.test_privacy import db_hits, file_hits, services


def get(server: ServerThread, path: str, key: str, method: str = "GET") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.request(method, server.base_url + path, headers=headers, timeout=60)


async def rows(database_url: str, tenant: str) -> list[Any]:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(select(UsageRecord).where(UsageRecord.tenant_id == tenant))
            return list(result)
    finally:
        await engine.dispose()


async def traffic(server: ServerThread, client: openai.OpenAI, plan: dict[str | None, int]) -> None:
    """``plan``: end-user id (None: no ``user`` field) -> chat requests to send."""
    for end_user, n in plan.items():
        for i in range(n):
            extra = {} if end_user is None else {"user": end_user}
            await asyncio.to_thread(
                client.chat.completions.create,
                model="fake",
                messages=[{"role": "user", "content": f"question {i} {uuid.uuid4().hex}"}],
                **extra,
            )
    await server.acall(server.runtime.recorder.flush())


@pytest.fixture
def tenant() -> str:
    return "eu-" + uuid.uuid4().hex[:8]


async def test_end_user_is_encrypted_and_reportable(
    server: ServerThread,
    new_key: Callable[..., NewKey],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
    database_url: str,
    redis_url: str,
    tenant: str,
) -> None:
    alice = "alice." + uuid.uuid4().hex[:8] + "@example.com"
    bob = "bob-" + uuid.uuid4().hex[:8]
    key = new_key(tenant=tenant, user="app")
    other = new_key(tenant=tenant, user="app2")
    client = sdk(server, key.key)
    await traffic(server, client, {alice: 3, bob: 2, None: 1})

    stored = await rows(database_url, tenant)
    assert len(stored) == 6
    assert sum(r.end_user_enc is not None for r in stored) == 5
    async with services(database_url, redis_url) as (engine, _redis):
        for needle in (alice, bob):
            assert await db_hits(engine, needle) == [], needle
            assert file_hits(server.settings.data_dir, needle) == [], needle
    hmacs = {r.end_user_hmac for r in stored}
    assert len(hmacs) == 3  # alice, bob, none

    r = await asyncio.to_thread(get, server, f"/v1/usage?end_user={alice}", key.key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total_requests"] == 3
    assert {row["end_user"] for row in body["data"]} == {alice}

    r = await asyncio.to_thread(get, server, "/v1/usage?group_by=end_user", key.key)
    assert r.status_code == 200, r.text
    by = {row["end_user"]: row["requests"] for row in r.json()["data"]}
    assert by == {alice: 3, bob: 2, None: 1}

    # Another user of the tenant sees none of it; a foreign tenant neither.
    r = await asyncio.to_thread(get, server, f"/v1/usage?end_user={alice}", other.key)
    assert r.status_code == 200 and r.json()["total_requests"] == 0
    foreign = new_key(tenant="eu-other-" + uuid.uuid4().hex[:6], user="app", is_admin=True)
    r = await asyncio.to_thread(get, server, f"/v1/usage?end_user={alice}", foreign.key)
    assert r.status_code == 200 and r.json()["total_requests"] == 0

    r = await asyncio.to_thread(get, server, "/v1/usage?group_by=model", key.key)
    assert r.status_code == 400 and r.json()["error"]["param"] == "group_by"
    r = await asyncio.to_thread(get, server, "/v1/usage?end_user=" + "x" * 300, key.key)
    assert r.status_code == 400, r.text


async def test_end_user_export_erase_and_rotation(
    server: ServerThread,
    new_key: Callable[..., NewKey],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
    database_url: str,
    redis_url: str,
    tenant: str,
) -> None:
    carol = "carol+" + uuid.uuid4().hex[:8] + "@example.org"
    dan = "dan-" + uuid.uuid4().hex[:8]
    key = new_key(tenant=tenant, user="app")
    admin = new_key(tenant=tenant, user="dpo", is_admin=True)
    foreign = new_key(tenant="eu-other-" + uuid.uuid4().hex[:6], user="x", is_admin=True)
    await traffic(server, sdk(server, key.key), {carol: 2, dan: 1})

    # Rotation re-encrypts the ids; reports still name them.
    s = server.settings
    ring = Crypto(crypto_mod.load_master_key(s.crypto, s.data_dir))
    engine = make_engine(database_url, pool_size=1)
    try:
        report = await crypto_mod.rotate(engine, ring)
    finally:
        await engine.dispose()
    assert report["stores"]["usage_records.end_user"] >= 3
    mine = [r for r in await rows(database_url, tenant)]
    assert {r.end_user_dek for r in mine} == {report["key_id"]}
    assert {crypto_mod.key_id_of(r.end_user_enc) for r in mine} == {report["key_id"]}
    r = await asyncio.to_thread(get, server, "/v1/usage?group_by=end_user", admin.key)
    assert {row["end_user"] for row in r.json()["data"]} == {carol, dan}

    base = f"/v1/admin/privacy/{tenant}/end-users/{carol}"
    for path, method in ((f"{base}/export", "GET"), (f"{base}/erase", "POST")):
        r = await asyncio.to_thread(get, server, path, foreign.key, method)
        assert r.status_code == 403 and carol not in r.text
        r = await asyncio.to_thread(get, server, path, key.key, method)
        assert r.status_code == 403

    r = await asyncio.to_thread(get, server, f"{base}/export", admin.key)
    assert r.status_code == 200, r.text
    export = r.json()
    assert export["subject"] == {"tenant_id": tenant, "end_user": carol}
    assert len(export["usage_records"]) == 2
    assert dan not in r.text

    before = await rows(database_url, tenant)
    r = await asyncio.to_thread(get, server, f"{base}/erase", admin.key, "POST")
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["counts"]["usage_records_unlinked"] == 2
    assert carol not in r.text
    after = await rows(database_url, tenant)
    # Numbers kept, link gone: carol's rows carry no id, index or request id.
    assert sum(x.cost_usd for x in after) == sum(x.cost_usd for x in before)
    unlinked = [x for x in after if x.request_id == "erased"]
    assert len(unlinked) == 2
    assert all(u.end_user_enc is None and u.end_user_hmac is None for u in unlinked)
    r = await asyncio.to_thread(get, server, "/v1/usage?group_by=end_user", admin.key)
    assert {row["end_user"] for row in r.json()["data"]} == {None, dan}
    async with services(database_url, redis_url) as (engine, _redis), engine.connect() as conn:
        entry = (
            await conn.execute(
                text(
                    "SELECT target, details FROM audit_log "
                    "WHERE action = 'privacy.erase' AND tenant_id = :t"
                ),
                {"t": tenant},
            )
        ).one()
    assert entry.target == f"end_user:{receipt['subject_hash']}"
    assert carol not in json.dumps(entry.details)

    # Idempotent.
    r = await asyncio.to_thread(get, server, f"{base}/erase", admin.key, "POST")
    assert r.status_code == 200 and r.json()["counts"]["usage_records_unlinked"] == 0


def test_cli_end_user_export_and_erase(
    database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    monkeypatch.setenv("STRATA_CRYPTO__MASTER_KEY", "env:STRATA_TEST_MASTER_KEY")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    both = ["privacy", "export", "--tenant", "t", "--user", "u", "--end-user", "e"]
    result = runner.invoke(app, both)
    assert result.exit_code == 2 and "exactly one" in result.output
    tenant = "eu-" + uuid.uuid4().hex[:8]
    out = tmp_path / "e.json"
    args = ["privacy", "export", "--tenant", tenant, "--end-user", "erin", "-o", str(out)]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["usage_records"] == []
    erase = ["privacy", "erase", "--tenant", tenant, "--end-user", "erin", "--yes"]
    result = runner.invoke(app, erase, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["usage_records_unlinked"] == 0
