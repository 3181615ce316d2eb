"""A client that leaves mid-stream makes Strata drop the upstream connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx
import orjson
import pytest
from aiohttp import web

from strata.storage.repositories.keys import NewKey
from tests.conftest import TEST_CONFIG, ServerThread, free_port


class SlowUpstream:
    """An OpenAI-compatible SSE upstream that notices when its client goes away."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sent = 0
        self.disconnected_at: float | None = None
        self.finished = False
        self.seen_bodies: list[dict] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.seen_bodies.append(await request.json())
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(200):
                chunk = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "slow",
                    "choices": [
                        {"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}
                    ],
                }
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                self.sent += 1
                await asyncio.sleep(0.05)
            self.finished = True
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected_at = time.monotonic()
            raise
        return resp


@pytest.fixture
async def upstream() -> AsyncIterator[SlowUpstream]:
    up = SlowUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.chat)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", up.port).start()
    yield up
    await runner.cleanup()


async def test_disconnect_cancels_upstream(
    upstream: SlowUpstream, start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    providers = {
        **TEST_CONFIG["providers"],
        "slow": {"type": "openai_compat", "base_url": f"http://127.0.0.1:{upstream.port}/v1"},
    }
    models = {**TEST_CONFIG["models"], "slow": {"provider": "slow", "model": "slow-1"}}
    srv = await asyncio.to_thread(start_server, providers=providers, models=models)
    body = {"model": "slow", "messages": [{"role": "user", "content": "go"}], "stream": True}
    headers = {"authorization": f"Bearer {api_key.key}"}
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", srv.base_url + "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        n = 0
        async for line in r.aiter_lines():
            n += line.startswith("data:")
            if n >= 3:
                break
    left = time.monotonic()
    for _ in range(40):
        if upstream.disconnected_at is not None:
            break
        await asyncio.sleep(0.05)
    assert upstream.disconnected_at is not None, "upstream never saw the disconnect"
    assert upstream.disconnected_at - left < 2.0
    assert not upstream.finished and upstream.sent < 100
    # Strata asked the upstream for usage on the stream, and named the upstream model.
    assert upstream.seen_bodies[0]["stream_options"] == {"include_usage": True}
    assert upstream.seen_bodies[0]["model"] == "slow-1"
