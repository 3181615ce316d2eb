"""UsageRecorder against the real PostgreSQL: batching, outages, spill and replay.

"Database down" is a real engine pointed at a closed loopback port; "recovery"
switches the recorder's writer to the engine of the test database. Every test
uses its own tenant and request-id prefix, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.storage.engine import make_engine
from strata.storage.models import UsageRecord
from strata.storage.repositories import usage as usage_repo
from strata.usage.recorder import UsageEvent, UsageRecorder

DEAD_URL = "postgresql://strata:x@127.0.0.1:1/strata"
WAIT_S = 15.0

Rows = list[dict[str, Any]]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url, pool_size=2)
    yield eng
    await eng.dispose()


@pytest.fixture
async def dead_engine() -> AsyncIterator[AsyncEngine]:
    eng = make_engine(DEAD_URL, pool_size=1)
    yield eng
    await eng.dispose()


@pytest.fixture
def tenant() -> str:
    return "t-" + uuid.uuid4().hex[:16]


@pytest.fixture
def spill_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "usage-spill.jsonl"


class Switch:
    """A writer whose target can change: the database goes down and comes back."""

    def __init__(self, target: Callable[[Rows], Awaitable[None]]) -> None:
        self.target = target
        self.batches: list[int] = []

    async def __call__(self, rows: Rows) -> None:
        await self.target(rows)
        self.batches.append(len(rows))


def writer_for(engine: AsyncEngine) -> Callable[[Rows], Awaitable[None]]:
    return lambda rows: usage_repo.insert_batch(engine, rows)


def events(tenant: str, prefix: str, n: int, start: int = 0, **kw: Any) -> list[UsageEvent]:
    return [
        UsageEvent(
            request_id=f"{prefix}-{i:05d}",
            tenant_id=tenant,
            user_id=kw.get("user_id", "u1"),
            key_id="key_test",
            endpoint="chat",
            alias=kw.get("alias", "fake"),
            provider="fake",
            model="fake-1",
            prompt_tokens=10 + i,
            completion_tokens=5,
            cost_usd=Decimal("0.0000123456"),
            latency_ms=12.5,
            ttft_ms=3.25 if i % 2 else None,
            stream=bool(i % 2),
            status=kw.get("status", "ok"),
        )
        for i in range(start, start + n)
    ]


async def counts(engine: AsyncEngine, prefix: str) -> dict[str, int]:
    """Rows per request id for ids starting with ``prefix``."""
    stmt = (
        select(UsageRecord.request_id, func.count())
        .where(UsageRecord.request_id.like(prefix + "-%"))
        .group_by(UsageRecord.request_id)
    )
    async with engine.connect() as conn:
        return {r[0]: int(r[1]) for r in (await conn.execute(stmt)).all()}


async def stored(engine: AsyncEngine, prefix: str) -> dict[str, Any]:
    stmt = select(UsageRecord).where(UsageRecord.request_id.like(prefix + "-%"))
    async with engine.connect() as conn:
        return {r.request_id: r for r in (await conn.execute(stmt)).all()}


def read(path: Path) -> bytes:
    return path.read_bytes()


def write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def exists(path: Path) -> bool:
    return path.exists()


def spilled_lines(spill_path: Path) -> list[dict[str, Any]]:
    """Records on disk: the spill file and a replay cut short."""
    found = []
    for path in (spill_path, spill_path.with_suffix(".replaying")):
        if path.exists():
            found += [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
    return found


async def wait_for(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def exactly_once(found: dict[str, int], prefix: str, n: int) -> None:
    assert found == {f"{prefix}-{i:05d}": 1 for i in range(n)}


async def test_records_are_written_in_batches_and_summarised(
    engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    writer = Switch(writer_for(engine))
    rec = UsageRecorder(writer, spill_path=spill_path, batch_size=3, buffer_max=100)
    batch = events(tenant, prefix, 6) + events(tenant, prefix, 1, start=6, status="error")
    for e in batch:
        rec.record(e)
    assert rec.depth == 7
    assert await counts(engine, prefix) == {}  # nothing written on the hot path

    await rec.flush()
    assert writer.batches == [3, 3, 1]
    assert rec.depth == 0
    assert rec.written == 7
    exactly_once(await counts(engine, prefix), prefix, 7)
    assert not exists(spill_path)

    (row,) = await usage_repo.summarize(engine, tenant_id=tenant)
    assert row.day == batch[0].created_at.date()  # created_at is UTC
    assert (row.alias, row.user_id) == ("fake", "u1")
    assert (row.requests, row.errors) == (7, 1)
    assert row.prompt_tokens == sum(10 + i for i in range(7))
    assert row.completion_tokens == 35
    assert row.cost_usd == Decimal("0.0000123456") * 7
    assert await usage_repo.count_for_request(engine, f"{prefix}-00003") == 1


async def test_summary_groups_by_day_model_and_user(
    engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    rec = UsageRecorder(writer_for(engine), spill_path=spill_path)
    today = datetime.now(UTC)
    yesterday = today - timedelta(days=1)
    batch = (
        events(tenant, prefix, 2, alias="a", user_id="u1")
        + events(tenant, prefix, 3, start=2, alias="b", user_id="u1")
        + events(tenant, prefix, 1, start=5, alias="a", user_id="u2")
    )
    batch[0].created_at = yesterday
    for e in batch:
        rec.record(e)
    await rec.flush()

    rows = await usage_repo.summarize(engine, tenant_id=tenant)
    got = {(r.day, r.alias, r.user_id): (r.requests, r.cost_usd) for r in rows}
    unit = Decimal("0.0000123456")
    assert got == {
        (yesterday.date(), "a", "u1"): (1, unit),
        (today.date(), "a", "u1"): (1, unit),
        (today.date(), "b", "u1"): (3, unit * 3),
        (today.date(), "a", "u2"): (1, unit),
    }
    only_u1_b = await usage_repo.summarize(engine, tenant_id=tenant, user_id="u1", alias="b")
    assert [(r.alias, r.requests) for r in only_u1_b] == [("b", 3)]
    since_today = await usage_repo.summarize(engine, tenant_id=tenant, start=today.date())
    assert sum(r.requests for r in since_today) == 5


async def test_background_loop_writes_without_explicit_flush(
    engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    rec = UsageRecorder(writer_for(engine), spill_path=spill_path, flush_interval_s=0.05)
    await rec.start()
    try:
        for e in events(tenant, prefix, 3):
            rec.record(e)

        async def written() -> bool:
            return len(await counts(engine, prefix)) == 3

        await wait_for(written, "the flush loop")
    finally:
        await rec.stop()
    exactly_once(await counts(engine, prefix), prefix, 3)
    assert rec.write_failures == 0


async def test_full_batch_wakes_the_loop_early(
    engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    # The interval is far beyond the test's patience: only the wake-up can flush.
    rec = UsageRecorder(
        writer_for(engine), spill_path=spill_path, batch_size=4, flush_interval_s=3600
    )
    await rec.start()
    try:
        for e in events(tenant, prefix, 4):
            rec.record(e)

        async def written() -> bool:
            return len(await counts(engine, prefix)) == 4

        await wait_for(written, "a full batch to be flushed")
    finally:
        await rec.stop()


async def test_database_down_keeps_everything_and_recovery_writes_it_once(
    engine: AsyncEngine, dead_engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    writer = Switch(writer_for(dead_engine))
    rec = UsageRecorder(writer, spill_path=spill_path, batch_size=2, buffer_max=5)
    for e in events(tenant, prefix, 13):
        rec.record(e)
    # Memory holds at most buffer_max; the oldest went to the spill file.
    assert rec.depth <= 5
    on_disk = spilled_lines(spill_path)
    assert len(on_disk) == rec.spilled == 13 - rec.depth
    assert [r["request_id"] for r in on_disk] == [f"{prefix}-{i:05d}" for i in range(len(on_disk))]

    for _ in range(2):  # retries during the outage fail, and lose nothing
        with pytest.raises(OSError):
            await rec.flush()
        assert rec.depth + len(spilled_lines(spill_path)) == 13
    assert await counts(engine, prefix) == {}

    writer.target = writer_for(engine)  # the database is back
    await rec.flush()
    exactly_once(await counts(engine, prefix), prefix, 13)
    assert rec.depth == 0
    assert spilled_lines(spill_path) == []
    assert rec.written == 13


async def test_records_spilled_after_a_failed_replay_are_written_on_recovery(
    engine: AsyncEngine, dead_engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    writer = Switch(writer_for(dead_engine))
    rec = UsageRecorder(writer, spill_path=spill_path, batch_size=2, buffer_max=5)
    for e in events(tenant, prefix, 13):
        rec.record(e)
    with pytest.raises(OSError):
        await rec.flush()  # the replay of the spill file fails midway
    for e in events(tenant, prefix, 3, start=13):  # traffic continues: more spills
        rec.record(e)
    assert exists(spill_path)
    assert rec.depth + len(spilled_lines(spill_path)) == 16

    writer.target = writer_for(engine)  # the database is back
    await rec.flush()  # "Write everything buffered (and any spill file)"
    exactly_once(await counts(engine, prefix), prefix, 16)
    assert spilled_lines(spill_path) == []


async def test_failure_midway_through_a_flush_loses_and_duplicates_nothing(
    engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    calls = 0

    async def flaky(rows: Rows) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionResetError("connection lost")  # before the write
        await usage_repo.insert_batch(engine, rows)
        if calls == 3:
            raise TimeoutError("committed, but the reply never came")  # after the write

    rec = UsageRecorder(flaky, spill_path=spill_path, batch_size=2)
    for e in events(tenant, prefix, 6):
        rec.record(e)
    with pytest.raises(ConnectionResetError):
        await rec.flush()
    assert len(await counts(engine, prefix)) == 2
    assert rec.depth == 4
    with pytest.raises(TimeoutError):
        await rec.flush()
    assert rec.depth == 4  # the batch whose outcome is unknown is kept
    await rec.flush()
    exactly_once(await counts(engine, prefix), prefix, 6)


async def test_loop_retries_until_the_database_is_back(
    engine: AsyncEngine, dead_engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    writer = Switch(writer_for(dead_engine))
    rec = UsageRecorder(writer, spill_path=spill_path, flush_interval_s=0.01)
    await rec.start()
    try:
        for e in events(tenant, prefix, 4):
            rec.record(e)

        async def failed_twice() -> bool:
            return rec.write_failures >= 2

        await wait_for(failed_twice, "failed writes")
        assert rec.depth == 4
        writer.target = writer_for(engine)

        async def written() -> bool:
            return len(await counts(engine, prefix)) == 4

        await wait_for(written, "the loop to recover")
    finally:
        await rec.stop()
    exactly_once(await counts(engine, prefix), prefix, 4)


async def test_outage_retries_back_off_under_traffic(
    dead_engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    attempts = 0

    async def counting(rows: Rows) -> None:
        nonlocal attempts
        attempts += 1
        await usage_repo.insert_batch(dead_engine, rows)

    rec = UsageRecorder(counting, spill_path=spill_path, batch_size=2, flush_interval_s=0.05)
    await rec.start()
    try:
        for e in events(tenant, "req-" + uuid.uuid4().hex, 60):
            rec.record(e)  # steady traffic while the database is down
            await asyncio.sleep(0.005)
    finally:
        await stop_ignoring_error(rec)
    # ~0.3 s of outage, retries at 0.05 s doubling on each failure, plus the final
    # flush in stop(): a handful of attempts, not one per request.
    assert attempts <= 8, attempts


async def stop_ignoring_error(rec: UsageRecorder) -> None:
    # Whether stop() may raise is its own test (test_stop_with_database_down_does_not_raise).
    with contextlib.suppress(OSError):
        await rec.stop()


async def test_stop_with_database_down_spills_everything(
    engine: AsyncEngine, dead_engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    batch = events(tenant, prefix, 4)
    rec = UsageRecorder(writer_for(dead_engine), spill_path=spill_path, flush_interval_s=3600)
    await rec.start()
    for e in batch:
        rec.record(e)
    await stop_ignoring_error(rec)
    assert rec.depth == 0
    on_disk = spilled_lines(spill_path)
    assert [r["request_id"] for r in on_disk] == [e.request_id for e in batch]
    assert {r["tenant_id"] for r in on_disk} == {tenant}

    # The next process replays the file on its first flush, values intact.
    rec2 = UsageRecorder(writer_for(engine), spill_path=spill_path)
    await rec2.flush()
    exactly_once(await counts(engine, prefix), prefix, 4)
    assert spilled_lines(spill_path) == []
    rows = await stored(engine, prefix)
    for e in batch:
        row = rows[e.request_id]
        assert row.id == e.id
        assert row.created_at == e.created_at
        assert row.cost_usd == Decimal("0.0000123456")
        assert (row.ttft_ms, row.stream, row.prompt_tokens) == (
            e.ttft_ms,
            e.stream,
            e.prompt_tokens,
        )


async def test_stop_with_database_down_does_not_raise(
    dead_engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    rec = UsageRecorder(writer_for(dead_engine), spill_path=spill_path)
    rec.record(events(tenant, "req-" + uuid.uuid4().hex, 1)[0])
    await rec.stop()
    assert len(spilled_lines(spill_path)) == 1


async def test_replay_is_idempotent(
    engine: AsyncEngine, dead_engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    rec = UsageRecorder(writer_for(dead_engine), spill_path=spill_path)
    for e in events(tenant, prefix, 5):
        rec.record(e)
    await stop_ignoring_error(rec)
    copy = read(spill_path)

    await UsageRecorder(writer_for(engine), spill_path=spill_path).flush()
    exactly_once(await counts(engine, prefix), prefix, 5)

    # The same records spilled again (a replay cut short after its write) are
    # skipped by id, not counted twice.
    write(spill_path, copy)
    again = UsageRecorder(writer_for(engine), spill_path=spill_path)
    await again.flush()
    exactly_once(await counts(engine, prefix), prefix, 5)
    assert not exists(spill_path)

    rows = [
        {**r, "id": uuid.UUID(r["id"]), "created_at": datetime.fromisoformat(r["created_at"])}
        for r in (orjson.loads(line) for line in copy.splitlines())
    ]
    await usage_repo.insert_batch(engine, rows)
    exactly_once(await counts(engine, prefix), prefix, 5)


async def test_a_truncated_spill_line_does_not_block_usage_writes(
    engine: AsyncEngine, dead_engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    prefix = "req-" + uuid.uuid4().hex
    batch = events(tenant, prefix, 3)
    crashed = UsageRecorder(writer_for(dead_engine), spill_path=spill_path)
    for e in batch[:2]:
        crashed.record(e)
    await stop_ignoring_error(crashed)
    whole = read(spill_path)
    write(spill_path, whole[: len(whole) - 40])  # the last line cut short

    rec = UsageRecorder(writer_for(engine), spill_path=spill_path)
    rec.record(batch[2])
    await rec.flush()
    found = await counts(engine, prefix)
    assert found.get(batch[2].request_id) == 1  # new traffic is recorded
    assert found.get(batch[0].request_id) == 1  # the intact spilled line too


async def test_a_busy_key_is_touched_once_a_minute_not_every_flush(
    tenant: str, spill_path: Path
) -> None:
    touched: list[dict[str, Any]] = []

    async def write(rows: Rows) -> None:
        return None

    async def touch(last: dict[str, Any]) -> None:
        touched.append(dict(last))

    rec = UsageRecorder(write, touch=touch, spill_path=spill_path, batch_size=10)
    for i in range(3):
        for e in events(tenant, f"t{i}-", 5):
            rec.record(e)
        await rec.flush()
    assert len(touched) == 1 and len(touched[0]) == 1  # one key, written once


async def test_end_user_is_sealed_in_rows_and_in_the_spill_file(
    engine: AsyncEngine, dead_engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    import os

    from strata.security.crypto import Crypto
    from strata.usage.sealing import EndUserSealer, end_user_aad, end_user_index

    ring = Crypto(os.urandom(32))
    ring.add_key(7, os.urandom(32))
    prefix = "req-" + uuid.uuid4().hex
    person = "zoe." + uuid.uuid4().hex[:8] + "@example.net"
    batch = events(tenant, prefix, 3)
    batch[0].end_user = batch[1].end_user = person
    rec = UsageRecorder(writer_for(dead_engine), spill_path=spill_path, flush_interval_s=3600)
    rec.seal = EndUserSealer(ring)
    await rec.start()
    for e in batch:
        rec.record(e)
    await stop_ignoring_error(rec)
    assert person.encode() not in read(spill_path)

    # Replayed by a process without the key ring: the sealed columns travel as they are.
    rec2 = UsageRecorder(writer_for(engine), spill_path=spill_path)
    await rec2.flush()
    rows = await stored(engine, prefix)
    index = end_user_index(ring, tenant, person)
    for e in batch:
        row = rows[e.request_id]
        if e.end_user is None:
            assert (row.end_user_enc, row.end_user_hmac, row.end_user_dek) == (None, None, None)
            continue
        assert row.end_user_hmac == index and row.end_user_dek == 7
        assert ring.decrypt_text(row.end_user_enc, end_user_aad(tenant, row.id)) == person
    # Bound to its row: the ciphertext does not open as another row's.
    other = rows[batch[2].request_id]
    with pytest.raises(Exception, match="authentication"):
        ring.decrypt_text(rows[batch[0].request_id].end_user_enc, end_user_aad(tenant, other.id))


async def test_without_a_key_ring_the_end_user_is_dropped_not_stored(
    engine: AsyncEngine, tenant: str, spill_path: Path
) -> None:
    import os

    from strata.security.crypto import Crypto
    from strata.usage.sealing import EndUserSealer

    prefix = "req-" + uuid.uuid4().hex
    batch = events(tenant, prefix, 2)
    batch[0].end_user = "nobody@example.com"
    rec = UsageRecorder(writer_for(engine), spill_path=spill_path)
    sealer = EndUserSealer(Crypto(os.urandom(32)))  # no data key loaded
    rec.seal = sealer
    for e in batch:
        rec.record(e)
    await rec.flush()
    rows = await stored(engine, prefix)
    assert len(rows) == 2 and sealer.dropped == 1
    assert all(r.end_user_enc is None and r.end_user_hmac is None for r in rows.values())
