"""CPU that field encryption adds to the usage path, per request.

    .venv/bin/python -m bench.usage_crypto [--records 20000] [--repeats 7] [--database-url URL]

A request whose body names an end user (OpenAI's ``user``) has that id sealed when
its usage record leaves memory: AES-256-GCM under the active data key plus a keyed
blind index (``strata.usage.sealing``). This measures, in one run on this machine:

- ``row``: building a usage row from its event with the id dropped (the path of a
  request without ``user``): the baseline;
- ``row+seal``: the same with the id sealed;
- with ``--database-url`` (or STRATA_DATABASE_URL), ``insert`` and ``insert+seal``:
  the client CPU of writing those rows with ``usage_repo.insert_batch`` in batches
  of 500 (asyncpg encodes the extra ``bytea`` and index columns), into a scratch
  tenant that is deleted afterwards.

Per case: the median over repeats of the CPU (``time.process_time``) per record;
the added cost is ``row+seal - row`` (and ``insert+seal - insert``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from strata.security.crypto import Crypto
from strata.usage.recorder import UsageEvent, UsageRecorder
from strata.usage.sealing import EndUserSealer, drop_end_user

BATCH = 500


def events(n: int, tenant: str) -> list[UsageEvent]:
    return [
        UsageEvent(
            request_id=f"bench-{i}",
            tenant_id=tenant,
            user_id="app",
            key_id="key_bench",
            endpoint="chat",
            alias="fake",
            provider="fake",
            model="fake-1",
            prompt_tokens=20,
            completion_tokens=10,
            cost_usd=Decimal("0.0000123"),
            latency_ms=1.5,
            end_user=f"customer-{i % 1000}@example.com",
        )
        for i in range(n)
    ]


def cpu_per_record(recorder: UsageRecorder, batch: list[UsageEvent]) -> float:
    start = time.process_time()
    for e in batch:
        recorder._row(e)
    return (time.process_time() - start) / len(batch) * 1e6


async def insert_cpu(url: str, rows_of: list[list[dict[str, Any]]]) -> list[float]:
    from sqlalchemy import text

    from strata.storage.engine import make_engine
    from strata.storage.repositories import usage as usage_repo

    engine = make_engine(url, pool_size=1)
    out = []
    try:
        for rows in rows_of:
            start = time.process_time()
            for i in range(0, len(rows), BATCH):
                await usage_repo.insert_batch(engine, rows[i : i + BATCH])
            out.append((time.process_time() - start) / len(rows) * 1e6)
        async with engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM usage_records WHERE tenant_id = :t"),
                {"t": rows_of[0][0]["tenant_id"]},
            )
    finally:
        await engine.dispose()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.usage_crypto", description=__doc__)
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--database-url", default=os.environ.get("STRATA_DATABASE_URL"))
    args = p.parse_args(argv)

    ring = Crypto(os.urandom(32))
    ring.add_key(1, os.urandom(32))
    plain = UsageRecorder(lambda rows: asyncio.sleep(0), spill_path=Path("/nonexistent"))
    plain.seal = drop_end_user
    sealed = UsageRecorder(lambda rows: asyncio.sleep(0), spill_path=Path("/nonexistent"))
    sealed.seal = EndUserSealer(ring)
    tenant = "bench-" + uuid.uuid4().hex[:8]
    batch = events(args.records, tenant)
    cases: dict[str, list[float]] = {"row": [], "row+seal": []}
    for _ in range(args.repeats):  # interleaved: drift hits both alike
        cases["row"].append(cpu_per_record(plain, batch))
        cases["row+seal"].append(cpu_per_record(sealed, batch))
    if args.database_url:
        n = min(args.records, 5000)
        ins_plain: list[float] = []
        ins_sealed: list[float] = []
        for _ in range(args.repeats):
            small = events(n, tenant)
            a = [plain._row(e) for e in small]
            b = [sealed._row(e) for e in events(n, tenant)]
            pa, pb = asyncio.run(insert_cpu(args.database_url, [a, b]))
            ins_plain.append(pa)
            ins_sealed.append(pb)
        cases["insert"] = ins_plain
        cases["insert+seal"] = ins_sealed

    med = {k: statistics.median(v) for k, v in cases.items()}
    print(f"{'case':<14}{'median CPU/record':>20}{'min':>10}{'max':>10}")
    for k, v in cases.items():
        print(f"{k:<14}{med[k]:>17.2f} us{min(v):>10.2f}{max(v):>10.2f}")
    print(f"added by sealing the end-user id: {med['row+seal'] - med['row']:.2f} us per record")
    if "insert" in med:
        print(f"added to the insert: {med['insert+seal'] - med['insert']:.2f} us per record")
        total = med["row+seal"] - med["row"] + med["insert+seal"] - med["insert"]
        print(f"total added on the usage path: {total:.2f} us per request naming an end user")


if __name__ == "__main__":
    main()
