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
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from strata.cache.exact import BYPASS, ExactCache, Hit, Plan, check_control, replay_chunks
from strata.cache.semantic import SemanticCache, SemanticPlan
from strata.errors import InvalidRequest, ProviderTimeout, StrataError
from strata.gateway.meter import Meter
from strata.gateway.quota import Quota, max_tokens_of
from strata.observability import tracing
from strata.providers.base import ChatResult, Provider, estimate_prompt_tokens
from strata.routing.auto import AutoRouter
from strata.routing.dispatch import Dispatcher
from strata.routing.router import Target

R = TypeVar("R")

log = logging.getLogger("strata.chat")

DONE = b"data: [DONE]\n\n"


def sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


@dataclass(frozen=True, slots=True)
class Controls:
    """Per-request switches from headers: forced tier and cache directives."""

    tier: str | None = None
    cache: str | None = None  # x-strata-cache: off | refresh | on
    cache_control: str | None = None  # Cache-Control: no-cache, no-store


@dataclass(slots=True)
class Plans:
    """The exact and (when opted in) semantic cache plans of one request."""

    exact: Plan
    semantic: SemanticPlan | None = None

    @property
    def stores(self) -> bool:
        return self.exact.key is not None and self.exact.store

    @property
    def status(self) -> str:
        if self.semantic is not None and not self.semantic.failed:
            return "miss"
        return self.exact.status


NO_CACHE = Plans(BYPASS)


class ChatService:
    def __init__(
        self,
        dispatcher: Dispatcher,
        auto: AutoRouter,
        cache: ExactCache,
        semantic: SemanticCache | None = None,
        quota: Quota | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.auto = auto
        self.cache = cache
        self.semantic = semantic
        self.quota = quota
        # strata.rag.service.RagService, set by create_app: requests with a "rag"
        # field are grounded on a document collection first.
        self.rag: Any = None

    async def complete(
        self, body: dict[str, Any], meter: Meter, controls: Controls = Controls()
    ) -> dict[str, Any]:
        body, grounding = await self._ground(body, meter)
        alias, plans, hit = await self._lookup(body, meter, controls)
        if hit is not None:
            return _extended(hit.body, grounding)

        async def call(target: Target) -> ChatResult:
            return await target.provider.chat(body, target.model)

        result = await self._dispatch(alias, body, meter, call, stream=False)
        meter.first_token()
        meter.tokens(result.prompt_tokens, result.completion_tokens)
        self._store(plans, alias, result.body, meter)
        return _extended(result.body, grounding)

    async def open_stream(
        self, body: dict[str, Any], meter: Meter, controls: Controls = Controls()
    ) -> ChatStream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        body, grounding = await self._ground(body, meter)
        alias, plans, hit = await self._lookup(body, meter, controls)
        if hit is not None:
            stream = ChatStream(_replay(hit.body), meter, include_usage)
            stream.trailer = grounding
            await stream.prime()
            return stream

        def store(completion: dict[str, Any]) -> None:
            self._store(plans, alias, completion, meter)

        async def call(target: Target) -> ChatStream:
            # Fallbacks happen only here, before the client has seen a token.
            stream = ChatStream(
                target.provider.stream_batches(body, target.model),
                meter,
                include_usage,
                estimate_prompt_tokens(body),
                target.timeout_s,
                on_complete=store if plans.stores else None,
            )
            stream.trailer = grounding
            await stream.prime(target.ttft_timeout_s)
            return stream

        return await self._dispatch(alias, body, meter, call, stream=True)

    async def _ground(
        self, body: dict[str, Any], meter: Meter
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A request with ``rag``: retrieve, add numbered sources (strata.rag.answer);
        the citations go back in a ``strata`` field (a stream's last chunk)."""
        if "rag" not in body:
            return body, None
        if self.rag is None:
            raise InvalidRequest("document retrieval (rag) is not available here", param="rag")
        from strata.rag.answer import ground

        return await ground(self.rag, body, meter.principal, self._context_tokens(body))

    def _context_tokens(self, body: dict[str, Any]) -> int | None:
        """The smallest context window among the alias's deployments (None: unknown)."""
        try:
            targets = self.dispatcher.router.candidates(body.get("model", ""), "chat")
        except StrataError:
            return None
        sizes = [t.max_context or t.provider.max_context for t in targets]
        known = [s for s in sizes if s]
        return min(known) if known else None

    async def _lookup(
        self, body: dict[str, Any], meter: Meter, controls: Controls
    ) -> tuple[str, Plans, Hit | None]:
        """Route (for auto aliases), then ask the caches (exact, then semantic); a hit
        is metered here."""
        check_control(controls.cache)
        meter.event.end_user = body.get("user")
        with tracing.span("routing") as span:
            alias = await self._route(body, meter, controls)
            if span is not None:
                span.set_attributes({"strata.alias": meter.event.alias, "strata.routed_to": alias})
        if self.quota is not None:
            await self.quota.admit(
                meter,
                requested=meter.event.alias,
                alias=alias,
                kind="chat",
                prompt_tokens=meter.prompt_estimate,
                max_tokens=max_tokens_of(body),
            )
        plans = self._plan(alias, body, meter, controls)
        with tracing.span("cache.lookup") as span:
            hit = await self.cache.get(plans.exact)
            if hit is None and plans.semantic is not None and self.semantic is not None:
                hit = await self.semantic.get(plans.semantic)
            meter.event.cache = plans.status
            if hit is not None:
                meter.cache_hit(hit)
            if span is not None:
                span.set_attribute("strata.cache", meter.event.cache)
        return alias, plans, hit

    async def _route(self, body: dict[str, Any], meter: Meter, controls: Controls) -> str:
        alias: str = body["model"]
        meter.event.alias = alias
        meter.prompt_estimate = estimate_prompt_tokens(body)
        if self.auto.is_routed(alias):
            decision = await self.auto.decide(alias, body, meter.principal, controls.tier)
            meter.routed(decision)
            alias = decision.alias
        return alias

    def _plan(self, alias: str, body: dict[str, Any], meter: Meter, controls: Controls) -> Plans:
        spec = self.dispatcher.router.aliases.get(alias)
        if spec is None or spec.kind != "chat":
            return NO_CACHE  # the dispatcher answers with the right error
        deployments = [t.label for t in self.dispatcher.router.candidates(alias, "chat")]
        plan = self.cache.plan(
            meter.principal.tenant_id,
            alias,
            spec,
            deployments,
            body,
            controls.cache,
            controls.cache_control,
        )
        if plan.key is None or self.semantic is None:
            return Plans(plan)
        semantic = self.semantic.plan(
            meter.principal,
            plan.namespace,
            alias,
            spec,
            deployments,
            body,
            plan.lookup,
            plan.store,
            controls.cache,
        )
        return Plans(plan, semantic)

    def _store(self, plans: Plans, alias: str, completion: dict[str, Any], meter: Meter) -> None:
        e = meter.event
        if not plans.stores or e.provider is None:
            return
        cost = meter.pricer.cost(e.provider, e.model or "", e.prompt_tokens, e.completion_tokens)
        raw = self.cache.entry(
            completion, (e.prompt_tokens, e.completion_tokens), e.provider, e.model or "", cost
        )
        if raw is None:
            return
        spec = self.dispatcher.router.aliases[alias]
        self.cache.put(plans.exact, spec, raw, meter.principal)
        if plans.semantic is not None and self.semantic is not None:
            self.semantic.put(plans.semantic, raw, completion)

    async def _dispatch(
        self,
        alias: str,
        body: dict[str, Any],
        meter: Meter,
        call: Callable[[Target], Awaitable[R]],
        *,
        stream: bool,
    ) -> R:
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


def _extended(completion: dict[str, Any], grounding: dict[str, Any] | None) -> dict[str, Any]:
    if grounding is None:
        return completion
    out = dict(completion)
    out["strata"] = grounding
    if isinstance(out.get("usage"), dict):
        rag = grounding["rag"]
        out["usage"] = {
            **out["usage"],
            "rag_embed_ms": rag["embed_ms"],
            "rag_retrieval_ms": rag["retrieval_ms"],
        }
    return out


async def _replay(completion: dict[str, Any]) -> AsyncIterator[list[dict[str, Any]]]:
    # The stored usage closes the replay; ChatStream hides it unless it was asked for.
    yield replay_chunks(completion, include_usage=True)


def _trailer(head: dict[str, Any], ext: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": head.get("id", ""),
        "object": "chat.completion.chunk",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [],
        "strata": ext,
    }


class ChatStream:
    """SSE bytes for one streamed completion; settles its meter exactly once."""

    def __init__(
        self,
        batches: AsyncIterator[list[dict[str, Any]]],
        meter: Meter,
        include_usage: bool,
        prompt_estimate: int = 0,
        timeout_s: float | None = None,
        on_complete: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.prompt_estimate = prompt_estimate
        # Collects the answer for the cache (only when it will be stored).
        self._on_complete = on_complete
        self._text: list[str] = []
        self._finish: str | None = None
        self._last: dict[str, Any] = {}
        # The deployment's total timeout covers the whole stream, from now.
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._batches = batches
        self.meter = meter
        self.include_usage = include_usage
        self._first: list[dict[str, Any]] | None = None
        self._content_chunks = 0
        self._usage_seen = False
        # The provider attempt's span, when traced: it ends with the stream.
        self.span: Any = None
        self._span_model: str | None = None
        self._span_finish: list[str] = []
        # Sent as one last chunk before [DONE] (grounded answers: the citations).
        self.trailer: dict[str, Any] | None = None

    def adopt_span(self, span: Any) -> None:
        self.span = span

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
            head = self._first[0] if self._first else {}
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
            if self.trailer is not None:
                yield sse(_trailer(head, self.trailer))
            yield DONE
            self.meter.ok()
            self._completed()
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
        if self._on_complete is not None:
            self._collect(chunk)
        if self.span is not None:
            self._span_model = chunk.get("model") or self._span_model
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    self._span_finish.append(choice["finish_reason"])
        return sse(chunk)

    def _collect(self, chunk: dict[str, Any]) -> None:
        choices: list[dict[str, Any]] = chunk.get("choices") or []
        if len(choices) != 1 or choices[0].get("index", 0) != 0:
            self._on_complete = None  # several choices: not worth reassembling
            return
        delta = choices[0].get("delta") or {}
        if delta.get("tool_calls") or delta.get("function_call"):
            self._on_complete = None  # tool calls are never cached
            return
        if delta.get("content"):
            self._text.append(delta["content"])
        self._finish = choices[0].get("finish_reason") or self._finish
        self._last = chunk

    def _completed(self) -> None:
        if self._on_complete is None or self._finish is None:
            return
        e = self.meter.event
        self._on_complete(
            {
                "id": self._last.get("id", ""),
                "object": "chat.completion",
                "created": self._last.get("created", 0),
                "model": self._last.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(self._text)},
                        "finish_reason": self._finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": e.prompt_tokens,
                    "completion_tokens": e.completion_tokens,
                    "total_tokens": e.prompt_tokens + e.completion_tokens,
                },
            }
        )

    async def close(self) -> None:
        """Idempotent. A stream that did not finish was cancelled by the client."""
        await self._close_upstream()
        if not self.meter.done and not self._usage_seen:
            # Cut short before the provider's usage chunk: bill an estimate, since
            # the upstream did the work (one chunk is about one token).
            self.meter.tokens(self.prompt_estimate, max(0, self._content_chunks - 1))
        self.meter.cancelled()
        if self.span is not None:
            span, self.span = self.span, None
            tracing.end_stream(span, self.meter.event, self._span_model, self._span_finish)

    async def _close_upstream(self) -> None:
        aclose = getattr(self._batches, "aclose", None)
        if aclose is not None:
            await aclose()
