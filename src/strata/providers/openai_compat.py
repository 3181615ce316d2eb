"""Any OpenAI-compatible server: OpenAI, Together AI, vLLM, TGI, llama.cpp server.

One pooled aiohttp session per provider, with connect and read timeouts. Request
parameters the gateway does not know (tools, response_format, vendor extras) pass
through untouched. Upstream failures become Strata errors that name the provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from pydantic import Field

from strata.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    StrataError,
)
from strata.observability import tracing
from strata.providers.base import (
    ChatResult,
    EmbedResult,
    Provider,
    ProviderOptions,
    estimate_prompt_tokens,
    usage_chunk,
)
from strata.security.credentials import Secret, resolve_secret


class OpenAICompatOptions(ProviderOptions):
    base_url: str
    api_key: str | None = Field(
        default=None,
        description="secret reference: env:NAME, file:/path or vault:secret/data/PATH#FIELD",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0)
    max_connections: int = Field(default=256, gt=0)
    headers: dict[str, str] = {}
    supports_tools: bool = True
    max_context: int | None = None


class OpenAICompatProvider(Provider):
    Options = OpenAICompatOptions
    options: OpenAICompatOptions
    supports_chat = True
    supports_streaming = True
    supports_tools = True
    supports_embeddings = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_context = self.options.max_context
        self.base_url = self.options.base_url.rstrip("/")
        self._secret: Secret | None = None
        if self.options.api_key:
            # Resolved at construction: a missing key fails start-up, not a request.
            # A holder: the secrets refresher swaps its value; each request reads it.
            self._secret = resolve_secret(self.options.api_key, f"providers.{self.name}.api_key")
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        headers = {"content-type": "application/json", **self.options.headers}
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(
                limit=self.options.max_connections, keepalive_timeout=60, ttl_dns_cache=300
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.options.connect_timeout_s,
                sock_read=self.options.read_timeout_s,
            ),
            json_serialize=lambda o: orjson.dumps(o).decode(),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        if self._session is None:
            raise ProviderUnavailable("not started", provider=self.name)
        headers = tracing.outgoing_headers()
        if self._secret is not None:  # read per request: a refreshed key applies at once
            headers = {**(headers or {}), "authorization": "Bearer " + self._secret.reveal()}
        return self._session.post(self.base_url + path, data=orjson.dumps(payload), headers=headers)

    async def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST and return the JSON body; every failure becomes a Strata error."""
        try:
            async with self._post(path, payload) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self._upstream_error(resp, raw)
        except StrataError:
            raise
        except Exception as exc:
            raise self._transport_error(exc) from None
        return _loads(raw, self.name)

    async def chat(self, body: dict[str, Any], model: str) -> ChatResult:
        payload = {**body, "model": model}
        payload.pop("stream_options", None)
        payload["stream"] = False
        data = await self._call("/chat/completions", payload)
        usage = data.get("usage") or {}
        return ChatResult(
            data, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        )

    async def stream(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        async for batch in self.stream_batches(body, model):
            for chunk in batch:
                yield chunk

    async def stream_batches(
        self, body: dict[str, Any], model: str
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Chunks grouped by network read: one client write per read, not per chunk."""
        payload = {**body, "model": model, "stream": True}
        # Always ask for usage: accounting needs it; the gateway hides it if unasked.
        payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        state = _StreamState()
        try:
            async with self._post("/chat/completions", payload) as resp:
                if resp.status >= 400:
                    raise self._upstream_error(resp, await resp.read())
                tail = b""
                async for data in resp.content.iter_any():
                    lines = (tail + data).split(b"\n")
                    tail = lines.pop()
                    batch = self._parse_lines(lines, state)
                    if batch:
                        yield batch
                    if state.done:
                        break
                if tail and not state.done:
                    batch = self._parse_lines([tail], state)
                    if batch:
                        yield batch
                if state.error is not None:
                    raise state.error
            if not state.usage_seen:
                # Some upstreams (llama-cpp-python's server) ignore stream_options: keep
                # the contract with an estimate (one chunk is about one token).
                yield [
                    usage_chunk(
                        str(state.last.get("id") or "chatcmpl-strata"),
                        int(state.last.get("created") or time.time()),
                        str(state.last.get("model") or model),
                        estimate_prompt_tokens(body),
                        state.content_chunks,
                    )
                ]
        except (StrataError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise self._transport_error(exc) from None

    def _parse_lines(self, lines: list[bytes], state: _StreamState) -> list[dict[str, Any]]:
        batch = []
        for line in lines:
            if state.done or not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                state.done = True
                break
            chunk = _loads(data, self.name)
            if "error" in chunk:
                # Raised after the chunks before it have been delivered.
                state.error = self._scrub(_error_from_body(self.name, 502, chunk))
                state.done = True
                break
            if chunk.get("usage"):
                state.usage_seen = True
            elif any(
                (c.get("delta") or {}).get("content") or (c.get("delta") or {}).get("tool_calls")
                for c in chunk.get("choices") or ()
            ):
                state.content_chunks += 1
            state.last = chunk
            batch.append(chunk)
        return batch

    async def embed(self, inputs: list[str], model: str) -> EmbedResult:
        data = await self._call("/embeddings", {"model": model, "input": inputs})
        items = sorted(data.get("data", []), key=lambda d: d.get("index", 0))
        vectors = [d.get("embedding") for d in items]
        if len(vectors) != len(inputs) or not all(_is_vector(v) for v in vectors):
            raise ProviderError(
                "the upstream sent embeddings in an unexpected shape (want one flat vector of "
                "numbers per input; per-token vectors mean the upstream model has no pooling)",
                provider=self.name,
            )
        usage = data.get("usage") or {}
        return EmbedResult(vectors, int(usage.get("prompt_tokens") or 0))

    def _upstream_error(self, resp: aiohttp.ClientResponse, raw: bytes) -> StrataError:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = {}
        err = _error_from_body(self.name, resp.status, body if isinstance(body, dict) else {})
        if isinstance(err, ProviderRateLimited):
            err.retry_after = _retry_after(resp.headers.get("retry-after"))
        return self._scrub(err)

    def _scrub(self, err: StrataError) -> StrataError:
        """Upstreams may echo the key they were sent; never pass it on."""
        secret = self._secret.reveal() if self._secret is not None else ""
        if secret and secret in err.message:
            err.message = err.message.replace(secret, "****")
            err.args = (err.message,)
        return err

    def _transport_error(self, exc: BaseException) -> StrataError:
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            return ProviderTimeout("timed out waiting for the upstream", provider=self.name)
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ProviderUnavailable("cannot connect to the upstream", provider=self.name)
        return ProviderError(
            f"upstream connection failed ({type(exc).__name__})", provider=self.name
        )


@dataclass(slots=True)
class _StreamState:
    usage_seen: bool = False
    done: bool = False
    content_chunks: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    error: StrataError | None = None


def _loads(raw: bytes, provider: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProviderError(
            "the upstream sent a body that is not JSON", provider=provider
        ) from None
    if not isinstance(data, dict):
        raise ProviderError("the upstream sent an unexpected JSON body", provider=provider)
    return data


def _error_from_body(provider: str, status: int, body: dict[str, Any]) -> StrataError:
    err = body.get("error")
    if isinstance(err, dict):
        message = str(err.get("message") or "")[:500]
        code, param = err.get("code"), err.get("param")
    else:
        message, code, param = str(err or "")[:500], None, None
    detail = f"HTTP {status}" + (f": {message}" if message else "")
    if status == 400 or status == 422:
        lowered = message.lower()
        if code == "context_length_exceeded" or any(
            phrase in lowered for phrase in ("context length", "context window", "maximum context")
        ):
            return ContextLengthExceeded(f"provider {provider!r}: {message}", param="messages")
        return InvalidRequest(f"provider {provider!r} rejected the request: {detail}", param=param)
    if status in (401, 403):
        return ProviderAuthError(
            f"the upstream rejected Strata's credentials ({detail}); "
            f"check providers.{provider}.api_key",
            provider=provider,
        )
    if status == 404:
        return ProviderError(
            f"the upstream does not know this model or path ({detail})",
            provider=provider,
            code="upstream_model_not_found",
        )
    if status == 429:
        return ProviderRateLimited(detail, provider=provider)
    if status in (502, 503, 504):
        return ProviderUnavailable(detail, provider=provider)
    return ProviderError(detail, provider=provider)


def _is_vector(value: Any) -> bool:
    # The first element tells a flat vector from per-token vectors or base64; checking
    # every number would cost more than the request.
    return isinstance(value, list) and bool(value) and isinstance(value[0], int | float)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
