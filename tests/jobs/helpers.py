"""Shared helpers for the batch tests: JSONL inputs, polling, database reads."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import orjson
from sqlalchemy import text

from strata.storage.engine import make_engine


def chat_line(custom_id: str, model: str = "fake", text_: str = "hello batch") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text_}]},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)


def wait_batch(
    client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout_s: float = 60
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in statuses:
            return b
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {b.status} after {timeout_s}s")
        time.sleep(0.2)


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    data = client.files.content(file_id).read()
    return [orjson.loads(x) for x in data.splitlines() if x.strip()]


def query(database_url: str, sql: str, **params: Any) -> list[Any]:
    async def go() -> list[Any]:
        engine = make_engine(database_url, pool_size=1)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(sql), params)
                return list(result.all()) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(go())


def usage_of(database_url: str, batch_id: str) -> list[Any]:
    return query(
        database_url,
        "SELECT request_id, status, cost_usd, prompt_tokens, completion_tokens, endpoint "
        "FROM usage_records WHERE request_id LIKE :p ORDER BY request_id",
        p=batch_id + ":%",
    )
