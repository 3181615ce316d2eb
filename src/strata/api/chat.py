"""POST /v1/chat/completions (a fast-lane endpoint; see api/fast.py)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson

from strata.api.fast import header, read_json, send_json
from strata.api.sse import SSEResponse
from strata.errors import StrataError
from strata.gateway.chat import Controls
from strata.gateway.schemas import ChatRequest, validate
from strata.observability import sentry
from strata.observability.logging import (
    completion_text,
    log_prompt_sample,
    messages_text,
    request_fields,
    request_id_var,
)
from strata.runtime import Runtime
from strata.security.auth import client_host

PATH = "/v1/chat/completions"


async def chat_completions(scope: dict[str, Any], receive: Any, send: Any) -> None:
    rt: Runtime = scope["app"].state.runtime
    principal = await rt.auth.authenticate(header(scope, b"authorization"))
    principal.authorize("chat", client_host(scope))
    fields = request_fields()
    fields["tenant"] = principal.tenant_id
    meter = rt.meter(principal, request_id_var.get() or "", "chat")
    try:
        body = await read_json(receive)
        validate(ChatRequest, body)
        fields["alias"] = body["model"]
        principal.check_model(body["model"])
        controls = Controls(
            header(scope, b"x-strata-tier"),
            header(scope, b"x-strata-cache"),
            header(scope, b"cache-control"),
        )
        if body.get("stream"):
            meter.event.stream = True
            stream = await rt.chat.open_stream(body, meter, controls)
        else:
            out = await rt.chat.complete(body, meter, controls)
    except asyncio.CancelledError:
        meter.cancelled()
        raise
    except Exception as exc:
        meter.failed(exc)
        sentry.report_failure(exc, meter.event.provider)
        if isinstance(exc, StrataError) and meter.admission is not None:
            exc.extra_headers = meter.quota_headers()  # x-ratelimit-* on errors too
        raise
    if meter.event.provider:
        fields["provider"] = meter.event.provider
    sampled = _sampled(rt, body["model"])
    if body.get("stream"):
        # The stream owns the meter and settles it when it ends, however it ends.
        if sampled:
            await _stream_sampled(
                rt, body, SSEResponse(stream, meter.headers()), scope, receive, send
            )
        else:
            await SSEResponse(stream, meter.headers())(scope, receive, send)
        if meter.event.status == "error":
            sentry.capture_stream_failure(meter.event.error_type or "", meter.event.status_code)
        return
    meter.ok()
    await send_json(send, out, extra=meter.headers())
    if sampled:
        log_prompt_sample(
            rt.settings.observability.logs,
            body["model"],
            messages_text(body["messages"]),
            completion_text(out),
        )


def _sampled(rt: Runtime, alias: str) -> bool:
    """Prompt sampling to the logs: per alias, off by default (no random draw then)."""
    spec = rt.settings.models.get(alias)
    if spec is None:
        return False
    rate = spec.logs.sample_rate
    return rate > 0 and (rate >= 1 or random.random() < rate)


async def _stream_sampled(
    rt: Runtime, body: dict[str, Any], response: SSEResponse, scope: Any, receive: Any, send: Any
) -> None:
    """Send the stream while collecting its text deltas, then log the sample."""
    text: list[str] = []

    async def tap(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            _collect_deltas(message.get("body", b""), text)
        await send(message)

    try:
        await response(scope, receive, tap)
    finally:
        log_prompt_sample(
            rt.settings.observability.logs,
            body["model"],
            messages_text(body["messages"]),
            "".join(text),
        )


def _collect_deltas(data: bytes, out: list[str]) -> None:
    for line in data.split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        try:
            chunk = orjson.loads(line[6:])
        except orjson.JSONDecodeError:
            continue
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    out.append(content)
