"""The services one server process holds, built from settings and torn down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.alerts.dispatcher import AlertDispatcher
from strata.alerts.events import Alert
from strata.cache.exact import ExactCache
from strata.cache.semantic import SemanticCache
from strata.errors import ConfigError
from strata.gateway.chat import ChatService
from strata.gateway.embeddings import EmbeddingService
from strata.gateway.meter import Meter
from strata.gateway.quota import Quota
from strata.limits.budget import Budgets, Crossing
from strata.limits.gate import Gate
from strata.limits.overrides import Overrides
from strata.limits.rate import RateLimiter
from strata.observability.metrics import Metrics
from strata.observability.tracing import Tracing, current_trace_id
from strata.privacy.retention import purge_forever
from strata.providers.base import Provider
from strata.providers.registry import build_providers
from strata.routing.auto import AutoRouter
from strata.routing.breaker import CircuitBreakers
from strata.routing.dispatch import Dispatcher
from strata.routing.router import Router
from strata.security import crypto as crypto_mod
from strata.security.auth import Authenticator
from strata.security.credentials import resolve_secret
from strata.security.keys import Principal
from strata.security.secrets import refresh_forever
from strata.settings import Settings, read_yaml
from strata.storage.engine import make_engine
from strata.storage.repositories import keys as key_repo
from strata.storage.repositories import usage as usage_repo
from strata.usage.pricing import Pricer
from strata.usage.recorder import UsageRecorder
from strata.usage.sealing import EndUserSealer

log = logging.getLogger("strata")


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    redis: aioredis.Redis
    providers: dict[str, Provider]
    router: Router
    dispatcher: Dispatcher
    pricer: Pricer
    recorder: UsageRecorder
    auth: Authenticator
    chat: ChatService
    embeddings: EmbeddingService
    overrides: Overrides
    rate: RateLimiter
    gate: Gate
    budgets: Budgets
    alerts: AlertDispatcher
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    tracing: Tracing | None = None  # None: tracing off
    metrics: Metrics | None = None
    # The process's key ring (field encryption); set by start().
    crypto: crypto_mod.Crypto | None = None
    # The config file's content as last loaded (strata.reload compares against it).
    config_file: dict[str, Any] | None = None

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        if not settings.database_url or not settings.redis_url:
            raise ConfigError(
                "database_url and redis_url must be set (strata serve starts embedded "
                "services and sets them; otherwise set STRATA_DATABASE_URL and STRATA_REDIS_URL)"
            )
        providers = build_providers(settings)
        tracing = Tracing.from_settings(settings.observability.tracing)
        engine = make_engine(settings.database_url)
        redis = aioredis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        router = Router(settings, providers)
        breakers = CircuitBreakers(redis, settings.breaker)
        dispatcher = Dispatcher(router, breakers, settings.retry)
        recorder = UsageRecorder(
            lambda rows: usage_repo.insert_batch(engine, rows),
            touch=lambda last: key_repo.touch_last_used(engine, last),
            spill_path=settings.data_dir / "usage-spill.jsonl",
            batch_size=settings.usage.batch_size,
            buffer_max=settings.usage.buffer_max,
            flush_interval_s=settings.usage.flush_interval_s,
        )
        recorder.tracer = tracing.tracer if tracing is not None else None
        auth = Authenticator(
            lambda h: key_repo.find_active(engine, h),
            ttl_s=settings.auth.key_cache_ttl_s,
            stale_grace_s=settings.auth.stale_grace_s,
        )
        auto = AutoRouter(settings, providers, redis)
        # Field encryption: the master key now (a bad reference fails start-up), the
        # data keys from the database (retried by the refresh task when it is down).
        crypto = crypto_mod.Crypto(crypto_mod.load_master_key(settings.crypto, settings.data_dir))
        try:
            await crypto_mod.sync_keys(engine, crypto)
        except Exception as exc:
            log.warning("data keys not loaded yet (%s); caching paused", type(exc).__name__)
        recorder.seal = EndUserSealer(crypto)
        semantic = _semantic_cache(settings, providers, engine, crypto)
        alerts = AlertDispatcher(redis, engine, settings.alerts)
        overrides = Overrides.from_engine(engine, refresh_s=settings.limits.overrides_refresh_s)
        rate = RateLimiter(redis, settings.limits, overrides=overrides)
        budgets = Budgets(
            redis,
            settings.budgets,
            overrides=overrides,
            on_crossing=lambda crossings: _background(alert_crossings(alerts, crossings)),
            alert_thresholds=settings.alerts.thresholds,
            daily_alert_usd=settings.alerts.daily_alert_usd,
        )
        gate = Gate(
            rate if settings.limits.enabled else None,
            budgets if settings.budgets.enabled else None,
        )
        pricer = Pricer(settings)
        quota = Quota(gate, router, pricer, settings.budgets.default_max_tokens)
        rt = cls(
            settings=settings,
            engine=engine,
            redis=redis,
            providers=providers,
            router=router,
            pricer=pricer,
            recorder=recorder,
            auth=auth,
            dispatcher=dispatcher,
            chat=ChatService(
                dispatcher, auto, ExactCache(redis, settings.cache, crypto), semantic, quota
            ),
            embeddings=EmbeddingService(dispatcher, quota),
            overrides=overrides,
            rate=rate,
            gate=gate,
            budgets=budgets,
            alerts=alerts,
            tracing=tracing,
            crypto=crypto,
            config_file=read_yaml(settings.config) if settings.config else None,
        )
        rt.metrics = await _metrics(rt)
        for p in providers.values():
            await p.start()
        await recorder.start()
        await semantic.start()
        try:
            await overrides.refresh()
        except Exception as exc:  # the refresh task keeps trying
            log.warning("limit overrides not loaded yet (%s)", type(exc).__name__)
        rt.tasks.append(asyncio.create_task(overrides.run()))
        rt.tasks.append(
            asyncio.create_task(
                crypto_mod.refresh_forever(engine, crypto, settings.crypto.refresh_s)
            )
        )
        rt.tasks.append(asyncio.create_task(semantic.expire_forever()))
        rt.tasks.append(
            asyncio.create_task(purge_forever(engine, settings.retention), name=PURGE_TASK)
        )
        rt.tasks.append(asyncio.create_task(auth.listen_for_revocations(redis)))
        rt.tasks.append(asyncio.create_task(dispatcher.publish_latency(redis)))
        if settings.secrets.refresh_s > 0:  # rotated secrets apply without a restart
            rt.tasks.append(asyncio.create_task(refresh_forever(settings.secrets)))
        if auto.routes:
            rt.tasks.append(asyncio.create_task(_after_models_load(rt, auto)))
        return rt

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.gate.aclose()
        await self.rate.aclose()
        await self.budgets.aclose()
        await self.alerts.aclose()
        await self.chat.cache.drain()
        if self.chat.semantic is not None:
            await self.chat.semantic.close()
        await self.recorder.stop()
        for p in self.providers.values():
            try:
                await p.close()
            except Exception:
                log.exception("closing provider %s failed", p.name)
        if self.metrics is not None:
            await self.metrics.close()
        await self.redis.aclose()
        await self.engine.dispose()
        if self.tracing is not None:
            await self.tracing.shutdown()  # after the last usage write: its span too

    def meter(self, principal: Principal, request_id: str, endpoint: str) -> Meter:
        meter = Meter(self.recorder, self.pricer, principal, request_id, endpoint, self.metrics)
        meter.event.trace_id = current_trace_id()
        return meter


_BACKGROUND: set[asyncio.Task[None]] = set()
# The retention purge task's name: a config reload replaces it.
PURGE_TASK = "retention-purge"


async def _metrics(rt: Runtime) -> Metrics | None:
    """This runtime's metrics (None when disabled: no per-request hook at all), served
    on their own loopback port when ``metrics.port`` is set."""
    s = rt.settings.observability.metrics
    if not s.enabled:
        return None
    metrics = Metrics(s, rt.settings.models)
    metrics.watch(rt)
    if s.port is not None:
        ref = rt.settings.hardening.metrics_token
        token = resolve_secret(ref, "hardening.metrics_token").reveal() if ref else None
        await metrics.serve(s.port, token)
    return metrics


def _background(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def alert_crossings(alerts: AlertDispatcher, crossings: list[Crossing]) -> None:
    """Budget thresholds crossed by a settle: one alert each (deduplicated by alerts)."""
    for c in crossings:
        await alerts.fire(
            Alert(
                kind=c.kind,
                scope=c.scope,
                scope_id=c.scope_id,
                period=c.period,
                period_start=c.period_start,
                threshold=c.threshold,
                spent=c.spent,
                cap=c.cap,
            )
        )


def _semantic_cache(
    settings: Settings,
    providers: dict[str, Provider],
    engine: AsyncEngine,
    crypto: crypto_mod.Crypto | None = None,
) -> SemanticCache:
    """The semantic cache, embedding through the first deployment of its alias."""
    from strata.cache.guard import compatible

    s = settings.cache.semantic
    alias = settings.models.get(s.embeddings)
    embed = None
    label = ""
    if alias is not None and alias.kind == "embedding" and alias.deployments:
        dep = alias.deployments[0]
        provider, model = providers[dep.provider], dep.model
        label = f"{dep.provider}/{model}"

        async def embed_texts(texts: list[str]) -> list[list[float]]:
            return (await provider.embed(texts, model)).vectors

        embed = embed_texts
    return SemanticCache(engine, s, settings.cache.default_ttl_s, embed, label, compatible, crypto)


async def _after_models_load(rt: Runtime, auto: AutoRouter) -> None:
    """Prepare routing once the embedding models are up, off the start-up path."""
    for _ in range(600):
        if all(p.ready() for p in rt.providers.values() if p.supports_embeddings):
            break
        await asyncio.sleep(0.1)
    await auto.prepare()
