"""The openai_compat provider against real upstreams on loopback.

Part one talks to a real llama-cpp-python server (``python -m llama_cpp.server``)
serving the embedded SmolLM2 GGUF. Part two scripts an aiohttp upstream to pin
down pass-through, credentials, and how every kind of upstream failure maps onto
Strata's errors.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from strata.errors import (
    ConfigError,
    ContextLengthExceeded,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    StrataError,
)
from strata.providers.openai_compat import OpenAICompatProvider
from strata.settings import ProviderConfig, Settings, load_settings
from tests.upstreams import LlamaServer, ScriptedUpstream, free_port, sse_reply

MakeProvider = Callable[..., Awaitable[OpenAICompatProvider]]

LLAMA_KEY_VAR = "STRATA_TEST_LLAMA_KEY"
SCRIPTED_KEY_VAR = "STRATA_TEST_UPSTREAM_KEY"
SCRIPTED_KEY = "sk-test-0123456789abcdef-not-real"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(None)


def new_provider(name: str, settings: Settings, **options: Any) -> OpenAICompatProvider:
    return OpenAICompatProvider(name, ProviderConfig(type="openai_compat", **options), settings)


@pytest.fixture
async def make(settings: Settings) -> AsyncIterator[MakeProvider]:
    """Build and start providers; every one is closed at teardown."""
    made: list[OpenAICompatProvider] = []

    async def make(base_url: str, name: str = "scripted", **options: Any) -> OpenAICompatProvider:
        provider = new_provider(name, settings, base_url=base_url, **options)
        made.append(provider)
        await provider.start()
        return provider

    yield make
    for provider in made:
        await provider.close()


async def collect(
    provider: OpenAICompatProvider, body: dict[str, Any], model: str
) -> list[dict[str, Any]]:
    return [chunk async for chunk in provider.stream(body, model)]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for chunk in chunks
        for c in chunk["choices"]
        if c.get("delta")
    )


# --------------------------------------------------------------------------- llama.cpp


@pytest.fixture
async def llama(
    llama_server: LlamaServer, make: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> OpenAICompatProvider:
    monkeypatch.setenv(LLAMA_KEY_VAR, llama_server.api_key)
    return await make(
        llama_server.base_url, name="llama", api_key=f"env:{LLAMA_KEY_VAR}", read_timeout_s=60
    )


def ask(content: str, **params: Any) -> dict[str, Any]:
    # "model" is the client's alias; the provider must replace it with the upstream's.
    return {"model": "default", "messages": [{"role": "user", "content": content}], **params}


llama_timeout = pytest.mark.timeout(180)


@llama_timeout
async def test_llama_chat_returns_completion_with_real_usage(
    llama: OpenAICompatProvider, llama_server: LlamaServer
) -> None:
    result = await llama.chat(ask("Say hello.", max_tokens=8, temperature=0), llama_server.model)

    body = result.body
    assert body["object"] == "chat.completion"
    assert body["model"] == llama_server.model  # llama.cpp echoes the model it was sent
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    # The chat template wraps the prompt, so the upstream's count exceeds the words sent.
    assert usage["prompt_tokens"] > 5
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (result.prompt_tokens, result.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


@llama_timeout
async def test_llama_honours_max_tokens(
    llama: OpenAICompatProvider, llama_server: LlamaServer
) -> None:
    result = await llama.chat(
        ask("Write a long story about a dragon.", max_tokens=3, temperature=0), llama_server.model
    )
    assert result.completion_tokens == 3
    assert result.body["choices"][0]["finish_reason"] == "length"


@llama_timeout
async def test_llama_honours_stop(llama: OpenAICompatProvider, llama_server: LlamaServer) -> None:
    prompt = "Count from 1 to 30, separated by commas."
    free = await llama.chat(ask(prompt, max_tokens=24, temperature=0), llama_server.model)
    text = free.body["choices"][0]["message"]["content"]
    assert len(text) >= 8, f"the model said too little to test stop: {text!r}"
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    expected = text[: text.index(stop)]

    stopped = await llama.chat(
        ask(prompt, max_tokens=24, temperature=0, stop=[stop]), llama_server.model
    )
    choice = stopped.body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == expected
    assert stopped.completion_tokens < free.completion_tokens


@llama_timeout
async def test_llama_honours_temperature_and_seed(
    llama: OpenAICompatProvider, llama_server: LlamaServer
) -> None:
    prompt = "Invent a name for a new color."

    async def say(**params: Any) -> str:
        result = await llama.chat(ask(prompt, max_tokens=8, **params), llama_server.model)
        return str(result.body["choices"][0]["message"]["content"])

    # Greedy decoding is deterministic.
    assert await say(temperature=0) == await say(temperature=0)
    # Hot sampling varies with the seed, and one seed reproduces its sample.
    by_seed = {seed: await say(temperature=1.5, seed=seed) for seed in (11, 22, 33)}
    assert len(set(by_seed.values())) > 1, by_seed
    assert await say(temperature=1.5, seed=22) == by_seed[22]


@llama_timeout
async def test_llama_stream_yields_chunks_and_ends_with_usage(
    llama: OpenAICompatProvider, llama_server: LlamaServer
) -> None:
    body = ask("Write a long story about a dragon.", max_tokens=6, temperature=0, stream=True)
    chunks = await collect(llama, body, llama_server.model)

    assert len(chunks) >= 3
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == llama_server.model for c in chunks)
    *content, last = chunks
    assert all(c["choices"] and not c.get("usage") for c in content)
    assert text_of(content).strip()
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    # The accounting chunk the gateway relies on: exactly one, last, no choices.
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["prompt_tokens"] > 0
    # llama.cpp streams one token per chunk, so the count is exact here.
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert last["id"] == content[0]["id"]


@llama_timeout
async def test_llama_server_ignores_stream_options(llama_server: LlamaServer) -> None:
    """Canary for the provider's usage fallback: llama-cpp-python's server drops
    ``stream_options.include_usage`` and never sends a usage chunk. If this starts
    failing, the upstream now reports real stream usage (and the fallback is idle)."""
    payload = ask("Hi", model=llama_server.model, max_tokens=3, stream=True)
    payload["stream_options"] = {"include_usage": True}
    headers = {"authorization": f"Bearer {llama_server.api_key}"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            llama_server.base_url + "/chat/completions", json=payload, headers=headers
        ) as resp,
    ):
        assert resp.status == 200
        raw = await resp.read()
    events = [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks and all(c["choices"] for c in chunks)
    assert not any(c.get("usage") for c in chunks)


@llama_timeout
async def test_llama_context_length_exceeded(
    llama: OpenAICompatProvider, llama_server: LlamaServer
) -> None:
    with pytest.raises(ContextLengthExceeded) as info:
        await llama.chat(ask("hello " * 3000, max_tokens=3), llama_server.model)
    err = info.value
    assert (err.status, err.code) == (400, "context_length_exceeded")
    assert "'llama'" in err.message
    assert "maximum context length" in err.message


@llama_timeout
async def test_llama_rejects_a_wrong_key(
    llama_server: LlamaServer, make: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-key-" + "x" * 12
    monkeypatch.setenv(LLAMA_KEY_VAR, wrong)
    provider = await make(llama_server.base_url, name="llama", api_key=f"env:{LLAMA_KEY_VAR}")
    with pytest.raises(ProviderAuthError) as info:
        await provider.chat(ask("Hi", max_tokens=2), llama_server.model)
    err = info.value
    assert (err.status, err.code) == (502, "upstream_authentication_failed")
    assert "'llama'" in err.message and "providers.llama.api_key" in err.message
    assert wrong not in err.message and llama_server.api_key not in err.message


@llama_timeout
async def test_llama_embeddings_are_per_token_and_rejected(
    llama: OpenAICompatProvider, llama_server: LlamaServer
) -> None:
    # SmolLM2 is a causal model without pooling: llama-cpp-python's server (even with
    # --embedding True) answers one vector per token, not one per input.
    with pytest.raises(ProviderError) as info:
        await llama.embed(["hello there big world", "hi"], llama_server.model)
    assert "unexpected shape" in info.value.message
    assert "'llama'" in info.value.message


# --------------------------------------------------------------------------- scripted upstream


def completion(content: str = "ok", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-up-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "up-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
        **extra,
    }


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {"role": "assistant"}
    return {
        "id": "chatcmpl-up-2",
        "object": "chat.completion.chunk",
        "created": 1700000001,
        "model": "up-model",
        "choices": [
            {"index": 0, "delta": delta if finish is None else {}, "finish_reason": finish}
        ],
    }


USAGE_CHUNK = {
    "id": "chatcmpl-up-2",
    "object": "chat.completion.chunk",
    "created": 1700000001,
    "model": "up-model",
    "choices": [],
    "usage": {"prompt_tokens": 17, "completion_tokens": 2, "total_tokens": 19},
}


async def echo_completion(request: web.Request) -> web.Response:
    """Answer a completion carrying the exact JSON the upstream received."""
    return web.json_response(completion(echo=orjson.loads(await request.read())))


def reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Callable[..., Any]:
    async def handler(request: web.Request) -> web.Response:
        if isinstance(body, bytes | str):
            return web.Response(status=status, body=body, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    return handler


@pytest.fixture
async def scripted(
    upstream: ScriptedUpstream, make: MakeProvider, monkeypatch: pytest.MonkeyPatch
) -> OpenAICompatProvider:
    monkeypatch.setenv(SCRIPTED_KEY_VAR, SCRIPTED_KEY)
    return await make(
        upstream.base_url + "/",  # a trailing slash must not double up in paths
        api_key=f"env:{SCRIPTED_KEY_VAR}",
        read_timeout_s=5,
        headers={"x-org": "acme"},
    )


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
}


def rich_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "client-alias",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": TOOLS,
        "tool_choice": "auto",
        "response_format": RESPONSE_FORMAT,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "vendor_extra": {"nested": [1, {"a": None}], "flag": True},
        **extra,
    }


async def test_chat_forwards_body_untouched_but_model(
    scripted: OpenAICompatProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = echo_completion
    body = rich_body(stream_options={"include_usage": True})
    original = copy.deepcopy(body)

    result = await scripted.chat(body, "up-model-7")

    received = result.body["echo"]
    expected = {k: v for k, v in original.items() if k != "stream_options"}
    assert received == {**expected, "model": "up-model-7", "stream": False}
    assert body == original  # the caller's request is not mutated
    assert (result.prompt_tokens, result.completion_tokens) == (11, 2)
    req = upstream.last
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.headers["authorization"] == f"Bearer {SCRIPTED_KEY}"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-org"] == "acme"


async def test_no_authorization_header_without_api_key(
    upstream: ScriptedUpstream, make: MakeProvider
) -> None:
    upstream.reply = echo_completion
    provider = await make(upstream.base_url)
    await provider.chat({"messages": [{"role": "user", "content": "hi"}]}, "m")
    assert "authorization" not in upstream.last.headers


async def test_api_key_from_file(
    upstream: ScriptedUpstream, make: MakeProvider, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    upstream.reply = echo_completion
    provider = await make(upstream.base_url, api_key=f"file:{key_file}")
    await provider.chat({"messages": [{"role": "user", "content": "hi"}]}, "m")
    assert upstream.last.headers["authorization"] == "Bearer sk-from-file"


async def test_stream_forwards_body_and_forces_include_usage(
    scripted: OpenAICompatProvider, upstream: ScriptedUpstream
) -> None:
    events = [chunk(), chunk("Hel"), chunk("lo"), chunk(finish="stop"), USAGE_CHUNK]
    upstream.reply = sse_reply(events)
    body = rich_body(stream=True, stream_options={"continuous_usage_stats": False})
    original = copy.deepcopy(body)

    chunks = await collect(scripted, body, "up-model-7")

    assert chunks == events  # upstream chunks pass through; its usage chunk is not duplicated
    received = upstream.last.json()
    assert received == {
        **original,
        "model": "up-model-7",
        "stream": True,
        "stream_options": {"continuous_usage_stats": False, "include_usage": True},
    }
    assert body == original
    assert upstream.last.headers["authorization"] == f"Bearer {SCRIPTED_KEY}"


@pytest.mark.parametrize("done", [True, False], ids=["with-done", "eof-without-done"])
async def test_stream_without_upstream_usage_ends_with_estimated_usage(
    scripted: OpenAICompatProvider, upstream: ScriptedUpstream, done: bool
) -> None:
    events = [chunk(), chunk("Hel"), chunk("lo"), chunk(" you"), chunk(finish="stop")]
    upstream.reply = sse_reply(events, done=done)
    body = {"messages": [{"role": "user", "content": "x" * 40}], "stream": True}

    chunks = await collect(scripted, body, "up-model-7")

    assert chunks[:-1] == events
    last = chunks[-1]
    assert last["choices"] == []
    assert (last["id"], last["object"], last["model"]) == (
        "chatcmpl-up-2",
        "chat.completion.chunk",
        "up-model",
    )
    # One content chunk is about one token; 40 characters are about 10 prompt tokens.
    assert last["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


async def test_embeddings_forward_and_order_by_index(
    scripted: OpenAICompatProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = reply(
        200,
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
                {"object": "embedding", "index": 0, "embedding": [1.0, 0.5]},
            ],
            "model": "embed-up",
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        },
    )
    result = await scripted.embed(["first", "second"], "embed-up")
    assert result.vectors == [[1.0, 0.5], [0.0, 1.0]]
    assert result.prompt_tokens == 5
    req = upstream.last
    assert req.path == "/v1/embeddings"
    assert req.json() == {"model": "embed-up", "input": ["first", "second"]}
    assert req.headers["authorization"] == f"Bearer {SCRIPTED_KEY}"


@pytest.mark.parametrize(
    "data",
    [
        [{"index": 0, "embedding": [1.0]}],  # one vector for two inputs
        [
            {"index": 0, "embedding": [[1.0], [2.0]]},
            {"index": 1, "embedding": [[1.0]]},
        ],  # per token
        [{"index": 0, "embedding": "AACAPw=="}, {"index": 1, "embedding": "AACAPw=="}],  # base64
        [{"index": 0}, {"index": 1}],
    ],
    ids=["too-few", "per-token", "base64", "missing"],
)
async def test_embeddings_in_an_unexpected_shape(
    scripted: OpenAICompatProvider, upstream: ScriptedUpstream, data: list[Any]
) -> None:
    upstream.reply = reply(200, {"object": "list", "data": data})
    with pytest.raises(ProviderError) as info:
        await scripted.embed(["a", "b"], "embed-up")
    assert type(info.value) is ProviderError
    assert "unexpected shape" in info.value.message


# (status, body, headers) -> (error class, HTTP status, code, text the message must contain)
ERROR_CASES: dict[
    str, tuple[int, Any, dict[str, str] | None, type[StrataError], int, str | None, str]
] = {
    "401": (
        401,
        {
            "error": {
                "message": f"Incorrect API key provided: {SCRIPTED_KEY}",
                "code": "invalid_api_key",
            }
        },
        None,
        ProviderAuthError,
        502,
        "upstream_authentication_failed",
        "providers.scripted.api_key",
    ),
    "403": (
        403,
        {"error": {"message": "forbidden"}},
        None,
        ProviderAuthError,
        502,
        "upstream_authentication_failed",
        "HTTP 403",
    ),
    "404": (
        404,
        {"error": {"message": "The model `up-model-7` does not exist", "code": "model_not_found"}},
        None,
        ProviderError,
        502,
        "upstream_model_not_found",
        "does not exist",
    ),
    "429": (
        429,
        {"error": {"message": "Rate limit reached", "type": "requests"}},
        {"Retry-After": "7"},
        ProviderRateLimited,
        429,
        "upstream_rate_limited",
        "Rate limit reached",
    ),
    "500": (500, {"error": {"message": "boom"}}, None, ProviderError, 502, None, "HTTP 500: boom"),
    "500-html": (
        500,
        b"<html>Internal Server Error</html>",
        None,
        ProviderError,
        502,
        None,
        "HTTP 500",
    ),
    "503": (
        503,
        {"error": {"message": "overloaded"}},
        None,
        ProviderUnavailable,
        503,
        "upstream_unavailable",
        "overloaded",
    ),
    "400-context": (
        400,
        {
            "error": {
                "message": "too long",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        },
        None,
        ContextLengthExceeded,
        400,
        "context_length_exceeded",
        "too long",
    ),
    "400-other": (
        400,
        {
            "error": {
                "message": "Invalid value for 'temperature': must be <= 2",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "invalid_value",
            }
        },
        None,
        InvalidRequest,
        400,
        None,
        "Invalid value for 'temperature': must be <= 2",
    ),
}


async def call(provider: OpenAICompatProvider, op: str) -> Any:
    messages = [{"role": "user", "content": "hi"}]
    if op == "chat":
        return await provider.chat({"messages": messages}, "up-model-7")
    if op == "stream":
        return await collect(provider, {"messages": messages, "stream": True}, "up-model-7")
    return await provider.embed(["hi"], "up-model-7")


@pytest.mark.parametrize("op", ["chat", "stream", "embed"])
@pytest.mark.parametrize("case", list(ERROR_CASES))
async def test_upstream_error_mapping(
    scripted: OpenAICompatProvider, upstream: ScriptedUpstream, case: str, op: str
) -> None:
    status, body, headers, cls, http_status, code, text = ERROR_CASES[case]
    upstream.reply = reply(status, body, headers)

    with pytest.raises(StrataError) as info:
        await call(scripted, op)

    err = info.value
    assert type(err) is cls
    assert (err.status, err.code) == (http_status, code)
    assert text in err.message
    assert SCRIPTED_KEY not in err.message and SCRIPTED_KEY not in str(err)
    if isinstance(err, ProviderError):
        assert err.provider == "scripted" and "provider 'scripted'" in err.message
    if case == "429":
        assert err.retry_after == 7.0
        assert err.headers() == {"retry-after": "7"}
    if case == "400-other":
        assert err.param == "temperature"


async def test_rate_limited_without_retry_after(
    scripted: OpenAICompatProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = reply(429, {"error": {"message": "slow down"}})
    with pytest.raises(ProviderRateLimited) as info:
        await call(scripted, "chat")
    assert info.value.retry_after is None
    assert info.value.headers() == {}


@pytest.mark.parametrize(
    "body", [b"<html>not json</html>", b"[1, 2, 3]", b""], ids=["html", "json-list", "empty"]
)
@pytest.mark.parametrize("op", ["chat", "embed"])
async def test_ok_status_with_a_bad_body(
    scripted: OpenAICompatProvider, upstream: ScriptedUpstream, body: bytes, op: str
) -> None:
    upstream.reply = reply(200, body)
    with pytest.raises(ProviderError) as info:
        await call(scripted, op)
    assert type(info.value) is ProviderError
    assert info.value.status == 502
    assert "'scripted'" in info.value.message


async def test_stream_with_a_non_json_event(
    scripted: OpenAICompatProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = sse_reply([chunk(), b"<html>oops</html>"])
    with pytest.raises(ProviderError, match="not JSON"):
        await call(scripted, "stream")


async def test_stream_error_event_mid_stream(
    scripted: OpenAICompatProvider, upstream: ScriptedUpstream
) -> None:
    error = {"error": {"message": f"model crashed (key {SCRIPTED_KEY})", "type": "server_error"}}
    upstream.reply = sse_reply([chunk(), chunk("Hel"), error, chunk("lo")])
    received: list[dict[str, Any]] = []

    with pytest.raises(StrataError) as info:
        async for item in scripted.stream({"messages": [], "stream": True}, "up-model-7"):
            received.append(item)

    assert received == [chunk(), chunk("Hel")]  # chunks before the error got through
    err = info.value
    assert isinstance(err, ProviderError) and err.provider == "scripted"
    assert "model crashed" in err.message
    assert SCRIPTED_KEY not in err.message


def stalled(seconds: float) -> Callable[..., Any]:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.json_response(completion())

    return handler


@pytest.mark.parametrize("op", ["chat", "stream", "embed"])
async def test_read_timeout(upstream: ScriptedUpstream, make: MakeProvider, op: str) -> None:
    upstream.reply = stalled(10)
    provider = await make(upstream.base_url, read_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as info:
        await call(provider, op)
    assert time.monotonic() - started < 3
    assert (info.value.status, info.value.code) == (504, "upstream_timeout")
    assert "'scripted'" in info.value.message


async def test_read_timeout_mid_stream(upstream: ScriptedUpstream, make: MakeProvider) -> None:
    upstream.reply = sse_reply([chunk(), chunk("Hel"), 10.0, chunk("lo")])
    provider = await make(upstream.base_url, read_timeout_s=0.3)
    received: list[dict[str, Any]] = []
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        async for item in provider.stream({"messages": [], "stream": True}, "m"):
            received.append(item)
    assert time.monotonic() - started < 3
    assert received == [chunk(), chunk("Hel")]


@pytest.mark.parametrize("op", ["chat", "stream", "embed"])
async def test_connection_refused(make: MakeProvider, op: str) -> None:
    provider = await make(f"http://127.0.0.1:{free_port()}/v1", connect_timeout_s=2)
    with pytest.raises(ProviderUnavailable) as info:
        await call(provider, op)
    assert (info.value.status, info.value.code) == (503, "upstream_unavailable")
    assert "'scripted'" in info.value.message


async def test_not_started(settings: Settings) -> None:
    provider = new_provider("scripted", settings, base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ProviderUnavailable, match="not started"):
        await provider.chat({"messages": []}, "m")
    await provider.close()  # closing a provider that never started is harmless


# --------------------------------------------------------------------------- configuration


def test_missing_env_var_fails_construction(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRATA_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        new_provider(
            "together",
            settings,
            base_url="http://127.0.0.1:9/v1",
            api_key="env:STRATA_TEST_NO_SUCH_KEY",
        )
    message = info.value.message
    assert "providers.together.api_key" in message
    assert "STRATA_TEST_NO_SUCH_KEY" in message
    assert "export STRATA_TEST_NO_SUCH_KEY=" in message


def test_literal_api_key_is_refused(settings: Settings) -> None:
    with pytest.raises(ConfigError) as info:
        new_provider("openai", settings, base_url="http://127.0.0.1:9/v1", api_key="sk-literal-123")
    assert "env:NAME" in info.value.message
    assert "sk-literal-123" not in info.value.message


def test_unknown_option_is_a_config_error(settings: Settings) -> None:
    with pytest.raises(ConfigError) as info:
        new_provider("openai", settings, base_url="http://127.0.0.1:9/v1", read_timout_s=3)
    assert "providers.openai" in info.value.message
    assert "read_timout_s" in info.value.message
