"""Documents are personal data: encrypted at rest (no plaintext in any RAG table, the
full-text index included), exported and erased with their uploader."""

from __future__ import annotations

import uuid
from collections.abc import Callable

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
