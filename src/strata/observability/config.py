"""Observability settings (``observability:`` in strata.yaml): metrics, tracing,
Sentry and logs. Each is cheap when off; see the README's Observability section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Serve /metrics on its own port (loopback) instead of the API port.
    port: int | None = Field(default=None, gt=0, lt=65536)
    # Labels stay bounded (alias, deployment, provider, status); a tenant label is
    # opt-in for deployments with few tenants.
    tenant_label: bool = False


class TracingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # OTLP/HTTP endpoint; None: OTEL_EXPORTER_OTLP_ENDPOINT, and no tracing without it.
    endpoint: str | None = None
    # Share of new traces recorded (parent-based: an incoming sampled trace is kept).
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    service_name: str = "strata"


class SentrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A reference (env:NAME / file:PATH) or None: SENTRY_DSN, and no Sentry without it.
    dsn: str | None = None
    environment: str | None = None
    # Prompts and completions are never sent unless this is on.
    send_prompts: bool = False


class LogsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Redact emails, phone numbers, card numbers and national ids from sampled
    # prompts and completions (aliases opt in to sampling with `log_sample_rate`).
    redact_pii: bool = True
    # Longest prompt or completion text written to a sampled log line.
    sample_max_chars: int = Field(default=2000, gt=0)


class ObservabilitySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    sentry: SentrySettings = SentrySettings()
    logs: LogsSettings = LogsSettings()
