"""Sentry error reporting: off unless a DSN is configured.

The DSN comes from ``observability.sentry.dsn`` (a secret reference,
``env:NAME`` or ``file:PATH``) or else the ``SENTRY_DSN`` environment variable.
``init_sentry`` runs once per process (several apps in one process, as in the
tests, share the first client). Reported:

- unhandled errors (RequestContextMiddleware's last-resort handler), level error;
- provider failures (``ProviderError``) that reach the client, level warning,
  from the API layer (``report_failure``), and streams that fail after their
  first chunk (``capture_stream_failure``).

Events are tagged ``request_id``, ``alias`` and ``provider``. Nothing else about
the request is attached, and ``before_send`` scrubs what might slip in: request
bodies, cookies and authorization headers, frame locals, any ``messages`` /
``prompt`` / ``completion`` / ``input`` / ``content`` values (unless
``send_prompts``), and any string that looks like an API key (``sk-…``,
``Bearer …``). ``capture_*`` are no-ops (one global check) while Sentry is off.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.transport import Transport

from strata.errors import ProviderError
from strata.observability.config import SentrySettings
from strata.observability.logging import request_fields, request_id_var
from strata.security.credentials import resolve_secret
from strata.settings import environ

log = logging.getLogger("strata.sentry")

RELEASE = "strata@0.1.0"
FILTERED = "[Filtered]"
# Keys whose values hold prompt or completion text (request bodies, messages,
# tool arguments): dropped from events unless send_prompts.
_PROMPT_KEYS = frozenset(
    {"messages", "prompt", "prompts", "completion", "completions", "input", "content", "text"}
)
# Always dropped: request bodies and credentials.
_SECRET_KEYS = frozenset(
    {"data", "body", "cookies", "authorization", "proxy-authorization", "cookie", "api_key"}
)
_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-]{6,}|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{6,}=*")

_enabled = False
_dsn: str | None = None
_send_prompts = False


def enabled() -> bool:
    return _enabled


def resolve_dsn(settings: SentrySettings) -> str | None:
    if settings.dsn:
        return resolve_secret(settings.dsn, "observability.sentry.dsn").reveal()
    return environ("SENTRY_DSN") or None


def init_sentry(settings: SentrySettings, *, transport: Transport | None = None) -> bool:
    """Start Sentry if a DSN is configured; idempotent. True when Sentry is on.

    A later call with the same DSN (another app in this process) keeps the
    running client; with no DSN it leaves whatever is running alone.
    """
    global _enabled, _dsn, _send_prompts
    dsn = resolve_dsn(settings)
    if not dsn:
        return _enabled
    if _enabled and dsn == _dsn:
        return True
    sentry_sdk.init(
        dsn=dsn,
        transport=transport,
        release=RELEASE,
        environment=settings.environment,
        # Stricter than send_default_pii=False (which this SDK version deprecates):
        # no user info, headers, cookies, bodies, query strings, gen_ai inputs or
        # outputs, and no frame locals (they hold request bodies and keys).
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {"request": {"mode": "off"}},
            "http_bodies": [],
            "url_query_params": {"mode": "off"},
            "gen_ai": {"inputs": False, "outputs": False},
            "database_query_data": False,
            "queues": False,
            "stack_frame_variables": False,
        },
        include_local_variables=False,  # the same, for SDKs that predate data_collection
        max_request_body_size="never",
        before_send=_before_send,
        before_breadcrumb=_before_breadcrumb,
        # Errors are captured explicitly (with tags); log lines, which may be
        # sampled prompts, are neither events nor breadcrumbs.
        integrations=[LoggingIntegration(level=None, event_level=None)],
        # No monkey-patching of the hot path's libraries (aiohttp, redis, ...).
        auto_enabling_integrations=False,
        auto_session_tracking=False,
        traces_sample_rate=None,
    )
    _enabled, _dsn, _send_prompts = True, dsn, settings.send_prompts
    log.info("sentry enabled", extra={"environment": settings.environment})
    return True


def shutdown_sentry() -> None:
    """Flush and stop the client (tests; process exit flushes by itself)."""
    global _enabled, _dsn
    if not _enabled:
        return
    client = sentry_sdk.get_client()
    client.close(timeout=2)
    sentry_sdk.get_global_scope().set_client(None)
    _enabled, _dsn = False, None


def _tags(**extra: str | None) -> dict[str, str]:
    tags = {"request_id": request_id_var.get()}
    ctx = request_fields()
    tags["alias"] = ctx.get("alias")
    tags["provider"] = ctx.get("provider")
    tags.update({k: v for k, v in extra.items() if v})
    return {k: str(v) for k, v in tags.items() if v}


def capture_unhandled(exc: BaseException) -> None:
    """An error no handler turned into a response (level error)."""
    if not _enabled:
        return
    sentry_sdk.capture_exception(exc, level="error", tags=_tags())


def report_failure(exc: BaseException, provider: str | None) -> None:
    """A request failed before its response: name the provider on the log lines
    (the access line included) and report a provider failure (level warning)."""
    if isinstance(exc, ProviderError):
        provider = exc.provider
    if provider:
        request_fields()["provider"] = provider
    if _enabled and isinstance(exc, ProviderError):
        sentry_sdk.capture_exception(exc, level="warning", tags=_tags())


def capture_stream_failure(error_type: str, status: int) -> None:
    """A stream that failed after its first chunk (the error went to the client
    as an SSE event; there is no exception left to report)."""
    if not _enabled:
        return
    sentry_sdk.capture_message(
        f"stream failed: {error_type}",
        level="error" if status == 500 else "warning",
        tags=_tags(error_type=error_type),
    )


def _scrub(value: Any, prompts: bool) -> Any:
    if isinstance(value, str):
        return _KEY_PATTERN.sub(FILTERED, value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = k.lower() if isinstance(k, str) else k
            if key in _SECRET_KEYS or (not prompts and key in _PROMPT_KEYS):
                out[k] = FILTERED
            elif key == "vars":
                continue  # frame locals
            else:
                out[k] = _scrub(v, prompts)
        return out
    if isinstance(value, (list, tuple)):
        return [_scrub(v, prompts) for v in value]
    return value


def _before_send(event: Any, hint: Any) -> Any:
    request = event.pop("request", None)
    if isinstance(request, dict):
        # Method and URL only; the query string may carry a key.
        event["request"] = {
            k: v for k, v in request.items() if k in ("method", "url") and isinstance(v, str)
        }
    return _scrub(event, _send_prompts)


def _before_breadcrumb(crumb: Any, hint: Any) -> Any:
    return _scrub(crumb, _send_prompts)
