"""Senders, one per channel type: webhook (JSON), Slack (incoming webhook), email.

A sender resolves its secrets when built (a missing one fails at start-up) and
raises ``DeliveryFailed`` with a message that never holds a secret: no URL (a
Slack URL is a token), no password, no header. The dispatcher retries
``DeliveryFailed`` unless it is ``permanent``.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from strata.alerts.config import EmailChannel, SlackChannel, WebhookChannel, is_secret_ref
from strata.alerts.events import Alert
from strata.security.credentials import Secret, resolve_secret


class DeliveryFailed(Exception):
    """One attempt failed. ``str()`` is safe to log and record."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Sender(Protocol):
    name: str
    type: str

    async def send(self, alert: Alert) -> None: ...


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "****")
    return text[:500]


def _http_status_error(status: int) -> DeliveryFailed:
    # 4xx other than timeout/throttling will not change on retry (bad token, bad URL).
    permanent = 400 <= status < 500 and status not in (408, 425, 429)
    return DeliveryFailed(f"HTTP {status}", permanent=permanent)


class _HttpSender:
    type = "webhook"

    def __init__(
        self,
        name: str,
        url: str,
        timeout_s: float,
        session: Callable[[], aiohttp.ClientSession],
        where: str,
    ) -> None:
        self.name = name
        self._url: Secret = resolve_secret(url, where) if is_secret_ref(url) else Secret(url)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._headers: dict[str, str] = {"content-type": "application/json"}

    def _body(self, alert: Alert) -> bytes:
        return orjson.dumps(alert.payload())

    async def send(self, alert: Alert) -> None:
        url = self._url.reveal()
        try:
            async with self._session().post(
                url, data=self._body(alert), headers=self._headers, timeout=self._timeout
            ) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise _http_status_error(resp.status)
        except DeliveryFailed:
            raise
        except TimeoutError:
            raise DeliveryFailed("timed out") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # Exception texts may quote the URL or headers; keep the type and a scrubbed text.
            detail = _scrub(str(exc), [url, *self._secret_values()])
            raise DeliveryFailed(f"{type(exc).__name__}: {detail}") from None

    def _secret_values(self) -> list[str]:
        # The path and query too: a library may quote a normalised form of the URL.
        parts = urlsplit(self._url.reveal())
        tails = [parts.path if len(parts.path) > 1 else "", parts.query]
        return [*tails, *(v for k, v in self._headers.items() if k == "authorization")]


class WebhookSender(_HttpSender):
    type = "webhook"

    def __init__(self, ch: WebhookChannel, session: Callable[[], aiohttp.ClientSession]) -> None:
        where = f"alerts.channels.{ch.name}"
        super().__init__(ch.name, ch.url, ch.timeout_s, session, f"{where}.url")
        if ch.bearer_token is not None:
            token = resolve_secret(ch.bearer_token, f"{where}.bearer_token")
            self._headers["authorization"] = f"Bearer {token.reveal()}"


class SlackSender(_HttpSender):
    type = "slack"

    def __init__(self, ch: SlackChannel, session: Callable[[], aiohttp.ClientSession]) -> None:
        super().__init__(ch.name, ch.url, ch.timeout_s, session, f"alerts.channels.{ch.name}.url")

    def _body(self, alert: Alert) -> bytes:
        return orjson.dumps({"text": f"*{alert.subject}*\n{alert.text}"})


class EmailSender:
    type = "email"

    def __init__(self, ch: EmailChannel) -> None:
        self.name = ch.name
        self._ch = ch
        self._password: Secret | None = (
            resolve_secret(ch.password, f"alerts.channels.{ch.name}.password")
            if ch.password is not None
            else None
        )

    def _message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = f"{self._ch.subject_prefix} {alert.subject}".strip()
        msg["From"] = self._ch.from_addr
        msg["To"] = ", ".join(self._ch.to)
        p = alert.payload()
        details = "\n".join(f"{k}: {p[k]}" for k in p if k not in ("message", "subject"))
        msg.set_content(f"{alert.text}\n\n{details}\n")
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        ch = self._ch
        smtp: smtplib.SMTP
        if ch.ssl:
            smtp = smtplib.SMTP_SSL(
                ch.host, ch.port, timeout=ch.timeout_s, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(ch.host, ch.port, timeout=ch.timeout_s)
        with smtp:
            if ch.starttls and not ch.ssl:
                smtp.starttls(context=ssl.create_default_context())
            if ch.username is not None and self._password is not None:
                smtp.login(ch.username, self._password.reveal())
            smtp.send_message(msg)

    async def send(self, alert: Alert) -> None:
        msg = self._message(alert)
        try:
            await asyncio.to_thread(self._send_blocking, msg)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryFailed(f"SMTP authentication failed ({exc.smtp_code})") from None
        except smtplib.SMTPResponseException as exc:
            # 5xx is a permanent refusal (bad recipient, policy); 4xx is worth retrying.
            raise DeliveryFailed(
                f"SMTP {exc.smtp_code}", permanent=500 <= exc.smtp_code < 600
            ) from None
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            secrets = [self._password.reveal()] if self._password else []
            detail = _scrub(str(exc), secrets)
            raise DeliveryFailed(f"{type(exc).__name__}: {detail}") from None


def build_senders(
    channels: list[WebhookChannel | SlackChannel | EmailChannel],
    session: Callable[[], aiohttp.ClientSession],
) -> list[Sender]:
    """``session`` returns the shared HTTP session (opened lazily). Raises
    ConfigError (at start-up) when a secret reference cannot be resolved."""
    out: list[Sender] = []
    for ch in channels:
        if isinstance(ch, WebhookChannel):
            out.append(WebhookSender(ch, session))
        elif isinstance(ch, SlackChannel):
            out.append(SlackSender(ch, session))
        else:
            out.append(EmailSender(ch))
    return out
