"""Start the stub and Strata, measure every mode, stop everything, report.

The wrk modes share one Strata without local models (its RSS is a target);
cache-semantic gets its own, with the embedded embedding model.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import report
from bench.cache_semantic import NAME as SEMANTIC
from bench.cache_semantic import measure_semantic
from bench.measure import MODES, Plan, measure
from bench.procs import ensure_tools, rss_mib, service_pids
from bench.server import StrataServer
from bench.stub import NginxStub

ROOT = Path(__file__).resolve().parent.parent


def _version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mib": round(psutil.virtual_memory().total / 2**20),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]),
        "git_commit": _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }


def _services_rss(server: StrataServer) -> float:
    total = 0
    for pids in service_pids(server.pid, server.data_dir).values():
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_info().rss
    return total / 2**20


def _wrk_modes(
    plan: Plan, modes: list[str], stub: NginxStub, work: Path, results: dict[str, Any]
) -> None:
    """The wrk modes on one Strata (no embedding model): results, RSS, usage check."""
    server = StrataServer(work, f"{stub.base}/json/v1", f"{stub.base}/sse/v1")
    print("starting strata (embedded PostgreSQL and Redis, migrations, a bench key)...", flush=True)
    try:
        server.start()
        print(f"strata: {server.base} (pid {server.pid}), log {server.log}", flush=True)
        completed = 0
        for name in modes:
            mode = MODES[name]
            out = measure(server, stub.url(mode.stub_kind), stub.pid, mode, plan, work)
            completed += out["strata_requests_completed"]
            results["modes"][name] = out
        results["rss_mib"], results["rss_peak_mib"] = rss_mib(server.pid)
        results["services_rss_mib"] = _services_rss(server)
        accounted = server.usage_requests()
        if accounted is not None:
            # wrk does not count requests still in flight when a run ends; Strata does.
            slack = plan.connections * (len(modes) * (plan.repeats + 1)) + len(modes) * plan.repeats
            ok = completed <= accounted <= completed + slack
            results["usage_check"] = {
                "accounted": accounted,
                "completed": completed,
                "verdict": "ok" if ok else "MISMATCH",
            }
    finally:
        print("stopping strata...", flush=True)
        server.stop()


def _semantic_mode(plan: Plan, stub: NginxStub, work: Path, results: dict[str, Any]) -> None:
    """cache-semantic on its own Strata, with the embedded embedding model loaded."""
    server = StrataServer(work, f"{stub.base}/json/v1", f"{stub.base}/sse/v1", semantic=True)
    print(
        f"starting strata for {SEMANTIC} (embedded PostgreSQL and Redis, the embedding model)...",
        flush=True,
    )
    try:
        t0 = time.monotonic()
        server.start()  # /readyz waits for the embedding model
        print(
            f"strata: {server.base} (pid {server.pid}), ready in {time.monotonic() - t0:.0f}s, "
            f"log {server.log}",
            flush=True,
        )
        out = measure_semantic(server, stub.url("json"), stub.pid, plan)
        out["rss_mib"], out["rss_peak_mib"] = rss_mib(server.pid)
        results["modes"][SEMANTIC] = out
    finally:
        print("stopping strata...", flush=True)
        server.stop()


def run(plan: Plan, modes: list[str], *, keep: bool) -> dict[str, Any]:
    ensure_tools(["nginx", "wrk"])
    work = Path(tempfile.mkdtemp(prefix="strata-bench-"))
    stub = NginxStub(work)
    t0 = time.monotonic()
    try:
        stub.start()
        print(f"upstream: nginx stub on {stub.base} (pid {stub.proc.pid if stub.proc else '?'})")
        results: dict[str, Any] = {
            "timestamp": time.strftime("%Y%m%dT%H%M%S"),
            "machine": machine(),
            "plan": vars(plan),
            "modes": {},
        }
        wrk_modes = [m for m in modes if m in MODES]
        if wrk_modes:
            _wrk_modes(plan, wrk_modes, stub, work, results)
        if SEMANTIC in modes:
            _semantic_mode(plan, stub, work, results)
        results["targets"] = report.evaluate(results)
        results["elapsed_s"] = round(time.monotonic() - t0, 1)
        return results
    finally:
        print("stopping nginx...", flush=True)
        stub.stop()
        if keep:
            print(f"kept the work directory {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
