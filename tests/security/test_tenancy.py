"""Tenancy isolation: an admin key of tenant B tries every endpoint that reads,
lists, changes or deletes tenant data against tenant A's ids (table-driven).

Each row must end in 403/404, or in a 200 that holds none of A's data; no answer
may name A's ids that the caller did not send itself (tenant, user, key id, key
prefix or secret, planted prompt). Routes of later features (privacy, files,
batches, documents) are tried too when they exist: every admin route whose path
has a parameter gets A's ids, and must not answer with A's data. The cache rows
check that B's identical (exact) or paraphrased (semantic) request never replays
A's answer.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread
from tests.security.test_hardening import iter_routes

MSG_TEXT = "How do I reset my password? tenancy-probe-"


@dataclass
class Tenant:
    id: str
    admin: NewKey
    member: NewKey
    marker: str = ""
    end_user: str = ""
    ids: list[str] = field(default_factory=list)
    rag: dict[str, str] = field(default_factory=dict)  # its collection and document ids
    batch: dict[str, str] = field(default_factory=dict)  # its file and batch ids


@pytest.fixture(scope="module")
def tenants(server: ServerThread, new_key: Callable[..., NewKey]) -> tuple[Tenant, Tenant]:
    suffix = uuid.uuid4().hex[:8]
    a_id, b_id = f"victim-{suffix}", f"attacker-{suffix}"
    a = Tenant(
        a_id,
        admin=new_key(tenant=a_id, user=f"a-admin-{suffix}", is_admin=True),
        member=new_key(tenant=a_id, user=f"a-user-{suffix}"),
        marker=f"tenancy-probe-{suffix}",
    )
    b = Tenant(
        b_id,
        admin=new_key(tenant=b_id, user=f"b-admin-{suffix}", is_admin=True),
        member=new_key(tenant=b_id, user=f"b-user-{suffix}"),
    )
    # A's data: usage (a chat), limits and budgets of its own, audit entries.
    # ... sent on behalf of an end user (OpenAI's `user`), recorded encrypted.
    a.end_user = f"end-user-{suffix}@example.com"
    body = {**chat_body(a.marker), "user": a.end_user}
    ok = call(server, a.member, "POST", "/v1/chat/completions", body)
    assert ok.status_code == 200, ok.text
    for path, body in (
        (f"/v1/admin/limits/key/{a.member.id}", {"requests_per_minute": 77}),
        (f"/v1/admin/budgets/user/{a_id}/{a.member.user_id}", {"daily_usd": "7.5"}),
        (f"/v1/admin/budgets/tenant/{a_id}", {"monthly_usd": "750"}),
    ):
        r = call(server, a.admin, "PUT", path, body)
        assert r.status_code == 200, r.text
    # A's documents: a collection with one document that holds the marker.
    col = call(server, a.member, "POST", "/v1/rag/collections", {"name": "kb-" + suffix})
    assert col.status_code == 200, col.text
    doc = call(
        server,
        a.member,
        "POST",
        f"/v1/rag/collections/{col.json()['id']}/documents",
        {"text": f"Reset a password from the account page. {a.marker}", "source": a.marker},
    )
    assert doc.status_code == 200, doc.text
    a.rag = {"col": col.json()["id"], "name": "kb-" + suffix, "doc": doc.json()["data"][0]["id"]}
    # ... and a background upload (no worker runs here: it stays queued).
    ing = call(
        server,
        a.member,
        "POST",
        f"/v1/rag/collections/{a.rag['col']}/documents?background=true",
        {"text": f"Queued for later. {a.marker}", "source": a.marker + "-bg"},
    )
    assert ing.status_code == 202, ing.text
    a.rag["ing"] = ing.json()["id"]
    # A's batch input file (its name and content hold the marker) and a batch on it.
    line = {"custom_id": a.marker, "method": "POST", "url": "/v1/chat/completions",
            "body": chat_body(a.marker)}  # fmt: skip
    up = httpx.post(
        server.base_url + "/v1/files",
        headers={"authorization": f"Bearer {a.member.key}"},
        files={"file": (f"{a.marker}.jsonl", json.dumps(line).encode())},
        data={"purpose": "batch"},
        timeout=60,
    )
    assert up.status_code == 200, up.text
    batch = call(server, a.member, "POST", "/v1/batches", {"input_file_id": up.json()["id"],
                 "endpoint": "/v1/chat/completions", "completion_window": "24h"})  # fmt: skip
    assert batch.status_code == 200, batch.text
    a.batch = {"file": up.json()["id"], "batch": batch.json()["id"]}
    a.ids = [
        a.member.user_id,
        a.admin.user_id,
        a.admin.id,
        a.member.key,
        a.admin.key,
        a.member.key[:16],
        a.marker,
        a.end_user,
    ]
    a.ids += list(a.batch.values())  # A's file and batch ids: never in B's answers
    a.ids.append(a.rag["ing"])
    return a, b


def chat_body(marker: str, model: str = "fake", text: str = MSG_TEXT) -> dict[str, Any]:
    return {
        "model": model,
        "temperature": 0,
        "messages": [{"role": "user", "content": text + marker}],
    }


def call(
    server: ServerThread, key: NewKey, method: str, path: str, body: Any = None
) -> httpx.Response:
    return httpx.request(
        method,
        server.base_url + path,
        headers={"authorization": f"Bearer {key.key}"},
        json=body,
        timeout=60,
    )


# (name, method, path template, body, statuses that count as refused).
# Templates: {a}=A's tenant, {a_user}=A's member user, {a_key}=A's member key id.
# A 200 is allowed only where listed (lists filtered to the caller's tenant).
ROWS: list[tuple[str, str, str, Any, set[int]]] = [
    ("usage of a foreign user", "GET", "/v1/usage?user={a_user}", None, {200, 403, 404}),
    ("usage (whole tenant)", "GET", "/v1/usage", None, {200}),
    ("usage of a foreign end user", "GET", "/v1/usage?end_user={a_end_user}", None, {200}),
    ("usage by end user", "GET", "/v1/usage?group_by=end_user", None, {200}),
    ("export a foreign end user", "GET", "/v1/admin/privacy/{a}/end-users/{a_end_user}/export",
     None, {403}),
    ("erase a foreign end user", "POST", "/v1/admin/privacy/{a}/end-users/{a_end_user}/erase",
     None, {403}),
    ("config reload", "POST", "/v1/admin/config/reload", None, {400}),
    ("limits of a foreign key", "GET", "/v1/admin/limits/key/{a_key}", None, {403, 404}),
    ("set limits of a foreign key", "PUT", "/v1/admin/limits/key/{a_key}",
     {"requests_per_minute": 1}, {403, 404}),
    ("clear limits of a foreign key", "DELETE", "/v1/admin/limits/key/{a_key}", None, {403, 404}),
    ("limits of a foreign user", "GET", "/v1/admin/limits/user/{a}/{a_user}", None, {403, 404}),
    ("set limits of a foreign user", "PUT", "/v1/admin/limits/user/{a}/{a_user}",
     {"requests_per_minute": 1}, {403, 404}),
    ("limits of a foreign tenant", "GET", "/v1/admin/limits/tenant/{a}", None, {403, 404}),
    ("clear limits of a foreign tenant", "DELETE", "/v1/admin/limits/tenant/{a}", None,
     {403, 404}),
    ("budget of a foreign key", "GET", "/v1/admin/budgets/key/{a_key}", None, {403, 404}),
    ("budget of a foreign user", "GET", "/v1/admin/budgets/user/{a}/{a_user}", None, {403, 404}),
    ("set budget of a foreign user", "PUT", "/v1/admin/budgets/user/{a}/{a_user}",
     {"daily_usd": "0"}, {403, 404}),
    ("clear budget of a foreign user", "DELETE", "/v1/admin/budgets/user/{a}/{a_user}", None,
     {403, 404}),
    ("budget of a foreign tenant", "GET", "/v1/admin/budgets/tenant/{a}", None, {403, 404}),
    ("set budget of a foreign tenant", "PUT", "/v1/admin/budgets/tenant/{a}",
     {"monthly_usd": "0"}, {403, 404}),
    ("clear budget of a foreign tenant", "DELETE", "/v1/admin/budgets/tenant/{a}", None,
     {403, 404}),
    ("list keys", "GET", "/v1/admin/keys", None, {200}),
    ("rotate a foreign key", "POST", "/v1/admin/keys/{a_key}/rotate", {"grace_s": 0}, {403, 404}),
    ("revoke a foreign key", "DELETE", "/v1/admin/keys/{a_key}", None, {403, 404}),
    ("audit log", "GET", "/v1/admin/audit", None, {200}),
    ("rag collections", "GET", "/v1/rag/collections", None, {200}),
    ("rag collection", "GET", "/v1/rag/collections/{a_col}", None, {404}),
    ("rag collection by name", "GET", "/v1/rag/collections/{a_col_name}", None, {404}),
    ("delete rag collection", "DELETE", "/v1/rag/collections/{a_col}", None, {404}),
    ("rag documents", "GET", "/v1/rag/collections/{a_col}/documents", None, {404}),
    ("rag document", "GET", "/v1/rag/collections/{a_col}/documents/{a_doc}?include_text=true",
     None, {404}),
    ("add rag document", "POST", "/v1/rag/collections/{a_col}/documents", {"text": "x"}, {404}),
    ("add rag document in background", "POST",
     "/v1/rag/collections/{a_col}/documents?background=true", {"text": "x"}, {404}),
    ("rag ingestion", "GET", "/v1/rag/collections/{a_col}/ingestions/{a_ing}", None, {404}),
    ("delete rag document", "DELETE", "/v1/rag/collections/{a_col}/documents/{a_doc}", None,
     {404}),
    ("rag search", "POST", "/v1/rag/collections/{a_col}/search", {"query": "reset password"},
     {404}),
    ("rag answer", "POST", "/v1/rag/collections/{a_col}/answer",
     {"model": "fake", "query": "reset password"}, {404}),
    ("files", "GET", "/v1/files", None, {200}),
    ("a foreign file", "GET", "/v1/files/{a_file}", None, {404}),
    ("a foreign file's content", "GET", "/v1/files/{a_file}/content", None, {404}),
    ("delete a foreign file", "DELETE", "/v1/files/{a_file}", None, {404}),
    ("files after a foreign file", "GET", "/v1/files?after={a_file}", None, {200}),
    ("batches", "GET", "/v1/batches", None, {200}),
    ("batches after a foreign batch", "GET", "/v1/batches?after={a_batch}", None, {200}),
    ("a foreign batch", "GET", "/v1/batches/{a_batch}", None, {404}),
    ("cancel a foreign batch", "POST", "/v1/batches/{a_batch}/cancel", None, {404}),
    ("batch on a foreign file", "POST", "/v1/batches",
     {"input_file_id": "{a_file}", "endpoint": "/v1/chat/completions",
      "completion_window": "24h"}, {404}),
    ("chat grounded on a foreign collection", "POST", "/v1/chat/completions",
     {"model": "fake", "messages": [{"role": "user", "content": "reset password"}],
      "rag": {"collection": "{a_col}"}}, {404}),
]  # fmt: skip


def fill(template: str, a: Tenant) -> str:
    return template.format(
        a=a.id,
        a_user=a.member.user_id,
        a_end_user=a.end_user,
        a_key=a.member.id,
        a_col=a.rag.get("col", ""),
        a_col_name=a.rag.get("name", ""),
        a_doc=a.rag.get("doc", ""),
        a_ing=a.rag.get("ing", ""),
        a_file=a.batch.get("file", ""),
        a_batch=a.batch.get("batch", ""),
    )


def fill_body(body: Any, a: Tenant) -> Any:
    """Templates inside a JSON body too (the chat row names A's collection there)."""
    if isinstance(body, dict):
        return {k: fill_body(v, a) for k, v in body.items()}
    if isinstance(body, list):
        return [fill_body(v, a) for v in body]
    return fill(body, a) if isinstance(body, str) and "{a" in body else body


def assert_no_leak(resp: httpx.Response, a: Tenant, sent: str) -> None:
    """Nothing of A's that the caller did not send itself is in the answer."""
    text = resp.text
    for secret in [*a.ids, a.id]:
        if secret not in sent:
            assert secret not in text, f"{secret!r} leaked in {resp.status_code}: {text[:500]}"
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error"}, body


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "allowed"), ROWS, ids=[r[0] for r in ROWS]
)
def test_foreign_admin_key_gets_nothing(
    server: ServerThread,
    tenants: tuple[Tenant, Tenant],
    name: str,
    method: str,
    path: str,
    body: Any,
    allowed: set[int],
) -> None:
    a, b = tenants
    url = fill(path, a)
    body = fill_body(body, a)
    r = call(server, b.admin, method, url, body)
    assert r.status_code in allowed, f"{name}: {r.status_code} {r.text[:300]}"
    assert_no_leak(r, a, url + str(body))
    if r.status_code == 200 and "data" in r.json():
        assert r.json()["data"] == [] or all(a.id not in str(row) for row in r.json()["data"]), (
            r.text
        )


def test_a_is_untouched_by_b(server: ServerThread, tenants: tuple[Tenant, Tenant]) -> None:
    """After every row ran: A's keys, limits, budgets and usage are as A left them."""
    a, _ = tenants
    r = call(server, a.member, "POST", "/v1/chat/completions", chat_body("after-" + a.marker))
    assert r.status_code == 200, r.text  # not revoked, not rotated, not capped to 0
    limits = call(server, a.admin, "GET", f"/v1/admin/limits/key/{a.member.id}").text
    assert "77" in limits
    budget = call(server, a.admin, "GET", f"/v1/admin/budgets/tenant/{a.id}").text
    assert "750" in budget
    usage = call(server, a.admin, "GET", "/v1/usage").json()
    assert usage["total_requests"] >= 1
    listed = call(server, a.admin, "GET", "/v1/admin/keys").json()["data"]
    assert {k["id"] for k in listed} >= {a.member.id, a.admin.id}
    assert all(k["revoked_at"] is None for k in listed)
    docs = call(server, a.member, "GET", f"/v1/rag/collections/{a.rag['col']}/documents")
    assert [d["id"] for d in docs.json()["data"]] == [a.rag["doc"]]  # not deleted, no intruder
    f = call(server, a.member, "GET", f"/v1/files/{a.batch['file']}")
    assert f.status_code == 200 and f.json()["filename"] == f"{a.marker}.jsonl"
    files = call(server, a.member, "GET", "/v1/files").json()["data"]
    assert [x["id"] for x in files] == [a.batch["file"]]  # no intruder's file in A's list
    batch = call(server, a.member, "GET", f"/v1/batches/{a.batch['batch']}").json()
    assert batch["status"] == "validating"  # not cancelled by B (no worker runs here)


def test_b_sees_its_own_data_only(server: ServerThread, tenants: tuple[Tenant, Tenant]) -> None:
    """The 200 rows return B's data (so the emptiness above is not an error in disguise)."""
    a, b = tenants
    keys = call(server, b.admin, "GET", "/v1/admin/keys").json()["data"]
    assert {k["tenant"] for k in keys} == {b.id}
    assert {k["id"] for k in keys} >= {b.admin.id, b.member.id}
    entries = call(server, a.admin, "GET", "/v1/admin/audit").json()["data"]
    assert entries, "A's admin actions are in A's audit log"
    assert a.admin.id in str(entries)


# Covered by ROWS, or not tenant data (the model catalogue).
COVERED = ("/v1/admin/limits", "/v1/admin/budgets", "/v1/admin/keys", "/v1/models")


def _later_routes(server: ServerThread) -> list[tuple[str, str]]:
    """/v1 routes with path parameters beyond the table (privacy, files, batches...)."""
    return sorted(
        (method, path)
        for method, path in iter_routes(server.app.routes)
        if path.startswith("/v1/") and "{" in path and not path.startswith(COVERED)
    )


def by_name(param: str, a: Tenant) -> str:
    """A's id for a path parameter, by its name (tenant, user/subject, else a key id)."""
    if "tenant" in param:
        return a.id
    if "user" in param or "subject" in param:
        return a.member.user_id
    return a.member.id


def test_later_feature_routes_refuse_foreign_ids(
    server: ServerThread, tenants: tuple[Tenant, Tenant]
) -> None:
    """Every other parameterised /v1 route, filled with A's ids, answers B without A's data."""
    a, b = tenants
    routes = _later_routes(server)
    if not routes:
        pytest.skip("no other tenant-data routes in this build")
    for method, path in routes:
        for value in ("", a.member.user_id, a.member.id, a.id):
            url = re.sub(r"\{([^}:]*)[^}]*\}", lambda m, v=value: v or by_name(m[1], a), path)
            body = None if method in ("GET", "DELETE") else {}
            r = call(server, b.admin, method, url, body)
            assert r.status_code < 500, f"{method} {url}: {r.status_code} {r.text[:300]}"
            assert_no_leak(r, a, url)
    test_a_is_untouched_by_b(server, tenants)


def test_exact_cache_is_per_tenant(server: ServerThread, tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    body = chat_body("exact-" + a.marker)
    assert call(server, a.member, "POST", "/v1/chat/completions", body).status_code == 200
    again = call(server, a.member, "POST", "/v1/chat/completions", body)
    assert again.headers["x-strata-cache"] == "hit-exact"  # the entry exists
    r = call(server, b.member, "POST", "/v1/chat/completions", body)
    assert r.status_code == 200
    assert r.headers["x-strata-cache"] == "miss"
    assert r.json()["id"] != again.json()["id"]
    # B's admin may replay B's own entry, never A's.
    r2 = call(server, b.admin, "POST", "/v1/chat/completions", body)
    assert r2.json()["id"] != again.json()["id"]


def test_semantic_cache_is_per_tenant(server: ServerThread, tenants: tuple[Tenant, Tenant]) -> None:
    embedder = server.runtime.providers["local-embed"]
    deadline = time.monotonic() + 120
    while not embedder.ready():
        assert time.monotonic() < deadline, "the embedding model did not load"
        time.sleep(0.05)
    a, b = tenants
    tag = " (ticket " + a.marker + ")"
    first = chat_body("", "fake-sem", "How do I reset my password?" + tag)
    para = chat_body("", "fake-sem", "How can I reset my password?" + tag)
    assert call(server, a.member, "POST", "/v1/chat/completions", first).status_code == 200
    chat = server.runtime.chat
    for _ in range(300):
        if not chat.semantic._pending and not chat.cache._pending:
            break
        time.sleep(0.02)
    r = call(server, b.member, "POST", "/v1/chat/completions", para)
    assert r.status_code == 200
    assert r.headers["x-strata-cache"] not in ("hit-exact", "hit-semantic"), r.headers
    own = call(server, a.member, "POST", "/v1/chat/completions", para)
    assert own.headers["x-strata-cache"] == "hit-semantic"  # the entry was there for A
