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
    ("added latency, 1 conn, ms", "added_latency_ms", "{:.3f}"),
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


def table(results: dict[str, Any]) -> str:
    modes = list(results["modes"])
    width = 28
    lines = [
        f"Strata gateway overhead (medians of {results['plan']['repeats']} interleaved runs, "
        f"{results['plan']['connections']} connections x {results['plan']['duration_s']:.0f}s; "
        f"1-connection runs {results['plan']['latency_duration_s']:.0f}s)",
        "",
        f"{'':<{width}}" + "".join(f"{m:>16}" for m in modes),
    ]
    for label, key, fmt in ROWS:
        cells = [fmt.format(results["modes"][m]["median"][key]) for m in modes]
        lines.append(f"{label:<{width}}" + "".join(f"{c:>16}" for c in cells))
    lines.append("")
    lines.append(
        f"strata RSS after load: {results['rss_mib']:.1f} MiB (peak {results['rss_peak_mib']:.1f} "
        f"MiB); postgres+redis RSS {results['services_rss_mib']:.1f} MiB"
    )
    acct = results.get("usage_check")
    if acct:
        lines.append(
            f"usage accounting: {acct['accounted']} requests recorded by Strata for "
            f"{acct['completed']} completed by wrk ({acct['verdict']})"
        )
    busy = max(results["modes"][m]["median"]["other_procs_cores"] for m in modes)
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
