"""Files and batches under GDPR export and erasure, retention, and key rotation."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from strata.files import rotation
from strata.privacy.retention import RetentionSettings, purge
from strata.security import crypto as crypto_mod
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread
from tests.jobs.helpers import chat_line, jsonl, query, wait_batch


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    """A server with a job worker on a queue of its own (see tests/conftest.py)."""
    return start_server(jobs={"queue": "test-files-privacy-" + uuid.uuid4().hex[:8]})


@pytest.fixture
def client(
    server: ServerThread, api_key: NewKey, sdk: Callable[[ServerThread, str], openai.OpenAI]
) -> openai.OpenAI:
    return sdk(server, api_key.key)


def _admin(server: ServerThread, key: NewKey, method: str, path: str) -> httpx.Response:
    return httpx.request(
        method, server.base_url + path, headers={"authorization": f"Bearer {key.key}"}, timeout=60
    )


def test_export_and_erase_cover_files_and_batches(
    server: ServerThread,
    new_key: Callable[..., NewKey],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
    database_url: str,
) -> None:
    tenant = "gdpr-files-" + uuid.uuid4().hex[:6]
    admin = new_key(tenant=tenant, user="admin", is_admin=True)
    member = new_key(tenant=tenant, user="subject-" + uuid.uuid4().hex[:6])
    client = sdk(server, member.key)
    marker = "Jane Roe " + uuid.uuid4().hex[:8]
    f = client.files.create(
        file=("jane.jsonl", io.BytesIO(jsonl([chat_line("a", text_=marker)]))), purpose="batch"
    )
    b = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"owner": marker},
    )
    wait_batch(client, b.id, ("completed",))
    base = f"/v1/admin/privacy/{tenant}/{member.user_id}"
    exported = _admin(server, admin, "GET", base + "/export").json()
    files = {x["id"]: x for x in exported["files"]}
    assert files[f.id]["filename"] == "jane.jsonl" and marker in files[f.id]["content"]
    assert len(files) == 2  # the input and the batch's output
    (batch,) = exported["batches"]
    assert batch["id"] == b.id and batch["metadata"] == {"owner": marker}
    receipt = _admin(server, admin, "POST", base + "/erase").json()
    assert receipt["counts"]["files"] == 2 and receipt["counts"]["batches"] == 1
    for table in ("files", "batches"):
        rows = query(
            database_url,
            f"SELECT count(*) AS n FROM {table} WHERE tenant_id = :t AND user_id = :u",
            t=tenant,
            u=member.user_id,
        )
        assert rows[0].n == 0
    assert query(database_url, "SELECT count(*) AS n FROM batch_results WHERE batch_id = :b",
                 b=b.id)[0].n == 0  # fmt: skip


def test_retention_purges_old_files_and_batches(
    server: ServerThread, client: openai.OpenAI, database_url: str
) -> None:
    f = client.files.create(
        file=("old.jsonl", io.BytesIO(jsonl([chat_line("a")]))), purpose="batch"
    )
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    output = wait_batch(client, b.id, ("completed",)).output_file_id
    old = datetime.now(UTC) - timedelta(days=31)
    query(database_url, "UPDATE files SET created_at = :t WHERE id = :f", t=old, f=f.id)
    query(database_url, "UPDATE batches SET created_at = :t WHERE id = :b", t=old, b=b.id)
    counts = server.call(purge(server.runtime.engine, RetentionSettings()))
    assert counts["files"] >= 1 and counts["batches"] >= 1
    assert not query(database_url, "SELECT id FROM batches WHERE id = :b", b=b.id)
    assert not query(database_url, "SELECT file_id FROM file_chunks WHERE file_id = :f", f=f.id)
    # The batch's output file is new: it stays.
    assert output is not None and client.files.retrieve(output).id == output


def test_rotation_reencrypts_files_and_results(
    server: ServerThread, client: openai.OpenAI, database_url: str
) -> None:
    data = jsonl([chat_line(f"r{i}") for i in range(3)])
    f = client.files.create(file=("rot.jsonl", io.BytesIO(data)), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(client, b.id, ("completed",))
    rt = server.runtime
    crypto = rt.chat.cache.crypto

    async def rotate() -> int:
        async with rt.engine.begin() as conn:
            new = await crypto_mod.new_data_key(conn, crypto)
        while await rotation.reencrypt_batch(rt.engine, crypto, 100):
            pass
        return new

    new = server.call(rotate())
    assert server.call(rotation.key_ids_in_use(rt.engine)) == {new}
    assert client.files.content(f.id).read() == data
    assert client.files.retrieve(f.id).filename == "rot.jsonl"
    assert len(client.files.content(done.output_file_id).read().splitlines()) == 3
    # `strata crypto rotate` covers them too. Within the grace period no key a server
    # may still write under is retired, used or not.
    reports = [server.call(crypto_mod.rotate(rt.engine, crypto)) for _ in range(2)]
    assert all("files" in r["stores"] for r in reports)
    assert new not in reports[0]["retired"] + reports[1]["retired"]
    # Once the key that replaced it is older than the grace period, it goes.
    query(
        database_url,
        "UPDATE data_keys SET created_at = now() - interval '5 minutes' WHERE id = :k",
        k=reports[0]["key_id"],
    )
    report = server.call(crypto_mod.rotate(rt.engine, crypto))
    assert new in report["retired"]  # no row still needed it
    assert client.files.content(f.id).read() == data
    assert client.batches.retrieve(b.id).request_counts.completed == 3  # type: ignore[union-attr]
