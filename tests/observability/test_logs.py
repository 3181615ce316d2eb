"""JSON log lines: request id, tenant, alias, status and latency through plain and
streamed requests; prompt sampling with PII redaction; the redaction patterns."""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from strata.observability.config import LogsSettings
from strata.observability.logging import (
    JsonFormatter,
    log_prompt_sample,
    messages_text,
    request_context,
    request_id_var,
)
from strata.observability.redact import luhn_ok, redact
from strata.providers.fake import FakeOptions
from tests.conftest import TEST_CONFIG, ServerThread

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"  # the Visa test number (passes Luhn)
KEY = "sk-strata-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
REPLY = FakeOptions.model_fields["reply"].default


class Capture:
    """The root logger's output through JsonFormatter, parsed per line."""

    def __init__(self) -> None:
        self.buf = io.StringIO()
        self.handler = logging.StreamHandler(self.buf)
        self.handler.setFormatter(JsonFormatter())

    def lines(self) -> list[dict[str, Any]]:
        with self.handler.lock:  # type: ignore[union-attr]
            text = self.buf.getvalue()
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]

    def wait(
        self, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """Lines matching pred, once there is one (the access line is written after
        the response has gone out)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [line for line in self.lines() if pred(line)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


@pytest.fixture
def logs() -> Iterator[Capture]:
    cap = Capture()
    root, strata = logging.getLogger(), logging.getLogger("strata")
    old = strata.level
    strata.setLevel(logging.INFO)
    root.addHandler(cap.handler)
    yield cap
    root.removeHandler(cap.handler)
    strata.setLevel(old)


@pytest.fixture(scope="module")
def log_server(start_server: Callable[..., ServerThread]) -> ServerThread:
    models = {
        **TEST_CONFIG["models"],
        "fake-log": {"provider": "fake", "model": "fake-1", "logs": {"sample_rate": 1.0}},
        "fake-nolog": {"provider": "fake", "model": "fake-1", "logs": {"sample_rate": 0.0}},
        "fake-embed": {"kind": "embedding", "provider": "fake", "model": "fake-e"},
        "logs-down": {"provider": "logs-down", "model": "down-1"},
    }
    # A failing deployment of its own: the circuit breakers live in the shared Redis,
    # and failures here must not open the breaker of another module's fake-down.
    providers = {**TEST_CONFIG["providers"], "logs-down": {"type": "fake", "error_status": 503}}
    return start_server(models=models, providers=providers)


@pytest.fixture
def client(
    log_server: ServerThread,
    new_key: Callable[..., Any],
    sdk: Callable[[ServerThread, str], openai.OpenAI],
) -> openai.OpenAI:
    return sdk(log_server, new_key(tenant="logs-tenant").key)


def _rid() -> str:
    return "log-" + uuid.uuid4().hex


def _access(logs: Capture, rid: str) -> dict[str, Any]:
    found = logs.wait(lambda x: x.get("request_id") == rid and x["logger"] == "strata.access")
    assert len(found) == 1, logs.lines()
    return found[0]


def _uncached(text: str) -> list[dict[str, Any]]:
    # A unique prompt: the exact cache never answers it.
    return [{"role": "user", "content": f"{text} ({uuid.uuid4().hex})"}]


def test_plain_request_access_line(client: openai.OpenAI, logs: Capture) -> None:
    rid = _rid()
    client.chat.completions.create(
        model="fake", messages=_uncached("hello"), extra_headers={"x-request-id": rid}
    )
    line = _access(logs, rid)
    assert line["level"] == "info"
    assert line["message"] == "request"
    assert line["method"] == "POST" and line["path"] == "/v1/chat/completions"
    assert line["status"] == 200
    assert line["latency_ms"] > 0
    assert line["tenant"] == "logs-tenant"
    assert line["alias"] == "fake"
    assert line["provider"] == "fake"
    assert line["time"].endswith("+00:00")
    assert "trace_id" not in line  # no tracing configured


def test_failed_request_names_status_and_provider(client: openai.OpenAI, logs: Capture) -> None:
    rid = _rid()
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model="logs-down", messages=_uncached("hi"), extra_headers={"x-request-id": rid}
        )
    line = _access(logs, rid)
    assert line["status"] == 503
    assert line["alias"] == "logs-down" and line["provider"] == "logs-down"


def test_streamed_request_carries_request_id(
    client: openai.OpenAI, logs: Capture, log_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = log_server.runtime.providers["fake"]
    original = provider.stream

    async def stream(body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        n = 0
        async for chunk in original(body, model):
            yield chunk
            n += 1
            if n == 2:
                logging.getLogger("strata.test").warning("mid-stream")

    monkeypatch.setattr(provider, "stream", stream)
    rid = _rid()
    with client.chat.completions.create(
        model="fake", messages=_uncached("stream"), stream=True, extra_headers={"x-request-id": rid}
    ) as events:
        text = "".join(c.choices[0].delta.content or "" for c in events if c.choices)
    assert text == REPLY
    access = _access(logs, rid)
    assert access["status"] == 200 and access["alias"] == "fake"
    assert access["tenant"] == "logs-tenant"
    mid = [x for x in logs.lines() if x["message"] == "mid-stream"]
    assert len(mid) == 1
    assert mid[0]["request_id"] == rid and mid[0]["level"] == "warning"
    assert mid[0]["alias"] == "fake"


def test_embeddings_access_line(client: openai.OpenAI, logs: Capture) -> None:
    rid = _rid()
    client.embeddings.create(
        model="fake-embed", input="some text", extra_headers={"x-request-id": rid}
    )
    line = _access(logs, rid)
    assert line["path"] == "/v1/embeddings" and line["status"] == 200
    assert line["alias"] == "fake-embed" and line["tenant"] == "logs-tenant"
    assert line["provider"] == "fake"


def test_sampled_prompt_is_redacted(client: openai.OpenAI, logs: Capture) -> None:
    rid = _rid()
    prompt = f"Mail me at {EMAIL}, card {CARD}, my key is {KEY}."
    client.chat.completions.create(
        model="fake-log", messages=_uncached(prompt), extra_headers={"x-request-id": rid}
    )
    _access(logs, rid)
    samples = [x for x in logs.lines() if x["message"] == "prompt_sample"]
    assert len(samples) == 1, samples
    s = samples[0]
    assert s["request_id"] == rid and s["alias"] == "fake-log" and s["logger"] == "strata.samples"
    assert s["prompt"].startswith("user: Mail me at [EMAIL], card [CARD], my key is [API_KEY].")
    assert s["completion"] == REPLY
    raw = logs.buf.getvalue()
    assert EMAIL not in raw and CARD not in raw and KEY not in raw


def test_sampled_stream_logs_the_streamed_text(client: openai.OpenAI, logs: Capture) -> None:
    rid = _rid()
    with client.chat.completions.create(
        model="fake-log",
        messages=_uncached(f"call +44 20 7946 0958 or {EMAIL}"),
        stream=True,
        extra_headers={"x-request-id": rid},
    ) as events:
        for _ in events:
            pass
    _access(logs, rid)
    samples = [x for x in logs.lines() if x["message"] == "prompt_sample"]
    assert len(samples) == 1
    assert samples[0]["request_id"] == rid
    assert samples[0]["prompt"].startswith("user: call [PHONE] or [EMAIL]")
    assert samples[0]["completion"] == REPLY


def test_sample_rate_zero_logs_no_prompt(client: openai.OpenAI, logs: Capture) -> None:
    for alias in ("fake-nolog", "fake"):
        rid = _rid()
        client.chat.completions.create(
            model=alias, messages=_uncached(EMAIL), extra_headers={"x-request-id": rid}
        )
        _access(logs, rid)
    assert not [x for x in logs.lines() if x["message"] == "prompt_sample"]
    assert EMAIL not in logs.buf.getvalue()


def _record(msg: str = "hello", **extra: Any) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "strata.x", "levelname": "INFO", "msg": msg})
    record.__dict__.update(extra)
    return record


def test_formatter_adds_trace_id_from_a_valid_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    fmt = JsonFormatter()
    assert "trace_id" not in orjson.loads(fmt.format(_record()))
    with tracer.start_as_current_span("request") as span:
        line = orjson.loads(fmt.format(_record()))
        ctx = span.get_span_context()
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]
    provider.shutdown()


def test_formatter_fields_and_request_context() -> None:
    fmt = JsonFormatter()
    t1 = request_id_var.set("rid-1")
    t2 = request_context.set({"tenant": "t", "alias": "a"})
    try:
        line = orjson.loads(fmt.format(_record("x %s", status=201)))
    finally:
        request_context.reset(t2)
        request_id_var.reset(t1)
    assert line["request_id"] == "rid-1"
    assert line["tenant"] == "t" and line["alias"] == "a" and line["status"] == 201
    assert set(line) >= {"time", "level", "logger", "message"}
    assert "request_id" not in orjson.loads(fmt.format(_record()))


def test_prompt_sample_truncates_after_redacting(caplog: pytest.LogCaptureFixture) -> None:
    settings = LogsSettings(sample_max_chars=30)
    # The card straddles the cut: it is redacted before the text is cut.
    text = "x" * 20 + " 4111111111111111 and more"
    with caplog.at_level(logging.INFO, logger="strata.samples"):
        log_prompt_sample(settings, "a", text, "done")
    record = caplog.records[-1]
    assert record.__dict__["prompt"] == ("x" * 20 + " [CARD] and more")[:30]
    assert "4111" not in record.__dict__["prompt"]
    with caplog.at_level(logging.INFO, logger="strata.samples"):
        log_prompt_sample(LogsSettings(redact_pii=False), "a", f"{EMAIL} {KEY}", "")
    # PII redaction off: keys are still never logged.
    assert caplog.records[-1].__dict__["prompt"] == f"{EMAIL} [API_KEY]"


def test_messages_text() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    assert messages_text(messages) == "system: be brief\nuser: look"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+tag@mail.example.co.uk today", "write to [EMAIL] today"),
        ("card 4111 1111 1111 1111.", "card [CARD]."),
        ("card 4111-1111-1111-1111", "card [CARD]"),
        ("card 4111111111111111", "card [CARD]"),
        ("amex 3782 822463 10005", "amex [CARD]"),
        ("ssn 123-45-6789 ok", "ssn [NATIONAL_ID] ok"),
        ("NI number AB 12 34 56 C", "NI number [NATIONAL_ID]"),
        ("ni ab123456c", "ni [NATIONAL_ID]"),
        ("passport no. X1234567 issued", "passport no. [NATIONAL_ID] issued"),
        ("my national id: 7503-1234-567", "my national id: [NATIONAL_ID]"),
        ("call +44 20 7946 0958 now", "call [PHONE] now"),
        ("call +44 (0)20 7946 0958", "call [PHONE]"),
        ("call +1 555 123 4567", "call [PHONE]"),
        ("call (555) 123-4567", "call [PHONE]"),
        ("call 555-123-4567 or 555.123.4567", "call [PHONE] or [PHONE]"),
        ("call 1-800-555-0199", "call [PHONE]"),
        ("key sk-strata-abcdefghijk_123", "key [API_KEY]"),
        ("Authorization: Bearer abcdefghijklmnop", "Authorization: [API_KEY]"),
    ],
)
def test_redacts(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 4111111111111112 shipped",  # 16 digits failing Luhn
        "order 1234 5678 9012 3456 shipped",  # grouped, failing Luhn
        "on 2024-01-15 at 10:30, or 15/01/2024, or 01.15.2024",
        "between 2024-01-15 2024-01-16 and 2024-01-17",
        "timestamp 1700000000 and count 5551234567",
        "version 1.2.3 on 192.168.100.200",
        "the total was $1,234,567.89",
        "passport office opens at 9",
        "codes 000-12-3456 and 666-12-3456 (never issued as SSNs)",
        "tin cans 12345",
        "a sentence with no numbers or addresses",
        "email at example dot com",
    ],
)
def test_leaves_alone(text: str) -> None:
    assert redact(text) == text


def test_luhn() -> None:
    assert luhn_ok("4111111111111111")
    assert luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")
