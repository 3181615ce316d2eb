"""cache-semantic mode: semantic cache hits and misses, one connection, a Python client.

wrk cannot drive it: every semantic hit needs a text the exact cache has not seen.
A separate Strata (bench.server with ``semantic=True``: the embedded MiniLM and the
``stub-semantic`` alias on the JSON stub with ``cache: {semantic: true}``) answers
paraphrase pairs from bench/cache/pairs.jsonl (``same: true``, each text used once).
Every request is sequential on one keep-alive connection, ``temperature: 0``.

Per repeat, each pass in a fresh context (a system message with a nonce, so the
exact cache and earlier entries never answer):

1. probe: every ``a`` (a miss: embedding, pgvector lookup, the stub upstream, the
   answer, a background store), a short pause for the stores, then every ``b``:
   hits / attempted, and the latency of each ``b`` answered ``hit-semantic``;
2. hits only: the ``a`` of every pair that hit, a pause, then its ``b``: the CPU of
   Strata, PostgreSQL and Redis over a pass of hits alone, per hit;
3. exact reference: one text repeated (``hit-exact`` after the first), and the bare
   nginx stub with the same client, for the client's own share of the latency.

Hit latency is every ``hit-semantic`` answer of passes 1 and 2; miss latency every
``a`` of pass 1 answered ``miss``, and CPU per miss that pass's CPU per request.
"""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from bench.cpu import CpuProbe, other_cores
from bench.measure import MODES, BadResponses, Plan, check_response
from bench.server import StrataServer

NAME = "cache-semantic"
MODEL = "stub-semantic"
PAIRS = Path(__file__).resolve().parent / "cache" / "pairs.jsonl"
# For the background store of a pass's misses before the texts that should hit them.
STORE_PAUSE_S = 0.3
EXACT_REQUESTS = 100
DIRECT_REQUESTS = 200
WARMUP_PAIRS = 10
CPU_GROUPS = ("strata", "postgres", "redis")
CACHE_VALUES = ("miss", "hit-semantic", "hit-exact", "bypass")


def load_pairs(path: Path = PAIRS, limit: int | None = None) -> list[tuple[str, str]]:
    """The ``same: true`` pairs, in file order, skipping any that reuses a text.

    A text sent twice would be an exact hit, not the miss or semantic hit it stands for.
    """
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        a, b = str(row["a"]), str(row["b"])
        if not row.get("same") or a == b or a in seen or b in seen:
            continue
        seen.update((a, b))
        out.append((a, b))
        if limit is not None and len(out) >= limit:
            break
    return out


def chat_body(text: str, context: str, model: str = MODEL) -> bytes:
    """A cacheable single-turn chat request; ``context`` (a system prompt) sets its context."""
    body = {
        "model": model,
        "messages": [{"role": "system", "content": context}, {"role": "user", "content": text}],
        "temperature": 0,
    }
    return json.dumps(body).encode()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; nan if empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50),
        "p95_ms": percentile(values, 95),
        "max_ms": max(values) if values else float("nan"),
    }


class Client:
    """Sequential POSTs on one keep-alive HTTP/1.1 connection."""

    def __init__(self, url: str, key: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes, float]:
        """(status, lower-cased headers, body, latency in ms); one reconnect if dropped."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                self.conn.connect()
            try:
                t0 = time.perf_counter()
                self.conn.request("POST", path, body, self.headers)
                resp = self.conn.getresponse()
                raw = resp.read()
                ms = (time.perf_counter() - t0) * 1000.0
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw, ms
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Pass:
    """One sequential pass: the cache header and latency of each request, and its CPU."""

    cache: list[str] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    def latencies(self, cache: str) -> list[float]:
        return [ms for c, ms in zip(self.cache, self.latency_ms, strict=True) if c == cache]

    def count(self, cache: str) -> int:
        return self.cache.count(cache)

    def cpu_per(self, n: int) -> dict[str, float]:
        return {g: self.cpu_ms.get(g, 0.0) / n if n else float("nan") for g in CPU_GROUPS}


class SemanticBench:
    def __init__(self, server: StrataServer, nginx_pid: int, nonce: str) -> None:
        self.server = server
        self.client = Client(server.base, server.key)
        self.probe = CpuProbe(server, nginx_pid)
        self.nonce = nonce

    def context(self, label: str) -> str:
        return f"You are a helpful assistant. (bench {self.nonce} {label})"

    def send(self, texts: list[str], label: str) -> Pass:
        ctx = self.context(label)
        out = Pass()
        mode = MODES["non-streaming"]
        self.probe.start()
        for text in texts:
            status, headers, raw, ms = self.client.post(
                "/v1/chat/completions", chat_body(text, ctx)
            )
            problem = check_response(mode, status, raw)
            cache = headers.get("x-strata-cache", "(absent)")
            if problem is None and cache not in CACHE_VALUES:
                problem = f"x-strata-cache: {cache}"
            if problem:
                raise BadResponses(
                    f"{NAME}: Strata answered badly ({problem}) to {text!r}; headers {headers}; "
                    f"body:\n{raw[:2000].decode(errors='replace')}\n"
                    f"Strata log tail:\n{self.server.log_tail()}"
                )
            out.cache.append(cache)
            out.latency_ms.append(ms)
        out.cpu_ms = self.probe.stop()
        return out

    def pairs_pass(self, pairs: list[tuple[str, str]], label: str) -> tuple[Pass, Pass]:
        first = self.send([a for a, _ in pairs], label)
        time.sleep(STORE_PAUSE_S)
        second = self.send([b for _, b in pairs], label)
        return first, second

    def repeat(self, pairs: list[tuple[str, str]], i: int, direct_url: str) -> dict[str, Any]:
        misses, probe = self.pairs_pass(pairs, f"repeat {i} probe")
        hit_pairs = [p for p, c in zip(pairs, probe.cache, strict=True) if c == "hit-semantic"]
        only: Pass | None = None
        if hit_pairs:
            _, only = self.pairs_pass(hit_pairs, f"repeat {i} hits")
        exact = self.send(["What is the capital of France?"] * EXACT_REQUESTS, f"repeat {i} exact")
        direct = direct_latencies(direct_url, DIRECT_REQUESTS)
        return summarize_repeat(misses, probe, only, exact, direct)

    def close(self) -> None:
        self.client.close()


def direct_latencies(url: str, n: int) -> list[float]:
    """The bare static stub with the same client: what the client and loopback cost."""
    client = Client(url, None)
    path = urllib.parse.urlsplit(url).path
    body = chat_body("hello", "direct")
    try:
        out = []
        for _ in range(n):
            status, _, _, ms = client.post(path, body)
            if status != 200:
                raise BadResponses(f"{NAME}: the nginx stub answered HTTP {status}")
            out.append(ms)
        return out
    finally:
        client.close()


def summarize_repeat(
    misses: Pass, probe: Pass, only: Pass | None, exact: Pass, direct: list[float]
) -> dict[str, Any]:
    """One repeat's numbers from its passes (see the module docstring)."""
    hit_lat = probe.latencies("hit-semantic") + (only.latencies("hit-semantic") if only else [])
    miss_lat = misses.latencies("miss")
    only_hits = only.count("hit-semantic") if only else 0
    exact_hits = exact.count("hit-exact")
    passes = [p for p in (misses, probe, only, exact) if p is not None]
    return {
        "attempted": len(probe.cache),
        "hits": probe.count("hit-semantic"),
        "probe_cache": {c: probe.count(c) for c in sorted(set(probe.cache))},
        "first_cache": {c: misses.count(c) for c in sorted(set(misses.cache))},
        "hit_latency": latency_summary(hit_lat),
        "miss_latency": latency_summary(miss_lat),
        "hit_only_pass": {
            "requests": len(only.cache) if only else 0,
            "hits": only_hits,
            "cpu_ms": only.cpu_ms if only else {},
        },
        # CPU over the pass of hits alone, per hit; over the pass of first texts, per request.
        "cpu_ms_per_hit": only.cpu_per(only_hits) if only else dict.fromkeys(CPU_GROUPS, math.nan),
        "cpu_ms_per_miss": misses.cpu_per(len(misses.cache)),
        "exact_hit_latency": latency_summary(exact.latencies("hit-exact")),
        "cpu_ms_per_exact_hit": exact.cpu_per(len(exact.cache)),
        "exact_hits": exact_hits,
        "direct_latency": latency_summary(direct),
        "other_procs_cores": float(median(other_cores(p.cpu_ms) for p in passes)),
    }


def summarize(repeats: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over repeats of each repeat's figures."""

    def med(get: Any) -> float:
        values = [float(get(r)) for r in repeats]
        values = [v for v in values if not math.isnan(v)]
        return float(median(values)) if values else float("nan")

    attempted = sum(r["attempted"] for r in repeats)
    hits = sum(r["hits"] for r in repeats)
    m = {
        "attempted": float(attempted),
        "hits": float(hits),
        "hit_rate": hits / attempted if attempted else 0.0,
        "hit_p50_ms": med(lambda r: r["hit_latency"]["p50_ms"]),
        "hit_p95_ms": med(lambda r: r["hit_latency"]["p95_ms"]),
        "miss_p50_ms": med(lambda r: r["miss_latency"]["p50_ms"]),
        "miss_p95_ms": med(lambda r: r["miss_latency"]["p95_ms"]),
        "exact_hit_p50_ms": med(lambda r: r["exact_hit_latency"]["p50_ms"]),
        "direct_p50_ms": med(lambda r: r["direct_latency"]["p50_ms"]),
        "other_procs_cores": med(lambda r: r["other_procs_cores"]),
    }
    for g in CPU_GROUPS:
        prefix = "" if g == "strata" else f"{g}_"
        m[f"{prefix}cpu_ms_per_hit"] = med(lambda r, g=g: r["cpu_ms_per_hit"][g])
        m[f"{prefix}cpu_ms_per_miss"] = med(lambda r, g=g: r["cpu_ms_per_miss"][g])
        m[f"{prefix}cpu_ms_per_exact_hit"] = med(lambda r, g=g: r["cpu_ms_per_exact_hit"][g])
    return m


def _show(i: int, n: int, r: dict[str, Any]) -> None:
    hit, miss = r["hit_latency"], r["miss_latency"]
    print(
        f"    repeat {i}/{n}: hits {r['hits']}/{r['attempted']} {r['probe_cache']}  "
        f"hit p50 {hit['p50_ms']:.2f} p95 {hit['p95_ms']:.2f} ms  "
        f"miss p50 {miss['p50_ms']:.2f} p95 {miss['p95_ms']:.2f} ms  "
        f"cpu/hit {r['cpu_ms_per_hit']['strata']:.2f} ms  "
        f"cpu/miss {r['cpu_ms_per_miss']['strata']:.2f} ms  "
        f"exact hit p50 {r['exact_hit_latency']['p50_ms']:.2f} ms  "
        f"direct p50 {r['direct_latency']['p50_ms']:.2f} ms  "
        f"other procs {r['other_procs_cores']:.2f} cores",
        flush=True,
    )


def measure_semantic(
    server: StrataServer, direct_url: str, nginx_pid: int, plan: Plan
) -> dict[str, Any]:
    pairs = load_pairs(limit=WARMUP_PAIRS + plan.semantic_pairs)
    warm, pairs = pairs[:WARMUP_PAIRS], pairs[WARMUP_PAIRS:]
    if not pairs:
        raise BadResponses(f"{NAME}: no same-answer pairs in {PAIRS}")
    bench = SemanticBench(server, nginx_pid, time.strftime("%H%M%S"))
    try:
        print(f"  {NAME}: warm-up, {len(warm)} pairs", flush=True)
        first, second = bench.pairs_pass(warm, "warm-up")
        if "miss" not in first.cache:
            raise BadResponses(
                f"{NAME}: no request was a semantic cache miss (x-strata-cache: "
                f"{sorted(set(first.cache))}); is the semantic cache available? "
                f"Strata log tail:\n{server.log_tail()}"
            )
        print(f"    warm-up: second texts {dict((c, second.count(c)) for c in set(second.cache))}")
        repeats = []
        for i in range(1, plan.repeats + 1):
            print(f"  {NAME}: repeat {i}/{plan.repeats}, {len(pairs)} pairs", flush=True)
            r = bench.repeat(pairs, i, direct_url)
            _show(i, plan.repeats, r)
            repeats.append(r)
    finally:
        bench.close()
    return {"pairs": len(pairs), "repeats": repeats, "median": summarize(repeats)}
