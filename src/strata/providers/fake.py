"""A scripted provider for tests and demos: no network, no model, deterministic.

Options: ``reply`` (the text), ``error_status`` (fail every call with this
upstream status), ``delay_s`` (before answering), ``chunk_delay_s`` (between
stream chunks), ``dimensions`` (embedding size). Token counts are whitespace
words, so tests can predict them.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from strata.errors import ProviderError, ProviderRateLimited, ProviderUnavailable
from strata.providers.base import (
    ChatResult,
    EmbedResult,
    Provider,
    ProviderOptions,
    chunk_factory,
    usage_chunk,
)


class FakeOptions(ProviderOptions):
    reply: str = "This is a scripted reply from the fake provider."
    error_status: int | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    dimensions: int = 8


def count_words(messages: list[dict[str, Any]]) -> int:
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            n += len(content.split())
    return n


class FakeProvider(Provider):
    Options = FakeOptions
    options: FakeOptions
    supports_chat = True
    supports_streaming = True
    supports_tools = True
    supports_embeddings = True
    max_context = 8192

    async def _before(self) -> None:
        if self.options.delay_s:
            await asyncio.sleep(self.options.delay_s)
        status = self.options.error_status
        if status is not None:
            if status == 429:
                raise ProviderRateLimited("scripted rate limit", provider=self.name, retry_after=1)
            if status == 503:
                raise ProviderUnavailable("scripted outage", provider=self.name)
            raise ProviderError(f"scripted HTTP {status}", provider=self.name)

    def _words(self, body: dict[str, Any]) -> list[str]:
        words = self.options.reply.split()
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        return words[:max_tokens] if max_tokens else words

    async def chat(self, body: dict[str, Any], model: str) -> ChatResult:
        await self._before()
        words = self._words(body)
        prompt = count_words(body["messages"])
        finish = "length" if len(words) < len(self.options.reply.split()) else "stop"
        out = {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": len(words),
                "total_tokens": prompt + len(words),
            },
        }
        return ChatResult(out, prompt, len(words))

    async def stream(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        await self._before()
        cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
        words = self._words(body)

        chunk = chunk_factory(cid, created, model)

        yield chunk({"role": "assistant", "content": ""})
        for i, w in enumerate(words):
            if self.options.chunk_delay_s:
                await asyncio.sleep(self.options.chunk_delay_s)
            yield chunk({"content": w if i == 0 else " " + w})
        finish = "length" if len(words) < len(self.options.reply.split()) else "stop"
        yield chunk({}, finish)
        yield usage_chunk(cid, created, model, count_words(body["messages"]), len(words))

    async def embed(self, inputs: list[str], model: str) -> EmbedResult:
        await self._before()
        dims = self.options.dimensions
        vectors = []
        for text in inputs:
            digest = hashlib.sha256(text.encode()).digest() * (dims * 4 // 32 + 1)
            raw = struct.unpack(f"{dims}i", digest[: dims * 4])
            vectors.append([v / 2**31 for v in raw])
        return EmbedResult(vectors, sum(len(t.split()) for t in inputs))
