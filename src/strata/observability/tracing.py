"""OpenTelemetry traces: one trace per request, exported over OTLP/HTTP.

On when ``observability.tracing.endpoint`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set. Each ``Runtime`` holds its own ``TracerProvider`` (never the global one: a
process may run several servers, tests do), sampled parent-based at
``sample_rate``, exporting in batches from a background thread.

Spans: the server span (``ServerSpans``, outermost ASGI layer; an incoming W3C
``traceparent`` is its parent) with children ``auth``, ``routing``, ``limits``,
``cache.lookup`` and one CLIENT span per provider attempt (``chat <model>`` /
``embeddings <model>``, ``gen_ai.*`` attributes; a stream's attempt span ends
when the stream does). Outgoing provider requests carry ``traceparent``. Usage
rows carry the trace id; their batched write is a ``usage.write`` span in a trace
of its own (one write serves many requests).

Off costs nothing measurable: no provider is built, ``ServerSpans`` is not
installed, and every instrumentation point is one context-variable read that
finds no tracer. A request the sampler drops keeps its trace context (for
``traceparent`` and the usage row) but makes no child spans.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from strata.observability.config import TracingSettings

T = TypeVar("T")
Scope = dict[str, Any]

# The tracer of the request being served, when its trace is sampled; None otherwise
# (tracing off, or dropped by the sampler): then every span point is a no-op.
_tracer: ContextVar[Tracer | None] = ContextVar("strata_tracer", default=None)
# Set once any Tracing is built in this process: until then trace-id look-ups and
# traceparent injection skip the OpenTelemetry context entirely.
_enabled = False
_propagator = TraceContextTextMapPropagator()
# Probes and scrapes: no server span (they would drown the traces that matter).
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def endpoint_of(s: TracingSettings) -> str | None:
    # The standard OpenTelemetry variable, read here like the exporter itself would.
    return s.endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def configured(s: TracingSettings) -> bool:
    return endpoint_of(s) is not None


def traces_url(endpoint: str) -> str:
    """The OTLP base endpoint (as in OTEL_EXPORTER_OTLP_ENDPOINT) plus /v1/traces."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Tracing:
    """One server's tracer provider; ``add_exporter`` adds a destination (tests
    add an InMemorySpanExporter)."""

    def __init__(self, provider: TracerProvider) -> None:
        global _enabled
        _enabled = True
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("strata")

    @classmethod
    def from_settings(cls, s: TracingSettings) -> Tracing | None:
        endpoint = endpoint_of(s)
        if endpoint is None:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(s.sample_rate)),
            resource=Resource.create({"service.name": s.service_name}),
            # Runtime.stop shuts it down; an atexit hook per server would pin each one.
            shutdown_on_exit=False,
        )
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(traces_url(endpoint))))
        return cls(provider)

    def add_exporter(self, exporter: SpanExporter, *, batch: bool = False) -> SpanProcessor:
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        return processor

    async def flush(self, timeout_s: float = 10.0) -> bool:
        return await asyncio.to_thread(self.provider.force_flush, int(timeout_s * 1000))

    async def shutdown(self) -> None:
        # Exports what is queued (blocking HTTP): off the event loop.
        await asyncio.to_thread(self.provider.shutdown)


class _NoSpan:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def span(
    name: str, attributes: dict[str, Any] | None = None
) -> AbstractContextManager[Span | None]:
    """A child span of the current request's span, or a no-op yielding None."""
    tracer = _tracer.get()
    if tracer is None:
        return _NO_SPAN
    return cast(
        AbstractContextManager[Span | None],
        tracer.start_as_current_span(name, attributes=attributes),
    )


def root_span(
    tracer: Tracer | None, name: str, attributes: dict[str, Any] | None = None
) -> AbstractContextManager[Span | None]:
    """A span that starts a trace of its own (background work), or a no-op."""
    if tracer is None:
        return _NO_SPAN
    return cast(
        AbstractContextManager[Span | None],
        tracer.start_as_current_span(name, context=otel_context.Context(), attributes=attributes),
    )


def current_trace_id() -> str | None:
    """The current trace's id as 32 hex digits (sampled or not), or None."""
    if not _enabled:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def outgoing_headers() -> dict[str, str] | None:
    """``traceparent`` (and ``tracestate``) for an outgoing request, or None."""
    if not _enabled:
        return None
    # W3C trace context written directly: the propagator's inject costs several
    # times more, on every upstream call.
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    out = {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"}
    if ctx.trace_state:
        out["tracestate"] = ctx.trace_state.to_header()
    return out


def fail(span: Span, exc: BaseException) -> None:
    name = type(exc).__name__
    span.set_attribute("error.type", name)
    span.set_status(Status(StatusCode.ERROR, name))
    span.record_exception(exc)


Attempt = Callable[[Any, Any, float], Awaitable[T]]


def traced_attempts(attempt: Attempt[T], kind: str) -> Attempt[T]:
    """Wrap the dispatcher's ``_attempt(target, call, deadline)`` in a CLIENT span
    per attempt; unchanged when the request is not traced."""
    tracer = _tracer.get()
    if tracer is None:
        return attempt
    operation = "chat" if kind == "chat" else "embeddings"

    async def traced(target: Any, call: Any, deadline: float) -> T:
        s = tracer.start_span(
            f"{operation} {target.model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": target.provider.name,
                "gen_ai.request.model": target.model,
                "strata.alias": target.alias,
                "strata.deployment": target.label,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(s))
        try:
            result = await attempt(target, call, deadline)
        except BaseException as exc:
            fail(s, exc)
            s.end()
            raise
        finally:
            otel_context.detach(token)
        adopt = getattr(result, "adopt_span", None)
        if adopt is not None:
            adopt(s)  # a stream: its span ends with it (see end_stream)
            return result
        _result_attributes(s, result)
        s.end()
        return result

    return traced


def _result_attributes(s: Span, result: Any) -> None:
    body = getattr(result, "body", None)
    if isinstance(body, dict):  # ChatResult
        if body.get("model"):
            s.set_attribute("gen_ai.response.model", str(body["model"]))
        reasons = [str(c.get("finish_reason")) for c in body.get("choices") or () if c]
        if reasons:
            s.set_attribute("gen_ai.response.finish_reasons", reasons)
    prompt = getattr(result, "prompt_tokens", None)
    if prompt is not None:
        s.set_attribute("gen_ai.usage.input_tokens", int(prompt))
    completion = getattr(result, "completion_tokens", None)
    if completion is not None:
        s.set_attribute("gen_ai.usage.output_tokens", int(completion))


def end_stream(s: Span, event: Any, model: str | None, finish_reasons: list[str]) -> None:
    """End a stream's attempt span from its usage event (status, tokens)."""
    if model:
        s.set_attribute("gen_ai.response.model", model)
    if finish_reasons:
        s.set_attribute("gen_ai.response.finish_reasons", finish_reasons)
    s.set_attribute("gen_ai.usage.input_tokens", event.prompt_tokens)
    s.set_attribute("gen_ai.usage.output_tokens", event.completion_tokens)
    s.set_attribute("strata.status", event.status)
    if event.status == "error":
        name = event.error_type or "error"
        s.set_attribute("error.type", name)
        s.set_status(Status(StatusCode.ERROR, name))
    s.end()


class ServerSpans:
    """Outermost ASGI layer: one SERVER span per HTTP request, the parent from an
    incoming ``traceparent``; installed only when tracing is configured."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], owner: Any, route: str | None = None
    ) -> None:
        self.app = app
        self.owner = owner  # the FastAPI app: its state.runtime holds the Tracing
        # A fast-lane endpoint's path; FastAPI routes are named once matched.
        self.route = route

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        tracing: Tracing | None = None
        if scope["type"] == "http" and scope["path"] not in UNTRACED_PATHS:
            runtime = getattr(self.owner.state, "runtime", None)
            tracing = getattr(runtime, "tracing", None)
        if tracing is None:
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == b"traceparent" or name == b"tracestate":
                carrier[name.decode()] = value.decode("latin-1")
        parent = _propagator.extract(carrier) if carrier else otel_context.Context()
        method = scope["method"]
        attributes = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
        }
        if self.route is not None:
            attributes["http.route"] = self.route
        s = tracing.tracer.start_span(
            f"{method} {self.route}" if self.route is not None else method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        recording = s.is_recording()
        token = otel_context.attach(trace.set_span_in_context(s, parent))
        tracer_token = _tracer.set(tracing.tracer if recording else None)
        status = 0

        async def send_traced(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if recording:
                    for name, value in message.get("headers", ()):
                        if name == b"x-request-id":
                            s.set_attribute("strata.request_id", value.decode("latin-1"))
            await send(message)

        try:
            # An unsampled request keeps its context (trace id on the usage record,
            # traceparent upstream) but skips the per-message wrapper.
            await self.app(scope, receive, send_traced if recording else send)
        except BaseException as exc:
            fail(s, exc)
            raise
        finally:
            _tracer.reset(tracer_token)
            otel_context.detach(token)
            if recording:
                route = getattr(scope.get("route"), "path", None)
                if self.route is None and route is not None:
                    s.set_attribute("http.route", route)
                    s.update_name(f"{method} {route}")
                if status:
                    s.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        s.set_status(Status(StatusCode.ERROR))
            s.end()
