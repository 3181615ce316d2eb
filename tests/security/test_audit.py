"""The audit log: hash chain, append-only trigger, CLI and admin API (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import getpass
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from typer.testing import CliRunner

from strata.cli.main import app
from strata.security import audit
from strata.storage.engine import make_engine
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread


@asynccontextmanager
async def engine_of(url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(url, pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def tenant() -> str:
    return "aud-" + uuid.uuid4().hex[:8]


async def _record(engine: AsyncEngine, tenant: str, n: int = 1, **kw: Any) -> list[audit.Entry]:
    return [
        await audit.record(
            engine,
            tenant=tenant,
            actor=kw.get("actor", "key_test"),
            action=kw.get("action", "limits.set"),
            target=f"tenant:{tenant}",
            request_id=kw.get("request_id"),
            details={"i": i, "rps": 1.5, "cap": None, "name": "é"},
        )
        for i in range(n)
    ]


@asynccontextmanager
async def bypass(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection on which the append-only trigger does not fire (superuser only)."""
    async with engine.connect() as conn:
        if (await conn.execute(text("SHOW is_superuser"))).scalar_one() != "on":
            pytest.skip("tampering needs a superuser to bypass the trigger")
        await conn.execute(text("SET session_replication_role = replica"))
        try:
            yield conn
        finally:
            await conn.rollback()
            await conn.execute(text("SET session_replication_role = origin"))
            await conn.commit()


# ---- the chain -----------------------------------------------------------------------


async def test_append_and_verify(database_url: str, tenant: str) -> None:
    async with engine_of(database_url) as engine:
        entries = await _record(engine, tenant, 3, request_id="req-1")
        assert [e.prev_hash for e in entries[1:]] == [e.hash for e in entries[:-1]]
        assert all(len(e.hash) == 64 for e in entries)
        assert await audit.verify(engine) == (True, None)

        listed = await audit.list_entries(engine, tenant=tenant)
        assert [e.id for e in listed] == [e.id for e in reversed(entries)]  # newest first
        assert listed[0] == entries[-1]  # what was hashed is what is stored
        assert listed[0].details == {"i": 2, "rps": 1.5, "cap": None, "name": "é"}
        assert await audit.list_entries(engine, tenant=tenant, action="key.create") == []
        assert len(await audit.list_entries(engine, tenant=tenant, limit=2)) == 2


async def test_edited_entry_is_named_by_verify(database_url: str, tenant: str) -> None:
    async with engine_of(database_url) as engine:
        first, victim, _last = await _record(engine, tenant, 3)
        async with bypass(engine) as conn:
            await conn.execute(
                text("UPDATE audit_log SET details = '{\"i\": 99}' WHERE id = :id"),
                {"id": victim.id},
            )
            await conn.commit()
            try:
                assert await audit.verify(engine) == (False, victim.id)
            finally:
                await conn.execute(
                    text("UPDATE audit_log SET details = CAST(:d AS jsonb) WHERE id = :id"),
                    {"id": victim.id, "d": json.dumps(victim.details)},
                )
                await conn.commit()
        assert await audit.verify(engine) == (True, None)

        # Rewriting the hash too does not help: the next entry's link breaks.
        async with bypass(engine) as conn:
            await conn.execute(
                text("UPDATE audit_log SET actor = 'someone-else' WHERE id = :id"),
                {"id": first.id},
            )
            await conn.commit()
            try:
                assert await audit.verify(engine) == (False, first.id)
            finally:
                await conn.execute(
                    text("UPDATE audit_log SET actor = :a WHERE id = :id"),
                    {"id": first.id, "a": first.actor},
                )
                await conn.commit()
        assert await audit.verify(engine) == (True, None)


async def test_removed_entry_is_detected(database_url: str, tenant: str) -> None:
    async with engine_of(database_url) as engine:
        _first, victim, after = await _record(engine, tenant, 3)
        async with bypass(engine) as conn:
            row = (
                (
                    await conn.execute(
                        text("SELECT * FROM audit_log WHERE id = :id"), {"id": victim.id}
                    )
                )
                .mappings()
                .one()
            )
            await conn.execute(text("DELETE FROM audit_log WHERE id = :id"), {"id": victim.id})
            await conn.commit()
            try:
                assert await audit.verify(engine) == (False, after.id)
            finally:
                await conn.execute(
                    text(
                        "INSERT INTO audit_log (id, at, tenant_id, actor, action, target,"
                        " request_id, details, prev_hash, hash) VALUES (:id, :at, :tenant_id,"
                        " :actor, :action, :target, :request_id, CAST(:details AS jsonb),"
                        " :prev_hash, :hash)"
                    ),
                    {**row, "details": json.dumps(row["details"])},
                )
                await conn.commit()
        assert await audit.verify(engine) == (True, None)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_log SET actor = 'x' WHERE id = :id",
        "DELETE FROM audit_log WHERE id = :id",
        "TRUNCATE audit_log",
    ],
)
async def test_update_delete_truncate_are_rejected(
    database_url: str, tenant: str, sql: str
) -> None:
    async with engine_of(database_url) as engine:
        [entry] = await _record(engine, tenant)
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(sql), {"id": entry.id} if ":id" in sql else {})
        assert (await audit.list_entries(engine, tenant=tenant))[0] == entry
        assert await audit.verify(engine) == (True, None)


async def test_concurrent_appends_from_two_engines_keep_one_chain(
    database_url: str, tenant: str
) -> None:
    async with engine_of(database_url) as a, engine_of(database_url) as b:

        async def burst(engine: AsyncEngine, who: str) -> list[audit.Entry]:
            out = []
            for i in range(15):
                out.append(
                    await audit.record(
                        engine, tenant=tenant, actor=who, action="limits.set", target=str(i)
                    )
                )
            return out

        results = await asyncio.gather(*(burst(e, w) for e in (a, b) for w in ("x", "y")))
        mine = sorted((e for r in results for e in r), key=lambda e: e.id)
        assert len(mine) == 60
        # No fork: no two entries link to the same predecessor.
        assert len({e.prev_hash for e in mine}) == 60
        assert await audit.verify(a) == (True, None)


# ---- CLI -----------------------------------------------------------------------------


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


def listed(cli: Callable[..., Any], *args: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(cli("audit", "list", "--json", *args).stdout)["data"]
    return data


def test_cli_actions_are_recorded_and_listed(cli: Callable[..., Any], tenant: str) -> None:
    actor = "cli:" + getpass.getuser()
    cli("limits", "set", "--tenant", tenant, "--rps", "5")
    cli("budgets", "set", "--user", f"{tenant}/ann", "--daily", "2")
    cli("limits", "clear", "--tenant", tenant)
    cli("budgets", "clear", "--user", f"{tenant}/ann")
    created = json.loads(
        cli("keys", "create", "--tenant", tenant, "--user", "bob", "--json").stdout
    )
    cli("keys", "revoke", created["id"])
    cli("cache", "forget", "--tenant", tenant, "--user", "bob")

    entries = listed(cli, "--tenant", tenant)
    assert [e["action"] for e in entries] == [
        "cache.forget",
        "key.revoke",
        "key.create",
        "budgets.clear",
        "limits.clear",
        "budgets.set",
        "limits.set",
    ]
    assert {e["actor"] for e in entries} == {actor}
    assert {e["tenant_id"] for e in entries} == {tenant}
    by = {e["action"]: e for e in entries}
    assert by["limits.set"]["target"] == f"tenant:{tenant}"
    assert by["limits.set"]["details"] == {"requests_per_second": 5}
    assert by["budgets.set"]["details"] == {"daily_usd": "2"}
    assert by["limits.clear"]["details"] == {"deleted": True}
    assert by["key.create"]["target"] == by["key.revoke"]["target"] == f"key:{created['id']}"
    assert by["key.create"]["details"] == {"user_id": "bob", "admin": False}
    assert by["cache.forget"]["target"] == f"user:{tenant}/bob"
    assert created["key"] not in json.dumps(entries)  # never the secret

    assert [e["action"] for e in listed(cli, "--tenant", tenant, "--action", "key.create")] == [
        "key.create"
    ]
    assert len(listed(cli, "--tenant", tenant, "--limit", "2")) == 2
    table = cli("audit", "list", "--tenant", tenant).stdout
    assert "cache.forget" in table and "key.create" in table

    assert "audit chain ok" in cli("audit", "verify").stdout


def test_cli_verify_fails_on_a_broken_chain(
    cli: Callable[..., Any], database_url: str, tenant: str
) -> None:
    async def tamper(restore: audit.Entry | None) -> audit.Entry:
        async with engine_of(database_url) as engine:
            [entry] = [restore] if restore else await _record(engine, tenant)
            async with bypass(engine) as conn:
                await conn.execute(
                    text("UPDATE audit_log SET target = :t WHERE id = :id"),
                    {"id": entry.id, "t": entry.target if restore else "tampered"},
                )
                await conn.commit()
            return entry

    entry = asyncio.run(tamper(None))
    try:
        out = cli("audit", "verify", code=1).output
        assert f"broken at entry {entry.id}" in out
    finally:
        asyncio.run(tamper(entry))
    cli("audit", "verify")


# ---- admin API -----------------------------------------------------------------------


def call(server: ServerThread, method: str, path: str, key: str, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **kw.pop("headers", {})}
    return httpx.request(method, server.base_url + path, headers=headers, timeout=30, **kw)


@pytest.fixture
def admin(new_key: Callable[..., NewKey], tenant: str) -> Iterator[NewKey]:
    yield new_key(tenant=tenant, user="boss", is_admin=True)


def test_admin_api_lists_own_tenant_with_actor_and_request_id(
    server: ServerThread, new_key: Callable[..., NewKey], admin: NewKey, tenant: str
) -> None:
    path = f"/v1/admin/limits/user/{tenant}/alice"
    rid = "audit-" + uuid.uuid4().hex[:8]
    r = call(server, "PUT", path, admin.key, json={"burst": 3}, headers={"x-request-id": rid})
    assert r.status_code == 200, r.text
    r = call(server, "DELETE", path, admin.key)
    assert r.status_code == 200
    r = call(server, "PUT", f"/v1/admin/budgets/tenant/{tenant}", admin.key, json={"daily_usd": 9})
    assert r.status_code == 200

    other = new_key(tenant="aud-other-" + uuid.uuid4().hex[:6], user="eve", is_admin=True)
    r = call(
        server, "PUT", f"/v1/admin/limits/tenant/{other.tenant_id}", other.key, json={"burst": 2}
    )
    assert r.status_code == 200

    r = call(server, "GET", "/v1/admin/audit", admin.key)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [e["action"] for e in data] == ["budgets.set", "limits.clear", "limits.set"]
    assert {e["tenant_id"] for e in data} == {tenant}  # never another tenant's
    assert {e["actor"] for e in data} == {admin.id}
    put = data[-1]
    assert put["request_id"] == rid
    assert put["target"] == f"user:{tenant}/alice"
    assert put["details"] == {"burst": 3.0}
    assert data[1]["request_id"] and data[1]["request_id"] != rid
    assert data[0]["details"] == {"daily_usd": "9"}

    r = call(server, "GET", "/v1/admin/audit?action=limits.set&limit=5", admin.key)
    assert [e["action"] for e in r.json()["data"]] == ["limits.set"]
    assert len(call(server, "GET", "/v1/admin/audit?limit=1", admin.key).json()["data"]) == 1
    for bad in ("0", "1001", "x"):
        r = call(server, "GET", f"/v1/admin/audit?limit={bad}", admin.key)
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit"

    r = call(server, "GET", "/v1/admin/audit", other.key)
    assert [e["tenant_id"] for e in r.json()["data"]] == [other.tenant_id]


def test_admin_api_requires_an_admin_key(
    server: ServerThread, new_key: Callable[..., NewKey], tenant: str
) -> None:
    plain = new_key(tenant=tenant, user="pat")
    r = call(server, "GET", "/v1/admin/audit", plain.key)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = httpx.get(server.base_url + "/v1/admin/audit", timeout=30)
    assert r.status_code == 401
