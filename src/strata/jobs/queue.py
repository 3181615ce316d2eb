"""The Redis job queue (SAQ) and the jobs Strata puts on it.

Why SAQ: asyncio-native on redis-py (``redis>=4.2,<8``: the project's redis 5+
works), actively released (0.26 in 2026), and it has what batches need built in:
job keys (one queued job per batch however often it is enqueued), heartbeats
with a sweep that retries the job of a worker that died, cron jobs deduplicated
across workers, and queue/job inspection for ``strata jobs``. taskiq would
need a broker package, a result backend and a separate scheduler process for the
same; arq is in maintenance-only mode.

The queue carries *work*, not state: PostgreSQL holds every batch's status and
results, so a lost or repeated job costs a little time, never a result (the
reconcile job re-enqueues any unfinished batch nobody holds).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from saq import Job, Queue
from saq.queue.redis import RedisQueue

from strata.settings import Settings

# Finished jobs stay inspectable (`strata jobs list|show`) for a day.
JOB_TTL_S = 86_400
# A batch job is retried this often after its worker died (each retry resumes where
# the last stopped, so many are harmless); a batch that keeps killing workers stops.
BATCH_RETRIES = 20
INGEST_RETRIES = 3


class _SetexAsSet:
    """SAQ calls SETEX, which redis-py 8 deprecates (a DeprecationWarning on every
    finished job); SET with EX is the same command."""

    def setex(self, name: Any, time: Any, value: Any) -> Any:
        return self.set(name, value, ex=time)  # type: ignore[attr-defined]


class _Pipeline(_SetexAsSet, Pipeline):  # type: ignore[misc]
    pass


class _Redis(_SetexAsSet, aioredis.Redis):  # type: ignore[misc]
    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


def make_queue(settings: Settings) -> Queue:
    if not settings.redis_url:
        raise ValueError("redis_url is not set")
    # RedisQueue directly: Queue.from_url refuses unix:// (the embedded Redis's socket).
    return RedisQueue(_Redis.from_url(settings.redis_url), name=settings.jobs.queue)


def batch_key(batch_id: str) -> str:
    return f"batch:{batch_id}"


async def enqueue_batch(queue: Queue, settings: Settings, batch_id: str) -> Job | None:
    """Queue the batch's job (a no-op while one for it is queued or running)."""
    job = Job(
        "run_batch",
        kwargs={"batch_id": batch_id},
        key=batch_key(batch_id),
        timeout=0,  # batches run for hours; the heartbeat tells a dead worker
        heartbeat=settings.jobs.heartbeat_s,
        retries=BATCH_RETRIES,
        ttl=JOB_TTL_S,
    )
    return await queue.enqueue(job)


def ingestion_key(ingestion_id: str) -> str:
    return f"rag-ingest:{ingestion_id}"


async def enqueue_ingestion(queue: Queue, settings: Settings, ingestion_id: str) -> Job | None:
    """Queue a background RAG ingestion's job (a no-op while one for it is queued or
    running). Retries are cheap: documents already written are skipped by hash."""
    job = Job(
        "ingest_documents",
        kwargs={"ingestion_id": ingestion_id},
        key=ingestion_key(ingestion_id),
        timeout=0,  # a large upload embeds for minutes; the heartbeat tells a dead worker
        heartbeat=settings.jobs.heartbeat_s,
        retries=INGEST_RETRIES,
        ttl=JOB_TTL_S,
    )
    return await queue.enqueue(job)


def describe(job: Job) -> dict[str, Any]:
    """A job as `strata jobs` shows it."""
    return {
        "key": job.key,
        "function": job.function,
        "status": str(job.status.value if hasattr(job.status, "value") else job.status),
        "attempts": job.attempts,
        "kwargs": job.kwargs or {},
        "queued": job.queued,
        "started": job.started,
        "completed": job.completed,
        "error": (job.error or "").strip().splitlines()[-1:] or None,
        "worker": job.worker_id,
    }
