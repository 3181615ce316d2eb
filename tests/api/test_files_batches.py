"""Files and Batches through the official openai SDK, run by the server's in-process
worker on its own queue: results in OpenAI's format, one result and one usage
record per custom_id, the batch discount, bad lines in the error file, cancel and
expiry finalising partial results."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import openai
import pytest

from strata.storage.repositories.keys import NewKey
from tests.conftest import TEST_CONFIG, ServerThread
from tests.jobs.helpers import chat_line, jsonl, query, read_jsonl, usage_of, wait_batch

MODELS = {
    **TEST_CONFIG["models"],
    "fake-embed": {"kind": "embedding", "provider": "fake", "model": "fake-embed-1"},
    "fake-delay": {"provider": "fake-delay", "model": "fake-delay-1"},
}
PROVIDERS = {
    **TEST_CONFIG["providers"],
    "fake-delay": {
        "type": "fake",
        "delay_s": 0.2,
        "price": {"input_per_1m": "1.00", "output_per_1m": "2.00"},
    },
}


@pytest.fixture(scope="module")
def bserver(start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server(
        providers=PROVIDERS,
        models=MODELS,
        jobs={"queue": "test-batches-" + uuid.uuid4().hex[:8], "sweep_s": 1, "reconcile_s": 2},
        batch={"max_requests": 200, "concurrency_per_deployment": 2, "lease_s": 3},
    )


@pytest.fixture
def bclient(
    bserver: ServerThread,
    api_key: NewKey,
    sdk: Callable[[ServerThread, str], openai.OpenAI],
) -> openai.OpenAI:
    return sdk(bserver, api_key.key)


def upload(client: openai.OpenAI, data: bytes, name: str = "input.jsonl") -> Any:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch")


def test_files_roundtrip(bclient: openai.OpenAI) -> None:
    data = jsonl([chat_line(f"r{i}") for i in range(3)])
    f = upload(bclient, data, "alice-tickets.jsonl")
    assert f.object == "file" and f.purpose == "batch" and f.bytes == len(data)
    assert f.filename == "alice-tickets.jsonl" and f.status == "processed"
    assert bclient.files.retrieve(f.id).id == f.id
    assert bclient.files.content(f.id).read() == data
    assert f.id in [x.id for x in bclient.files.list(purpose="batch")]
    assert bclient.files.delete(f.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        bclient.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        bclient.files.content(f.id)


def test_contents_are_encrypted_at_rest(bclient: openai.OpenAI, database_url: str) -> None:
    marker = "plaintext-probe-" + uuid.uuid4().hex
    f = upload(bclient, jsonl([chat_line("a", text_=marker)]), marker + ".jsonl")
    rows = query(database_url, "SELECT data FROM file_chunks WHERE file_id = :f", f=f.id)
    assert rows and all(marker.encode() not in bytes(r.data) for r in rows)
    names = query(database_url, "SELECT filename_enc FROM files WHERE id = :f", f=f.id)
    assert marker.encode() not in bytes(names[0].filename_enc)


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        ([chat_line("a"), b"{not json"], "line 2: not valid JSON"),
        ([chat_line("a"), chat_line("a")], "line 2: duplicate 'custom_id'"),
        ([{**chat_line("a"), "method": "GET"}], "line 1: 'method'"),
        ([{**chat_line("a"), "url": "/v1/images"}], "line 1: 'url'"),
        ([{"method": "POST", "url": "/v1/embeddings", "body": {}}], "line 1: 'custom_id'"),
        ([chat_line("a"), b"[1, 2]"], "line 2: not a JSON object"),
    ],
)
def test_upload_names_the_bad_line(bclient: openai.OpenAI, lines: list[Any], named: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        upload(bclient, jsonl(lines))
    assert named in err.value.message
    assert err.value.body["param"] == "file"  # type: ignore[index]


def test_upload_limits(bclient: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="limit is 200"):
        upload(bclient, jsonl([chat_line(f"r{i}") for i in range(201)]))
    with pytest.raises(openai.BadRequestError, match="'purpose'"):
        bclient.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="no requests"):
        upload(bclient, b"\n\n")


def test_chat_batch_results_usage_and_discount(bclient: openai.OpenAI, database_url: str) -> None:
    n = 7
    f = upload(bclient, jsonl([chat_line(f"req-{i}", text_=f"question {i}") for i in range(n)]))
    b = bclient.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "probe"},
    )
    assert b.status == "validating" and b.metadata == {"project": "probe"}
    done = wait_batch(bclient, b.id, ("completed", "failed"))
    assert done.status == "completed", done
    assert done.request_counts.model_dump() == {"total": n, "completed": n, "failed": 0}
    assert done.error_file_id is None and done.completed_at and done.in_progress_at
    out = read_jsonl(bclient, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(n))
    for o in out:
        assert o["id"].startswith("batch_req_") and o["error"] is None
        assert o["response"]["status_code"] == 200
        assert o["response"]["body"]["object"] == "chat.completion"
    assert bclient.files.retrieve(done.output_file_id).purpose == "batch_output"
    usage = usage_of(database_url, b.id)
    assert len(usage) == n and len({u.request_id for u in usage}) == n
    for u in usage:
        assert u.status == "ok"
        live = (Decimal(u.prompt_tokens) * 1 + Decimal(u.completion_tokens) * 2) / 1_000_000
        assert u.cost_usd == (live / 2).quantize(Decimal("1e-10"))  # OpenAI-style 50%
    assert b.id in [x.id for x in bclient.batches.list()]


def test_bad_lines_go_to_the_error_file(bclient: openai.OpenAI, database_url: str) -> None:
    lines = [
        chat_line("good-1"),
        {**chat_line("no-messages"), "body": {"model": "fake"}},
        {**chat_line("bad-messages"), "body": {"model": "fake", "messages": "hi"}},
        chat_line("unknown-model", model="no-such-model"),
        {
            "custom_id": "wrong-url",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "fake-embed", "input": "x"},
        },
        chat_line("good-2"),
    ]
    f = upload(bclient, jsonl(lines))
    b = bclient.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(bclient, b.id, ("completed", "failed"))
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 6, "completed": 2, "failed": 4}
    assert sorted(o["custom_id"] for o in read_jsonl(bclient, done.output_file_id)) == [
        "good-1",
        "good-2",
    ]
    errors = {o["custom_id"]: o for o in read_jsonl(bclient, done.error_file_id)}
    assert set(errors) == {"no-messages", "bad-messages", "unknown-model", "wrong-url"}
    assert errors["unknown-model"]["response"]["status_code"] == 404
    assert errors["wrong-url"]["response"]["status_code"] == 400
    assert "messages" in errors["bad-messages"]["response"]["body"]["error"]["message"]
    assert len(usage_of(database_url, b.id)) == 6  # one record per request, whatever happened


def test_embeddings_batch_is_grouped_and_split(bclient: openai.OpenAI, database_url: str) -> None:
    texts = [" ".join(["word"] * (i + 1)) for i in range(40)]
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "fake-embed", "input": t},
        }
        for i, t in enumerate(texts)
    ]
    f = upload(bclient, jsonl(lines))
    b = bclient.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_batch(bclient, b.id, ("completed", "failed"))
    assert done.request_counts.completed == 40, done
    out = {o["custom_id"]: o["response"]["body"] for o in read_jsonl(bclient, done.output_file_id)}
    assert len(out) == 40
    for body in out.values():
        assert [d["index"] for d in body["data"]] == [0]
        assert len(body["data"][0]["embedding"]) == 8
    usage = usage_of(database_url, b.id)
    assert len(usage) == 40
    # The fake counts a token per word: shares of each grouped call sum exactly.
    assert sum(u.prompt_tokens for u in usage) == sum(len(t.split()) for t in texts)
    assert all(
        out[f"e{int(u.request_id.rsplit(':', 1)[1]) - 1}"]["usage"]["prompt_tokens"]
        == u.prompt_tokens
        for u in usage
    )


def _slow_batch(client: openai.OpenAI, n: int) -> Any:
    f = upload(client, jsonl([chat_line(f"s{i}", model="fake-delay") for i in range(n)]))
    return client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def _wait_results(database_url: str, batch_id: str, at_least: int) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        n = query(database_url, "SELECT count(*) AS n FROM batch_results WHERE batch_id = :b",
                  b=batch_id)[0].n  # fmt: skip
        if n >= at_least:
            return
        time.sleep(0.1)
    raise AssertionError("no progress")


def test_cancel_finalises_partial_results(bclient: openai.OpenAI, database_url: str) -> None:
    b = _slow_batch(bclient, 150)
    _wait_results(database_url, b.id, 4)
    assert bclient.batches.cancel(b.id).status == "cancelling"
    done = wait_batch(bclient, b.id, ("cancelled",), timeout_s=15)
    counts = done.request_counts
    assert counts is not None
    assert 4 <= counts.completed < 150 and done.cancelled_at is not None
    out = read_jsonl(bclient, done.output_file_id)
    assert len(out) == counts.completed
    # Nothing runs after the cancel was final: the counts stay put.
    import time

    time.sleep(1.0)
    again = bclient.batches.retrieve(b.id).request_counts
    assert again is not None and again.completed == counts.completed
    assert len(usage_of(database_url, b.id)) == counts.completed
    with pytest.raises(openai.BadRequestError):
        bclient.batches.cancel(wait_batch(bclient, _chat_done(bclient), ("completed",)).id)


def _chat_done(client: openai.OpenAI) -> str:
    f = upload(client, jsonl([chat_line("only")]))
    return client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def test_expiry_finalises_what_completed(bclient: openai.OpenAI, database_url: str) -> None:
    b = _slow_batch(bclient, 150)
    _wait_results(database_url, b.id, 4)
    query(database_url, "UPDATE batches SET expires_at = now() WHERE id = :b", b=b.id)
    done = wait_batch(bclient, b.id, ("expired",), timeout_s=15)
    ok = read_jsonl(bclient, done.output_file_id)
    errors = read_jsonl(bclient, done.error_file_id)
    assert len(ok) + len(errors) == 150 and len(ok) == done.request_counts.completed >= 4
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert done.request_counts.failed == len(errors)


def test_batch_errors_are_openai_shaped(bclient: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        bclient.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    f = upload(bclient, jsonl([chat_line("x")]))
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        bclient.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        bclient.batches.create(
            input_file_id=f.id,
            endpoint="/v1/completions",
            completion_window="24h",
        )
    with pytest.raises(openai.NotFoundError):
        bclient.batches.retrieve("batch_nope")


def test_local_embedding_batch_matches_live_vectors(bclient: openai.OpenAI) -> None:
    """The embedded MiniLM, 32 texts per pass: the same vectors as one live request."""
    texts = [f"batch embedding sentence number {i} about topic {i % 5}" for i in range(40)]
    lines = [
        {
            "custom_id": f"m{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "embed-default", "input": t},
        }
        for i, t in enumerate(texts)
    ]
    f = upload(bclient, jsonl(lines))
    b = bclient.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = wait_batch(bclient, b.id, ("completed", "failed"), timeout_s=180)
    assert done.request_counts is not None and done.request_counts.completed == 40, done
    out = {o["custom_id"]: o["response"]["body"] for o in read_jsonl(bclient, done.output_file_id)}
    live = bclient.embeddings.create(model="embed-default", input=texts[7]).data[0].embedding
    batched = out["m7"]["data"][0]["embedding"]
    assert len(batched) == 384
    assert max(abs(x - y) for x, y in zip(live, batched, strict=True)) < 1e-4


def test_lists_paginate_newest_first(
    bserver: ServerThread,
    new_key: Callable[..., NewKey],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
) -> None:
    client = sdk(bserver, new_key(tenant="pages-" + uuid.uuid4().hex[:6]).key)
    ids = [upload(client, jsonl([chat_line(f"p{i}")])).id for i in range(3)]
    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    rest = client.files.list(limit=2, after=first.data[-1].id)
    assert [f.id for f in rest.data] == [ids[0]] and not rest.has_more
    assert [f.id for f in client.files.list(order="asc")] == ids
    batches = [
        client.batches.create(
            input_file_id=i, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for i in ids[:2]
    ]
    page = client.batches.list(limit=1)
    assert [b.id for b in page.data] == [batches[1]] and page.has_more
    assert [b.id for b in client.batches.list(limit=5, after=batches[1]).data] == [batches[0]]


def test_uploads_have_their_own_size_limit(
    bclient: openai.OpenAI,
    bserver: ServerThread,
    start_server: Callable[..., ServerThread],
    api_key: NewKey,
    sdk: Callable[[ServerThread, str], openai.OpenAI],
) -> None:
    # Past the 8 MiB body limit of other endpoints: files have OpenAI's 200 MB.
    big = jsonl([chat_line(f"b{i}", text_="x" * 50_000) for i in range(190)])
    assert len(big) > bserver.settings.max_body_bytes
    assert upload(bclient, big).bytes == len(big)
    small = sdk(start_server(batch={"max_file_bytes": 1000}), api_key.key)
    with pytest.raises(openai.BadRequestError, match="the limit is 1000"):
        upload(small, jsonl([chat_line(f"s{i}") for i in range(20)]))
    with pytest.raises(openai.APIStatusError) as err:  # far past it: refused while reading
        upload(small, b"x" * 200_000)
    assert err.value.status_code == 413
