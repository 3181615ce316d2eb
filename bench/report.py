"""The printed table, the targets with PASS/FAIL, and the JSON results file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# (label, mode or None for process-wide, key in the medians/results, limit, unit)
TARGETS = [
    ("CPU per non-streaming request", "non-streaming", "cpu_ms_per_request", 1.0, "ms"),
    ("CPU per streaming request", "streaming", "cpu_ms_per_request", 1.5, "ms"),
    ("added latency, 1 connection (non-streaming)", "non-streaming", "added_latency_ms", 1.0, "ms"),
    ("added latency, 1 connection (streaming)", "streaming", "added_latency_ms", 1.0, "ms"),
    ("added latency, 1 connection (exact hit)", "cache-exact", "added_latency_ms", 1.0, "ms"),
    ("CPU per exact hit, 1 connection", "cache-exact", "lat1_cpu_ms_per_request", 0.5, "ms"),
    ("semantic hit p50 latency, 1 connection", "cache-semantic", "hit_p50_ms", 15.0, "ms"),
    ("RSS after load", None, "rss_mib", 150.0, "MiB"),
]

# Above this, other processes shared the machine enough to skew timings.
BUSY_CORES = 0.25

ROWS = [
    ("direct req/s", "direct_rps", "{:.0f}"),
    ("strata req/s", "strata_rps", "{:.0f}"),
    ("strata / direct", "ratio", "{:.3f}"),
    ("direct p50 ms", "direct_p50_ms", "{:.3f}"),
    ("direct p99 ms", "direct_p99_ms", "{:.3f}"),
    ("strata p50 ms", "strata_p50_ms", "{:.3f}"),
    ("strata p99 ms", "strata_p99_ms", "{:.3f}"),
    ("strata CPU ms/request", "cpu_ms_per_request", "{:.3f}"),
    ("postgres CPU ms/request", "postgres_cpu_ms_per_request", "{:.3f}"),
    ("redis CPU ms/request", "redis_cpu_ms_per_request", "{:.3f}"),
    ("1 conn: direct p50 ms", "lat1_direct_p50_ms", "{:.3f}"),
    ("1 conn: strata p50 ms", "lat1_strata_p50_ms", "{:.3f}"),
    ("1 conn: strata CPU ms/req", "lat1_cpu_ms_per_request", "{:.3f}"),
    ("1 conn: redis CPU ms/req", "lat1_redis_cpu_ms_per_request", "{:.3f}"),
    ("added latency, 1 conn, ms", "added_latency_ms", "{:.3f}"),
    ("other processes, cores", "other_procs_cores", "{:.2f}"),
]

# cache-semantic (one connection, a Python client): label, key, format.
SEMANTIC_ROWS = [
    ("semantic hits / attempted", None, ""),
    ("hit p50 ms", "hit_p50_ms", "{:.2f}"),
    ("hit p95 ms", "hit_p95_ms", "{:.2f}"),
    ("miss p50 ms", "miss_p50_ms", "{:.2f}"),
    ("miss p95 ms", "miss_p95_ms", "{:.2f}"),
    ("strata CPU ms/hit", "cpu_ms_per_hit", "{:.3f}"),
    ("postgres CPU ms/hit", "postgres_cpu_ms_per_hit", "{:.3f}"),
    ("redis CPU ms/hit", "redis_cpu_ms_per_hit", "{:.3f}"),
    ("strata CPU ms/miss", "cpu_ms_per_miss", "{:.3f}"),
    ("postgres CPU ms/miss", "postgres_cpu_ms_per_miss", "{:.3f}"),
    ("redis CPU ms/miss", "redis_cpu_ms_per_miss", "{:.3f}"),
    ("exact hit p50 ms (same client)", "exact_hit_p50_ms", "{:.2f}"),
    ("strata CPU ms/exact hit", "cpu_ms_per_exact_hit", "{:.3f}"),
    ("direct stub p50 ms (same client)", "direct_p50_ms", "{:.2f}"),
    ("other processes, cores", "other_procs_cores", "{:.2f}"),
]


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for label, mode, key, limit, unit in TARGETS:
        if mode is None:
            value = results.get(key)
        else:
            value = results["modes"].get(mode, {}).get("median", {}).get(key)
        if value is None:
            continue
        ok = not math.isnan(value) and value <= limit
        out.append({"target": label, "value": value, "limit": limit, "unit": unit, "pass": ok})
    return out


def _wrk_table(results: dict[str, Any], modes: list[str]) -> list[str]:
    width = 28
    plan = results["plan"]
    lines = [
        f"Strata gateway overhead (medians of {plan['repeats']} interleaved runs, "
        f"{plan['connections']} connections x {plan['duration_s']:.0f}s; "
        f"1-connection runs {plan['latency_duration_s']:.0f}s)",
        "",
        f"{'':<{width}}" + "".join(f"{m:>16}" for m in modes),
    ]
    for label, key, fmt in ROWS:
        cells = [_cell(results["modes"][m]["median"].get(key), fmt) for m in modes]
        lines.append(f"{label:<{width}}" + "".join(f"{c:>16}" for c in cells))
    lines.append("")
    if "rss_mib" in results:
        lines.append(
            f"strata RSS after load: {results['rss_mib']:.1f} MiB (peak "
            f"{results['rss_peak_mib']:.1f} MiB); postgres+redis RSS "
            f"{results['services_rss_mib']:.1f} MiB"
        )
    acct = results.get("usage_check")
    if acct:
        lines.append(
            f"usage accounting: {acct['accounted']} requests recorded by Strata for "
            f"{acct['completed']} completed by wrk ({acct['verdict']})"
        )
    return lines


def _semantic_table(results: dict[str, Any], mode: str) -> list[str]:
    out = results["modes"][mode]
    m = out["median"]
    width = 34
    lines = [
        f"{mode}: one connection, sequential (medians of {len(out['repeats'])} repeats of "
        f"{out['pairs']} paraphrase pairs; CPU per hit over a pass of hits alone)",
        "",
    ]
    for label, key, fmt in SEMANTIC_ROWS:
        if key is None:
            value = f"{m['hits']:.0f}/{m['attempted']:.0f} ({m['hit_rate']:.0%})"
        else:
            value = _cell(m.get(key), fmt)
        lines.append(f"{label:<{width}}{value:>16}")
    if "rss_mib" in out:
        lines.append(f"strata RSS with the embedding model: {out['rss_mib']:.1f} MiB")
    return lines


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def table(results: dict[str, Any]) -> str:
    wrk_modes = [m for m in results["modes"] if "throughput" in results["modes"][m]]
    other = [m for m in results["modes"] if m not in wrk_modes]
    lines: list[str] = []
    if wrk_modes:
        lines += _wrk_table(results, wrk_modes)
    for mode in other:
        if lines:
            lines.append("")
        lines += _semantic_table(results, mode)
        lines.append("")
    busy = max(
        (results["modes"][m]["median"].get("other_procs_cores", 0.0) for m in results["modes"]),
        default=0.0,
    )
    if busy > BUSY_CORES:
        lines.append(
            f"warning: other processes on this machine used a median {busy:.2f} cores during "
            "the runs: throughput and latency are noisy (CPU per request much less so)"
        )
    lines += ["", "targets:"]
    for t in results["targets"]:
        verdict = "PASS" if t["pass"] else "FAIL"
        lines.append(
            f"  {verdict}  {t['target']:<46} {t['value']:8.3f} {t['unit']:<3} "
            f"(target <= {t['limit']:g} {t['unit']})"
        )
    return "\n".join(lines)


def write_json(results: dict[str, Any], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"gateway-{results['timestamp']}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
