"""A fair, bounded queue in front of a model that runs on this machine's CPU.

One job runs at a time on a dedicated thread (llama.cpp contexts are not
thread-safe, and two CPU-bound jobs on two cores only slow each other down).
Waiters are served first come, first served (asyncio.Semaphore is FIFO). When
``queue_max`` requests already wait, the next gets QueueFull (429) with a
Retry-After estimated from recent service times, instead of piling up.
The event loop never blocks: other endpoints keep answering.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from strata.errors import QueueFull

T = TypeVar("T")


class LocalQueue:
    def __init__(self, name: str, queue_max: int) -> None:
        self.name = name
        self.queue_max = queue_max
        self._sem = asyncio.Semaphore(1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"strata-{name}")
        self.waiting = 0
        # Exponential moving average of job time, for Retry-After.
        self._avg_s = 1.0

    @property
    def depth(self) -> int:
        return self.waiting

    async def acquire(self) -> None:
        if self._sem.locked() and self.waiting >= self.queue_max:
            raise QueueFull(
                f"the local model {self.name!r} is busy ({self.waiting} requests waiting); "
                "retry later",
                retry_after=self._avg_s * (self.waiting + 1),
            )
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._sem.release()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn`` on the model thread; the caller must hold the queue.

        The slot is released when the job really ends, even if the awaiting
        request was cancelled, so the model never runs two jobs at once.
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        fut = loop.run_in_executor(self._executor, fn, *args)

        def done(_: asyncio.Future[T]) -> None:
            self._avg_s = 0.8 * self._avg_s + 0.2 * (time.monotonic() - started)
            self.release()

        fut.add_done_callback(done)
        return fut

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        await self.acquire()
        return await asyncio.shield(self.submit(fn, *args))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
