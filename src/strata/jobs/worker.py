"""Workers: ``strata worker`` processes, and the one `strata serve` runs in-process.

A worker is a SAQ worker whose context holds a Runtime (the same services a server
builds: providers, routing, limits, budgets, usage recorder), so batch requests
take the live request path. Several workers, on any machines sharing the
PostgreSQL and Redis, split the queue between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import Any

from saq import Worker

from strata.jobs.queue import make_queue
from strata.jobs.scheduled import FUNCTIONS, cron_jobs
from strata.settings import Settings

log = logging.getLogger("strata.jobs")


class _QuietWorker(Worker):
    # The host process (uvicorn, or `strata worker` itself) owns the signals.
    SIGNALS: list[Any] = []


def owner_name() -> str:
    """This worker's name on batch leases: host, pid and a nonce (pids are reused)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def build(rt: Any, *, ray: bool = False, concurrency: int | None = None) -> Worker:
    settings: Settings = rt.settings
    queue = make_queue(settings)
    owner = owner_name()
    worker = _QuietWorker(
        queue,
        functions=FUNCTIONS,
        concurrency=concurrency or settings.jobs.concurrency,
        cron_jobs=cron_jobs(settings),
        timers={"sweep": settings.jobs.sweep_s, "abort": 1, "schedule": 1, "worker_info": 5},
        shutdown_grace_period_s=settings.jobs.shutdown_grace_s,
        # Wake from an empty queue every second: a draining worker exits promptly.
        dequeue_timeout=1,
        metadata={"owner": owner, "ray": ray},
    )
    offload = None
    if ray:
        from strata.jobs.ray_exec import RayOffload

        offload = RayOffload(settings)
    worker.context.update(
        runtime=rt, owner=owner, offload=offload, queue=queue, draining=asyncio.Event()
    )
    return worker


async def drain(worker: Worker) -> None:
    """Stop taking jobs; running batches commit their chunk in flight, release their
    leases and return (the reconcile job hands them to another worker), within
    ``jobs.shutdown_grace_s``; anything still running then is cancelled."""
    worker.context["draining"].set()
    with contextlib.suppress(Exception):
        await worker.stop()


class InProcessWorker:
    """The embedded mode's worker, on the server's event loop and Runtime."""

    def __init__(self, rt: Any) -> None:
        self.worker = build(rt)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.worker.start())

    async def stop(self) -> None:
        await drain(self.worker)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self.worker.queue.disconnect()


async def serve(settings: Settings, *, ray: bool = False) -> None:
    """`strata worker`: run jobs until SIGINT/SIGTERM."""
    import signal

    from strata.runtime import Runtime

    rt = await Runtime.start(settings)
    worker = build(rt, ray=ray or settings.ray_address is not None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(worker.start())
    log.info("worker %s on queue %r", worker.context["owner"], settings.jobs.queue)
    try:
        await stop.wait()
    finally:
        log.info("worker %s draining", worker.context["owner"])
        await drain(worker)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        with contextlib.suppress(Exception):
            await worker.queue.disconnect()
        offload = worker.context.get("offload")
        if offload is not None:
            offload.close()
        await rt.stop()
