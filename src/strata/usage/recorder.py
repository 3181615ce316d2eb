"""Usage records: buffered in memory, written to PostgreSQL in batches off the hot path.

Policy when PostgreSQL is unreachable: records stay in memory (up to
``usage.buffer_max``), then the oldest are appended to a local spill file
(``<data_dir>/usage-spill.jsonl``). Every flush retries with backoff; once the
database answers, the spill file is replayed. Rows carry an id made here, so a
replay after a partial write never double-counts. On shutdown the buffer is
flushed, or spilled if the database is still down: nothing is lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from strata.observability import tracing
from strata.usage.sealing import drop_end_user

log = logging.getLogger("strata.usage")

UTC = UTC
MAX_BACKOFF_S = 30.0
# A key's last_used_at is written at most this often per instance.
TOUCH_EVERY_S = 60.0
# Spill files replayed per flush at most (new spills may land while replaying).
MAX_SPILL_ROUNDS = 10


@dataclass(slots=True)
class UsageEvent:
    request_id: str
    tenant_id: str
    user_id: str
    key_id: str
    endpoint: str
    alias: str
    provider: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    stream: bool = False
    status: str = "ok"  # ok | error | cancelled
    status_code: int = 200
    error_type: str | None = None
    attempts: int = 0
    fallback: bool = False
    route: str | None = None
    # Included in cost_usd: what failed attempts were probably billed upstream.
    failed_cost_usd: Decimal = Decimal(0)
    cache: str | None = None  # hit-exact | miss | bypass (chat only)
    saved_usd: Decimal = Decimal(0)  # a hit's saving: what the original call cost
    trace_id: str | None = None  # the request's OpenTelemetry trace, when traced
    # The client's end-user id (OpenAI's ``user``): personal data, in memory only;
    # rows carry it encrypted with a blind index (see ``Sealer``).
    end_user: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: uuid.UUID = field(default_factory=uuid.uuid4)


Writer = Callable[[list[dict[str, Any]]], Awaitable[None]]
Toucher = Callable[[dict[str, datetime]], Awaitable[None]]


class UsageRecorder:
    def __init__(
        self,
        write: Writer,
        *,
        spill_path: Path,
        batch_size: int = 500,
        buffer_max: int = 20_000,
        flush_interval_s: float = 1.0,
        touch: Toucher | None = None,
    ) -> None:
        self._write = write
        self._touch = touch
        self.spill_path = spill_path
        self.batch_size = batch_size
        self.buffer_max = buffer_max
        self.flush_interval_s = flush_interval_s
        self._buffer: deque[UsageEvent] = deque()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._touched: dict[str, float] = {}  # key id -> when last_used_at was written
        # While the database is failing, retries keep their back-off however
        # much traffic arrives (no wake-ups, no re-reading the spill file).
        self._failing = False
        self.write_failures = 0
        self.written = 0
        self.spilled = 0
        # Set by the runtime when tracing is on: each batch written is a span.
        self.tracer: Any = None
        # Turns a row's plaintext end-user id into its encrypted columns; the
        # runtime installs an EndUserSealer once the key ring exists.
        self.seal: Callable[[dict[str, Any]], None] = drop_end_user

    def record(self, event: UsageEvent) -> None:
        """Hot path: O(1), never awaits."""
        self._buffer.append(event)
        if len(self._buffer) > self.buffer_max:
            self._spill(self.batch_size)
        elif len(self._buffer) >= self.batch_size and not self._failing:
            self._wake.set()

    @property
    def depth(self) -> int:
        return len(self._buffer)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="usage-flush")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception as exc:
            log.warning("usage write failed at shutdown (%s)", type(exc).__name__)
        if self._buffer:
            log.warning("spilling %d usage records to %s", len(self._buffer), self.spill_path)
            self._spill(len(self._buffer))

    async def flush(self) -> None:
        """Write everything buffered (and any spill file). Raises if the database fails."""
        async with self._lock:
            await self._replay_spill()
            while self._buffer:
                batch = [
                    self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))
                ]
                try:
                    with tracing.root_span(
                        self.tracer, "usage.write", {"strata.usage.rows": len(batch)}
                    ):
                        await self._write([self._row(e) for e in batch])
                except BaseException:
                    self._buffer.extendleft(reversed(batch))
                    raise
                self.written += len(batch)
                await self._touch_keys(batch)

    async def _loop(self) -> None:
        backoff = self.flush_interval_s
        while True:
            if self._failing:
                await asyncio.sleep(backoff)
            else:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow
                # a cancel that arrives as the event fires, and stop() would hang.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                backoff = self.flush_interval_s
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failing = True
                self.write_failures += 1
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                log.warning(
                    "usage write failed (%s); %d records kept, retrying in %.0fs",
                    type(exc).__name__,
                    len(self._buffer),
                    backoff,
                )

    async def _touch_keys(self, batch: list[UsageEvent]) -> None:
        if self._touch is None:
            return
        last: dict[str, datetime] = {}
        for e in batch:
            if e.key_id and (e.key_id not in last or e.created_at > last[e.key_id]):
                last[e.key_id] = e.created_at
        # last_used_at is informational: a busy key is written once a minute, not
        # on every flush (that UPDATE cost more CPU than the inserts).
        now = time.monotonic()
        last = {
            k: at
            for k, at in last.items()
            if now - self._touched.get(k, -TOUCH_EVERY_S) >= TOUCH_EVERY_S
        }
        if not last:
            return
        if len(self._touched) > 100_000:
            self._touched.clear()
        for k in last:
            self._touched[k] = now
        try:
            await self._touch(last)
        except Exception as exc:  # best effort: last_used_at is informational
            log.info("could not update key last_used_at: %s", type(exc).__name__)

    def _spill(self, n: int) -> None:
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spill_path.open("ab") as f:
            for _ in range(min(n, len(self._buffer))):
                row = self._row(self._buffer.popleft())
                if row["end_user_enc"] is not None:
                    row["end_user_enc"] = base64.b64encode(row["end_user_enc"]).decode()
                f.write(orjson.dumps(row, default=str) + b"\n")
                self.spilled += 1
            f.flush()
            os.fsync(f.fileno())

    async def _replay_spill(self) -> None:
        # Rename first, so records spilled while replaying go to a fresh file; a
        # leftover .replaying file is from a replay cut short, so it goes first.
        # Rows that were already written are skipped by id, so repeats are safe.
        replaying = self.spill_path.with_suffix(".replaying")
        for _ in range(MAX_SPILL_ROUNDS):
            if not replaying.exists():
                if not self.spill_path.exists():
                    return
                os.replace(self.spill_path, replaying)
            await self._replay_file(replaying)
            replaying.unlink()

    async def _replay_file(self, path: Path) -> None:
        rows: list[dict[str, Any]] = []
        done = 0
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(_from_spill(orjson.loads(line)))
                except (ValueError, KeyError, TypeError):
                    # A line cut short by a crash must not block every later write.
                    self._quarantine(path, number, line)
                    continue
                if len(rows) >= self.batch_size:
                    await self._write(rows)
                    done, rows = done + len(rows), []
        if rows:
            await self._write(rows)
            done += len(rows)
        self.written += done
        log.info("replayed %d spilled usage records", done)

    def _quarantine(self, path: Path, number: int, line: bytes) -> None:
        corrupt = self.spill_path.with_suffix(".corrupt")
        with corrupt.open("ab") as f:
            f.write(line if line.endswith(b"\n") else line + b"\n")
        log.warning("unreadable usage spill line %d moved to %s", number, corrupt)

    def _row(self, e: UsageEvent) -> dict[str, Any]:
        # Shallow on purpose: asdict() deep-copies every value (~30x slower).
        row = {name: getattr(e, name) for name in FIELDS}
        self.seal(row)
        return row


FIELDS = tuple(f.name for f in fields(UsageEvent))


def _from_spill(row: dict[str, Any]) -> dict[str, Any]:
    row["id"] = uuid.UUID(row["id"])
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    row["cost_usd"] = Decimal(row["cost_usd"])
    for name in ("failed_cost_usd", "saved_usd"):
        if name in row:
            row[name] = Decimal(row[name])
    if row.get("end_user_enc"):
        row["end_user_enc"] = base64.b64decode(row["end_user_enc"])
    row.pop("end_user", None)  # never written in clear
    return row
