"""CPU used over one load run, split by process group, from /proc and getrusage.

Groups: ``strata`` (the ``strata serve`` process alone), ``postgres`` and ``redis``
(its embedded services), ``nginx`` (the stub), ``bench`` (this process and wrk,
a waited-for child) and ``other``: everything else on the machine, the busy time
in /proc/stat less the groups above. A large ``other`` means the machine was
shared during the run and throughput and latency are less reliable.
"""

from __future__ import annotations

import os
import resource
import time

import psutil

from bench.procs import CLK_TCK, group_cpu_ticks, service_pids, ticks_to_ms
from bench.server import StrataServer

Snapshot = dict[str, dict[int, int] | float]


def busy_ms() -> float:
    """CPU time all CPUs spent busy (not idle or waiting on I/O) since boot, in ms."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user).
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy * 1000.0 / CLK_TCK


def _bench_ms() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime) * 1000.0


def _tree(pid: int) -> list[int]:
    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return []


class CpuProbe:
    def __init__(self, server: StrataServer, nginx_pid: int) -> None:
        self.server = server
        self.nginx_pid = nginx_pid
        self._before: Snapshot = {}

    def _snapshot(self) -> Snapshot:
        groups = service_pids(self.server.pid, self.server.data_dir)
        snap: Snapshot = {name: group_cpu_ticks(pids) for name, pids in groups.items()}
        snap["strata"] = group_cpu_ticks([self.server.pid])
        snap["nginx"] = group_cpu_ticks(_tree(self.nginx_pid))
        snap["bench"] = _bench_ms()
        snap["busy"] = busy_ms()
        snap["wall"] = time.monotonic() * 1000.0
        return snap

    def start(self) -> None:
        self._before = self._snapshot()

    def stop(self) -> dict[str, float]:
        """Milliseconds of CPU per group since start(), plus ``wall`` and ``cpus``."""
        after = self._snapshot()
        out: dict[str, float] = {}
        for name, value in after.items():
            prev = self._before.get(name)
            if isinstance(value, dict):
                base = prev if isinstance(prev, dict) else {}
                out[name] = ticks_to_ms(sum(t - base.get(pid, 0) for pid, t in value.items()))
            else:
                out[name] = value - (prev if isinstance(prev, float) else 0.0)
        ours = sum(v for k, v in out.items() if k not in ("busy", "wall"))
        out["other"] = max(0.0, out.pop("busy") - ours)
        out["cpus"] = float(os.cpu_count() or 1)
        return out


def other_cores(cpu: dict[str, float]) -> float:
    """CPU cores other processes used on average over one run."""
    return cpu["other"] / cpu["wall"] if cpu.get("wall") else 0.0
