"""The cache benchmarks' pure parts (bench/): response checks, pairs, summaries, report."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from bench import report
from bench.__main__ import ALL_MODES, make_plan, parse_args
from bench.cache_semantic import (
    CPU_GROUPS,
    PAIRS,
    Pass,
    chat_body,
    latency_summary,
    load_pairs,
    percentile,
    summarize,
    summarize_repeat,
)
from bench.measure import MODES, check_cache, check_response
from bench.server import config_text
from bench.wrk import request_body

from strata.settings import load_settings

COMPLETION = json.dumps(
    {"choices": [{"message": {"content": "hi"}}], "usage": {"total_tokens": 1}}
).encode()


def test_cache_exact_mode_sends_temperature_zero() -> None:
    mode = MODES["cache-exact"]
    assert json.loads(mode.body())["temperature"] == 0
    assert "temperature" not in json.loads(MODES["non-streaming"].body())
    assert "temperature" not in json.loads(request_body("stub", True))


def test_check_cache() -> None:
    exact = MODES["cache-exact"]
    assert check_cache(exact, {"x-strata-cache": "hit-exact"}) is None
    assert check_cache(exact, {"x-strata-cache": "miss"}) == (
        "x-strata-cache: miss, expected hit-exact"
    )
    assert "(absent)" in str(check_cache(exact, {}))
    # Modes that do not expect the cache accept anything.
    assert check_cache(MODES["non-streaming"], {"x-strata-cache": "bypass"}) is None
    assert check_response(exact, 200, COMPLETION) is None
    assert check_response(exact, 502, COMPLETION) == "HTTP 502"


def test_mode_choices() -> None:
    assert ALL_MODES == [
        "non-streaming", "streaming", "cache-exact", "cache-semantic", "batch", "rag"
    ]  # fmt: skip
    for mode in ("cache-exact", "cache-semantic", "batch", "all"):
        assert parse_args(["--mode", mode]).mode == mode
    assert make_plan(parse_args(["--quick"])).semantic_pairs == 50
    assert make_plan(parse_args(["--semantic-pairs", "7"])).semantic_pairs == 7


def test_load_pairs(tmp_path: Path) -> None:
    rows = [
        {"a": "x", "b": "y", "same": True},
        {"a": "x", "b": "z", "same": True},  # reuses "x": would be an exact hit
        {"a": "p", "b": "q", "same": False},
        {"a": "r", "b": "r", "same": True},
        {"a": "s", "b": "t", "same": True},
        {"a": "u", "b": "v", "same": True},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_pairs(path) == [("x", "y"), ("s", "t"), ("u", "v")]
    assert load_pairs(path, limit=2) == [("x", "y"), ("s", "t")]


def test_shipped_pairs_are_enough_and_unique() -> None:
    pairs = load_pairs(PAIRS)
    texts = [t for p in pairs for t in p]
    assert len(texts) == len(set(texts))
    assert len(pairs) >= 160  # the full run's 150 plus the warm-up's 10


def test_chat_body() -> None:
    body = json.loads(chat_body("hello?", "ctx 1"))
    assert body["model"] == "stub-semantic"
    assert body["temperature"] == 0
    assert body["messages"] == [
        {"role": "system", "content": "ctx 1"},
        {"role": "user", "content": "hello?"},
    ]


def test_percentile_and_summary() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 95) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 95) == pytest.approx(95.0)
    s = latency_summary([1.0, 2.0, 3.0])
    assert s == {"n": 3, "p50_ms": 2.0, "p95_ms": pytest.approx(2.9), "max_ms": 3.0}
    assert math.isnan(latency_summary([])["p50_ms"])


def _pass(cache: list[str], ms: list[float], strata_cpu: float) -> Pass:
    cpu = {"strata": strata_cpu, "postgres": 2.0, "redis": 1.0, "other": 0.0, "wall": 100.0}
    return Pass(cache, ms, cpu)


def test_summarize_repeat_and_medians() -> None:
    misses = _pass(["miss", "miss", "hit-semantic", "miss"], [20.0, 22.0, 9.0, 24.0], 40.0)
    probe = _pass(["hit-semantic", "miss", "hit-semantic", "miss"], [10.0, 21.0, 12.0, 23.0], 0)
    only = _pass(["hit-semantic", "hit-semantic"], [11.0, 13.0], 20.0)
    exact = _pass(["miss", "hit-exact", "hit-exact"], [15.0, 0.5, 0.7], 3.0)
    r = summarize_repeat(misses, probe, only, exact, [0.1, 0.2, 0.3])
    assert (r["attempted"], r["hits"]) == (4, 2)
    assert r["probe_cache"] == {"hit-semantic": 2, "miss": 2}
    assert r["hit_latency"]["n"] == 4  # the probe's hits and the hit-only pass's
    assert r["hit_latency"]["p50_ms"] == 11.5
    assert r["miss_latency"]["n"] == 3  # only answers that said miss
    assert r["miss_latency"]["p50_ms"] == 22.0
    assert r["cpu_ms_per_hit"] == {"strata": 10.0, "postgres": 1.0, "redis": 0.5}
    assert r["cpu_ms_per_miss"]["strata"] == 10.0
    assert r["exact_hit_latency"]["p50_ms"] == pytest.approx(0.6)
    assert r["cpu_ms_per_exact_hit"]["strata"] == 1.0
    assert r["direct_latency"]["p50_ms"] == 0.2

    # No hit at all: no hit-only pass, nan latencies and CPU, never a crash.
    none = summarize_repeat(misses, _pass(["miss"] * 4, [1.0] * 4, 0), None, exact, [0.1])
    assert none["hits"] == 0
    assert math.isnan(none["hit_latency"]["p50_ms"])
    assert all(math.isnan(none["cpu_ms_per_hit"][g]) for g in CPU_GROUPS)

    m = summarize([r, none, r])
    assert (m["attempted"], m["hits"]) == (12, 4)
    assert m["hit_rate"] == pytest.approx(1 / 3)
    assert m["hit_p50_ms"] == 11.5  # nan repeats left out of the median
    assert m["cpu_ms_per_hit"] == 10.0
    assert m["postgres_cpu_ms_per_miss"] == 0.5


def test_report_semantic_only() -> None:
    repeat = summarize_repeat(
        _pass(["miss"], [20.0], 10.0),
        _pass(["hit-semantic"], [16.0], 0),
        _pass(["hit-semantic"], [14.0], 9.0),
        _pass(["hit-exact"], [0.4], 0.3),
        [0.1],
    )
    results = {
        "plan": {"repeats": 1, "connections": 32, "duration_s": 5, "latency_duration_s": 2},
        "modes": {"cache-semantic": {"pairs": 1, "repeats": [repeat]}},
    }
    results["modes"]["cache-semantic"]["median"] = summarize([repeat])
    results["targets"] = report.evaluate(results)
    assert [(t["target"], t["value"], t["pass"]) for t in results["targets"]] == [
        ("semantic hit p50 latency, 1 connection", 15.0, True)
    ]
    text = report.table(results)
    assert "semantic hits / attempted" in text and "1/1 (100%)" in text
    assert "PASS  semantic hit p50" in text
    assert "RSS after load" not in text


def test_report_exact_targets() -> None:
    median = {key: 1.0 for _, key, _ in report.ROWS}
    median.update(added_latency_ms=0.4, lat1_cpu_ms_per_request=0.6, other_procs_cores=0.0)
    results = {
        "plan": {"repeats": 1, "connections": 32, "duration_s": 5, "latency_duration_s": 2},
        "modes": {"cache-exact": {"throughput": [], "median": median}},
        "rss_mib": 100.0,
        "rss_peak_mib": 110.0,
        "services_rss_mib": 50.0,
    }
    results["targets"] = report.evaluate(results)
    verdicts = {t["target"]: t["pass"] for t in results["targets"]}
    assert verdicts == {
        "added latency, 1 connection (exact hit)": True,
        "CPU per exact hit, 1 connection": False,
        "RSS after load": True,
    }
    text = report.table(results)
    assert "1 conn: redis CPU ms/req" in text and "FAIL  CPU per exact hit" in text


@pytest.mark.parametrize("semantic", [False, True])
def test_bench_config_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, semantic: bool
) -> None:
    for name in list(os.environ):
        if name.startswith("STRATA_"):
            monkeypatch.delenv(name)
    path = tmp_path / "strata.yaml"
    path.write_text(
        config_text("http://127.0.0.1:1/json/v1", "http://127.0.0.1:1/sse/v1", semantic=semantic)
    )
    settings = load_settings(path)
    assert {"stub", "stub-sse"} <= set(settings.models)
    # Rate limits on, but far above what the load reaches.
    assert settings.limits.enabled and settings.limits.user.requests_per_second == 1_000_000
    if semantic:
        assert settings.models["stub-semantic"].cache.semantic is True
        assert settings.models["embed-default"].kind == "embedding"
        assert settings.providers["local-embed"].type == "local_embed"
    else:
        assert "embed-default" not in settings.models
        assert not any(m.cache.semantic for m in settings.models.values())
