"""Documents are personal data: encrypted at rest (no plaintext in any RAG table, the
full-text index included), exported and erased with their uploader."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread
from tests.rag.conftest import BASE, add, call, search
from tests.rag.test_api import raw_rows

TABLES = ("rag_collections", "rag_documents", "rag_chunks")


def test_raw_tables_hold_no_plaintext(
    server: ServerThread, new_key: Callable[..., NewKey], database_url: str
) -> None:
    tenant = "rag-pii-" + uuid.uuid4().hex[:8]
    admin = new_key(tenant=tenant, user="dpo", is_admin=True)
    alice = new_key(tenant=tenant, user="alice-" + uuid.uuid4().hex[:6])
    bob = new_key(tenant=tenant, user="bob-" + uuid.uuid4().hex[:6])
    surname = "Quaxtonbury" + uuid.uuid4().hex[:6]
    ssn = "078-05-" + str(1000 + uuid.uuid4().int % 9000)
    email = f"{surname.lower()}@example.org"
    col = call(server, alice, "POST", BASE, json={"name": "patients"}).json()
    (doc,) = add(
        server,
        alice,
        col,
        {
            "text": f"# Intake\n\nPatient Jane {surname} (SSN {ssn}, {email}) reports "
            "persistent migraines since March.",
            "format": "markdown",
            "source": f"intake-{surname}.md",
            "metadata": {"patient": f"Jane {surname}"},
        },
    )
    (kept,) = add(server, bob, col, {"text": "Unrelated rota for the night shift."})

    needles = [surname, surname.lower(), ssn, email, "migraine", "Intake"]
    for table in TABLES:
        rows = raw_rows(database_url, f"SELECT t::text AS row FROM {table} t")
        assert rows, table
        for r in rows:
            for needle in needles:
                assert needle.lower() not in r["row"].lower(), (table, needle)

    # The hashed full-text index still finds the name; filters on hashed metadata too.
    found = search(server, alice, col, surname, mode="lexical")
    assert found and found[0]["document_id"] == doc["id"]
    assert surname in found[0]["text"]
    filtered = search(
        server, alice, col, "headache", filters={"patient": f"Jane {surname}"}, min_similarity=-1
    )
    assert [h["document_id"] for h in filtered] == [doc["id"]]

    # GDPR export: the documents the subject uploaded, decrypted.
    export = call(server, admin, "GET", f"/v1/admin/privacy/{tenant}/{alice.user_id}/export")
    assert export.status_code == 200, export.text
    docs = export.json()["rag_documents"]
    assert [d["id"] for d in docs] == [doc["id"]]
    assert surname in docs[0]["text"] and docs[0]["collection"] == "patients"
    assert docs[0]["metadata"] == {"patient": f"Jane {surname}"}

    # Erasure: the documents, chunks and vectors go; another user's stay.
    erase = call(server, admin, "POST", f"/v1/admin/privacy/{tenant}/{alice.user_id}/erase")
    assert erase.status_code == 200, erase.text
    counts = erase.json()["counts"]
    assert counts["rag_documents"] == 1 and counts["rag_chunks"] == doc["chunks"]
    assert raw_rows(database_url, "SELECT 1 FROM rag_documents WHERE id = $1", doc["id"]) == []
    assert (
        raw_rows(database_url, "SELECT 1 FROM rag_chunks WHERE document_id = $1", doc["id"]) == []
    )
    assert raw_rows(database_url, "SELECT 1 FROM rag_chunks WHERE document_id = $1", kept["id"])
    again = call(server, admin, "POST", f"/v1/admin/privacy/{tenant}/{alice.user_id}/erase")
    assert again.json()["counts"]["rag_documents"] == 0


def test_key_rotation_reencrypts_documents(
    server: ServerThread, new_key: Callable[..., NewKey], database_url: str
) -> None:
    from strata.security import crypto as crypto_mod
    from strata.storage.engine import make_engine

    key = new_key(tenant="rag-rot-" + uuid.uuid4().hex[:8])
    col = call(server, key, "POST", BASE, json={"name": "rotating"}).json()
    secret = "Okafor-" + uuid.uuid4().hex[:6]
    (doc,) = add(server, key, col, {"text": f"# Notes\n\nThe courier for {secret} comes at noon."})
    before = raw_rows(
        database_url, "SELECT dek_id FROM rag_chunks WHERE document_id = $1", doc["id"]
    )

    s = server.settings
    admin = crypto_mod.Crypto(crypto_mod.load_master_key(s.crypto, s.data_dir))

    async def rotate() -> dict[str, Any]:
        engine = make_engine(database_url, pool_size=1)
        try:
            return await crypto_mod.rotate(engine, admin)
        finally:
            await engine.dispose()

    report = asyncio.run(rotate())
    assert report["stores"]["rag"] >= 1
    after = raw_rows(
        database_url,
        "SELECT d.dek_id AS d, c.dek_id AS c FROM rag_documents d "
        "JOIN rag_chunks c ON c.document_id = d.id WHERE d.id = $1",
        doc["id"],
    )
    assert {(r["d"], r["c"]) for r in after} == {(report["key_id"], report["key_id"])}
    assert before[0]["dek_id"] != report["key_id"]
    # No RAG row keeps the old key (rotation retires it once no store uses it).
    from strata.storage.repositories import rag as rag_repo

    async def in_use() -> set[int]:
        engine = make_engine(database_url, pool_size=1)
        try:
            return await rag_repo.key_ids_in_use(engine)
        finally:
            await engine.dispose()

    assert asyncio.run(in_use()) == {report["key_id"]}
    # The server picks up the new key (its refresh) and still reads the document.
    server.call(crypto_mod.sync_keys(server.runtime.engine, server.runtime.chat.cache.crypto))
    hits = search(server, key, col, secret, mode="lexical")
    assert hits and secret in hits[0]["text"]
