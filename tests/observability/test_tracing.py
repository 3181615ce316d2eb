"""OpenTelemetry tracing through real servers: the span tree, gen_ai attributes,
streams, failures, traceparent in and out, OTLP/HTTP export, sampling, and off."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from strata.observability import tracing
from strata.observability.config import TracingSettings
from strata.settings import Settings
from tests.conftest import TEST_CONFIG, ServerThread, free_port, usage_rows
from tests.upstreams import ScriptedUpstream, sse_reply

MSG = [{"role": "user", "content": "trace me"}]
CHILDREN = {"auth", "routing", "limits", "cache.lookup"}


@dataclass
class Receiver:
    """A minimal OTLP/HTTP collector on loopback (its own thread and loop)."""

    port: int = 0
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        out = []
        for req in list(self.requests):
            for rs in req.resource_spans:
                res = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out.extend((res, s) for s in ss.spans)
        return out


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver(port=free_port())
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def traces(request: web.Request) -> web.Response:
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(await request.read())
        rec.requests.append(msg)
        rec.content_types.append(request.headers.get("content-type", ""))
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", rec.port).start()
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield rec
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def traced_config(endpoint: str, **tracing_overrides: Any) -> dict[str, Any]:
    return {
        "observability": {"tracing": {"endpoint": endpoint, **tracing_overrides}},
        "providers": {
            **TEST_CONFIG["providers"],
            "fake-trickle": {"type": "fake", "reply": "one two three", "chunk_delay_s": 0.1},
            # Like fake-down, with a circuit breaker no other test module trips.
            "trace-down": {"type": "fake", "error_status": 503},
        },
        "models": {
            **TEST_CONFIG["models"],
            "fake-trickle": {"provider": "fake-trickle", "model": "trickle-1"},
            "trace-down": {"provider": "trace-down", "model": "down-1"},
        },
    }


@dataclass
class Traced:
    server: ServerThread
    spans: InMemorySpanExporter


def start_traced(settings_factory: Callable[..., Settings], config: dict[str, Any]) -> Traced:
    srv = ServerThread(settings_factory(**config)).start()
    exporter = InMemorySpanExporter()
    srv.runtime.tracing.add_exporter(exporter)
    return Traced(srv, exporter)


# These servers stop before the receiver does (their last export has somewhere to go).
@pytest.fixture(scope="module")
def traced(settings_factory: Callable[..., Settings], receiver: Receiver) -> Iterator[Traced]:
    t = start_traced(settings_factory, traced_config(receiver.endpoint))
    yield t
    t.server.stop()


@pytest.fixture
def start_traced_server(
    settings_factory: Callable[..., Settings], receiver: Receiver
) -> Iterator[Callable[..., Traced]]:
    started: list[Traced] = []

    def start(config: dict[str, Any]) -> Traced:
        started.append(start_traced(settings_factory, config))
        return started[-1]

    yield start
    for t in started:
        t.server.stop()


def wait_for(
    exporter: InMemorySpanExporter, pred: Callable[[ReadableSpan], bool], wait_s: float = 10
) -> ReadableSpan:
    deadline = time.monotonic() + wait_s
    while True:
        for s in exporter.get_finished_spans():
            if pred(s):
                return s
        if time.monotonic() > deadline:
            names = [s.name for s in exporter.get_finished_spans()]
            raise AssertionError(f"no matching span; finished: {names}")
        time.sleep(0.02)


def server_span(exporter: InMemorySpanExporter, request_id: str) -> ReadableSpan:
    return wait_for(
        exporter,
        lambda s: s.kind == SpanKind.SERVER and s.attributes.get("strata.request_id") == request_id,
    )


def trace_of(exporter: InMemorySpanExporter, root: ReadableSpan) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.context.trace_id == root.context.trace_id and s is not root
    ]


def rid() -> str:
    return "trace-" + os.urandom(6).hex()


async def test_chat_span_tree_attributes_and_usage_trace_id(
    traced: Traced, api_key: Any, sdk: Any, database_url: str
) -> None:
    client: openai.OpenAI = sdk(traced.server, api_key.key)
    r = rid()
    await asyncio.to_thread(
        client.chat.completions.create,
        model="fake",
        messages=[{"role": "user", "content": f"span tree {r}"}],
        extra_headers={"x-request-id": r},
    )
    root = server_span(traced.spans, r)
    assert root.name == "POST /v1/chat/completions"
    assert root.parent is None
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.route"] == "/v1/chat/completions"
    assert root.attributes["http.response.status_code"] == 200
    assert root.status.status_code != StatusCode.ERROR

    children = trace_of(traced.spans, root)
    assert all(c.parent is not None and c.parent.span_id == root.context.span_id for c in children)
    names = {c.name for c in children}
    assert names >= CHILDREN | {"chat fake-1"}, names
    order = [c.name for c in sorted(children, key=lambda c: c.start_time or 0)]
    assert order == ["auth", "routing", "limits", "cache.lookup", "chat fake-1"]

    (attempt,) = [c for c in children if c.name == "chat fake-1"]
    a = attempt.attributes
    assert attempt.kind == SpanKind.CLIENT
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "fake"
    assert a["gen_ai.request.model"] == "fake-1"
    assert a["gen_ai.response.model"] == "fake-1"
    assert a["gen_ai.usage.input_tokens"] == 3  # whitespace words of the prompt
    assert a["gen_ai.usage.output_tokens"] == 9  # words of the fake's reply
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)

    (row,) = await usage_rows(database_url, r)
    assert row.trace_id == format(root.context.trace_id, "032x")
    cache = next(c for c in children if c.name == "cache.lookup")
    assert cache.attributes["strata.cache"] == row.cache

    # The batched usage write is a span too, in a trace of its own.
    write = wait_for(traced.spans, lambda s: s.name == "usage.write")
    assert write.parent is None and write.attributes["strata.usage.rows"] >= 1


async def test_stream_attempt_span_lasts_until_the_stream_ends(
    traced: Traced, api_key: Any, sdk: Any
) -> None:
    client: openai.OpenAI = sdk(traced.server, api_key.key)
    r = rid()

    def consume() -> tuple[list[Any], float]:
        stream = client.chat.completions.create(
            model="fake-trickle",
            messages=[{"role": "user", "content": f"stream {r}"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": r},
        )
        chunks = [next(stream)]
        first_ns = time.time_ns()
        chunks += list(stream)
        return chunks, first_ns

    chunks, first_ns = await asyncio.to_thread(consume)
    assert chunks[-1].usage is not None
    root = server_span(traced.spans, r)
    (attempt,) = [s for s in trace_of(traced.spans, root) if s.name == "chat trickle-1"]
    assert attempt.start_time is not None and attempt.end_time is not None
    # Three chunks 0.1 s apart: the span covers the stream, not just its first chunk.
    assert attempt.end_time - attempt.start_time >= 0.2e9
    assert attempt.end_time > first_ns + 0.15e9  # well after the client had a chunk
    assert root.end_time is not None and attempt.end_time <= root.end_time
    a = attempt.attributes
    assert a["strata.status"] == "ok"
    assert a["gen_ai.usage.output_tokens"] == 3
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("stop",)


async def test_failing_deployment_gives_error_attempt_spans(
    traced: Traced, api_key: Any, sdk: Any
) -> None:
    client: openai.OpenAI = sdk(traced.server, api_key.key)
    r = rid()
    with pytest.raises(openai.APIStatusError) as info:
        await asyncio.to_thread(
            client.chat.completions.create,
            model="trace-down",
            messages=MSG,
            extra_headers={"x-request-id": r},
        )
    assert info.value.status_code == 503
    root = server_span(traced.spans, r)
    assert root.attributes["http.response.status_code"] == 503
    assert root.status.status_code == StatusCode.ERROR
    attempts = [s for s in trace_of(traced.spans, root) if s.name == "chat down-1"]
    assert attempts
    for s in attempts:
        assert s.status.status_code == StatusCode.ERROR
        assert s.attributes["error.type"] == "ProviderUnavailable"
        assert any(e.name == "exception" for e in s.events)


async def test_incoming_traceparent_is_the_parent(traced: Traced, api_key: Any, sdk: Any) -> None:
    client: openai.OpenAI = sdk(traced.server, api_key.key)
    r = rid()
    trace_id, parent_id = os.urandom(16).hex(), os.urandom(8).hex()
    await asyncio.to_thread(
        client.chat.completions.create,
        model="fake",
        messages=[{"role": "user", "content": f"parent {r}"}],
        extra_headers={"x-request-id": r, "traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    root = server_span(traced.spans, r)
    assert format(root.context.trace_id, "032x") == trace_id
    assert root.parent is not None and root.parent.is_remote
    assert format(root.parent.span_id, "016x") == parent_id


async def test_outgoing_provider_call_carries_traceparent(
    start_traced_server: Callable[..., Traced],
    receiver: Receiver,
    upstream: ScriptedUpstream,
    api_key: Any,
    sdk: Any,
) -> None:
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-1",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
    }
    usage = {**chunk, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
    upstream.reply = sse_reply([chunk, usage])
    config = traced_config(receiver.endpoint)
    config["providers"]["up"] = {"type": "openai_compat", "base_url": upstream.base_url}
    config["models"]["up"] = {"provider": "up", "model": "up-1", "cache": {"enabled": False}}
    t = start_traced_server(config)
    srv, exporter = t.server, t.spans
    client: openai.OpenAI = sdk(srv, api_key.key)
    r = rid()
    chunks = await asyncio.to_thread(
        lambda: list(
            client.chat.completions.create(
                model="up", messages=MSG, stream=True, extra_headers={"x-request-id": r}
            )
        )
    )
    assert chunks
    root = server_span(exporter, r)
    (attempt,) = [s for s in trace_of(exporter, root) if s.name == "chat up-1"]
    version, trace_id, parent_id, flags = upstream.last.headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert trace_id == format(root.context.trace_id, "032x")
    assert parent_id == format(attempt.context.span_id, "016x")
    assert attempt.attributes["gen_ai.provider.name"] == "up"
    assert attempt.attributes["gen_ai.usage.input_tokens"] == 4


async def test_spans_reach_a_real_otlp_http_receiver(
    traced: Traced, receiver: Receiver, api_key: Any, sdk: Any
) -> None:
    client: openai.OpenAI = sdk(traced.server, api_key.key)
    r = rid()
    await asyncio.to_thread(
        client.chat.completions.create,
        model="fake",
        messages=[{"role": "user", "content": f"otlp {r}"}],
        extra_headers={"x-request-id": r},
    )
    root = server_span(traced.spans, r)
    assert await traced.server.acall(traced.server.runtime.tracing.flush())
    trace_id = root.context.trace_id.to_bytes(16, "big")
    deadline = time.monotonic() + 10
    while True:
        got = [(res, s) for res, s in receiver.spans() if s.trace_id == trace_id]
        if len(got) >= 6 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    names = {s.name for _, s in got}
    assert names >= CHILDREN | {"POST /v1/chat/completions", "chat fake-1"}, names
    assert all(res["service.name"] == "strata" for res, _ in got)
    assert set(receiver.content_types) == {"application/x-protobuf"}
    attempt = next(s for _, s in got if s.name == "chat fake-1")
    attrs = {a.key: a.value for a in attempt.attributes}
    assert attrs["gen_ai.usage.output_tokens"].int_value == 9


async def test_sample_rate_zero_records_no_spans(
    start_traced_server: Callable[..., Traced],
    receiver: Receiver,
    api_key: Any,
    sdk: Any,
    database_url: str,
) -> None:
    t = start_traced_server(traced_config(receiver.endpoint, sample_rate=0))
    srv, exporter = t.server, t.spans
    client: openai.OpenAI = sdk(srv, api_key.key)
    r = rid()
    await asyncio.to_thread(
        client.chat.completions.create,
        model="fake",
        messages=[{"role": "user", "content": f"unsampled {r}"}],
        extra_headers={"x-request-id": r},
    )
    (row,) = await usage_rows(database_url, r)
    assert await srv.acall(srv.runtime.tracing.flush())
    assert exporter.get_finished_spans() == ()
    # The trace context still exists (for traceparent and correlation).
    assert row.trace_id is not None and len(row.trace_id) == 32


async def test_no_endpoint_means_no_tracing(
    server: ServerThread, client: openai.OpenAI, database_url: str
) -> None:
    assert os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") is None
    assert server.runtime.tracing is None
    handler = server.app.fast_routes[("POST", "/v1/chat/completions")]
    assert not isinstance(handler, tracing.ServerSpans)
    assert not tracing.configured(TracingSettings())
    r = rid()
    await asyncio.to_thread(
        client.chat.completions.create,
        model="fake",
        messages=MSG,
        extra_headers={"x-request-id": r},
    )
    (row,) = await usage_rows(database_url, r)
    assert row.trace_id is None


def test_span_points_are_no_ops_without_a_traced_request() -> None:
    with tracing.span("auth") as s:
        assert s is None
    with tracing.root_span(None, "usage.write") as s:
        assert s is None

    async def attempt(target: Any, call: Any, deadline: float) -> None:
        return None

    assert tracing.traced_attempts(attempt, "chat") is attempt


def test_traces_url_follows_the_otlp_convention(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracing.traces_url("http://jaeger:4318") == "http://jaeger:4318/v1/traces"
    assert tracing.traces_url("http://jaeger:4318/") == "http://jaeger:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert tracing.endpoint_of(TracingSettings()) == "http://collector:4318"
    assert tracing.endpoint_of(TracingSettings(endpoint="http://x:1")) == "http://x:1"
