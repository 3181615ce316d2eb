"""Key lifecycle against a real server, PostgreSQL and Redis: scopes, allowed model
aliases, expiry, IP allow-list, rotation with a grace window (one key and in bulk),
the admin API for keys, and the CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from strata.cli import app as cli_app
from strata.errors import InvalidRequest, PermissionDenied
from strata.security import audit
from strata.security.keys import Principal, hash_key, parse_networks
from strata.storage.engine import make_engine
from strata.storage.repositories import keys as key_repo

T = TypeVar("T")
MSG = [{"role": "user", "content": "hi"}]


def in_db(database_url: str, fn: Callable[[AsyncEngine], Coroutine[Any, Any, T]]) -> T:
    """Run ``fn(engine)`` on a fresh engine in a thread of its own (sync tests)."""

    async def run() -> T:
        engine = make_engine(database_url, pool_size=1)
        try:
            return await fn(engine)
        finally:
            await engine.dispose()

    out: list[T] = []
    failed: list[BaseException] = []

    def target() -> None:
        try:
            out.append(asyncio.run(run()))
        except BaseException as exc:  # re-raised in the test's thread
            failed.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    if failed:
        raise failed[0]
    return out[0]


def sql(database_url: str, statement: str, **params: Any) -> None:
    async def run(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await conn.execute(text(statement), params)

    in_db(database_url, run)


@pytest.fixture
def tenant() -> str:
    return "klc-" + uuid.uuid4().hex[:10]


@pytest.fixture
def make_key(database_url: str, tenant: str) -> Callable[..., key_repo.NewKey]:
    def make(**kwargs: Any) -> key_repo.NewKey:
        kwargs.setdefault("tenant_id", tenant)
        kwargs.setdefault("user_id", "u-" + uuid.uuid4().hex[:8])
        return in_db(database_url, lambda e: key_repo.create_key(e, **kwargs))

    return make


def call(
    server: Any, method: str, path: str, key: str, body: Any = None, **kw: Any
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.request(
        method, server.base_url + path, headers=headers, json=body, timeout=30, **kw
    )


def chat(server: Any, key: str, model: str = "fake") -> httpx.Response:
    return call(server, "POST", "/v1/chat/completions", key, {"model": model, "messages": MSG})


def embed(server: Any, key: str, model: str = "embed-default") -> httpx.Response:
    return call(server, "POST", "/v1/embeddings", key, {"model": model, "input": "hi"})


def denied(r: httpx.Response, code: str, status: int = 403) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == ("permission_error" if status == 403 else "authentication_error")
    assert err["code"] == code, err
    return err


# ---- unit: Principal -------------------------------------------------------------------


def principal(**kw: Any) -> Principal:
    return Principal(key_id="k", tenant_id="t", user_id="u", **{"is_admin": False, **kw})


def test_scopes_default_to_all_but_admin() -> None:
    legacy = principal()
    assert legacy.has_scope("chat") and legacy.has_scope("usage:read")
    assert not legacy.has_scope("admin")
    assert principal(is_admin=True).has_scope("admin")
    narrow = principal(scopes=frozenset({"embeddings"}))
    assert narrow.has_scope("embeddings") and not narrow.has_scope("chat")
    with pytest.raises(PermissionDenied) as exc:
        narrow.authorize("chat", "127.0.0.1")
    assert exc.value.code == "insufficient_scope"


def test_ip_allow_list() -> None:
    p = principal(ip_allow=parse_networks(["10.0.0.0/8", "2001:db8::/32"]))
    p.check_ip("10.1.2.3")
    p.check_ip("::ffff:10.1.2.3")  # IPv4-mapped
    p.check_ip("2001:db8::1")
    for bad in ("127.0.0.1", None, "not-an-ip"):
        with pytest.raises(PermissionDenied):
            p.check_ip(bad)
    principal().check_ip(None)  # no list: any address
    with pytest.raises(InvalidRequest):
        parse_networks(["10.0.0.300/8"])


def test_admin_scope_and_is_admin_go_together(make_key: Callable[..., key_repo.NewKey]) -> None:
    assert make_key(scopes=["admin"]).is_admin
    k = make_key(scopes=["chat"], is_admin=True)
    assert k.scopes == ["chat", "admin"]
    with pytest.raises(InvalidRequest):
        make_key(scopes=["chat", "everything"])


# ---- enforcement over HTTP ---------------------------------------------------------


def test_scope_denial_per_endpoint(server: Any, make_key: Callable[..., key_repo.NewKey]) -> None:
    embed_only = make_key(scopes=["embeddings"])
    chat_only = make_key(scopes=["chat"])
    files_only = make_key(scopes=["files"])
    usage_only = make_key(scopes=["usage:read"])

    err = denied(chat(server, embed_only.key), "insufficient_scope")
    assert "'chat'" in err["message"]
    assert "'embeddings'" in denied(embed(server, chat_only.key), "insufficient_scope")["message"]
    assert chat(server, chat_only.key).status_code == 200
    for path in ("/v1/admin/keys", "/v1/admin/limits/tenant/" + chat_only.tenant_id):
        assert (
            "'admin'"
            in denied(call(server, "GET", path, chat_only.key), "insufficient_scope")["message"]
        )
    denied(call(server, "GET", "/v1/usage", files_only.key), "insufficient_scope")
    assert call(server, "GET", "/v1/usage", usage_only.key).status_code == 200
    assert call(server, "GET", "/v1/usage", chat_only.key).status_code == 200
    denied(chat(server, usage_only.key), "insufficient_scope")


def test_keys_without_scopes_work_as_before(
    server: Any, make_key: Callable[..., key_repo.NewKey]
) -> None:
    plain, admin = make_key(), make_key(is_admin=True)
    assert chat(server, plain.key).status_code == 200
    denied(call(server, "GET", "/v1/admin/keys", plain.key), "insufficient_scope")
    assert chat(server, admin.key).status_code == 200
    assert call(server, "GET", "/v1/admin/keys", admin.key).status_code == 200
    r = call(server, "GET", f"/v1/admin/limits/tenant/{admin.tenant_id}", admin.key)
    assert r.status_code == 200, r.text


def test_allowed_models(server: Any, make_key: Callable[..., key_repo.NewKey]) -> None:
    k = make_key(allowed_models=["fake"])
    assert chat(server, k.key, "fake").status_code == 200
    err = denied(chat(server, k.key, "fake-slow"), "model_not_allowed")
    assert "'fake-slow'" in err["message"] and err["param"] == "model"
    err = denied(embed(server, k.key), "model_not_allowed")
    assert "'embed-default'" in err["message"]
    # The model list shows only what the key may use; others look like unknown models.
    auth = {"authorization": f"Bearer {k.key}"}
    listed = httpx.get(server.base_url + "/v1/models", headers=auth).json()["data"]
    assert [m["id"] for m in listed] == ["fake"]
    assert httpx.get(server.base_url + "/v1/models/fake-slow", headers=auth).status_code == 404
    assert httpx.get(server.base_url + "/v1/models/fake", headers=auth).status_code == 200


def test_expiry(server: Any, make_key: Callable[..., key_repo.NewKey], database_url: str) -> None:
    k = make_key()
    assert chat(server, k.key).status_code == 200
    hashes = in_db(
        database_url,
        lambda e: key_repo.set_expiry(e, k.id, datetime.now(UTC) - timedelta(minutes=1)),
    )
    assert hashes == [hash_key(k.key)]
    for h in hashes:
        server.runtime.auth.evict(h)
    denied(chat(server, k.key), "invalid_api_key", 401)


def test_expiry_is_checked_on_each_use_not_only_at_load(
    server: Any, make_key: Callable[..., key_repo.NewKey]
) -> None:
    k = make_key(expires_at=datetime.now(UTC) + timedelta(seconds=1.5))
    assert chat(server, k.key).status_code == 200  # now cached, for the whole TTL
    time.sleep(1.6)
    denied(chat(server, k.key), "expired_api_key", 401)


def test_ip_allow_list_over_http(server: Any, make_key: Callable[..., key_repo.NewKey]) -> None:
    local = make_key(ip_allow=["127.0.0.1"])
    private = make_key(ip_allow=["10.0.0.0/8"], is_admin=True)
    assert chat(server, local.key).status_code == 200
    err = denied(chat(server, private.key), "ip_not_allowed")
    assert "127.0.0.1" in err["message"]
    denied(embed(server, private.key), "ip_not_allowed")
    denied(call(server, "GET", "/v1/models", private.key), "ip_not_allowed")
    denied(call(server, "GET", "/v1/admin/keys", private.key), "ip_not_allowed")


# ---- rotation ----------------------------------------------------------------------


def test_rotation_with_grace(
    server: Any, make_key: Callable[..., key_repo.NewKey], database_url: str
) -> None:
    k = make_key(name="svc")
    assert chat(server, k.key).status_code == 200
    rotated = in_db(database_url, lambda e: key_repo.rotate_key(e, k.id, grace_s=3600))
    assert rotated is not None and rotated.id == k.id and rotated.key != k.key
    for h in rotated.evict:
        server.runtime.auth.evict(h)
    assert chat(server, rotated.key).status_code == 200
    assert chat(server, k.key).status_code == 200  # within the grace window
    sql(
        database_url,
        "UPDATE api_keys SET previous_expires_at = now() - interval '1 second' WHERE id = :id",
        id=k.id,
    )
    server.runtime.auth.evict(hash_key(k.key))
    denied(chat(server, k.key), "invalid_api_key", 401)
    assert chat(server, rotated.key).status_code == 200


def test_cached_old_secret_stops_when_its_grace_ends(
    server: Any, make_key: Callable[..., key_repo.NewKey], database_url: str
) -> None:
    k = make_key()
    rotated = in_db(database_url, lambda e: key_repo.rotate_key(e, k.id, grace_s=1.5))
    assert rotated is not None
    for h in rotated.evict:
        server.runtime.auth.evict(h)
    assert chat(server, k.key).status_code == 200  # cached with its grace end
    time.sleep(1.6)
    denied(chat(server, k.key), "expired_api_key", 401)


def test_rotation_without_grace_and_twice(
    server: Any, make_key: Callable[..., key_repo.NewKey], database_url: str
) -> None:
    k = make_key()
    first = in_db(database_url, lambda e: key_repo.rotate_key(e, k.id, grace_s=3600))
    assert first is not None
    second = in_db(database_url, lambda e: key_repo.rotate_key(e, k.id, grace_s=0))
    assert second is not None
    assert set(second.evict) == {hash_key(first.key), hash_key(k.key)}
    for h in second.evict:
        server.runtime.auth.evict(h)
    denied(chat(server, k.key), "invalid_api_key", 401)
    denied(chat(server, first.key), "invalid_api_key", 401)
    assert chat(server, second.key).status_code == 200


def test_bulk_rotation_by_age(
    make_key: Callable[..., key_repo.NewKey], database_url: str, tenant: str
) -> None:
    old, fresh, gone = make_key(name="old"), make_key(name="fresh"), make_key()
    for key_id in (old.id, gone.id):
        sql(
            database_url,
            "UPDATE api_keys SET created_at = now() - interval '100 days' WHERE id = :id",
            id=key_id,
        )
    in_db(database_url, lambda e: key_repo.revoke_key(e, gone.id))
    done = in_db(
        database_url,
        lambda e: key_repo.rotate_older_than(e, timedelta(days=90), grace_s=60, tenant_id=tenant),
    )
    assert [r.id for r in done] == [old.id]
    assert done[0].name == "old" and done[0].previous_expires_at is not None
    # The new secret is young: a second pass finds nothing.
    again = in_db(
        database_url,
        lambda e: key_repo.rotate_older_than(e, timedelta(days=90), tenant_id=tenant),
    )
    assert again == []
    assert fresh.id not in [r.id for r in done]


# ---- admin API -----------------------------------------------------------------------


def test_admin_api_create_list_rotate_revoke(
    server: Any, make_key: Callable[..., key_repo.NewKey], tenant: str, database_url: str
) -> None:
    """Each action is also in the audit log, with the admin key as the actor."""
    admin = make_key(is_admin=True)
    body = {
        "user": "bob",
        "name": "ci",
        "scopes": ["chat"],
        "models": ["fake"],
        "expires_in_s": 3600,
        "ip_allow": ["127.0.0.1/32"],
    }
    r = call(server, "POST", "/v1/admin/keys", admin.key, body)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["tenant"] == tenant and made["user"] == "bob"
    assert (made["scopes"], made["models"], made["ip_allow"]) == (
        ["chat"],
        ["fake"],
        ["127.0.0.1/32"],
    )
    assert made["expires_at"] is not None
    assert chat(server, made["key"]).status_code == 200
    denied(chat(server, made["key"], "fake-slow"), "model_not_allowed")

    listed = call(server, "GET", "/v1/admin/keys", admin.key).json()["data"]
    assert {k["id"] for k in listed} >= {admin.id, made["id"]}
    assert all(k["tenant"] == tenant for k in listed)
    assert "key" not in listed[0] and made["key"] not in json.dumps(listed)

    r = call(server, "POST", f"/v1/admin/keys/{made['id']}/rotate", admin.key, {"grace_s": 60})
    assert r.status_code == 200, r.text
    new_key = r.json()["key"]
    assert r.json()["id"] == made["id"] and r.json()["previous_expires_at"] is not None
    assert chat(server, new_key).status_code == 200
    assert chat(server, made["key"]).status_code == 200  # grace

    r = call(server, "POST", f"/v1/admin/keys/{made['id']}/rotate", admin.key)  # grace 0
    newest = r.json()["key"]
    denied(chat(server, made["key"]), "invalid_api_key", 401)
    denied(chat(server, new_key), "invalid_api_key", 401)

    r = call(server, "DELETE", f"/v1/admin/keys/{made['id']}", admin.key)
    assert r.status_code == 200 and r.json()["deleted"] is True
    denied(chat(server, newest), "invalid_api_key", 401)
    r = call(server, "DELETE", f"/v1/admin/keys/{made['id']}", admin.key)
    assert r.json()["deleted"] is False

    entries = in_db(database_url, lambda e: audit.list_entries(e, tenant=tenant))
    mine = [(e.action, e.target, e.actor) for e in entries if e.target == f"key:{made['id']}"]
    assert mine == [
        ("key.revoke", f"key:{made['id']}", admin.id),
        ("key.rotate", f"key:{made['id']}", admin.id),
        ("key.rotate", f"key:{made['id']}", admin.id),
        ("key.create", f"key:{made['id']}", admin.id),
    ]

    r = call(server, "POST", "/v1/admin/keys", admin.key, {"user": "x", "scopes": ["root"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "scopes"
    r = call(server, "POST", f"/v1/admin/keys/{admin.id}/rotate", admin.key, {"grace_s": -1})
    assert r.status_code == 400


def test_admin_api_tenant_boundary(
    server: Any, make_key: Callable[..., key_repo.NewKey], database_url: str
) -> None:
    victim = make_key()
    other = in_db(
        database_url,
        lambda e: key_repo.create_key(
            e, tenant_id="klc-other-" + uuid.uuid4().hex[:8], user_id="mallory", is_admin=True
        ),
    )
    listed = call(server, "GET", "/v1/admin/keys", other.key).json()["data"]
    assert victim.id not in {k["id"] for k in listed}
    for method, path in (
        ("POST", f"/v1/admin/keys/{victim.id}/rotate"),
        ("DELETE", f"/v1/admin/keys/{victim.id}"),
    ):
        r = call(server, method, path, other.key)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["type"] == "not_found_error"
    # Created keys land in the caller's tenant, whatever the body says.
    r = call(server, "POST", "/v1/admin/keys", other.key, {"user": "m", "tenant": victim.tenant_id})
    assert r.status_code == 400  # unknown field
    assert chat(server, victim.key).status_code == 200  # untouched


# ---- CLI -----------------------------------------------------------------------------


@pytest.fixture
def cli(
    database_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Any]]:
    monkeypatch.setenv("STRATA_DATABASE_URL", database_url)
    monkeypatch.setenv("STRATA_REDIS_URL", redis_url)
    monkeypatch.setenv("STRATA_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Any:
        result = runner.invoke(cli_app, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    yield invoke


def test_cli_create_with_lifecycle_options_and_list(
    cli: Callable[..., Any], tenant: str, database_url: str
) -> None:
    out = cli(
        "keys", "create", "-u", "carol", "-t", tenant, "--scope", "chat", "--scope",
        "usage:read", "--model", "fake", "--expires-in", "90d", "--ip", "10.0.0.0/8", "--json",
    ).stdout  # fmt: skip
    made = json.loads(out)
    p = in_db(database_url, lambda e: key_repo.find_active(e, hash_key(made["key"])))
    assert p is not None
    assert p.scopes == {"chat", "usage:read"} and p.allowed_models == {"fake"}
    assert p.ip_allow == parse_networks(["10.0.0.0/8"])
    assert p.expires_at is not None
    assert timedelta(days=89) < p.expires_at - datetime.now(UTC) <= timedelta(days=90)
    [row] = json.loads(cli("keys", "list", "-t", tenant, "--json").stdout)
    assert row["scopes"] == ["chat", "usage:read"] and row["expires_at"] is not None
    assert row["created_at"] is not None
    table = cli("keys", "list", "-t", tenant).stdout
    assert made["id"] in table
    cli("keys", "create", "-u", "x", "-t", tenant, "--scope", "root", code=2)
    cli("keys", "create", "-u", "x", "-t", tenant, "--expires-in", "soon", code=2)


def test_cli_rotate_one_and_in_bulk(
    cli: Callable[..., Any],
    server: Any,
    make_key: Callable[..., key_repo.NewKey],
    database_url: str,
    tenant: str,
) -> None:
    k = make_key(name="worker")
    out = cli("keys", "rotate", k.id, "--grace", "24h").stdout
    new = next(w for w in out.split() if w.startswith("sk-strata-"))
    assert k.id in out and "work until" in out
    assert chat(server, new).status_code == 200
    assert chat(server, k.key).status_code == 200  # within the 24 h grace
    [entry] = in_db(database_url, lambda e: audit.list_entries(e, tenant=tenant))
    assert (entry.action, entry.target) == ("key.rotate", f"key:{k.id}")
    assert entry.actor.startswith("cli:") and entry.details == {"grace_s": 86400.0}

    old1, old2, young = make_key(name="a"), make_key(name="b"), make_key(name="c")
    for key_id in (old1.id, old2.id):
        sql(
            database_url,
            "UPDATE api_keys SET created_at = now() - interval '120 days' WHERE id = :id",
            id=key_id,
        )
    out = cli("keys", "rotate", "--older-than", "90d", "-t", tenant, "--grace", "1h").stdout
    assert old1.id in out and old2.id in out and young.id not in out
    assert out.count("sk-strata-") == 2 and "rotated 2 key(s)" in out

    for key_id in (young.id,):
        sql(
            database_url,
            "UPDATE api_keys SET created_at = now() - interval '120 days' WHERE id = :id",
            id=key_id,
        )
    rows = json.loads(cli("keys", "rotate", "--older-than", "90d", "-t", tenant, "--json").stdout)
    assert [(r["id"], r["name"], r["tenant"]) for r in rows] == [(young.id, "c", tenant)]
    assert rows[0]["old_key_valid_until"] is None
    server.runtime.auth.evict(hash_key(young.key))
    denied(chat(server, young.key), "invalid_api_key", 401)
    assert chat(server, rows[0]["key"]).status_code == 200

    cli("keys", "rotate", "key_doesnotexist", code=1)
    cli("keys", "rotate", code=2)
    cli("keys", "rotate", k.id, "--older-than", "1d", code=2)
