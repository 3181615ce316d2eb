"""``python -m bench`` (``make bench``): Strata's overhead over a static upstream.

Modes: non-streaming, streaming, cache-exact (wrk; every request after the first an
exact cache hit) and cache-semantic (a Python client on one connection; semantic
cache hits and misses on a separate Strata with the embedded embedding model);
rag (bench/rag_bench.py: ingestion throughput against raw sentence-transformers,
search latency at 100k chunks).

    make bench                          # full: 3 interleaved repeats of 15s runs
    .venv/bin/python -m bench --quick   # smoke test: one repeat of 5s runs
    BENCH_DURATION=30 make bench        # or --duration 30; see --help for the rest

Prints a table with PASS/FAIL per target and writes bench/results/gateway-<time>.json.
Exit status: 0 done (targets may FAIL; --strict makes that 3), 1 bad responses or a
component that would not start, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.measure import MODES, BadResponses, Plan

SEMANTIC = "cache-semantic"
# The Batch API (bench/batch.py): batch path vs live, local embeddings 32 per pass.
BATCH = "batch"
# RAG (bench/rag_bench.py): ingestion vs raw sentence-transformers, search at 100k chunks.
RAG = "rag"
ALL_MODES = [*MODES, SEMANTIC, BATCH, RAG]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _env(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="What Strata adds on top of an upstream: wrk against a static nginx stub, "
        "directly and through `strata serve` (auth and usage accounting on).",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 5s runs, one repeat")
    p.add_argument("--duration", type=float, help="seconds per wrk run (env BENCH_DURATION, 15)")
    p.add_argument(
        "--latency-duration",
        type=float,
        help="seconds per 1-connection run (env BENCH_LATENCY_DURATION, 5)",
    )
    p.add_argument("--repeats", type=int, help="interleaved repeats (env BENCH_REPEATS, 3)")
    p.add_argument("--connections", type=int, help="wrk connections (env BENCH_CONNECTIONS, 32)")
    p.add_argument("--threads", type=int, help="wrk threads (env BENCH_THREADS, 1)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per mode (env BENCH_WARMUP, 3)")
    p.add_argument(
        "--semantic-pairs",
        type=int,
        help="cache-semantic: paraphrase pairs per repeat (env BENCH_SEMANTIC_PAIRS, 150)",
    )
    p.add_argument("--mode", choices=["all", *ALL_MODES], default="all")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--strict", action="store_true", help="exit 3 when a target fails")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick or os.environ.get("BENCH_QUICK") == "1"

    def pick(arg: float | None, env: str, full: float, smoke: float) -> float:
        if arg is not None:
            return arg
        return _env(env, smoke if quick else full)

    return Plan(
        duration_s=pick(args.duration, "BENCH_DURATION", 15, 5),
        latency_duration_s=pick(args.latency_duration, "BENCH_LATENCY_DURATION", 5, 2),
        warmup_s=pick(args.warmup, "BENCH_WARMUP", 3, 1),
        repeats=int(pick(args.repeats, "BENCH_REPEATS", 3, 1)),
        connections=int(pick(args.connections, "BENCH_CONNECTIONS", 32, 32)),
        threads=int(pick(args.threads, "BENCH_THREADS", 1, 1)),
        semantic_pairs=int(pick(args.semantic_pairs, "BENCH_SEMANTIC_PAIRS", 150, 50)),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = make_plan(args)
    if min(plan.repeats, plan.connections, plan.duration_s, plan.semantic_pairs) < 1:
        print(
            "repeats, connections, duration and semantic pairs must be at least 1",
            file=sys.stderr,
        )
        return 2
    modes = list(ALL_MODES) if args.mode == "all" else [args.mode]
    from bench import report
    from bench.run import run

    if RAG in modes:
        modes = [m for m in modes if m != RAG]
        from bench import rag_bench

        quick = ["--repeats", "1", "--chunks", "20000", "--queries", "100"]
        if rag_bench.main(quick if plan.repeats == 1 else []) != 0:
            return 1
        if not modes:
            return 0
    if BATCH in modes:
        modes = [m for m in modes if m != BATCH]
        from bench import batch

        quick = ["--requests", "200", "--embed-repeats", "3"] if plan.repeats == 1 else []
        if batch.main(["--repeats", str(plan.repeats), *quick]) != 0:
            return 1
        if not modes:
            return 0
    try:
        results = run(plan, modes, keep=args.keep)
    except (BadResponses, RuntimeError) as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print()
    print(report.table(results))
    path = report.write_json(results, args.results_dir)
    print(f"\nresults: {path}")
    failed = [t for t in results["targets"] if not t["pass"]]
    return 3 if failed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
