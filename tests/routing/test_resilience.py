"""Fallbacks, retries, timeouts and circuit breakers against real upstreams on loopback."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread, usage_rows
from tests.upstreams import LlamaServer, ScriptedUpstream, sse_reply

MSG = [{"role": "user", "content": "hello"}]
Make = Callable[[], Awaitable[ScriptedUpstream]]


def completion(text: str = "fine") -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def ok(text: str = "fine") -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(completion(text))

    return handler


def fail(status: int, headers: dict[str, str] | None = None, code: str | None = None) -> Any:
    async def handler(request: web.Request) -> web.Response:
        err = {"error": {"message": f"scripted {status}", "code": code}}
        return web.json_response(err, status=status, headers=headers)

    return handler


def hang(seconds: float) -> Any:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.json_response(completion())

    return handler


def sequence(*handlers: Any) -> Any:
    """Each request gets the next handler; the last one repeats."""
    queue = list(handlers)

    async def handler(request: web.Request) -> web.StreamResponse:
        h = queue.pop(0) if len(queue) > 1 else queue[0]
        return await h(request)

    return handler


def serve_alias(
    start_server: Callable[..., ServerThread],
    ups: list[ScriptedUpstream],
    deployments: list[dict[str, Any]] | None = None,
    **alias_opts: Any,
) -> tuple[ServerThread, str]:
    alias = "r-" + uuid.uuid4().hex[:8]  # fresh breaker keys in a shared Redis
    providers = {
        f"up{i}": {"type": "openai_compat", "base_url": u.base_url} for i, u in enumerate(ups)
    }
    deps = deployments or [{"provider": f"up{i}", "model": f"m{i}"} for i in range(len(ups))]
    settings = {
        "providers": providers,
        "models": {alias: {"deployments": deps, **alias_opts}},
        "breaker": {"failures": 2, "window_s": 30, "cooldown_s": 1.0, "sync_s": 0.1},
        "retry": {"base_s": 0.05, "max_s": 0.2},
    }
    return start_server(**settings), alias


async def chat(srv: ServerThread, key: NewKey, alias: str, **extra: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            srv.base_url + "/v1/chat/completions",
            json={"model": alias, "messages": MSG, **extra},
            headers={"authorization": f"Bearer {key.key}", **extra.pop("headers", {})},
        )


async def test_falls_back_to_a_healthy_deployment(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey, database_url: str
) -> None:
    a, b = await upstreams(), await upstreams()
    a.reply, b.reply = fail(500), ok("from b")
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a, b])
    rid = "fb-" + uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            srv.base_url + "/v1/chat/completions",
            json={"model": alias, "messages": MSG},
            headers={"authorization": f"Bearer {api_key.key}", "x-request-id": rid},
        )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "from b"
    assert r.headers["x-strata-model"] == "up1/m1"
    assert r.headers["x-strata-attempts"] == "2"
    assert r.headers["x-strata-fallback"] == "true"
    [row] = await usage_rows(database_url, rid)
    assert (row.provider, row.attempts, row.fallback) == ("up1", 2, True)


async def test_client_errors_are_not_retried(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    a, b = await upstreams(), await upstreams()
    a.reply, b.reply = fail(400), ok()
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a, b])
    r = await chat(srv, api_key, alias)
    assert r.status_code == 400
    assert len(a.received) == 1 and len(b.received) == 0


async def test_upstream_auth_failure_is_not_retried(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    a, b = await upstreams(), await upstreams()
    a.reply, b.reply = fail(401), ok()
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a, b])
    r = await chat(srv, api_key, alias)
    assert r.status_code == 502 and "up0" in r.json()["error"]["message"]
    assert len(b.received) == 0


async def test_retry_after_is_honoured(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    a = await upstreams()
    a.reply = sequence(fail(429, {"retry-after": "1"}), ok("second try"))
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a])
    t0 = time.monotonic()
    r = await chat(srv, api_key, alias)
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 >= 1.0
    assert r.headers["x-strata-attempts"] == "2"
    assert r.headers["x-strata-fallback"] == "false"


async def test_retry_budget_is_bounded(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    a = await upstreams()
    a.reply = fail(503)
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a], retries=1)
    r = await chat(srv, api_key, alias)
    assert r.status_code == 503
    assert len(a.received) == 2  # the first try and one retry


async def test_time_to_first_token_timeout_falls_back(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    a, b = await upstreams(), await upstreams()
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    a.reply = sse_reply([5.0, chunk])  # hangs before the first byte
    b.reply = sse_reply([chunk])
    deps = [
        {"provider": "up0", "model": "m0", "ttft_timeout_s": 0.5},
        {"provider": "up1", "model": "m1"},
    ]
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a, b], deps)
    t0 = time.monotonic()
    r = await chat(srv, api_key, alias, stream=True)
    assert r.status_code == 200
    assert time.monotonic() - t0 < 3.0
    assert r.headers["x-strata-model"] == "up1/m1"
    assert '"hi"' in r.text and r.text.rstrip().endswith("data: [DONE]")


async def test_a_stream_that_started_is_never_switched(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    a, b = await upstreams(), await upstreams()
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "par"}, "finish_reason": None}],
    }

    async def drop(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await asyncio.sleep(0.1)
        request.transport.close()  # type: ignore[union-attr]  # dropped mid-stream
        return resp

    a.reply, b.reply = drop, sse_reply([chunk])
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a, b])
    r = await chat(srv, api_key, alias, stream=True)
    assert r.status_code == 200
    assert '"par"' in r.text and '"error"' in r.text  # the client is told, not fooled
    assert len(b.received) == 0


async def test_context_length_falls_back_to_a_larger_window(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    a, b, c = await upstreams(), await upstreams(), await upstreams()
    a.reply = fail(400, code="context_length_exceeded")
    b.reply, c.reply = ok("small"), ok("large")
    deps = [
        {"provider": "up0", "model": "m0", "max_context": 4096},
        {"provider": "up1", "model": "m1", "max_context": 2048},
        {"provider": "up2", "model": "m2", "max_context": 32768},
    ]
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a, b, c], deps)
    r = await chat(srv, api_key, alias)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "large"
    assert len(b.received) == 0


async def test_weighted_balancing_within_a_rank(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    a, b = await upstreams(), await upstreams()
    a.reply, b.reply = ok(), ok()
    deps = [
        {"provider": "up0", "model": "m0", "rank": 0, "weight": 3},
        {"provider": "up1", "model": "m1", "rank": 0, "weight": 1},
    ]
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a, b], deps)
    for _ in range(200):
        assert (await chat(srv, api_key, alias)).status_code == 200
    share = len(a.received) / 200
    assert 0.65 <= share <= 0.85, share  # 0.75 expected


async def test_circuit_opens_is_shared_and_recovers(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    a, b = await upstreams(), await upstreams()
    a.reply, b.reply = fail(500), ok()
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a, b])
    for _ in range(2):  # two failures open the circuit (breaker.failures=2)
        assert (await chat(srv, api_key, alias)).status_code == 200
    assert len(a.received) == 2
    r = await chat(srv, api_key, alias)
    assert r.headers["x-strata-attempts"] == "1"  # the dead deployment costs nothing now
    assert len(a.received) == 2
    async with httpx.AsyncClient(timeout=10) as http:
        listed = await http.get(
            f"{srv.base_url}/v1/models/{alias}", headers={"authorization": f"Bearer {api_key.key}"}
        )
    circuits = {d["provider"]: d["circuit"] for d in listed.json()["deployments"]}
    assert circuits == {"up0": "open", "up1": "closed"}
    assert listed.json()["deployments"][1]["latency_ms"] is not None

    # A second instance sharing Redis sees the open circuit without paying for it.
    models = {
        alias: {
            "deployments": [{"provider": "up0", "model": "m0"}, {"provider": "up1", "model": "m1"}]
        }
    }
    other = await asyncio.to_thread(
        start_server,
        providers={
            "up0": {"type": "openai_compat", "base_url": a.base_url},
            "up1": {"type": "openai_compat", "base_url": b.base_url},
        },
        models=models,
        breaker={"failures": 2, "window_s": 30, "cooldown_s": 1.0, "sync_s": 0.1},
    )
    r = await chat(other, api_key, alias)
    assert r.status_code == 200 and r.headers["x-strata-attempts"] == "1"
    assert len(a.received) == 2

    # After the cool-down one probe goes through; success closes the circuit.
    a.reply = ok("a is back")
    await asyncio.sleep(1.3)
    served = [(await chat(srv, api_key, alias)).headers["x-strata-model"] for _ in range(3)]
    assert served == ["up0/m0"] * 3
    await asyncio.sleep(0.3)
    assert (await chat(other, api_key, alias)).headers["x-strata-model"] == "up0/m0"


async def test_falls_back_from_a_dead_host_to_llama_server(
    llama_server: LlamaServer,
    start_server: Callable[..., ServerThread],
    api_key: NewKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRATA_TEST_LLAMA_KEY", llama_server.api_key)
    alias = "r-" + uuid.uuid4().hex[:8]
    srv = await asyncio.to_thread(
        start_server,
        providers={
            "dead": {"type": "openai_compat", "base_url": "http://127.0.0.1:1/v1"},
            "llama": {
                "type": "openai_compat",
                "base_url": llama_server.base_url,
                "api_key": "env:STRATA_TEST_LLAMA_KEY",
            },
        },
        models={
            alias: {
                "deployments": [
                    {"provider": "dead", "model": "x"},
                    {"provider": "llama", "model": llama_server.model},
                ]
            }
        },
    )
    r = await chat(srv, api_key, alias, max_tokens=4)
    assert r.status_code == 200, r.text
    assert r.headers["x-strata-model"] == f"llama/{llama_server.model}"
    assert r.json()["usage"]["completion_tokens"] > 0


async def test_timed_out_attempts_are_billed_on_the_record(
    upstreams: Make, start_server: Callable[..., ServerThread], api_key: NewKey, database_url: str
) -> None:
    a, b = await upstreams(), await upstreams()
    a.reply, b.reply = hang(5.0), ok()
    deps = [
        {
            "provider": "up0",
            "model": "m0",
            "timeout_s": 0.5,
            "price": {"input_per_1m": "1000", "output_per_1m": "1000"},
        },
        {"provider": "up1", "model": "m1"},
    ]
    srv, alias = await asyncio.to_thread(serve_alias, start_server, [a, b], deps)
    rid = "billed-" + uuid.uuid4().hex
    r = await chat(srv, api_key, alias, headers={"x-request-id": rid})
    assert r.status_code == 200 and r.headers["x-strata-model"] == "up1/m1"
    [row] = await usage_rows(database_url, rid)
    # The timed-out upstream had the prompt: its input price times the prompt tokens.
    assert row.failed_cost_usd == Decimal(3) * 1000 / 1_000_000
    assert row.cost_usd == row.failed_cost_usd  # the answering deployment is free here
