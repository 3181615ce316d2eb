"""One batch, start to finish: validate, run what is pending, finalise.

A worker runs a batch only while it holds the batch's lease in PostgreSQL
(``batches.lease_owner/lease_until``), renewed every third of ``batch.lease_s``.
Killed, it stops renewing; once the lease lapses the queue's sweep (the job's
heartbeat stopped) or the reconcile job gives the batch to another worker, which
reads which lines already have results and runs only the rest.

Statuses (OpenAI's): validating → in_progress → finalizing → completed; failed
(the input file is gone or unreadable); cancelling → cancelled (a cancel stops new
requests at once, the chunk in flight is committed, then partial results are
finalised); expired (past ``expires_at``: what completed is finalised, the rest
are ``batch_expired`` lines in the error file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from strata.files import store
from strata.files.store import crypto_of
from strata.files.validate import Line, lines
from strata.jobs.execute import Executor
from strata.jobs.results import result_line
from strata.security.keys import Principal
from strata.storage.repositories import batches as repo

log = logging.getLogger("strata.jobs")

Heartbeat = Callable[[], Awaitable[None]]
# Runs pending lines somewhere else (Ray shards); None: in this process.
Offload = Callable[[repo.BatchRow, list[Line], asyncio.Event], Awaitable[bool]]


def principal_of(batch: repo.BatchRow) -> Principal:
    """The batch's owner, as its requests are limited and accounted: the key that
    created it (scopes and model allow-list were checked at creation)."""
    return Principal(
        key_id=batch.key_id, tenant_id=batch.tenant_id, user_id=batch.user_id, is_admin=False
    )


async def read_lines(rt: Any, batch: repo.BatchRow) -> list[Line] | None:
    """The input file's lines, or None when it no longer exists."""
    row = await store.repo.get(rt.engine, batch.tenant_id, batch.input_file_id)
    if row is None:
        return None
    data = await store.read(rt.engine, crypto_of(rt), row.id)
    return list(lines(data))


class BatchRunner:
    def __init__(
        self,
        rt: Any,
        owner: str,
        heartbeat: Heartbeat | None = None,
        offload: Offload | None = None,
        draining: asyncio.Event | None = None,
    ) -> None:
        """``draining``: set when the worker shuts down (stop after this chunk)."""
        self.rt = rt
        self.owner = owner
        self.heartbeat = heartbeat
        self.offload = offload
        self.draining = draining
        self.lease_s = rt.settings.batch.lease_s

    async def run(self, batch_id: str) -> str:
        """The batch's status when this worker is done with it ("busy": another
        worker holds it)."""
        engine = self.rt.engine
        batch = await repo.claim(engine, batch_id, self.owner, self.lease_s)
        if batch is None:
            current = await repo.get(engine, None, batch_id)
            return (
                "busy"
                if current is not None and current.status in repo.ACTIVE
                else (current.status if current is not None else "missing")
            )
        stop = asyncio.Event()
        keeper = asyncio.create_task(self._keep(batch_id, stop))
        try:
            return await self._drive(batch, stop)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            with contextlib.suppress(Exception):
                await repo.release(engine, batch_id, self.owner)

    async def _keep(self, batch_id: str, stop: asyncio.Event) -> None:
        """Renew the lease and heartbeat every third of the lease; look for a cancel
        or expiry every second (a cancel stops new requests promptly)."""
        renew_every = self.lease_s / 3
        last = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(min(1.0, renew_every))
            if self.draining is not None and self.draining.is_set():
                stop.set()  # the worker is shutting down: commit and hand over
            now = asyncio.get_running_loop().time()
            try:
                if now - last >= renew_every:
                    last = now
                    batch = await repo.claim(self.rt.engine, batch_id, self.owner, self.lease_s)
                    if self.heartbeat is not None:
                        with contextlib.suppress(Exception):
                            await self.heartbeat()
                else:
                    batch = await repo.get(self.rt.engine, None, batch_id)
                    if batch is not None and batch.lease_owner != self.owner:
                        batch = None
            except Exception as exc:
                log.warning("batch %s: lease check failed (%s)", batch_id, type(exc).__name__)
                continue
            if batch is None or batch.status == "cancelling" or _expired(batch):
                stop.set()

    async def _drive(self, batch: repo.BatchRow, stop: asyncio.Event) -> str:
        engine = self.rt.engine
        parsed = await read_lines(self.rt, batch)
        if batch.status == "validating":
            if parsed is None:
                return await self._fail(batch, "input_file_missing", "the input file was deleted")
            moved = await repo.transition(
                engine, batch.id, "in_progress", only_from=("validating",), total=len(parsed)
            )
            # None: cancelled meanwhile.
            batch = moved or await repo.get(engine, None, batch.id) or batch
        if batch.status == "in_progress" and not _expired(batch):
            if parsed is None:
                return await self._fail(batch, "input_file_missing", "the input file was deleted")
            done = await repo.done_lines(engine, batch.id)
            pending = [ln for ln in parsed if ln.number not in done]
            if pending:
                await self._execute(batch, pending, stop)
            batch = await repo.get(engine, None, batch.id) or batch
        return await self._finish(batch, parsed or [])

    async def _execute(
        self, batch: repo.BatchRow, pending: list[Line], stop: asyncio.Event
    ) -> None:
        if self.offload is not None and await self.offload(batch, pending, stop):
            return
        ex = Executor(self.rt, crypto_of(self.rt), principal_of(batch), batch)
        await ex.run(pending, stop)

    async def _fail(self, batch: repo.BatchRow, code: str, message: str) -> str:
        errors = {
            "object": "list",
            "data": [{"code": code, "message": message, "param": None, "line": None}],
        }
        await repo.transition(
            self.rt.engine, batch.id, "failed", only_from=repo.ACTIVE, errors=errors
        )
        return "failed"

    async def _finish(self, batch: repo.BatchRow, parsed: list[Line]) -> str:
        """Write the output and error files and the final status, in one transaction
        (a second worker finishing the same batch changes nothing)."""
        engine = self.rt.engine
        if batch.status == "cancelling":
            final = "cancelled"
        elif batch.status in ("in_progress", "finalizing") and _expired(batch):
            final = "expired"
        elif batch.status in ("in_progress", "finalizing"):
            done = await repo.done_lines(engine, batch.id)
            if any(ln.number not in done for ln in parsed):
                return batch.status  # stopped early (lease lost): another worker goes on
            final = "completed"
        else:
            return batch.status
        if final == "completed":
            await repo.transition(engine, batch.id, "finalizing", only_from=("in_progress",))
        crypto = crypto_of(self.rt)
        ok = await repo.results(engine, batch.id, True)
        bad = await repo.results(engine, batch.id, False)
        out_lines = [crypto.decrypt(b, repo.result_aad(batch.id, n)) for n, b in ok]
        err_lines = [crypto.decrypt(b, repo.result_aad(batch.id, n)) for n, b in bad]
        if final == "expired":
            done = {n for n, _ in ok} | {n for n, _ in bad}
            for ln in parsed:
                if ln.number not in done:
                    err_lines.append(
                        orjson.dumps(
                            result_line(
                                batch.id,
                                ln.custom_id,
                                ln.number,
                                0,
                                None,
                                {
                                    "code": "batch_expired",
                                    "message": "This request could not be executed before the "
                                    "completion window expired.",
                                },
                            )
                        )
                    )
        async with engine.begin() as conn:
            values: dict[str, Any] = {}
            for purpose_lines, col in ((out_lines, "output_file_id"), (err_lines, "error_file_id")):
                if not purpose_lines:
                    continue
                row = await store.save(
                    engine,
                    crypto,
                    tenant_id=batch.tenant_id,
                    user_id=batch.user_id,
                    key_id=batch.key_id,
                    purpose="batch_output",
                    filename=f"{batch.id}_{'output' if col == 'output_file_id' else 'error'}.jsonl",
                    data=b"".join(x + b"\n" for x in purpose_lines),
                    lines=len(purpose_lines),
                    conn=conn,
                )
                values[col] = row.id
            if final == "expired":
                values["failed"] = len(err_lines)
            stmt = (
                repo.update(repo.batches)
                .where(repo.batches.c.id == batch.id, repo.batches.c.status.in_(repo.ACTIVE))
                .values(status=final, **{f"{final}_at": repo.func.now()}, **values)
            )
            if (await conn.execute(stmt)).rowcount == 0:
                await conn.rollback()
                current = await repo.get(engine, None, batch.id)
                return current.status if current is not None else "missing"
        log.info("batch %s %s (%d ok, %d failed)", batch.id, final, len(out_lines), len(err_lines))
        return final


def _expired(batch: repo.BatchRow) -> bool:
    return datetime.now(UTC) >= batch.expires_at
