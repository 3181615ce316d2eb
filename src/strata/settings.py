"""The one typed settings tree, and the only reader of the environment.

Precedence, highest first: keyword overrides, ``STRATA_*`` environment variables
(nested with ``__``, e.g. ``STRATA_USAGE__FLUSH_INTERVAL_S=2``), the YAML file
named by ``STRATA_CONFIG`` (or passed in), then the built-in defaults below,
which need no keys and no network.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from strata.alerts.config import AlertsSettings
from strata.cache.guard import DEFAULT_THRESHOLD
from strata.errors import ConfigError
from strata.jobs.config import BatchSettings, JobsSettings
from strata.limits.config import BudgetsSettings, LimitsSettings
from strata.observability.config import ObservabilitySettings
from strata.privacy.retention import RetentionSettings
from strata.rag.config import RagSettings
from strata.security.crypto import CryptoSettings
from strata.security.hardening import HardeningSettings
from strata.security.secrets import SecretsSettings


class Price(BaseModel):
    """USD prices. Per-token prices for APIs; GPU $/hour for self-hosted deployments."""

    model_config = ConfigDict(extra="forbid")

    input_per_1m: Decimal = Decimal(0)
    output_per_1m: Decimal = Decimal(0)
    # Self-hosted: cost per token = gpu_usd_per_hour / tokens per hour actually served
    # over a sliding window; fallback_tokens_per_hour until enough traffic is seen.
    gpu_usd_per_hour: Decimal | None = None
    fallback_tokens_per_hour: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _self_hosted_needs_throughput(self) -> Price:
        if self.gpu_usd_per_hour is not None and self.fallback_tokens_per_hour is None:
            raise ValueError(
                "gpu_usd_per_hour needs fallback_tokens_per_hour (tokens the GPU serves per "
                "hour before real traffic is measured; the reference H100: 720000)"
            )
        return self


class ProviderConfig(BaseModel):
    """A provider instance. ``type`` names a ``strata.providers`` entry point; the
    remaining keys are that provider's own options, validated by the provider."""

    model_config = ConfigDict(extra="allow")

    type: str
    price: Price | None = None

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Deployment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str
    model: str
    price: Price | None = None
    # Same rank: load-balanced; a higher rank is the fallback. Default: list order.
    rank: int | None = None
    weight: float = Field(default=1.0, gt=0)
    # Time to first token (the whole answer for non-streamed calls) and total.
    ttft_timeout_s: float | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    # Context window, for falling back to a larger one on context-length errors.
    max_context: int | None = Field(default=None, gt=0)


class AliasCache(BaseModel):
    """Response caching for one alias."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    ttl_s: float | None = Field(default=None, gt=0)  # None: cache.default_ttl_s
    # One namespace for all tenants: only for aliases whose answers hold no tenant data.
    shared: bool = False
    # Cache sampled answers too (temperature > 0 or n > 1): a replay is one sample.
    cache_sampled: bool = False
    # Semantic cache: answer from an earlier request whose user text means the same
    # (opt-in; keys and requests can opt in or out too).
    semantic: bool = False
    # Cosine similarity a semantic hit needs (None: cache.semantic.threshold).
    similarity: float | None = Field(default=None, gt=0, le=1)
    # Multi-turn requests too, when every earlier turn matches exactly.
    multi_turn: bool = False


class AliasLogs(BaseModel):
    """Prompt and completion sampling to the logs for one alias (off by default)."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: float = Field(default=0.0, ge=0, le=1)


class AutoRoute(BaseModel):
    """Capability-based routing: score each request, send it to a tier's alias."""

    model_config = ConfigDict(extra="forbid")

    cheap: str  # alias of the cheap tier
    strong: str  # alias of the strong tier
    # Score at or above which a request goes strong; `strata route calibrate` sets it
    # for a target share of strong traffic. Default: 20% strong on the shipped
    # labelled set with embeddings (0.53 for features only).
    threshold: float = Field(default=0.67, ge=0, le=1)
    # Similarity to labelled exemplars through this embedding alias (None: features only).
    embeddings: str | None = "embed-default"
    # A conversation once escalated stays strong this long (0: no stickiness).
    sticky_s: float = Field(default=86_400.0, ge=0)


class Alias(BaseModel):
    """A model name clients use; resolves to ordered deployments, or routes by score."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["chat", "embedding"] = "chat"
    description: str = ""
    # Before deployments: the deployments check reads it.
    route: AutoRoute | None = None
    deployments: list[Deployment] = Field(default_factory=list)
    cache: AliasCache = AliasCache()
    logs: AliasLogs = AliasLogs()
    # Within a rank: weighted random, or the deployment with fewest calls in flight.
    strategy: Literal["weighted", "least_inflight"] = "weighted"
    # Attempts beyond the first, across all deployments, per request.
    retries: int = Field(default=2, ge=0, le=10)
    # Wall-clock budget for all attempts of one request.
    deadline_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `{provider: x, model: y}` is shorthand for a single deployment.
        if isinstance(data, dict) and "provider" in data and "deployments" not in data:
            data = dict(data)
            keys = set(Deployment.model_fields) - {"rank", "weight"}
            dep = {k: data.pop(k) for k in list(data) if k in keys}
            data["deployments"] = [dep]
        return data

    @field_validator("deployments")
    @classmethod
    def _deployments_or_route(cls, v: list[Deployment], info: ValidationInfo) -> list[Deployment]:
        routed = info.data.get("route") is not None
        if not v and not routed:
            raise ValueError("at least one deployment is needed (or a route)")
        if v and routed:
            raise ValueError("an alias with a route has no deployments of its own")
        if routed and info.data.get("kind") != "chat":
            raise ValueError("route is for chat aliases")
        return v


def _default_providers() -> dict[str, ProviderConfig]:
    return {
        "local": ProviderConfig(type="local_llama"),
        "local-embed": ProviderConfig(type="local_embed"),
    }


def _default_models() -> dict[str, Alias]:
    return {
        "default": Alias(
            description="SmolLM2-135M-Instruct, embedded (llama.cpp)",
            deployments=[Deployment(provider="local", model="smollm2-135m-instruct")],
        ),
        "embed-default": Alias(
            kind="embedding",
            description="all-MiniLM-L6-v2, embedded (sentence-transformers), 384 dimensions",
            deployments=[Deployment(provider="local-embed", model="all-minilm-l6-v2")],
        ),
    }


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # How long a verified key is trusted without asking PostgreSQL again; also the
    # upper bound on how long a revoked key keeps working when Redis is down.
    key_cache_ttl_s: float = 5.0
    # While PostgreSQL is unreachable, keys verified before keep working this long.
    stale_grace_s: float = 300.0
    bootstrap_admin: bool = True


class BreakerSettings(BaseModel):
    """Circuit breaker per deployment, shared by all instances through Redis."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(default=5, ge=1)  # failures within the window that open it
    window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(default=30.0, gt=0)  # open this long, then one probe
    # How often an instance re-reads shared breaker state it has not changed itself.
    sync_s: float = Field(default=1.0, gt=0)


class SemanticCacheSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The embedding alias for user texts (the embedded MiniLM by default).
    embeddings: str = "embed-default"
    # With the guard: >= 99% precision on bench/cache/pairs.jsonl (see its README).
    threshold: float = Field(default=DEFAULT_THRESHOLD, gt=0, le=1)
    # The lexical guard (numbers, negations, directions, content words must agree);
    # without it no threshold reaches 99% precision on the labelled pairs.
    guard: bool = True
    # Longer user texts are not semantically cached (an essay is rarely repeated).
    max_query_chars: int = Field(default=2000, gt=0)
    # Entries kept per context (alias, system prompt, earlier turns, parameters);
    # the oldest go first. Bounds the rows a lookup compares.
    max_entries_per_context: int = Field(default=5000, gt=0)
    # A lookup (embedding + query) may hold a request this long, then it goes on.
    lookup_timeout_s: float = Field(default=0.25, gt=0)


class CacheSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    default_ttl_s: float = Field(default=3600.0, gt=0)
    # Larger answers are not cached (Redis memory stays bounded).
    max_entry_bytes: int = Field(default=256 * 1024, gt=0)
    semantic: SemanticCacheSettings = SemanticCacheSettings()


class RetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_s: float = Field(default=0.25, gt=0)  # backoff before retrying one deployment
    max_s: float = Field(default=8.0, gt=0)


class UsageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flush_interval_s: float = 1.0
    batch_size: int = Field(default=500, gt=0)
    # Records held in memory before spilling to the local file (none are dropped).
    buffer_max: int = Field(default=20_000, gt=0)
    # Self-hosted throughput window for cost per token.
    throughput_window_s: float = 3600.0
    throughput_min_observed_s: float = 300.0
    # The price table (strata.planner, prices.yaml by default) prices deployments that
    # strata.yaml leaves unpriced, so the planner and per-call costs agree.
    price_file: Path | None = None
    default_prices: bool = True


class LocalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Waiting requests per local model beyond the one running; more get 429.
    queue_max: int = Field(default=16, ge=0)
    threads: int | None = None
    n_ctx: int = 2048
    embed_batch_size: int = Field(default=32, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STRATA_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    config: Path | None = None
    data_dir: Path = Path(".strata")
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str | None = None
    redis_url: str | None = None
    log_level: str = "info"
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    auth: AuthSettings = AuthSettings()
    usage: UsageSettings = UsageSettings()
    local: LocalSettings = LocalSettings()
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    cache: CacheSettings = CacheSettings()
    limits: LimitsSettings = LimitsSettings()
    budgets: BudgetsSettings = BudgetsSettings()
    alerts: AlertsSettings = AlertsSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    secrets: SecretsSettings = SecretsSettings()
    crypto: CryptoSettings = CryptoSettings()
    retention: RetentionSettings = RetentionSettings()
    hardening: HardeningSettings = HardeningSettings()
    rag: RagSettings = RagSettings()
    jobs: JobsSettings = JobsSettings()
    # Ray cluster for large batches (`ray://head:10001`, or `auto`); STRATA_RAY_ADDRESS.
    ray_address: str | None = None
    batch: BatchSettings = BatchSettings()
    providers: dict[str, ProviderConfig] = Field(default_factory=_default_providers)
    models: dict[str, Alias] = Field(default_factory=_default_models)

    @model_validator(mode="after")
    def _references(self) -> Settings:
        for name, alias in self.models.items():
            if alias.route is not None:
                for tier in ("cheap", "strong"):
                    target = getattr(alias.route, tier)
                    other = self.models.get(target)
                    if other is None or other.kind != "chat" or other.route is not None:
                        raise ValueError(
                            f"models.{name}.route.{tier}: {target!r} must be a chat alias "
                            "with deployments"
                        )
                emb = alias.route.embeddings
                if emb is not None and (
                    emb not in self.models or self.models[emb].kind != "embedding"
                ):
                    raise ValueError(
                        f"models.{name}.route.embeddings: {emb!r} is not an embedding alias "
                        "(set it to null to score on features only)"
                    )
            emb = self.cache.semantic.embeddings
            if alias.cache.semantic and (
                emb not in self.models or self.models[emb].kind != "embedding"
            ):
                raise ValueError(
                    f"models.{name}.cache.semantic: cache.semantic.embeddings ({emb!r}) "
                    "is not an embedding alias"
                )
            for i, dep in enumerate(alias.deployments):
                if dep.provider not in self.providers:
                    known = ", ".join(sorted(self.providers)) or "none"
                    raise ValueError(
                        f"models.{name}.deployments.{i}.provider: unknown provider "
                        f"{dep.provider!r} (declared: {known})"
                    )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML named by the ``config`` init value or ``STRATA_CONFIG``."""

    path: Path | None = None

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _YamlSource.path
        if path is None:
            return {}
        return read_yaml(path)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, the YAML file, the environment and overrides.

    Raises ConfigError with every problem and its path, never a raw traceback.
    """
    env_path = os.environ.get("STRATA_CONFIG")
    path = Path(config) if config is not None else (Path(env_path) if env_path else None)
    _YamlSource.path = path
    try:
        if path is not None:
            overrides.setdefault("config", path)
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path or "settings"))) from None
    finally:
        _YamlSource.path = None


def environ(name: str) -> str | None:
    """The one door to the environment for secret references (``env:NAME``)."""
    return os.environ.get(name)
