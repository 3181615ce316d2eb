"""The functions workers run, and the schedule of the recurring ones.

Every function takes SAQ's context: ``runtime`` (the worker's services), ``owner``
(this worker's lease name), ``offload`` (the Ray executor, or None) and ``job``.

Recurring work, as cron jobs (each runs once per schedule across all workers, as
SAQ deduplicates cron jobs by key):

* ``reconcile_batches`` (every ``jobs.reconcile_s``): re-enqueues unfinished
  batches nobody holds, so a job lost with Redis, or a batch cancelled or expired
  while no worker ran it, is still taken to its end. It does the same for
  background RAG ingestions (``ingest_documents``), and deletes finished ingestion
  rows after a day.
* ``purge_retention`` (hourly): the retention purge (strata.privacy.retention).
  Servers also run it on their own timer (``retention.interval_s``); both only
  share the work, so a deployment without workers still purges.

* ``evaluate_alerts`` (every ``alerts.daily_check_interval_s``, at most a minute
  apart; only with ``alerts.daily_alert_usd``): today's deployment-wide spend from
  the usage records against the daily alert (the dispatcher's own dedupe makes
  it fire once a day). Budget alerts need no schedule: they fire when a settle
  crosses a threshold (strata.limits.budget), in whichever process settles.
"""

from __future__ import annotations

import logging
from typing import Any

from saq import CronJob

from strata.alerts.dispatcher import today_start
from strata.jobs.batch import BatchRunner
from strata.jobs.queue import enqueue_batch, enqueue_ingestion
from strata.privacy.retention import purge
from strata.rag import background as rag_background
from strata.storage.repositories import alerts as alert_repo
from strata.storage.repositories import batches as batch_repo
from strata.storage.repositories import rag_ingestions as ingestion_repo

log = logging.getLogger("strata.jobs")


async def run_batch(ctx: Any, *, batch_id: str) -> str:
    rt = ctx["runtime"]
    job = ctx.get("job")

    async def heartbeat() -> None:
        if job is not None:
            await job.update()

    runner = BatchRunner(rt, ctx["owner"], heartbeat, ctx.get("offload"), ctx.get("draining"))
    return await runner.run(batch_id)


async def reconcile_batches(ctx: Any) -> int:
    rt = ctx["runtime"]
    ids = await batch_repo.orphaned(rt.engine, rt.settings.jobs.queue)
    for batch_id in ids:
        await enqueue_batch(ctx["queue"], rt.settings, batch_id)
    if ids:
        log.info("re-enqueued %d unfinished batches: %s", len(ids), ", ".join(ids))
    ingestions = await ingestion_repo.orphaned(rt.engine, rt.settings.jobs.queue)
    for ingestion_id in ingestions:
        await enqueue_ingestion(ctx["queue"], rt.settings, ingestion_id)
    await ingestion_repo.purge_finished(rt.engine, rag_background.KEEP_FINISHED_S)
    return len(ids) + len(ingestions)


async def ingest_documents(ctx: Any, *, ingestion_id: str) -> str:
    """A background RAG upload (strata.rag.background)."""
    job = ctx.get("job")

    async def heartbeat() -> None:
        if job is not None:
            await job.update()

    return await rag_background.run(ctx["runtime"], ingestion_id, ctx["owner"], heartbeat)


async def purge_retention(ctx: Any) -> dict[str, int]:
    rt = ctx["runtime"]
    counts = await purge(rt.engine, rt.settings.retention)
    if any(counts.values()):
        log.info("retention purge: %s", counts)
    return counts


async def evaluate_alerts(ctx: Any) -> str:
    rt = ctx["runtime"]
    now = rt.alerts.clock()
    spent = await alert_repo.spend_since(rt.engine, today_start(now))
    await rt.alerts.check_daily_spend(spent, now)
    return str(spent)


FUNCTIONS: list[Any] = [
    run_batch,
    reconcile_batches,
    purge_retention,
    evaluate_alerts,
    ingest_documents,
]


def cron_jobs(settings: Any) -> list[CronJob[Any]]:
    every = max(1, min(59, settings.jobs.reconcile_s))
    jobs = [CronJob(reconcile_batches, cron=f"* * * * * */{every}", timeout=60)]
    if settings.retention.enabled:
        jobs.append(CronJob(purge_retention, cron="17 * * * *", timeout=3600))
    if settings.alerts.daily_alert_usd is not None:
        seconds = max(1, int(settings.alerts.daily_check_interval_s))
        cron = f"* * * * * */{seconds}" if seconds < 60 else "* * * * *"
        jobs.append(CronJob(evaluate_alerts, cron=cron, timeout=60))
    return jobs
