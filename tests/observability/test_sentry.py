"""Sentry: unhandled errors and provider failures reach the SDK's transport with
request_id / alias / provider tags, and never a prompt, a completion or a key."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from strata.errors import ConfigError, ProviderUnavailable
from strata.observability import sentry
from strata.observability.config import SentrySettings
from strata.observability.logging import request_context, request_id_var
from tests.conftest import TEST_CONFIG, ServerThread

DSN = "https://public@sentry.invalid/1"
DSN_ENV = "STRATA_TEST_SENTRY_DSN"
PROMPT = "my secret plan is to paint the moon green"
KEY_PREFIX = "sk-strata-"


class CaptureTransport(Transport):
    """Keeps every envelope in memory (the SDK calls it synchronously)."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        return [e for env in self.envelopes if (e := env.get_event()) is not None]

    def raw(self) -> bytes:
        return b"".join(env.serialize() for env in self.envelopes)

    def wait(
        self, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [e for e in self.events() if pred(e)]
            if found:
                assert len(found) == 1, found
                return found[0]
            assert time.monotonic() < deadline, self.events()
            time.sleep(0.02)


def test_off_without_a_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    assert not sentry.enabled()
    assert sentry.init_sentry(SentrySettings()) is False

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("Sentry is off: nothing is captured")

    monkeypatch.setattr(sentry_sdk, "capture_exception", boom)
    monkeypatch.setattr(sentry_sdk, "capture_message", boom)
    sentry.capture_unhandled(RuntimeError("x"))
    sentry.report_failure(ProviderUnavailable("down", provider="p"), None)
    sentry.capture_stream_failure("ProviderTimeout", 504)


def test_missing_dsn_secret_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DSN_ENV, raising=False)
    with pytest.raises(ConfigError, match=DSN_ENV):
        sentry.init_sentry(SentrySettings(dsn=f"env:{DSN_ENV}"))
    with pytest.raises(ConfigError, match="references"):
        sentry.init_sentry(SentrySettings(dsn=DSN))


@pytest.fixture(scope="module")
def transport() -> Iterator[CaptureTransport]:
    t = CaptureTransport()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DSN_ENV, DSN)
        assert sentry.init_sentry(SentrySettings(dsn=f"env:{DSN_ENV}"), transport=t)
        yield t
        sentry.shutdown_sentry()
    assert not sentry.enabled()


@pytest.fixture(scope="module")
def sentry_server(
    transport: CaptureTransport, start_server: Callable[..., ServerThread]
) -> ServerThread:
    # The app's own init finds the running client (same DSN) and keeps it.
    # Failing deployments of their own: circuit breakers live in the shared Redis.
    providers = {
        **TEST_CONFIG["providers"],
        "fake-boom": {"type": "fake"},
        "sentry-down": {"type": "fake", "error_status": 503},
    }
    models = {
        **TEST_CONFIG["models"],
        "fake-boom": {"provider": "fake-boom", "model": "boom-1"},
        "sentry-down": {"provider": "sentry-down", "model": "down-1"},
    }
    srv = start_server(
        providers=providers,
        models=models,
        observability={"sentry": {"dsn": f"env:{DSN_ENV}"}},
    )
    assert sentry_sdk.get_client().transport is transport
    return srv


@pytest.fixture
def key(new_key: Callable[..., Any]) -> str:
    return str(new_key(tenant="sentry-tenant").key)


@pytest.fixture
def client(
    sentry_server: ServerThread, key: str, sdk: Callable[[ServerThread, str], openai.OpenAI]
) -> openai.OpenAI:
    return sdk(sentry_server, key)


def _tagged(rid: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (e.get("tags") or {}).get("request_id") == rid


def _assert_clean(transport: CaptureTransport, key: str) -> None:
    raw = transport.raw()
    assert PROMPT.encode() not in raw
    assert key.encode() not in raw and KEY_PREFIX.encode() not in raw


def test_init_is_idempotent(transport: CaptureTransport) -> None:
    client = sentry_sdk.get_client()
    assert sentry.init_sentry(SentrySettings(dsn=f"env:{DSN_ENV}"))
    assert sentry.init_sentry(SentrySettings())  # no DSN here: the running client stays
    assert sentry_sdk.get_client() is client
    assert not client.options["send_default_pii"]
    collection = client.options["data_collection"]
    assert collection["user_info"] is False and collection["stack_frame_variables"] is False
    assert collection["http_bodies"] == [] and collection["gen_ai"]["inputs"] is False


def test_provider_failure_is_a_tagged_warning(
    client: openai.OpenAI, transport: CaptureTransport, key: str
) -> None:
    rid = "sentry-" + uuid.uuid4().hex
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(
            model="sentry-down",
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-request-id": rid},
        )
    assert err.value.status_code == 503
    event = transport.wait(_tagged(rid))
    assert event["level"] == "warning"
    assert event["tags"]["alias"] == "sentry-down"
    assert event["tags"]["provider"] == "sentry-down"
    assert event["exception"]["values"][-1]["type"] == "ProviderUnavailable"
    assert "request" not in event or set(event["request"]) <= {"method", "url"}
    _assert_clean(transport, key)


def test_unhandled_error_is_reported_without_locals(
    client: openai.OpenAI,
    transport: CaptureTransport,
    sentry_server: ServerThread,
    key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sentry_server.runtime.providers["fake-boom"]

    async def chat(body: dict[str, Any], model: str) -> Any:
        secret = {"messages": body["messages"], "authorization": f"Bearer {key}"}
        raise RuntimeError(f"provider bug ({len(secret)} fields)")

    monkeypatch.setattr(provider, "chat", chat)
    rid = "sentry-" + uuid.uuid4().hex
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="fake-boom",
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers={"x-request-id": rid},
        )
    event = transport.wait(_tagged(rid))
    assert event["level"] == "error"
    assert event["tags"]["alias"] == "fake-boom"
    assert event["tags"]["provider"] == "fake-boom"
    exc = event["exception"]["values"][-1]
    assert exc["type"] == "RuntimeError" and exc["value"] == "provider bug (2 fields)"
    frames = exc["stacktrace"]["frames"]
    assert frames and all("vars" not in f for f in frames)
    _assert_clean(transport, key)


def test_stream_failure_after_first_chunk(
    client: openai.OpenAI,
    transport: CaptureTransport,
    sentry_server: ServerThread,
    key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = sentry_server.runtime.providers["fake-boom"]
    original = provider.stream

    async def stream(body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        async for chunk in original(body, model):
            yield chunk
            raise ProviderUnavailable("connection reset mid-stream", provider="fake-boom")

    monkeypatch.setattr(provider, "stream", stream)
    rid = "sentry-" + uuid.uuid4().hex
    with (
        pytest.raises(openai.APIError),
        client.chat.completions.create(
            model="fake-boom",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            extra_headers={"x-request-id": rid},
        ) as events,
    ):
        for _ in events:
            pass
    event = transport.wait(_tagged(rid))
    assert event["level"] == "warning"
    assert event["tags"]["alias"] == "fake-boom" and event["tags"]["provider"] == "fake-boom"
    assert event["tags"]["error_type"] == "ProviderUnavailable"
    _assert_clean(transport, key)


def test_capture_outside_a_server_uses_context(transport: CaptureTransport) -> None:
    t1 = request_id_var.set("rid-direct")
    t2 = request_context.set({"alias": "a1", "tenant": "t"})
    try:
        sentry.report_failure(ProviderUnavailable("down", provider="p1"), None)
    finally:
        request_context.reset(t2)
        request_id_var.reset(t1)
    event = transport.wait(_tagged("rid-direct"))
    assert event["tags"] == {"request_id": "rid-direct", "alias": "a1", "provider": "p1"}
    assert event["level"] == "warning"


def test_scrubber(transport: CaptureTransport) -> None:
    event = {
        "request": {
            "method": "POST",
            "url": "http://x/v1/chat/completions",
            "headers": {"Authorization": "Bearer sk-strata-abcdefgh123"},
            "data": {"messages": [{"role": "user", "content": PROMPT}]},
            "cookies": "session=1",
        },
        "extra": {
            "body": PROMPT,
            "messages": [PROMPT],
            "note": "key sk-strata-abcdefgh123 and Bearer tok_abcdefghijk",
        },
        "exception": {
            "values": [{"stacktrace": {"frames": [{"function": "f", "vars": {"k": PROMPT}}]}}]
        },
        "breadcrumbs": {"values": [{"message": "sent", "data": {"prompt": PROMPT}}]},
    }
    out = sentry._before_send(event, {})
    assert out["request"] == {"method": "POST", "url": "http://x/v1/chat/completions"}
    assert out["extra"]["body"] == sentry.FILTERED
    assert out["extra"]["messages"] == sentry.FILTERED
    assert out["extra"]["note"] == "key [Filtered] and [Filtered]"
    assert "vars" not in out["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert PROMPT not in repr(out) and KEY_PREFIX not in repr(out)
    crumb = sentry._before_breadcrumb({"message": "x", "data": {"messages": [PROMPT]}}, {})
    assert PROMPT not in repr(crumb)


def test_send_prompts_keeps_prompt_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sentry, "_send_prompts", True)
    out = sentry._before_send(
        {"extra": {"messages": [PROMPT], "note": "sk-strata-abcdefgh123"}, "request": {}}, {}
    )
    assert out["extra"]["messages"] == [PROMPT]
    assert out["extra"]["note"] == sentry.FILTERED  # keys never
