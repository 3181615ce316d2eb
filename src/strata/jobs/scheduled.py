"""The functions workers run, and the schedule of the recurring ones.

Every function takes SAQ's context: ``runtime`` (the worker's services), ``owner``
(this worker's lease name), ``offload`` (the Ray executor, or None) and ``job``.

Recurring work, as cron jobs (each runs once per schedule across all workers, as
SAQ deduplicates cron jobs by key):

* ``reconcile_batches`` (every ``jobs.reconcile_s``): re-enqueues unfinished
  batches nobody holds, so a job lost with Redis, or a batch cancelled or expired
  while no worker ran it, is still taken to its end.
* ``purge_retention`` (hourly): the retention purge (strata.privacy.retention).
  Servers also run it on their own timer (``retention.interval_s``); both only
  share the work, so a deployment without workers still purges.

Alert evaluation needs no schedule: budget alerts fire when a settle crosses a
threshold (strata.limits.budget), in whichever process settles.
"""

from __future__ import annotations

import logging
from typing import Any

from saq import CronJob

from strata.jobs.batch import BatchRunner
from strata.jobs.queue import enqueue_batch
from strata.privacy.retention import purge
from strata.storage.repositories import batches as batch_repo

log = logging.getLogger("strata.jobs")


async def run_batch(ctx: Any, *, batch_id: str) -> str:
    rt = ctx["runtime"]
    job = ctx.get("job")

    async def heartbeat() -> None:
        if job is not None:
            await job.update()

    runner = BatchRunner(rt, ctx["owner"], heartbeat, ctx.get("offload"))
    return await runner.run(batch_id)


async def reconcile_batches(ctx: Any) -> int:
    rt = ctx["runtime"]
    ids = await batch_repo.orphaned(rt.engine, rt.settings.jobs.queue)
    for batch_id in ids:
        await enqueue_batch(ctx["queue"], rt.settings, batch_id)
    if ids:
        log.info("re-enqueued %d unfinished batches: %s", len(ids), ", ".join(ids))
    return len(ids)


async def purge_retention(ctx: Any) -> dict[str, int]:
    rt = ctx["runtime"]
    counts = await purge(rt.engine, rt.settings.retention)
    if any(counts.values()):
        log.info("retention purge: %s", counts)
    return counts


FUNCTIONS: list[Any] = [run_batch, reconcile_batches, purge_retention]


def cron_jobs(settings: Any) -> list[CronJob[Any]]:
    every = max(1, min(59, settings.jobs.reconcile_s))
    jobs = [CronJob(reconcile_batches, cron=f"* * * * * */{every}", timeout=60)]
    if settings.retention.enabled:
        jobs.append(CronJob(purge_retention, cron="17 * * * *", timeout=3600))
    return jobs
