"""The RAG API end to end: real PostgreSQL (pgvector), the embedded MiniLM, httpx."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from strata.storage.engine import make_engine
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread
from tests.rag.conftest import BASE, add, call, search
from tests.rag.pdf import make_pdf

REFUNDS = """# Billing handbook

## Refunds

Customers may ask for their money back within thirty days of purchase. Refunds go to
the original card and take five business days.

## Invoices

Invoices are emailed on the first day of each month as PDF attachments.
"""
OUTAGES = """# Support runbook

## Outages

When the status page shows a major outage, page the on-call engineer and post an
update every thirty minutes. Error ZX-4471 means the storage cluster is read-only.
"""


def raw_rows(database_url: str, sql: str, *args: Any) -> list[Any]:
    async def go() -> list[Any]:
        engine = make_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                return list(await raw.driver_connection.fetch(sql, *args))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_collection_lifecycle(server: ServerThread, tenant_key: NewKey) -> None:
    name = "docs-" + uuid.uuid4().hex[:8]
    r = call(
        server,
        tenant_key,
        "POST",
        BASE,
        json={
            "name": name,
            "chunking": {"max_tokens": 120, "overlap_tokens": 20},
            "metadata_schema": {"team": "string", "year": "number"},
        },
    )
    assert r.status_code == 200, r.text
    col = r.json()
    assert col["dimensions"] == 384 and col["embedding_model"] == "embed-default"
    assert col["chunking"] == {"max_tokens": 120, "overlap_tokens": 20}
    again = call(server, tenant_key, "POST", BASE, json={"name": name})
    assert again.status_code == 400 and again.json()["error"]["code"] == "already_exists"
    listed = call(server, tenant_key, "GET", BASE).json()["data"]
    assert col["id"] in [c["id"] for c in listed]
    by_name = call(server, tenant_key, "GET", f"{BASE}/{name}")
    assert by_name.status_code == 200 and by_name.json()["id"] == col["id"]
    # The schema is enforced.
    bad = call(
        server,
        tenant_key,
        "POST",
        f"{BASE}/{col['id']}/documents",
        json={"text": "x y z", "metadata": {"year": "2024"}},
    )
    assert bad.status_code == 400 and "number" in bad.json()["error"]["message"]
    unknown = call(
        server,
        tenant_key,
        "POST",
        f"{BASE}/{col['id']}/documents",
        json={"text": "x y z", "metadata": {"color": "red"}},
    )
    assert unknown.status_code == 400
    gone = call(server, tenant_key, "DELETE", f"{BASE}/{col['id']}")
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert call(server, tenant_key, "GET", f"{BASE}/{col['id']}").status_code == 404


def test_ingest_search_filters_and_dedupe(
    server: ServerThread, tenant_key: NewKey, collection: dict[str, Any]
) -> None:
    first = add(
        server,
        tenant_key,
        collection,
        {"text": REFUNDS, "format": "markdown", "source": "billing.md",
         "metadata": {"team": "billing", "year": 2024}},
        {"text": OUTAGES, "format": "markdown", "source": "runbook.md",
         "metadata": {"team": "support", "year": 2025}},
    )  # fmt: skip
    assert [d["status"] for d in first] == ["created", "created"]
    assert all(d["chunks"] >= 1 and d["id"].startswith("doc_") for d in first)

    hits = search(server, tenant_key, collection, "how long until I get my money back?")
    top = hits[0]
    assert top["source"] == "billing.md"
    assert top["heading"] == ["Billing handbook", "Refunds"]
    assert "thirty days" in top["text"]
    assert top["metadata"] == {"team": "billing", "year": 2024}
    assert 0 < top["similarity"] <= 1 and top["score"] > 0
    assert top["ranks"]["vector"] == 1

    # An exact code: full text finds it even alone.
    lexical = search(server, tenant_key, collection, "ZX-4471", mode="lexical")
    assert lexical and lexical[0]["source"] == "runbook.md"
    assert lexical[0]["similarity"] is None and lexical[0]["ranks"]["vector"] is None

    # Filters: every key must match, any listed value.
    support = search(server, tenant_key, collection, "money back", filters={"team": "support"})
    assert support and {h["source"] for h in support} == {"runbook.md"}
    both = search(
        server,
        tenant_key,
        collection,
        "money",
        filters={"team": ["support", "billing"]},
        min_similarity=-1,
    )
    assert {h["source"] for h in both} == {"billing.md", "runbook.md"}
    none = search(
        server,
        tenant_key,
        collection,
        "money",
        filters={"team": "billing", "year": 2025},
        min_similarity=-1,
    )
    assert none == []
    # The similarity floor.
    assert (
        search(server, tenant_key, collection, "quantum chromodynamics", min_similarity=0.9) == []
    )

    # Same content again: skipped by its hash; the ids are the same.
    again = add(
        server,
        tenant_key,
        collection,
        {"text": REFUNDS, "format": "markdown", "source": "billing.md",
         "metadata": {"team": "billing", "year": 2024}},
    )  # fmt: skip
    assert again == [{**first[0], "status": "unchanged"}]
    col = call(server, tenant_key, "GET", f"{BASE}/{collection['id']}").json()
    assert col["documents"] == 2 and col["chunks"] == sum(d["chunks"] for d in first)


def test_multipart_uploads_every_format(
    server: ServerThread, tenant_key: NewKey, collection: dict[str, Any]
) -> None:
    jsonl = (
        b'{"id": "faq-1", "title": "Shipping", "text": "Parcels ship from Rotterdam.", '
        b'"lang": "en"}\n{"id": "faq-2", "text": "Gift cards never expire.", "lang": "en"}\n'
    )
    pdf = make_pdf([["The pump primes in ninety seconds."]])
    files = [
        ("file", ("manual.pdf", pdf, "application/pdf")),
        ("file", ("page.html", b"<h1>Hours</h1><p>Open from nine to five.</p>", "text/html")),
        ("file", ("faq.jsonl", jsonl, "application/octet-stream")),
        ("file", ("notes.txt", b"Plain notes about the garden.", "text/plain")),
    ]  # fmt: skip
    r = call(
        server,
        tenant_key,
        "POST",
        f"{BASE}/{collection['id']}/documents",
        files=files,
        data={"metadata": orjson.dumps({"batch": "upload-1"}).decode()},
    )
    assert r.status_code == 200, r.text
    sources = [d["source"] for d in r.json()["data"]]
    assert sources == ["manual.pdf", "page.html", "faq.jsonl#faq-1", "faq.jsonl#faq-2", "notes.txt"]

    pump = search(server, tenant_key, collection, "how long does the pump take to prime")
    assert pump[0]["source"] == "manual.pdf" and pump[0]["heading"] == ["page 1"]
    gift = search(server, tenant_key, collection, "do gift cards expire")
    assert gift[0]["source"] == "faq.jsonl#faq-2"
    assert gift[0]["metadata"] == {"lang": "en", "batch": "upload-1"}

    page1 = call(server, tenant_key, "GET", f"{BASE}/{collection['id']}/documents?limit=2").json()
    assert len(page1["data"]) == 2 and page1["has_more"] is True
    rest = call(
        server,
        tenant_key,
        "GET",
        f"{BASE}/{collection['id']}/documents?limit=10&after={page1['last_id']}",
    ).json()
    assert rest["has_more"] is False
    assert sorted(d["source"] for d in page1["data"] + rest["data"]) == sorted(sources)
    doc_id = page1["data"][0]["id"]
    one = call(
        server, tenant_key, "GET", f"{BASE}/{collection['id']}/documents/{doc_id}?include_text=true"
    )
    assert one.status_code == 200 and one.json()["text"]


def test_replace_is_atomic_and_delete_takes_the_vectors(
    server: ServerThread, tenant_key: NewKey, collection: dict[str, Any], database_url: str
) -> None:
    v1 = "# Policy\n\nThe lighthouse keeper feeds the albatross every morning."
    v2 = "# Policy\n\nThe harbour master inspects the ferries every evening.\n\n" + (
        "More text. " * 300
    )
    (d1,) = add(
        server, tenant_key, collection, {"text": v1, "format": "markdown", "source": "p.md"}
    )
    (d2,) = add(
        server, tenant_key, collection, {"text": v2, "format": "markdown", "source": "p.md"}
    )
    assert d2["id"] == d1["id"] and d2["status"] == "replaced" and d2["chunks"] > d1["chunks"]
    rows = raw_rows(
        database_url,
        "SELECT position FROM rag_chunks WHERE document_id = $1 ORDER BY position",
        d1["id"],
    )
    assert [r["position"] for r in rows] == list(range(d2["chunks"]))  # only the new version
    assert not search(server, tenant_key, collection, "albatross", mode="lexical")
    assert search(server, tenant_key, collection, "ferries", mode="lexical")

    r = call(server, tenant_key, "DELETE", f"{BASE}/{collection['id']}/documents/{d1['id']}")
    assert r.status_code == 200
    assert (
        raw_rows(database_url, "SELECT id FROM rag_chunks WHERE document_id = $1", d1["id"]) == []
    )
    again = call(server, tenant_key, "DELETE", f"{BASE}/{collection['id']}/documents/{d1['id']}")
    assert again.status_code == 404


@pytest.mark.parametrize(
    ("method", "suffix", "kwargs", "param"),
    [
        ("POST", "", {"json": {"name": ""}}, "name"),
        ("POST", "", {"json": {"name": "has space"}}, "name"),
        ("POST", "", {"json": {"name": "x", "embedding_model": "fake"}}, "embedding_model"),
        ("POST", "", {"json": {"name": "x", "chunking": {"max_tokens": 50, "overlap_tokens": 50}}},
         "chunking"),
        ("POST", "", {"content": b"{nope", "headers": {"content-type": "application/json"}}, None),
        ("POST", "/documents", {"json": {"documents": []}}, "documents"),
        ("POST", "/documents", {"json": {"text": ""}}, "text"),
        ("POST", "/documents", {"json": {"text": "x", "format": "pdf"}}, "format"),
        ("POST", "/documents", {"json": {"text": "x", "metadata": {"k": {"a": 1}}}}, "metadata"),
        ("POST", "/documents", {"json": {"text": "{not json", "format": "jsonl"}}, None),
        ("POST", "/documents", {"files": [("file", ("x.pdf", b"%PDF-1.4 no", "application/pdf"))]},
         None),
        ("POST", "/documents", {"files": [("other", ("x.txt", b"x", "text/plain"))]}, "file"),
        ("POST", "/search", {"json": {"query": ""}}, "query"),
        ("POST", "/search", {"json": {"query": "x", "top_k": 0}}, "top_k"),
        ("POST", "/search", {"json": {"query": "x", "top_k": 51}}, "top_k"),
        ("POST", "/search", {"json": {"query": "x", "mode": "magic"}}, "mode"),
        ("POST", "/search", {"json": {"query": "x", "filters": {"k": {"a": 1}}}}, "filters.k"),
        ("POST", "/search", {"json": {"query": "x", "filters": {"k": []}}}, "filters.k"),
        ("GET", "/documents?limit=0", {}, "limit"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_400(
    server: ServerThread,
    tenant_key: NewKey,
    collection: dict[str, Any],
    method: str,
    suffix: str,
    kwargs: dict[str, Any],
    param: str | None,
) -> None:
    path = BASE if suffix == "" else f"{BASE}/{collection['id']}{suffix}"
    r = call(server, tenant_key, method, path, **kwargs)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if param is not None:
        assert err["param"] == param or (err["param"] or "").startswith(param), err


def test_unknown_ids_are_404s(server: ServerThread, tenant_key: NewKey) -> None:
    for method, path, body in [
        ("GET", f"{BASE}/col_nope", None),
        ("DELETE", f"{BASE}/col_nope", None),
        ("POST", f"{BASE}/col_nope/search", {"query": "x"}),
        ("POST", f"{BASE}/col_nope/documents", {"text": "x"}),
    ]:
        r = call(server, tenant_key, method, path, json=body)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["type"] == "not_found_error"


def test_other_tenants_see_nothing(
    server: ServerThread,
    tenant_key: NewKey,
    collection: dict[str, Any],
    new_key: Callable[..., NewKey],
) -> None:
    marker = "zebracorn-" + uuid.uuid4().hex[:8]
    (doc,) = add(server, tenant_key, collection, {"text": f"The {marker} lives here."})
    other = new_key(tenant="rag-other-" + uuid.uuid4().hex[:8])
    cid, name = collection["id"], collection["name"]
    for method, path, body in [
        ("GET", f"{BASE}/{cid}", None),
        ("GET", f"{BASE}/{name}", None),
        ("GET", f"{BASE}/{cid}/documents", None),
        ("GET", f"{BASE}/{cid}/documents/{doc['id']}", None),
        ("POST", f"{BASE}/{cid}/search", {"query": marker}),
        ("POST", f"{BASE}/{cid}/documents", {"text": "intruder"}),
        ("DELETE", f"{BASE}/{cid}/documents/{doc['id']}", None),
        ("DELETE", f"{BASE}/{cid}", None),
    ]:
        r = call(server, other, method, path, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert marker not in r.text
    assert cid not in call(server, other, "GET", BASE).text
    # An identically named collection of the other tenant is a different one.
    mine = call(server, other, "POST", BASE, json={"name": name})
    assert mine.status_code == 200 and mine.json()["id"] != cid
    assert search(server, other, mine.json(), marker) == []
    assert search(server, tenant_key, collection, marker)[0]["document_id"] == doc["id"]


def test_rag_scope_is_required(
    server: ServerThread, collection: dict[str, Any], database_url: str, tenant_key: NewKey
) -> None:
    from tests.conftest import _create_key

    key = _create_key(
        database_url, tenant_id=tenant_key.tenant_id, user_id="chat-only", scopes=["chat"]
    )
    r = call(server, key, "GET", BASE)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
