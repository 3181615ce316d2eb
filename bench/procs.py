"""Process plumbing: tools on PATH, free ports, readiness, CPU and memory of a process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Debian package providing each tool.
PACKAGES = {"nginx": "nginx", "wrk": "wrk"}


def ensure_tools(names: list[str]) -> None:
    """Install missing tools with apt-get (as root), or fail with what to do."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    pkgs = sorted({PACKAGES[n] for n in missing})
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(
            f"bench needs {', '.join(missing)} on PATH: install them "
            f"(Debian/Ubuntu: sudo apt-get install -y {' '.join(pkgs)})"
        )
    print(f"installing {', '.join(pkgs)} with apt-get (missing: {', '.join(missing)})", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", *pkgs], check=True, env=env, timeout=900)
    still = [n for n in missing if shutil.which(n) is None]
    if still:
        raise SystemExit(f"apt-get did not provide {', '.join(still)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, proc: subprocess.Popen[bytes], *, timeout_s: float, any_status: bool = False
) -> bool:
    """Poll ``url`` until it answers 200 (any status with ``any_status``) or the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except urllib.error.HTTPError as exc:
            if any_status:
                return True
            exc.close()
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def stop_process(proc: subprocess.Popen[bytes], sig: int, *, timeout_s: float) -> None:
    """Send ``sig``, wait, then escalate to SIGTERM and SIGKILL."""
    if proc.poll() is not None:
        return
    for s, wait in ((sig, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            proc.send_signal(s)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            print(f"pid {proc.pid} still running {wait:.0f}s after signal {s}", flush=True)


def cpu_ticks(pid: int) -> int:
    """utime + stime of one process (not its children), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may hold spaces: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def ticks_to_ms(ticks: float) -> float:
    return ticks * 1000.0 / CLK_TCK


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024.0
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def service_pids(strata_pid: int, data_dir: Path) -> dict[str, list[int]]:
    """Embedded services of one Strata: Redis (a child) and PostgreSQL (a daemon).

    pg_ctl detaches the postmaster, so it is found by ``postmaster.pid`` in the
    data dir, with its own children (backends, checkpointer, ...).
    """
    out: dict[str, list[int]] = {"postgres": [], "redis": []}
    try:
        for child in psutil.Process(strata_pid).children(recursive=True):
            if "redis" in child.name():
                out["redis"].append(child.pid)
    except psutil.Error:
        pass
    pidfile = data_dir / "postgres" / "postmaster.pid"
    try:
        master = psutil.Process(int(pidfile.read_text().split()[0]))
        out["postgres"] = [master.pid, *(c.pid for c in master.children(recursive=True))]
    except (OSError, ValueError, IndexError, psutil.Error):
        pass
    return out


def group_cpu_ticks(pids: list[int]) -> dict[int, int]:
    ticks = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            ticks[pid] = cpu_ticks(pid)
    return ticks
