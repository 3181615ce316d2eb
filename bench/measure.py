"""One wrk mode (non-streaming, streaming, cache-exact): interleaved wrk runs against the
static stub directly and through Strata, CPU of Strata and its services.

cache-exact sends ``temperature: 0``, which Strata caches by default: after the first
request every one is an exact hit served from Redis (``x-strata-cache: hit-exact``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from bench import wrk
from bench.cpu import CpuProbe, other_cores
from bench.server import StrataServer


@dataclass(frozen=True)
class Mode:
    name: str
    model: str
    stream: bool
    stub_kind: str
    temperature: float | None = None
    # The x-strata-cache header every response after the first must carry.
    expect_cache: str | None = None

    def body(self) -> bytes:
        return wrk.request_body(self.model, self.stream, self.temperature)


MODES = {
    "non-streaming": Mode("non-streaming", "stub", False, "json"),
    "streaming": Mode("streaming", "stub-sse", True, "sse"),
    "cache-exact": Mode("cache-exact", "stub", False, "json", 0.0, "hit-exact"),
}


@dataclass
class Plan:
    duration_s: float
    latency_duration_s: float
    warmup_s: float
    repeats: int
    connections: int
    threads: int
    # cache-semantic: paraphrase pairs per repeat.
    semantic_pairs: int = 150


class BadResponses(RuntimeError):
    pass


def check_response(mode: Mode, status: int, raw: bytes) -> str | None:
    """Why one Strata response is wrong, or None if it is a proper completion."""
    if status != 200:
        return f"HTTP {status}"
    if not mode.stream:
        try:
            data = json.loads(raw)
        except ValueError:
            return "the body is not JSON"
        if not isinstance(data, dict) or not data.get("choices") or not data.get("usage"):
            return "no choices or usage in the completion"
        return None
    if not raw.rstrip().endswith(b"data: [DONE]"):
        return "the stream does not end with data: [DONE]"
    if b'"error"' in raw:
        return "the stream carries an error event"
    if raw.count(b"chat.completion.chunk") < 10:
        return "fewer than 10 chunks in the stream"
    return None


def check_cache(mode: Mode, headers: dict[str, str]) -> str | None:
    """Why a repeated request was not served as ``mode`` expects, or None."""
    if mode.expect_cache is None:
        return None
    got = headers.get("x-strata-cache")
    if got != mode.expect_cache:
        return f"x-strata-cache: {got or '(absent)'}, expected {mode.expect_cache}"
    return None


def sanity(server: StrataServer, mode: Mode, *, first: bool = True) -> None:
    """A proper completion; for a cache mode, a second request that is a hit."""
    for attempt in range(2 if first and mode.expect_cache else 1):
        status, headers, raw = server.request_full(mode.body())
        problem = check_response(mode, status, raw)
        if problem is None and (attempt or not first or not mode.expect_cache):
            problem = check_cache(mode, headers)
        if problem:
            raise BadResponses(
                f"{mode.name}: Strata answered badly ({problem}); headers {headers}; body:\n"
                f"{raw[:2000].decode(errors='replace')}\nStrata log tail:\n{server.log_tail()}"
            )


def _load(
    url: str, script: Path, plan: Plan, *, connections: int, duration_s: float
) -> wrk.WrkResult:
    threads = plan.threads if connections > 1 else 1
    return wrk.run(url, script, connections=connections, threads=threads, duration_s=duration_s)


def _fail_on_errors(server: StrataServer, mode: Mode, target: str, res: wrk.WrkResult) -> None:
    if res.non_2xx:
        status, raw = server.request(mode.body())
        raise BadResponses(
            f"{mode.name}: {res.non_2xx} of {res.requests} {target} responses were not 2xx; "
            f"a sample request now gets HTTP {status}:\n{raw[:2000].decode(errors='replace')}\n"
            f"Strata log tail:\n{server.log_tail()}"
        )
    if any(res.socket_errors.values()):
        print(f"    warning: {target} socket errors {res.socket_errors}", flush=True)


def _show(label: str, run: dict[str, Any]) -> None:
    res, per_req = run["wrk"], run["cpu_ms_per_request"]
    print(
        f"    {label:<22} {res['rps']:>9.0f} req/s  p50 {res['p50_ms']:7.3f} ms  "
        f"p99 {res['p99_ms']:7.3f} ms  {res['requests']:>7} req  "
        f"cpu {per_req['strata']:.3f} ms/req  other procs {other_cores(run['cpu_ms']):.2f} cores",
        flush=True,
    )


class Runner:
    """Interleaved direct and Strata runs of one mode."""

    def __init__(
        self,
        server: StrataServer,
        stub_url: str,
        nginx_pid: int,
        mode: Mode,
        plan: Plan,
        work: Path,
    ) -> None:
        self.server, self.mode, self.plan = server, mode, plan
        body = mode.body()
        self.urls = {"direct": stub_url, "strata": server.base + "/v1/chat/completions"}
        self.scripts = {
            "direct": wrk.lua_script(work / f"direct-{mode.stub_kind}.lua", body, None),
            "strata": wrk.lua_script(work / f"strata-{mode.stub_kind}.lua", body, server.key),
        }
        self.probe = CpuProbe(server, nginx_pid)
        self.completed = 0

    def one(self, target: str, connections: int, duration_s: float) -> dict[str, Any]:
        threads = self.plan.threads if connections > 1 else 1
        self.probe.start()
        res = wrk.run(
            self.urls[target],
            self.scripts[target],
            connections=connections,
            threads=threads,
            duration_s=duration_s,
        )
        cpu = self.probe.stop()
        _fail_on_errors(self.server, self.mode, target, res)
        if target == "strata":
            self.completed += res.requests
        per_req = {k: v / max(1, res.requests) for k, v in cpu.items() if k not in ("wall", "cpus")}
        return {"wrk": res.to_dict(), "cpu_ms": cpu, "cpu_ms_per_request": per_req}

    def pairs(self, connections: int, duration_s: float) -> list[dict[str, Any]]:
        out = []
        for i in range(self.plan.repeats):
            print(
                f"  {self.mode.name}: repeat {i + 1}/{self.plan.repeats}, "
                f"{connections} connection(s), {duration_s:.0f}s",
                flush=True,
            )
            pair = {t: self.one(t, connections, duration_s) for t in ("direct", "strata")}
            for t, run in pair.items():
                _show(t, run)
            out.append(pair)
        return out


def measure(
    server: StrataServer, stub_url: str, nginx_pid: int, mode: Mode, plan: Plan, work: Path
) -> dict[str, Any]:
    runner = Runner(server, stub_url, nginx_pid, mode, plan, work)
    sanity(server, mode)
    sanity_requests = 2 if mode.expect_cache else 1
    print(f"  {mode.name}: warm-up {plan.warmup_s:.0f}s", flush=True)
    runner.one("strata", plan.connections, plan.warmup_s)
    out: dict[str, Any] = {
        "throughput": runner.pairs(plan.connections, plan.duration_s),
        "one_connection": runner.pairs(1, plan.latency_duration_s),
    }
    if mode.expect_cache:
        # Still hits after the load (Redis did not drop out: that would say bypass).
        sanity(server, mode, first=False)
        sanity_requests += 1
    out["strata_requests_completed"] = runner.completed + sanity_requests
    out["median"] = summarize(out)
    return out


def _med(pairs: list[dict[str, Any]], target: str, key: str) -> float:
    return float(median(p[target]["wrk"][key] for p in pairs))


def _med_cpu(pairs: list[dict[str, Any]], group: str) -> float:
    return float(median(p["strata"]["cpu_ms_per_request"].get(group, 0.0) for p in pairs))


def summarize(out: dict[str, Any]) -> dict[str, float]:
    tp, one = out["throughput"], out["one_connection"]
    m = {
        "direct_rps": _med(tp, "direct", "rps"),
        "strata_rps": _med(tp, "strata", "rps"),
        "direct_p50_ms": _med(tp, "direct", "p50_ms"),
        "direct_p99_ms": _med(tp, "direct", "p99_ms"),
        "strata_p50_ms": _med(tp, "strata", "p50_ms"),
        "strata_p99_ms": _med(tp, "strata", "p99_ms"),
        "cpu_ms_per_request": _med_cpu(tp, "strata"),
        "postgres_cpu_ms_per_request": _med_cpu(tp, "postgres"),
        "redis_cpu_ms_per_request": _med_cpu(tp, "redis"),
        "lat1_direct_p50_ms": _med(one, "direct", "p50_ms"),
        "lat1_strata_p50_ms": _med(one, "strata", "p50_ms"),
        "lat1_cpu_ms_per_request": _med_cpu(one, "strata"),
        "lat1_redis_cpu_ms_per_request": _med_cpu(one, "redis"),
        "added_latency_ms": float(
            median(p["strata"]["wrk"]["p50_ms"] - p["direct"]["wrk"]["p50_ms"] for p in one)
        ),
        "other_procs_cores": float(
            median(other_cores(p[t]["cpu_ms"]) for p in tp + one for t in p)
        ),
    }
    m["ratio"] = m["strata_rps"] / m["direct_rps"] if m["direct_rps"] else 0.0
    return m
