"""Ray: a large batch's pending requests split into shards, each a Ray task.

``strata worker --ray`` (or ``STRATA_RAY_ADDRESS``) keeps the batch's lease and
lifecycle in the worker and sends the requests themselves to the cluster: lines
in shards of ``batch.ray_shard_size``. Each task starts the same Runtime a
worker does (settings travel with the task; secret references resolve on the
node) and runs its lines with the same Executor, committing results and usage
to the same PostgreSQL: results, the error file and accounting are the same
whether a line ran in the worker or on a Ray node, and a node lost mid-shard
only leaves lines pending for the next pass.

Batches at or below one shard run in the worker itself (a task's start-up costs
more than it saves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from strata.files.validate import Line
from strata.settings import Settings
from strata.storage.repositories import batches as repo

log = logging.getLogger("strata.jobs")


def shard(lines: list[Line], size: int) -> list[list[int]]:
    numbers = [ln.number for ln in lines]
    return [numbers[i : i + size] for i in range(0, len(numbers), size)]


async def run_shard_async(settings_data: dict[str, Any], batch_id: str, numbers: list[int]) -> int:
    """In a Ray worker process: run these lines of the batch; results stored."""
    from strata.jobs.batch import crypto_of, principal_of, read_lines
    from strata.jobs.execute import Executor
    from strata.runtime import Runtime
    from strata.settings import load_settings

    settings = load_settings(None, **settings_data)
    rt = await Runtime.start(settings)
    try:
        batch = await repo.get(rt.engine, None, batch_id)
        if batch is None or batch.status != "in_progress":
            return 0
        parsed = await read_lines(rt, batch) or []
        wanted = set(numbers)
        done = await repo.done_lines(rt.engine, batch_id)
        todo = [ln for ln in parsed if ln.number in wanted and ln.number not in done]
        stop = asyncio.Event()

        async def watch() -> None:
            # The shard stops with the batch (cancel, expiry) like a worker does.
            while not stop.is_set():
                await asyncio.sleep(1.0)
                b = await repo.get(rt.engine, None, batch_id)
                if b is None or b.status != "in_progress":
                    stop.set()

        watcher = asyncio.create_task(watch())
        try:
            ex = Executor(rt, crypto_of(rt), principal_of(batch), batch)
            return await ex.run(todo, stop)
        finally:
            stop.set()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    finally:
        await rt.stop()


def run_shard(settings_data: dict[str, Any], batch_id: str, numbers: list[int]) -> int:
    return asyncio.run(run_shard_async(settings_data, batch_id, numbers))


class RayOffload:
    """The worker's offload hook: shards to Ray tasks, awaited without blocking."""

    def __init__(self, settings: Settings, **init: Any) -> None:
        """``init``: extra ``ray.init`` arguments (a local instance's CPUs, memory)."""
        import ray

        self.settings = settings
        self.ray = ray
        if not ray.is_initialized():
            # No address: a local Ray instance on this machine (`ray.init()`).
            ray.init(
                address=settings.ray_address,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
                **init,
            )
        self._remote = ray.remote(max_retries=2)(run_shard)
        self.shards_run = 0

    def _settings_data(self) -> dict[str, Any]:
        data = self.settings.model_dump(mode="json", exclude={"config"})
        return {k: v for k, v in data.items() if v is not None}

    async def __call__(
        self, batch: repo.BatchRow, pending: list[Line], stop: asyncio.Event
    ) -> bool:
        """Run ``pending`` as Ray shards; False when the batch is small enough to
        run in the worker."""
        size = self.settings.batch.ray_shard_size
        if len(pending) <= size:
            return False
        data = self._settings_data()
        refs = [self._remote.remote(data, batch.id, nums) for nums in shard(pending, size)]
        log.info("batch %s: %d requests in %d Ray shards", batch.id, len(pending), len(refs))
        waiting = [asyncio.wrap_future(ref.future()) for ref in refs]
        stopper = asyncio.create_task(stop.wait())
        try:
            pending_futs: set[Any] = set(waiting)
            while pending_futs:
                done, pending_futs = await asyncio.wait(
                    pending_futs | {stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                pending_futs.discard(stopper)
                if stopper in done:
                    for ref in refs:
                        with contextlib.suppress(Exception):
                            self.ray.cancel(ref)
                    break
                for fut in done:
                    if fut is not stopper and fut.exception() is not None:
                        log.warning("batch %s: a Ray shard failed: %r", batch.id, fut.exception())
                self.shards_run += len(done)
        finally:
            stopper.cancel()
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ray.shutdown()
