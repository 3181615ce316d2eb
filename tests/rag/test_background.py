"""Large RAG uploads as a job: 202 and an ingestion to poll, a worker (taking the
job from Redis) ingests it, the counts move, the transient copies go.

Real PostgreSQL (pgvector) and Redis, the embedded MiniLM, httpx. The API server
runs no worker (its queue is this module's own); tests that need one start an
in-process worker on the server's runtime, as `strata serve` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from strata.jobs.queue import describe, ingestion_key, make_queue
from strata.jobs.scheduled import reconcile_batches
from strata.jobs.worker import InProcessWorker
from strata.storage.repositories.keys import NewKey
from tests.conftest import TEST_CONFIG, ServerThread
from tests.jobs.helpers import query
from tests.rag.conftest import BASE, call, search

THRESHOLD = 4096


def handbook(marker: str) -> str:
    """A markdown document past THRESHOLD bytes, several chunks long."""
    parts = [f"# Warehouse handbook {marker}\n"]
    for i in range(12):
        parts.append(
            f"\n## Section {i}\n\n"
            + " ".join(
                f"Pallets in aisle {i} are counted every morning by the shift lead."
                for _ in range(8)
            )
            + "\n"
        )
    parts.append(
        "\n## Forklifts\n\nForklift batteries are swapped at the orange charging bay "
        "before the night shift; code QX-5512 means a battery fault.\n"
    )
    text = "".join(parts)
    assert len(text.encode()) > THRESHOLD
    return text


@pytest.fixture(scope="module")
def bg_server(start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server(
        jobs={"queue": "test-rag-bg-" + uuid.uuid4().hex[:8], "embedded_worker": False},
        rag={"background_bytes": THRESHOLD},
    )


@pytest.fixture(scope="module")
def key(new_key: Callable[..., NewKey]) -> NewKey:
    return new_key(tenant="ragbg-" + uuid.uuid4().hex[:8], user="up-" + uuid.uuid4().hex[:6])


@pytest.fixture
def col(bg_server: ServerThread, key: NewKey) -> dict[str, Any]:
    r = call(
        bg_server,
        key,
        "POST",
        BASE,
        json={"name": "bg-" + uuid.uuid4().hex[:8], "metadata_schema": {"team": "string"}},
    )
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


@pytest.fixture
def worker(bg_server: ServerThread) -> Iterator[InProcessWorker]:
    async def start() -> InProcessWorker:
        w = InProcessWorker(bg_server.runtime)
        w.start()
        return w

    w = bg_server.call(start())
    yield w
    bg_server.call(w.stop(), 60)


def wait(server: ServerThread, key: NewKey, col: dict[str, Any], ing: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        r = call(server, key, "GET", f"{BASE}/{col['id']}/ingestions/{ing}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in ("completed", "failed"):
            return body
        assert time.monotonic() < deadline, f"ingestion still {body['status']}"
        time.sleep(0.2)


def stored_uploads(database_url: str, tenant: str) -> list[Any]:
    return query(
        database_url,
        "SELECT f.id, f.purpose, c.data FROM files f JOIN file_chunks c ON c.file_id = f.id "
        "WHERE f.tenant_id = :t",
        t=tenant,
    )


def ingestions_of(database_url: str, col_id: str) -> list[Any]:
    return query(database_url, "SELECT id FROM rag_ingestions WHERE collection_id = :c", c=col_id)


def queued_count(server: ServerThread) -> int:
    async def count() -> int:
        q = make_queue(server.settings)
        try:
            return int(await q.count("incomplete"))
        finally:
            await q.disconnect()

    return int(server.call(count()))


def test_bad_upload_is_a_400_and_queues_nothing(
    bg_server: ServerThread, key: NewKey, col: dict[str, Any], database_url: str
) -> None:
    before = queued_count(bg_server)
    url = f"{BASE}/{col['id']}/documents"
    big = handbook("bad")
    for path, body in (
        (url, {"text": big, "metadata": {"owner": "x"}}),  # not in the schema
        (url, {"text": big, "metadata": {"team": 7}}),  # the schema says string
        (url + "?background=true", {"text": "x", "format": "pdf"}),
        (url, {"documents": [], "background": True}),
        (url, {"text": "x", "background": "maybe"}),
        (url + "?background=perhaps", {"text": "x"}),
        (url + "?background=true", {"text": "x", "source": "s" * 1001}),
    ):
        r = call(bg_server, key, "POST", path, json=body)
        assert r.status_code == 400, (body, r.text)
        assert set(r.json()) == {"error"}
    assert ingestions_of(database_url, col["id"]) == []
    assert stored_uploads(database_url, key.tenant_id) == []
    assert queued_count(bg_server) == before


def test_small_uploads_stay_in_the_request_unless_asked(
    bg_server: ServerThread, new_key: Callable[..., NewKey], database_url: str
) -> None:
    # A tenant of its own: its queued ingestions are not the worker test's.
    key = new_key(tenant="ragbg-small-" + uuid.uuid4().hex[:6])
    col = call(bg_server, key, "POST", BASE, json={"name": "small"}).json()
    url = f"{BASE}/{col['id']}/documents"
    r = call(bg_server, key, "POST", url, json={"text": "A short note.", "source": "n1"})
    assert r.status_code == 200 and r.json()["data"][0]["status"] == "created"
    asked = [
        call(bg_server, key, "POST", url + "?background=true", json={"text": "Note two."}),
        call(bg_server, key, "POST", url, json={"text": "Note three.", "background": True}),
        call(
            bg_server, key, "POST", url + "?background=1",
            files={"file": ("n4.md", b"# Note four\n\nText.", "text/markdown")},
        ),
    ]  # fmt: skip
    for r in asked:
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued" and r.json()["id"].startswith("ing_")
    ids = {r.json()["id"] for r in asked}
    assert {row[0] for row in ingestions_of(database_url, col["id"])} == ids


def test_a_worker_ingests_a_large_upload(
    bg_server: ServerThread,
    key: NewKey,
    col: dict[str, Any],
    database_url: str,
    new_key: Callable[..., NewKey],
    request: pytest.FixtureRequest,
) -> None:
    marker = "zebra" + uuid.uuid4().hex[:6]
    docs: list[dict[str, Any]] = [
        {"text": handbook(marker), "source": f"{marker}-handbook.md", "format": "markdown",
         "metadata": {"team": "ops"}},
        {"text": f"Visitors sign in at the front desk. {marker}", "source": f"{marker}-visitors"},
    ]  # fmt: skip
    r = call(bg_server, key, "POST", f"{BASE}/{col['id']}/documents", json={"documents": docs})
    assert r.status_code == 202, r.text  # past rag.background_bytes: no need to ask
    ing = r.json()
    assert ing["object"] == "rag.ingestion" and ing["status"] == "queued"
    assert ing["uploads"] == 2 and ing["documents"] == 0 and ing["error"] is None

    # Queued, not ingested: the copies are stored encrypted and not in GET /v1/files.
    listed = call(bg_server, key, "GET", f"{BASE}/{col['id']}/documents").json()["data"]
    assert listed == []
    uploads = stored_uploads(database_url, key.tenant_id)
    assert {u[1] for u in uploads} == {"rag-ingest"} and len({u[0] for u in uploads}) == 2
    assert all(marker.encode() not in bytes(u[2]) for u in uploads)
    files = call(bg_server, key, "GET", "/v1/files").json()["data"]
    assert files == []

    # Another tenant cannot see it, whether through its own collection or ours.
    other = new_key(tenant="ragbg-other-" + uuid.uuid4().hex[:6])
    own = call(bg_server, other, "POST", BASE, json={"name": "o-" + uuid.uuid4().hex[:6]}).json()
    for c in (own["id"], col["id"]):
        r = call(bg_server, other, "GET", f"{BASE}/{c}/ingestions/{ing['id']}")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        assert marker not in r.text and col["name"] not in r.text

    w = request.getfixturevalue("worker")
    done = wait(bg_server, key, col, ing["id"])
    assert done["status"] == "completed", done
    assert done["error"] is None and done["finished_at"] >= done["started_at"]
    listed = call(bg_server, key, "GET", f"{BASE}/{col['id']}/documents").json()["data"]
    assert sorted(d["source"] for d in listed) == sorted(d["source"] for d in docs)
    assert done["documents"] == 2 and done["chunks"] == sum(d["chunks"] for d in listed)
    assert next(d for d in listed if d["source"].endswith(".md"))["chunks"] > 1
    hits = search(bg_server, key, col, "what does code QX-5512 mean for forklifts")
    assert hits and hits[0]["source"] == f"{marker}-handbook.md"
    # The transient copies are gone; the job is on the queue's list as `strata jobs` shows it.
    assert stored_uploads(database_url, key.tenant_id) == []

    async def job() -> Any:
        return await w.worker.queue.job(ingestion_key(ing["id"]))

    shown = describe(bg_server.call(job()))
    assert shown["function"] == "ingest_documents" and shown["status"] == "complete"
    assert shown["kwargs"] == {"ingestion_id": ing["id"]}

    # The same upload again: every document is skipped by its content hash.
    again = call(
        bg_server, key, "POST", f"{BASE}/{col['id']}/documents?background=true",
        json={"documents": docs},
    )  # fmt: skip
    assert again.status_code == 202, again.text
    done2 = wait(bg_server, key, col, again.json()["id"])
    assert (done2["status"], done2["documents"]) == ("completed", 2)
    assert len(call(bg_server, key, "GET", f"{BASE}/{col['id']}/documents").json()["data"]) == 2


def test_an_upload_that_cannot_be_extracted_fails_with_a_message(
    bg_server: ServerThread,
    key: NewKey,
    col: dict[str, Any],
    database_url: str,
    worker: InProcessWorker,
) -> None:
    r = call(
        bg_server, key, "POST", f"{BASE}/{col['id']}/documents?background=true",
        files={"file": ("scan.pdf", b"%PDF-1.4 not really a pdf", "application/pdf")},
    )  # fmt: skip
    assert r.status_code == 202, r.text
    done = wait(bg_server, key, col, r.json()["id"])
    assert done["status"] == "failed" and done["documents"] == 0
    message = done["error"]["message"]
    assert "PDF" in message and "Traceback" not in message
    assert stored_uploads(database_url, key.tenant_id) == []


def test_export_and_erase_cover_queued_ingestions(
    bg_server: ServerThread, new_key: Callable[..., NewKey], database_url: str
) -> None:
    tenant = "ragbg-gdpr-" + uuid.uuid4().hex[:6]
    alice = new_key(tenant=tenant, user="alice-" + uuid.uuid4().hex[:6])
    admin = new_key(tenant=tenant, user="admin", is_admin=True)
    col = call(bg_server, alice, "POST", BASE, json={"name": "gdpr"}).json()
    source = "Jane Marlowe intake " + uuid.uuid4().hex[:6]
    r = call(
        bg_server, alice, "POST", f"{BASE}/{col['id']}/documents?background=true",
        json={"text": "Jane Marlowe reports migraines.", "source": source},
    )  # fmt: skip
    assert r.status_code == 202, r.text
    ing = r.json()["id"]
    # Nothing of the upload is in plaintext in PostgreSQL while it waits.
    for table in ("rag_ingestions", "files", "file_chunks"):
        rows = query(database_url, f"SELECT t::text FROM {table} t")
        assert all("Marlowe" not in row[0] for row in rows), table

    export = call(bg_server, admin, "GET", f"/v1/admin/privacy/{tenant}/{alice.user_id}/export")
    assert export.status_code == 200, export.text
    (item,) = export.json()["rag_ingestions"]
    assert item["id"] == ing and item["status"] == "queued"
    assert item["documents_uploaded"][0]["source"] == source
    assert "Jane Marlowe" in str(export.json()["files"])  # the transient copy, decrypted

    erase = call(bg_server, admin, "POST", f"/v1/admin/privacy/{tenant}/{alice.user_id}/erase")
    assert erase.status_code == 200, erase.text
    assert erase.json()["counts"]["rag_ingestions"] == 1
    assert query(database_url, "SELECT 1 FROM rag_ingestions WHERE id = :i", i=ing) == []
    assert stored_uploads(database_url, tenant) == []


def test_reconcile_requeues_a_dead_workers_ingestion_and_purges_old_ones(
    bg_server: ServerThread, new_key: Callable[..., NewKey], database_url: str
) -> None:
    key = new_key(tenant="ragbg-rec-" + uuid.uuid4().hex[:6])
    col = call(bg_server, key, "POST", BASE, json={"name": "rec"}).json()
    r = call(bg_server, key, "POST", f"{BASE}/{col['id']}/documents?background=true",
             json={"text": "Reconciled later."})  # fmt: skip
    ing = r.json()["id"]

    class Recorder:
        def __init__(self) -> None:
            self.keys: list[str] = []

        async def enqueue(self, job: Any) -> Any:
            self.keys.append(job.key)
            return job

    def reconcile() -> list[str]:
        q = Recorder()
        bg_server.call(reconcile_batches({"runtime": bg_server.runtime, "queue": q}))
        return q.keys

    def set_row(sql: str) -> None:
        query(database_url, f"UPDATE rag_ingestions SET {sql} WHERE id = :i", i=ing)

    assert ingestion_key(ing) in reconcile()  # queued, nobody holds it
    set_row("status = 'running', lease_owner = 'w', lease_until = now() + interval '1 hour'")
    assert ingestion_key(ing) not in reconcile()  # a live worker holds it
    set_row("lease_until = now() - interval '1 second'")
    assert ingestion_key(ing) in reconcile()  # its worker died
    set_row("status = 'completed', finished_at = now() - interval '2 hours'")
    assert ingestion_key(ing) not in reconcile()
    assert query(database_url, "SELECT 1 FROM rag_ingestions WHERE id = :i", i=ing)  # kept a day
    set_row("finished_at = now() - interval '25 hours'")
    reconcile()
    assert query(database_url, "SELECT 1 FROM rag_ingestions WHERE id = :i", i=ing) == []


def test_a_strata_worker_process_ingests(
    bg_server: ServerThread, new_key: Callable[..., NewKey], tmp_path: Path, database_url: str,
    redis_url: str,
) -> None:  # fmt: skip
    """The worker of another process (another machine: it shares only PostgreSQL and
    Redis) builds its own RagService and reads the stored copies."""
    config = {
        "providers": {"local-embed": TEST_CONFIG["providers"]["local-embed"]},
        "models": {"embed-default": TEST_CONFIG["models"]["embed-default"]},
        "crypto": TEST_CONFIG["crypto"],
        "jobs": {"queue": bg_server.settings.jobs.queue},
    }
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    env.update(
        STRATA_CONFIG=str(path),
        STRATA_DATABASE_URL=database_url,
        STRATA_REDIS_URL=redis_url,
        STRATA_DATA_DIR=str(tmp_path / "data"),
        STRATA_LOG_LEVEL="warning",
    )
    key = new_key(tenant="ragbg-proc-" + uuid.uuid4().hex[:6])
    col = call(bg_server, key, "POST", BASE, json={"name": "proc"}).json()
    doc = {"text": handbook("proc"), "source": "proc.md", "format": "markdown"}
    r = call(bg_server, key, "POST", f"{BASE}/{col['id']}/documents?background=true", json=doc)
    assert r.status_code == 202, r.text
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        strata = Path(sys.executable).parent / "strata"
        proc = subprocess.Popen([str(strata), "worker"], env=env, stdout=out, stderr=out)
    try:
        done = wait(bg_server, key, col, r.json()["id"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert done["status"] == "completed", (done, log.read_text()[-2000:])
    assert done["documents"] == 1 and done["chunks"] > 1
    hits = search(bg_server, key, col, "orange charging bay for forklift batteries")
    assert hits and hits[0]["source"] == "proc.md"
    assert stored_uploads(database_url, key.tenant_id) == []
