"""Alert settings: thresholds, the deployment-wide daily cap, channels and retries.

Attached to ``Settings`` as ``alerts``. Anything secret (an SMTP password, a
Slack incoming-webhook URL, which carries its token in the path, a bearer token
for a generic webhook) is a reference (``env:NAME`` / ``file:/path``) resolved
when the dispatcher is built, so a missing secret fails at start-up.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_REF_SCHEMES = ("env:", "file:", "vault:")


def is_secret_ref(value: str) -> bool:
    return value.startswith(_REF_SCHEMES)


def _url_or_ref(value: str) -> str:
    if is_secret_ref(value) or value.startswith(("http://", "https://")):
        return value
    raise ValueError(
        "must be an http(s) URL or a secret reference (env:NAME, file:/path or vault:PATH#FIELD)"
    )


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Names a channel in logs, records and `strata alerts test --channel`.
    name: str = Field(min_length=1, max_length=100)
    # Seconds one delivery attempt may take.
    timeout_s: float = Field(default=10.0, gt=0)


class _UrlChannel(_Channel):
    # A URL, or a secret reference to one when the URL itself carries a token.
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _url_or_ref(v)


class WebhookChannel(_UrlChannel):
    """POST the alert as JSON to any URL."""

    type: Literal["webhook"]
    # Sent as `Authorization: Bearer <token>`; a secret reference.
    bearer_token: str | None = None

    @field_validator("bearer_token")
    @classmethod
    def _token_is_ref(cls, v: str | None) -> str | None:
        if v is not None and not is_secret_ref(v):
            raise ValueError(
                "secrets must be references: use env:NAME, file:/path or vault:PATH#FIELD"
            )
        return v


class SlackChannel(_UrlChannel):
    """POST `{"text": ...}` to a Slack incoming webhook. Its URL is itself the
    credential: prefer `url: env:SLACK_WEBHOOK_URL`."""

    type: Literal["slack"]


class EmailChannel(_Channel):
    """Email over SMTP (stdlib smtplib, in a thread)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["email"]
    host: str
    port: int = Field(default=587, gt=0, lt=65536)
    # STARTTLS after connecting (port 587); `ssl` is implicit TLS (port 465).
    starttls: bool = True
    ssl: bool = False
    username: str | None = None
    password: str | None = None  # a secret reference
    from_addr: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    subject_prefix: str = "[Strata]"

    @field_validator("password")
    @classmethod
    def _password_is_ref(cls, v: str | None) -> str | None:
        if v is not None and not is_secret_ref(v):
            raise ValueError(
                "secrets must be references: use env:NAME, file:/path or vault:PATH#FIELD"
            )
        return v

    @model_validator(mode="after")
    def _tls_choice(self) -> EmailChannel:
        if self.ssl and self.starttls:
            raise ValueError("choose one of ssl (implicit TLS) and starttls, not both")
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        return self


Channel = Annotated[WebhookChannel | SlackChannel | EmailChannel, Field(discriminator="type")]


class AlertRetry(BaseModel):
    """Per channel: `attempts` tries in all, waiting backoff_s, 2x, 4x ... up to max_backoff_s."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(default=5, ge=1, le=20)
    backoff_s: float = Field(default=1.0, ge=0)
    max_backoff_s: float = Field(default=60.0, ge=0)


class AlertsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Fractions of a budget's cap at which one alert per budget and period is sent.
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0])
    # One alert per UTC day when the whole deployment's spend reaches this (None: off).
    daily_alert_usd: Decimal | None = Field(default=None, gt=0)
    # How often each instance sums today's spend from usage records for that check.
    daily_check_interval_s: float = Field(default=60.0, gt=0)
    channels: list[Channel] = Field(default_factory=list)
    retry: AlertRetry = AlertRetry()

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: list[float]) -> list[float]:
        if any(t <= 0 or t > 10 for t in v):
            raise ValueError("thresholds are fractions of the cap, e.g. 0.5, 0.8, 1.0")
        return sorted(set(v))

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, v: list[_Channel]) -> list[_Channel]:
        names = [c.name for c in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channel names must be unique: {', '.join(dupes)}")
        return v
