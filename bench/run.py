"""Start the stub and Strata, measure every mode, stop everything, report."""

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


def run(plan: Plan, modes: list[str], *, keep: bool) -> dict[str, Any]:
    ensure_tools(["nginx", "wrk"])
    work = Path(tempfile.mkdtemp(prefix="strata-bench-"))
    stub = NginxStub(work)
    server: StrataServer | None = None
    t0 = time.monotonic()
    try:
        stub.start()
        print(f"upstream: nginx stub on {stub.base} (pid {stub.proc.pid if stub.proc else '?'})")
        server = StrataServer(work, f"{stub.base}/json/v1", f"{stub.base}/sse/v1")
        print(
            "starting strata (embedded PostgreSQL and Redis, migrations, a bench key)...",
            flush=True,
        )
        server.start()
        print(f"strata: {server.base} (pid {server.pid}), log {server.log}", flush=True)
        results: dict[str, Any] = {
            "timestamp": time.strftime("%Y%m%dT%H%M%S"),
            "machine": machine(),
            "plan": vars(plan),
            "modes": {},
        }
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
        results["targets"] = report.evaluate(results)
        results["elapsed_s"] = round(time.monotonic() - t0, 1)
        return results
    finally:
        print("stopping strata and nginx...", flush=True)
        try:
            if server is not None:
                server.stop()
        finally:
            stub.stop()
            if keep:
                print(f"kept the work directory {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
