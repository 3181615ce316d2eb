"""Batch API benchmarks (part of ``make bench``; alone: ``python -m bench.batch``).

1. **Batch path vs live**: N chat requests (1,000) against the static nginx stub,
   sent live by a client with C concurrent connections (32), and the same requests
   as one batch (upload, create, poll until completed) that the server's worker
   runs with ``batch.concurrency_per_deployment`` = C. Reported: the throughput
   ratio batch/live and the queue overhead per request ((batch time - live
   time) / N), medians of interleaved repeats. Every request is distinct (no
   cache hits) and accounted in both paths.
2. **Local embeddings, 32 per pass vs one at a time**: the embedded MiniLM
   (``local_embed`` provider, the code path batches use) on 32 texts in one call
   vs 32 calls; tokens/s of each and the ratio, medians of repeats; compared with
   the reference's claim that batch size 32 saves 10-20% of inference cost.

Prints a table and writes bench/results/batch-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.server import StrataServer, config_text
from bench.stub import NginxStub

RESULTS_DIR = Path(__file__).resolve().parent / "results"
EXTRA_CONFIG = """\
jobs: {{queue: bench-batch, concurrency: 2}}
batch: {{concurrency_per_deployment: {conc}, commit_every: 64}}
"""
SENTENCE = (
    "Batch processing groups many requests into one pass so that the fixed cost of "
    "each pass is shared by every sequence in it"
)


class BatchStrata(StrataServer):
    """`strata serve` with its in-process worker and the batch concurrency set."""

    def __init__(self, workdir: Path, json_base: str, sse_base: str, conc: int) -> None:
        super().__init__(workdir, json_base, sse_base)
        self.conc = conc

    def start(self) -> None:
        import bench.server as srv

        base = config_text(self.json_base, self.sse_base) + EXTRA_CONFIG.format(conc=self.conc)
        original = srv.config_text
        srv.config_text = lambda *a, **k: base
        try:
            super().start()
        finally:
            srv.config_text = original


def _body(run: str, i: int) -> dict[str, Any]:
    return {"model": "stub", "messages": [{"role": "user", "content": f"{run} question {i}"}]}


async def _live(server: StrataServer, run: str, n: int, conc: int) -> float:
    import aiohttp

    headers = {"Authorization": f"Bearer {server.key}"}
    url = server.base + "/v1/chat/completions"
    todo = iter(range(n))
    bad = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal bad
        for i in todo:
            async with session.post(url, json=_body(run, i), headers=headers) as r:
                await r.read()
                bad += r.status != 200

    conn = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(conc)))
        elapsed = time.perf_counter() - start
    if bad:
        raise RuntimeError(f"{bad} live requests failed")
    return elapsed


def _batch(server: StrataServer, run: str, n: int) -> dict[str, float]:
    import openai

    client = openai.OpenAI(base_url=server.base + "/v1", api_key=server.key, max_retries=0)
    lines = [
        json.dumps(
            {
                "custom_id": f"{run}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": _body(run, i),
            }
        )
        for i in range(n)
    ]
    data = ("\n".join(lines) + "\n").encode()
    t0 = time.perf_counter()
    f = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch")
    t1 = time.perf_counter()
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    first = None
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.02)
        b = client.batches.retrieve(b.id)
        if first is None and b.request_counts is not None and b.request_counts.completed:
            first = time.perf_counter()
    t2 = time.perf_counter()
    client.close()
    counts = b.request_counts
    if b.status != "completed" or counts is None or counts.completed != n:
        raise RuntimeError(f"batch ended {b.status} with {counts}")
    return {"upload_s": t1 - t0, "run_s": t2 - t1, "first_result_s": (first or t2) - t1}


def measure_batch_vs_live(n: int, conc: int, repeats: int, work: Path) -> dict[str, Any]:
    stub = NginxStub(work)
    stub.start()
    server = BatchStrata(work, f"{stub.base}/json/v1", f"{stub.base}/sse/v1", conc)
    try:
        print("starting strata (embedded services, in-process worker)...", flush=True)
        server.start()
        asyncio.run(_live(server, "warmup", 100, conc))
        _batch(server, "warmup", 100)
        live, batch, upload, first = [], [], [], []
        for r in range(repeats):
            live.append(asyncio.run(_live(server, f"live{r}", n, conc)))
            res = _batch(server, f"batch{r}", n)
            batch.append(res["run_s"])
            upload.append(res["upload_s"])
            first.append(res["first_result_s"])
            print(
                f"  repeat {r + 1}: live {live[-1]:.2f}s, batch {batch[-1]:.2f}s "
                f"(+ upload {upload[-1]:.2f}s)",
                flush=True,
            )
    finally:
        server.stop()
        stub.stop()
    lv, bt = statistics.median(live), statistics.median(batch)
    return {
        "requests": n,
        "concurrency": conc,
        "repeats": repeats,
        "live_s": live,
        "batch_s": batch,
        "upload_s": upload,
        # Create -> the first committed chunk: queue pickup, validation, one chunk.
        "first_result_s": first,
        "first_result_s_median": statistics.median(first),
        "live_rps_median": n / lv,
        "batch_rps_median": n / bt,
        "throughput_ratio_batch_over_live": lv / bt,
        "queue_overhead_ms_per_request": (bt - lv) / n * 1000,
    }


def measure_embeddings(group: int, repeats: int) -> dict[str, Any]:
    from strata.providers.registry import build_providers
    from strata.settings import load_settings

    settings = load_settings(None, models={
        "embed-default": {"kind": "embedding", "provider": "local-embed",
                          "model": "all-minilm-l6-v2"}})  # fmt: skip
    provider = build_providers(settings)["local-embed"]

    async def go() -> dict[str, Any]:
        await provider.start()
        await provider.embed(["warm up"], "all-minilm-l6-v2")
        texts = [f"{SENTENCE} (item {i}, variant {i * 7 % 13})" for i in range(group)]
        one, many = [], []
        tokens = 0  # the texts' own tokens (a batch pads to its longest text)
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = 0
            for t in texts:
                tokens += (await provider.embed([t], "all-minilm-l6-v2")).prompt_tokens
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            await provider.embed(texts, "all-minilm-l6-v2")
            many.append(time.perf_counter() - start)
        await provider.close()
        t1, tm = statistics.median(one), statistics.median(many)
        return {
            "texts": group,
            "tokens": tokens,
            "repeats": repeats,
            "one_at_a_time_s": one,
            "batched_s": many,
            "tokens_per_s_one_at_a_time": tokens / t1,
            "tokens_per_s_batched": tokens / tm,
            "tokens_per_s_ratio": t1 / tm,
            "per_token_cost_saving": 1 - tm / t1,
        }

    return asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    p.add_argument("--requests", type=int, default=int(os.environ.get("BENCH_BATCH_N", 1000)))
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", 3)))
    p.add_argument("--embed-repeats", type=int, default=7)
    p.add_argument("--skip-gateway", action="store_true", help="embeddings only")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out: dict[str, Any] = {"benchmark": "batch"}
    if not args.skip_gateway:
        with tempfile.TemporaryDirectory(prefix="strata-bench-batch-") as tmp:
            out["batch_vs_live"] = measure_batch_vs_live(
                args.requests, args.concurrency, args.repeats, Path(tmp)
            )
    out["embeddings"] = measure_embeddings(32, args.embed_repeats)
    print(report(out))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"batch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nresults: {path}")
    return 0


def report(out: dict[str, Any]) -> str:
    lines = []
    b = out.get("batch_vs_live")
    if b:
        lines += [
            f"batch vs live, {b['requests']} chat requests, concurrency {b['concurrency']}, "
            f"median of {b['repeats']}:",
            f"  live   {b['live_rps_median']:8.1f} req/s",
            f"  batch  {b['batch_rps_median']:8.1f} req/s (create -> completed; upload apart)",
            f"  throughput ratio batch/live  {b['throughput_ratio_batch_over_live']:.2f}",
            f"  queue overhead per request   {b['queue_overhead_ms_per_request']:.2f} ms "
            "((batch time - live time) / requests)",
            f"  create -> first results      {b['first_result_s_median'] * 1000:.0f} ms "
            "(queue pickup, validation, first committed chunk)",
        ]
    e = out["embeddings"]
    lines += [
        f"local embeddings (MiniLM, CPU), {e['texts']} texts / {e['tokens']} tokens, "
        f"median of {e['repeats']}:",
        f"  one at a time  {e['tokens_per_s_one_at_a_time']:9.0f} tokens/s",
        f"  32 per pass    {e['tokens_per_s_batched']:9.0f} tokens/s",
        f"  ratio {e['tokens_per_s_ratio']:.2f}x: per-token cost "
        f"{e['per_token_cost_saving'] * 100:.0f}% lower (reference claims 10-20%)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
