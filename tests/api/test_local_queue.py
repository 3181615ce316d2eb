"""The local model queues fairly, sheds load with 429, and never blocks the server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import httpx

from strata.storage.repositories.keys import NewKey
from tests.conftest import ServerThread, usage_rows

LONG = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]


async def test_full_queue_answers_429_with_retry_after(
    start_server: Callable[..., ServerThread], api_key: NewKey
) -> None:
    srv = start_server(local={"queue_max": 0})
    headers = {"authorization": f"Bearer {api_key.key}"}
    body = {"model": "default", "messages": LONG, "max_tokens": 400, "stream": True}
    async with (
        httpx.AsyncClient(base_url=srv.base_url, headers=headers, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as first,
    ):
        assert first.status_code == 200
        r = await http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 5})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1


async def test_other_endpoints_stay_responsive_while_generating(
    server: ServerThread, api_key: NewKey, database_url: str
) -> None:
    headers = {"authorization": f"Bearer {api_key.key}"}
    r_id = "q-" + uuid.uuid4().hex
    body = {"model": "default", "messages": LONG, "max_tokens": 1500, "stream": True}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=60) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", json=body, headers={"x-request-id": r_id}
        ) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data:")
                if seen == 3:
                    t0 = time.perf_counter()
                    assert (await http.get("/healthz")).status_code == 200
                    fake = await http.post(
                        "/v1/chat/completions", json={"model": "fake", "messages": LONG}
                    )
                    assert fake.status_code == 200
                    assert time.perf_counter() - t0 < 1.0
                if seen >= 6:
                    break
        # The client left: generation stops at the next token, freeing the model.
        [row] = await usage_rows(database_url, r_id)
        assert row.status == "cancelled"
        assert row.completion_tokens < 100
        t0 = time.perf_counter()
        r = await http.post(
            "/v1/chat/completions", json={"model": "default", "messages": LONG, "max_tokens": 2}
        )
        assert r.status_code == 200
        assert time.perf_counter() - t0 < 5.0


async def test_concurrent_requests_all_complete_in_order(
    server: ServerThread, api_key: NewKey
) -> None:
    headers = {"authorization": f"Bearer {api_key.key}"}
    done: list[int] = []
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=120) as http:

        async def one(i: int) -> None:
            r = await http.post(
                "/v1/chat/completions",
                json={"model": "default", "messages": LONG, "max_tokens": 8, "temperature": 0},
            )
            assert r.status_code == 200, r.text
            done.append(i)

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0.02)  # arrive in a known order
        await asyncio.gather(*tasks)
    assert done == sorted(done)  # first come, first served
