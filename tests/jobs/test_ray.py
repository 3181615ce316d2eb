"""Ray: a batch larger than a shard runs as Ray tasks on a local instance (`ray.init()`)
with the same results and accounting as in a worker: one result and one usage
record per custom_id, at the batch price."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

import openai
import pytest

from strata.jobs.batch import BatchRunner
from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread
from tests.jobs.helpers import chat_line, jsonl, read_jsonl, usage_of

FAKE = {"type": "fake", "price": {"input_per_1m": "1.00", "output_per_1m": "2.00"}}
N = 13


@pytest.fixture(scope="module")
def ray_server(start_server: Callable[..., ServerThread]) -> ServerThread:
    # Fakes only: each Ray task starts a Runtime, which would load local models.
    return start_server(
        providers={"fake": FAKE},
        models={"fake": {"provider": "fake", "model": "fake-1"}},
        jobs={"queue": "test-ray-" + uuid.uuid4().hex[:8], "embedded_worker": False},
        batch={"ray_shard_size": 5},
    )


@pytest.fixture(scope="module")
def offload(ray_server: ServerThread) -> Iterator[object]:
    try:
        from strata.jobs.ray_exec import RayOffload

        off = RayOffload(ray_server.settings, num_cpus=2, object_store_memory=100 * 1024 * 1024)
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"a local Ray instance cannot start here: {type(exc).__name__}: {exc}")
    yield off
    off.close()


def test_large_batch_runs_as_ray_shards(
    ray_server: ServerThread,
    offload: object,
    new_key: Callable[..., NewKey],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
    database_url: str,
) -> None:
    client = sdk(ray_server, new_key(tenant="acme", user="ray").key)
    f = client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl([chat_line(f"r{i}") for i in range(N)]))),
        purpose="batch",
    )
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    runner = BatchRunner(ray_server.runtime, "ray-test-worker", None, offload)  # type: ignore[arg-type]
    status = ray_server.call(runner.run(b.id), timeout_s=300)
    assert status == "completed"
    assert offload.shards_run == 3  # type: ignore[attr-defined]  # 13 lines, shards of 5
    done = client.batches.retrieve(b.id)
    assert done.request_counts is not None and done.request_counts.completed == N
    out = read_jsonl(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"r{i}" for i in range(N))
    assert all(o["response"]["status_code"] == 200 for o in out)
    usage = usage_of(database_url, b.id)
    assert len(usage) == N and len({u.request_id for u in usage}) == N
    for u in usage:
        live = (Decimal(u.prompt_tokens) + 2 * Decimal(u.completion_tokens)) / 1_000_000
        assert u.cost_usd == (live / 2).quantize(Decimal("1e-10"))
