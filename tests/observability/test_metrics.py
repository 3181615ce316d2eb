"""Prometheus metrics: real requests against real servers, then a scrape of /metrics."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from strata.errors import QueueFull, RateLimited, ServiceUnavailable
from strata.observability.config import MetricsSettings
from strata.observability.metrics import Metrics, rejection_reason
from strata.usage.recorder import UsageEvent
from tests.conftest import ServerThread, free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
FAKES = {
    "fake": {"type": "fake", "price": {"input_per_1m": "1.00", "output_per_1m": "2.00"}},
    "fake-down": {"type": "fake", "error_status": 503},
}


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> Samples:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def settled(url: str, wait_s: float = 5.0) -> Samples:
    """A scrape once no request is in flight (a stream settles just after its last chunk)."""
    deadline = time.monotonic() + wait_s
    while True:
        samples = scrape(url)
        if total(samples, "strata_requests_in_flight") == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(ls)[label] for (n, ls) in samples if n == name}


def event(**kw: Any) -> UsageEvent:
    base: dict[str, Any] = {
        "request_id": "r",
        "tenant_id": "acme",
        "user_id": "alice",
        "key_id": "k1",
        "endpoint": "chat",
        "alias": "fake",
        "provider": "fake",
        "model": "fake-1",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "cost_usd": Decimal("0.00005"),
        "latency_ms": 200.0,
        "ttft_ms": 50.0,
        "stream": True,
        "cache": "miss",
        "attempts": 1,
    }
    return UsageEvent(**{**base, **kw})


def test_label_children_are_cached_and_labels_bounded() -> None:
    m = Metrics(MetricsSettings(), ["fake"])
    for _ in range(3):
        m.started("chat")
        m.observe(event())
    assert len(m._series) == 1
    m.started("chat")
    m.observe(event(alias="made-up-by-a-client", status="error", error_type="ModelNotFound"))
    assert len(m._series) == 2
    assert m.inflight == {"chat": 0}
    s = parse(m.render().decode())
    assert total(s, "strata_requests_total", alias="fake", status="ok", cache="miss") == 3
    assert total(s, "strata_requests_total", alias="other", status="error") == 1
    assert "made-up-by-a-client" not in m.render().decode()
    assert total(s, "strata_tokens_total", alias="fake", gen_ai_token_type="output") == 60
    assert total(s, "gen_ai_server_time_to_first_token_seconds_count") == 3
    # Never user or key labels; tenant only when asked for.
    text = m.render().decode()
    assert "alice" not in text and "k1" not in text and "acme" not in text
    t = Metrics(MetricsSettings(tenant_label=True), ["fake"])
    t.started("chat")
    t.observe(event())
    assert total(parse(t.render().decode()), "strata_requests_total", tenant="acme") == 1


def test_rejection_reasons() -> None:
    from datetime import UTC, datetime

    from strata.limits.budget import BudgetExceeded

    assert rejection_reason(RateLimited("slow down")) == "rate"
    assert rejection_reason(QueueFull("busy")) is None
    budget = BudgetExceeded("user", "u", "day", Decimal(1), datetime.now(UTC))
    assert rejection_reason(budget) == "budget"
    down = ServiceUnavailable("down", code="rate_limit_unavailable")
    assert rejection_reason(down) == "unavailable"
    assert rejection_reason(ServiceUnavailable("db down")) is None
    assert rejection_reason(None) is None


def test_requests_tokens_cost_cache_and_gauges(server: ServerThread, client: openai.OpenAI) -> None:
    url = server.base_url + "/metrics"
    before = scrape(url)
    msg = [{"role": "user", "content": f"metrics {os.urandom(6).hex()}"}]
    first = client.chat.completions.create(model="fake", messages=msg, temperature=0)
    again = client.chat.completions.with_raw_response.create(
        model="fake", messages=msg, temperature=0
    )
    assert again.headers["x-strata-cache"] == "hit-exact"
    stream = client.chat.completions.create(
        model="fake",
        messages=[{"role": "user", "content": f"stream {os.urandom(6).hex()}"}],
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usages = [c.usage for c in stream if c.usage is not None]  # reads the whole stream
    usage = usages[0]
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="fake-down", messages=msg)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"nope-{os.urandom(4).hex()}", messages=msg)
    after = settled(url)

    def d(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    assert first.usage is not None
    assert d("strata_requests_total", alias="fake", status="ok", cache="miss") == 2
    assert d("strata_requests_total", alias="fake", status="ok", cache="hit-exact") == 1
    assert d("strata_requests_total", alias="fake-down", status="error") == 1
    assert d("strata_requests_total", alias="other", status="error") == 1
    assert d("strata_cache_requests_total", alias="fake", result="hit-exact") == 1
    assert d("strata_cache_requests_total", alias="fake", result="miss") == 2
    # Tokens as in the usage records: the hit's too.
    prompt = 2 * first.usage.prompt_tokens + usage.prompt_tokens
    completion = 2 * first.usage.completion_tokens + usage.completion_tokens
    assert d("strata_tokens_total", alias="fake", gen_ai_token_type="input") == prompt
    assert d("strata_tokens_total", alias="fake", gen_ai_token_type="output") == completion
    labels = {"gen_ai_request_model": "fake", "gen_ai_token_type": "input"}
    assert d("gen_ai_client_token_usage_count", **labels) == 3
    assert d("gen_ai_client_token_usage_sum", **labels) == prompt
    # The two misses cost $1/M input and $2/M output; the hit saves the first's cost.
    misses = first.usage.prompt_tokens + usage.prompt_tokens
    cost = (misses + 2 * (first.usage.completion_tokens + usage.completion_tokens)) / 1e6
    assert d("strata_cost_usd_total", alias="fake", deployment="fake/fake-1") == pytest.approx(cost)
    saved = (first.usage.prompt_tokens + 2 * first.usage.completion_tokens) / 1e6
    assert d("strata_cache_saved_usd_total", alias="fake") == pytest.approx(saved)
    gen = {"gen_ai_request_model": "fake", "gen_ai_operation_name": "chat"}
    assert d("gen_ai_client_operation_duration_seconds_count", **gen, status="ok") == 3
    failed = {"gen_ai_request_model": "fake-down", "status": "error"}
    assert d("gen_ai_client_operation_duration_seconds_count", **failed) == 1
    assert label_values(after, "gen_ai_client_operation_duration_seconds_count", "error_type") > {
        ""
    }
    # Model-server timings: TTFT and per-token time from the stream, throughput from
    # both misses; the cache hit generated nothing.
    assert d("gen_ai_server_time_to_first_token_seconds_count", **gen) == 1
    assert d("gen_ai_server_time_per_output_token_seconds_count", **gen) == 1
    assert d("strata_output_tokens_per_second_count", **gen) == 2
    # Scrape-time state.
    assert total(after, "strata_requests_in_flight", endpoint="chat") == 0
    assert total(after, "strata_requests_in_flight", endpoint="embeddings") == 0
    assert {"local", "local-embed"} <= label_values(after, "strata_local_queue_depth", "provider")
    assert ("strata_usage_buffer_records", frozenset()) in after
    assert ("strata_usage_write_failures_total", frozenset()) in after
    deployments = label_values(after, "strata_circuit_breaker_state", "deployment")
    assert {"fake/fake-1", "fake-down/fake-down-1"} <= deployments
    assert {"cache", "rate_limits", "budgets"} <= label_values(
        after, "strata_redis_errors_total", "component"
    )
    assert {"usage", "semantic_cache"} <= label_values(after, "strata_db_errors_total", "component")


def test_limit_rejections_retries_fallbacks_and_breakers(
    start_server: Callable[..., ServerThread], new_key: Callable[..., Any]
) -> None:
    srv = start_server(
        providers=FAKES,
        models={
            "fake": {"provider": "fake", "model": "fake-1"},
            "fake-embed": {"kind": "embedding", "provider": "fake", "model": "emb-1"},
            "metrics-fb": {
                "deployments": [
                    {"provider": "fake-down", "model": "down-1"},
                    {"provider": "fake", "model": "fake-1"},
                ],
                "cache": {"enabled": False},
            },
        },
        limits={"user": {"requests_per_second": 1, "burst": 1}},
        breaker={"failures": 1, "cooldown_s": 60},
    )
    url = srv.base_url + "/metrics"
    before = scrape(url)
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {new_key().key}"}
    with httpx.Client(base_url=srv.base_url, headers=headers, timeout=30) as http:
        codes = [http.post("/v1/chat/completions", json=body).status_code for _ in range(3)]
    assert codes.count(429) >= 2, codes
    headers = {"authorization": f"Bearer {new_key().key}"}
    with httpx.Client(base_url=srv.base_url, headers=headers, timeout=30) as http:
        r = http.post("/v1/chat/completions", json={**body, "model": "metrics-fb"})
        emb = http.post(
            "/v1/embeddings",
            json={"model": "fake-embed", "input": ["a b c"]},
            headers={"authorization": f"Bearer {new_key().key}"},  # a user of its own
        )
    assert r.status_code == 200, r.text
    assert r.headers["x-strata-fallback"] == "true"
    assert emb.status_code == 200, emb.text
    after = settled(url)
    assert delta(before, after, "strata_limit_rejections_total", alias="fake", reason="rate") == (
        codes.count(429)
    )
    assert delta(before, after, "strata_retries_total", alias="metrics-fb") == 1
    assert delta(before, after, "strata_fallbacks_total", alias="metrics-fb") == 1
    state = {"alias": "metrics-fb", "deployment": "fake-down/down-1"}
    assert total(after, "strata_circuit_breaker_state", **state) == 2  # open
    ok = {"alias": "metrics-fb", "deployment": "fake/fake-1"}
    assert total(after, "strata_circuit_breaker_state", **ok) == 0
    op = {"gen_ai_operation_name": "embeddings", "gen_ai_request_model": "fake-embed"}
    assert delta(before, after, "gen_ai_client_operation_duration_seconds_count", **op) == 1
    tokens = emb.json()["usage"]["prompt_tokens"]
    assert delta(before, after, "strata_tokens_total", alias="fake-embed") == tokens
    assert delta(before, after, "strata_requests_total", alias="fake-embed", cache="") == 1
    assert total(after, "strata_requests_in_flight", endpoint="chat") == 0
    assert total(after, "strata_requests_in_flight", endpoint="embeddings") == 0


def test_disabled_metrics_have_no_route_and_no_hook(
    start_server: Callable[..., ServerThread], api_key: Any
) -> None:
    srv = start_server(
        providers=FAKES,
        models={"fake": {"provider": "fake", "model": "fake-1"}},
        observability={"metrics": {"enabled": False}},
    )
    assert srv.runtime.metrics is None
    assert httpx.get(srv.base_url + "/metrics").status_code == 404
    headers = {"authorization": f"Bearer {api_key.key}"}
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(srv.base_url + "/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200


def test_metrics_on_their_own_loopback_port(start_server: Callable[..., ServerThread]) -> None:
    port = free_port()
    srv = start_server(
        providers=FAKES,
        models={"fake": {"provider": "fake", "model": "fake-1"}},
        observability={"metrics": {"port": port}},
    )
    assert httpx.get(srv.base_url + "/metrics").status_code == 404
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert ("strata_requests_in_flight", frozenset({("endpoint", "chat")})) in samples
