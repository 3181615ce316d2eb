"""Chat completions: route, call the provider, meter, settle.

Streams are primed (the first chunk is awaited) before the HTTP response starts,
so a provider that fails at once yields a proper error status, not a 200 stream
with an error inside. Once a stream has started, a failure is sent as an SSE
``error`` event, and a client disconnect cancels the upstream work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson

from strata.errors import ProviderTimeout, StrataError
from strata.gateway.meter import Meter
from strata.providers.base import ChatResult, Provider, estimate_prompt_tokens
from strata.routing.auto import AutoRouter
from strata.routing.dispatch import Dispatcher
from strata.routing.router import Target

R = TypeVar("R")

log = logging.getLogger("strata.chat")

DONE = b"data: [DONE]\n\n"


def sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


class ChatService:
    def __init__(self, dispatcher: Dispatcher, auto: AutoRouter) -> None:
        self.dispatcher = dispatcher
        self.auto = auto

    async def complete(
        self, body: dict[str, Any], meter: Meter, forced_tier: str | None = None
    ) -> dict[str, Any]:
        async def call(target: Target) -> ChatResult:
            return await target.provider.chat(body, target.model)

        result = await self._run(body, meter, call, stream=False, forced_tier=forced_tier)
        meter.first_token()
        meter.tokens(result.prompt_tokens, result.completion_tokens)
        return result.body

    async def open_stream(
        self, body: dict[str, Any], meter: Meter, forced_tier: str | None = None
    ) -> ChatStream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def call(target: Target) -> ChatStream:
            # Fallbacks happen only here, before the client has seen a token.
            stream = ChatStream(
                target.provider.stream_batches(body, target.model),
                meter,
                include_usage,
                estimate_prompt_tokens(body),
                target.timeout_s,
            )
            await stream.prime(target.ttft_timeout_s)
            return stream

        return await self._run(body, meter, call, stream=True, forced_tier=forced_tier)

    async def _run(
        self,
        body: dict[str, Any],
        meter: Meter,
        call: Callable[[Target], Awaitable[R]],
        *,
        stream: bool,
        forced_tier: str | None,
    ) -> R:
        alias = body["model"]
        meter.event.alias = alias
        meter.prompt_estimate = estimate_prompt_tokens(body)
        if self.auto.is_routed(alias):
            decision = await self.auto.decide(alias, body, meter.principal, forced_tier)
            meter.routed(decision)
            alias = decision.alias

        def capable(p: Provider) -> bool:
            return (not stream or p.supports_streaming) and (
                not body.get("tools") or p.supports_tools
            )

        return await self.dispatcher.run(
            alias,
            "chat",
            call,
            meter.outcome,
            on_target=meter.on_target,
            capable=capable,
            need="tools" if body.get("tools") else "stream" if stream else None,
        )


class ChatStream:
    """SSE bytes for one streamed completion; settles its meter exactly once."""

    def __init__(
        self,
        batches: AsyncIterator[list[dict[str, Any]]],
        meter: Meter,
        include_usage: bool,
        prompt_estimate: int = 0,
        timeout_s: float | None = None,
    ) -> None:
        self.prompt_estimate = prompt_estimate
        # The deployment's total timeout covers the whole stream, from now.
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._batches = batches
        self.meter = meter
        self.include_usage = include_usage
        self._first: list[dict[str, Any]] | None = None
        self._content_chunks = 0
        self._usage_seen = False

    async def prime(self, ttft_timeout_s: float | None = None) -> None:
        try:
            async with asyncio.timeout(ttft_timeout_s):
                self._first = await anext(self._batches)
        except StopAsyncIteration:
            self._first = None
        except BaseException:
            await self._close_upstream()
            raise

    async def events(self) -> AsyncGenerator[bytes, None]:
        try:
            if self._first is not None:
                first, self._first = self._first, None
                out = self._encode(first)
                if out:
                    yield out
                async with asyncio.timeout_at(self._deadline):
                    async for batch in self._batches:
                        out = self._encode(batch)
                        if out:
                            yield out
            yield DONE
            self.meter.ok()
        except TimeoutError:
            exc = ProviderTimeout(
                "the stream exceeded the deployment's timeout",
                provider=self.meter.event.provider or "",
            )
            self.meter.failed(exc)
            yield sse(exc.to_dict())
            yield DONE
        except StrataError as exc:
            self.meter.failed(exc)
            yield sse(exc.to_dict())
            yield DONE
        except Exception as exc:
            log.exception("stream failed")
            self.meter.failed(exc)
            yield sse(StrataError("internal error while streaming").to_dict())
            yield DONE
        finally:
            await self.close()

    def _encode(self, batch: list[dict[str, Any]]) -> bytes:
        # One write per batch of chunks that arrived together.
        return b"".join(filter(None, map(self._handle, batch)))

    def _handle(self, chunk: dict[str, Any]) -> bytes | None:
        usage = chunk.get("usage")
        if usage:
            self._usage_seen = True
            self.meter.tokens(
                int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            )
            if not chunk.get("choices"):
                # The provider's accounting chunk: only forwarded when asked for.
                return sse(chunk) if self.include_usage else None
            if not self.include_usage:
                chunk = {k: v for k, v in chunk.items() if k != "usage"}
        elif self.include_usage:
            # OpenAI sends "usage": null on every chunk but the last when asked.
            chunk["usage"] = None
        self._content_chunks += 1
        self.meter.first_token()
        return sse(chunk)

    async def close(self) -> None:
        """Idempotent. A stream that did not finish was cancelled by the client."""
        await self._close_upstream()
        if not self.meter.done and not self._usage_seen:
            # Cut short before the provider's usage chunk: bill an estimate, since
            # the upstream did the work (one chunk is about one token).
            self.meter.tokens(self.prompt_estimate, max(0, self._content_chunks - 1))
        self.meter.cancelled()

    async def _close_upstream(self) -> None:
        aclose = getattr(self._batches, "aclose", None)
        if aclose is not None:
            await aclose()
