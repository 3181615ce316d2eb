"""A `strata worker` process killed with SIGKILL mid-batch loses nothing and charges
nothing twice: a second worker resumes the batch, and every custom_id ends with
exactly one result and one usage record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import redis
import yaml

from strata.storage.repositories.keys import NewKey
from tests.conftest import TEST_CONFIG, ServerThread
from tests.jobs.helpers import chat_line, jsonl, query, read_jsonl, usage_of, wait_batch

N = 60
SLOW = {
    "type": "fake",
    "delay_s": 0.25,
    "price": {"input_per_1m": "1.00", "output_per_1m": "2.00"},
}


@pytest.fixture(scope="module")
def queue_name() -> str:
    return "test-sigkill-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def api_server(start_server: Callable[..., ServerThread], queue_name: str) -> ServerThread:
    """Takes the API calls only: no in-process worker, so the subprocesses do the work."""
    return start_server(
        providers={**TEST_CONFIG["providers"], "fake-slow2": SLOW},
        models={**TEST_CONFIG["models"], "fake-slow2": {"provider": "fake-slow2", "model": "s"}},
        jobs={"queue": queue_name, "embedded_worker": False},
    )


@pytest.fixture
def worker_env(
    tmp_path: Path, database_url: str, redis_url: str, queue_name: str
) -> Iterator[dict[str, str]]:
    # The worker needs only the slow fake: no local models to load.
    config = {
        "providers": {"fake-slow2": SLOW},
        "models": {"fake-slow2": {"provider": "fake-slow2", "model": "s"}},
        "usage": {"flush_interval_s": 0.1},
        "crypto": TEST_CONFIG["crypto"],
        "jobs": {"queue": queue_name, "heartbeat_s": 3, "sweep_s": 1, "reconcile_s": 2},
        "batch": {"lease_s": 3, "concurrency_per_deployment": 4, "commit_every": 4},
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
    yield env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    strata = Path(sys.executable).parent / "strata"
    with log.open("ab") as out:
        return subprocess.Popen([str(strata), "worker"], env=env, stdout=out, stderr=out)


def results_count(database_url: str, batch_id: str) -> int:
    rows = query(database_url, "SELECT count(*) AS n FROM batch_results WHERE batch_id = :b",
                 b=batch_id)  # fmt: skip
    return int(rows[0].n)


def budget_spent(redis_url: str, subject: str) -> Decimal:
    """Today's settled spend of a user, from the budget's Redis hash (1e-10 USD units)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"strata:budget:*{subject}:d:*"))
        assert keys, "no budget spend recorded"
        return sum((Decimal(int(client.hget(k, "spent") or 0)) for k in keys), Decimal(0)) / (
            Decimal(10) ** 10
        )
    finally:
        client.close()


def test_sigkill_mid_batch_then_another_worker_finishes(
    api_server: ServerThread,
    new_key: Callable[..., NewKey],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
    worker_env: dict[str, str],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    user = "sigkill-" + uuid.uuid4().hex[:8]
    client = sdk(api_server, new_key(tenant="acme", user=user).key)
    f = client.files.create(
        file=("in.jsonl", jsonl([chat_line(f"k{i}", model="fake-slow2") for i in range(N)])),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    log = tmp_path / "workers.log"
    first = start_worker(worker_env, log)
    procs: list[subprocess.Popen[bytes]] = [first]
    try:
        deadline = time.monotonic() + 90
        while results_count(database_url, batch.id) < 8:
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the first worker made no progress"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        at_kill = results_count(database_url, batch.id)
        assert at_kill < N, "the batch finished before the kill: make it longer"
        procs.append(start_worker(worker_env, log))
        done = wait_batch(client, batch.id, ("completed", "failed"), timeout_s=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert done.status == "completed", log.read_text()[-3000:]
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": N, "completed": N, "failed": 0}
    out = read_jsonl(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"k{i}" for i in range(N))
    assert results_count(database_url, batch.id) == N
    usage = usage_of(database_url, batch.id)
    ids = [u.request_id for u in usage]
    assert len(ids) == N and len(set(ids)) == N, "a request was charged twice or not at all"
    assert {u.status for u in usage} == {"ok"}
    # The budget is charged from the same commits: never twice (spent <= the records),
    # and short by at most the chunk the kill cut between its commit and its charge.
    total = sum(u.cost_usd for u in usage)
    spent = budget_spent(redis_url, f"acme/{user}")
    assert total - 4 * max(u.cost_usd for u in usage) <= spent <= total
    owners = query(database_url, "SELECT lease_owner FROM batches WHERE id = :b", b=batch.id)
    assert owners[0].lease_owner is None  # released on completion


def test_sigterm_commits_and_hands_the_batch_over(
    api_server: ServerThread,
    new_key: Callable[..., NewKey],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
    worker_env: dict[str, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    """A spot node's notice: the worker commits its chunk in flight, releases the lease
    and exits within jobs.shutdown_grace_s, leaving the rest for another worker."""
    client = sdk(api_server, new_key(tenant="acme", user="sigterm-" + uuid.uuid4().hex[:6]).key)
    f = client.files.create(
        file=("in.jsonl", jsonl([chat_line(f"t{i}", model="fake-slow2") for i in range(N)])),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    log = tmp_path / "worker.log"
    proc = start_worker(worker_env, log)
    try:
        deadline = time.monotonic() + 90
        while results_count(database_url, batch.id) < 8:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    row = query(database_url, "SELECT status, lease_owner, completed FROM batches WHERE id = :b",
                b=batch.id)[0]  # fmt: skip
    done = results_count(database_url, batch.id)
    assert row.status == "in_progress" and row.lease_owner is None  # handed over at once
    assert 8 <= done < N and row.completed == done
    assert len(usage_of(database_url, batch.id)) == done  # the chunk in flight committed whole
