"""Prometheus metrics: one registry per runtime, fed by the usage event of each request.

Names mirror the OpenTelemetry GenAI semantic conventions where one exists
(``gen_ai_client_operation_duration_seconds``, ``gen_ai_client_token_usage``,
``gen_ai_server_time_to_first_token_seconds``,
``gen_ai_server_time_per_output_token_seconds``) and are ``strata_*`` otherwise.
Labels stay bounded: alias (names the config does not know become ``other``),
deployment (``provider/model``), provider, status, cache result, error type;
never user or key, and tenant only with ``observability.metrics.tenant_label``
(on the counters, not on the histograms).

Request metrics are updated once per request, from the meter's usage event
(:meth:`Metrics.observe`): each label combination's children are resolved once
and kept in a dict, so a request costs a few counter and histogram updates.
Everything that is state rather than an event (circuit breakers, in-flight
requests, local model queues, the usage buffer, Redis and database error
counts) is read when scraped, by :class:`RuntimeCollector`: the hot path pays
nothing for it.

Model-server timings (time to first token, time per output token, output tokens
per second) leave out cache hits, which generated nothing. Time to first token
and time per output token are measured on streams only (a plain response's first
token arrives with its last); output tokens per second is completion tokens over
the request's duration, streamed and plain.

Scraping: ``GET /metrics`` on the API port, unauthenticated unless
``hardening.metrics_token`` is set: keep that port behind the network, or set
``observability.metrics.port`` to serve metrics on their own port on 127.0.0.1
(and none on the API port); the token, when set, guards that port too. With
``observability.metrics.enabled: false`` there is no route and no per-request
hook at all.

Several processes: every process keeps its own registry, because the
scrape-time gauges read that process's live state. Strata runs one process per
instance (``strata serve``), and Prometheus scrapes each instance (each pod, each
container) on its own; running several processes on one host means giving each
its own ``metrics.port``. Prometheus' multiprocess mode (PROMETHEUS_MULTIPROC_DIR)
is not used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE

from strata.errors import AuthenticationError, QueueFull, RateLimited, ServiceUnavailable
from strata.limits.budget import BudgetExceeded
from strata.observability.config import MetricsSettings
from strata.usage.recorder import UsageEvent

log = logging.getLogger("strata.metrics")

# The alias label of requests for models the config does not define: clients
# choose the model string, and must not be able to grow the series count.
OTHER_ALIAS = "other"
# Loopback only: the separate port is for a local agent or a sidecar.
METRICS_HOST = "127.0.0.1"
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}

# Bucket boundaries recommended by the OpenTelemetry GenAI semantic conventions.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0)  # fmt: skip
# The convention's list, plus two finer buckets for small local and fake models.
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                1.0, 2.5)  # fmt: skip
TOKENS_PER_S_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

GEN_AI = (
    "gen_ai_operation_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "gen_ai_provider_name",
)


def rejection_reason(exc: BaseException | None) -> str | None:
    """Why the limits turned a request away (rate | budget | unavailable), if they did."""
    if exc is None or isinstance(exc, QueueFull):  # a busy local model is not a limit
        return None
    if isinstance(exc, RateLimited):
        return "rate"
    if isinstance(exc, BudgetExceeded):
        return "budget"
    if isinstance(exc, ServiceUnavailable) and exc.code == "rate_limit_unavailable":
        return "unavailable"
    return None


class _Series:
    """The children of every request metric for one label combination."""

    __slots__ = (
        "cache",
        "cost",
        "duration",
        "input_hist",
        "input_total",
        "output_hist",
        "output_total",
        "requests",
        "saved",
        "tokens_per_s",
        "tpot",
        "ttft",
    )

    def __init__(self, m: Metrics, key: tuple[Any, ...]) -> None:
        op, alias, provider, model, status, error_type, cache, tenant = key
        provider = provider or ""
        deployment = f"{provider}/{model or ''}" if provider else ""
        t = (tenant,) if m.tenant_label else ()
        gen = (op, alias, deployment, provider)
        self.duration = m.duration.labels(*gen, status, error_type or "")
        self.requests = m.requests.labels(alias, deployment, provider, status, cache or "", *t)
        self.cost = m.cost.labels(alias, deployment, provider, *t)
        self.input_hist = m.token_usage.labels(*gen, "input")
        self.output_hist = m.token_usage.labels(*gen, "output")
        self.input_total = m.tokens.labels(alias, deployment, provider, "input", *t)
        self.output_total = m.tokens.labels(alias, deployment, provider, "output", *t)
        self.ttft = m.ttft.labels(*gen)
        self.tpot = m.tpot.labels(*gen)
        self.tokens_per_s = m.tokens_per_s.labels(*gen)
        self.cache = m.cache_requests.labels(alias, cache) if cache else None
        self.saved = m.saved.labels(alias, *t)


class Metrics:
    """A runtime's metrics: its registry, the per-request hook, the scrape output."""

    def __init__(self, settings: MetricsSettings, aliases: Iterable[str]) -> None:
        self.settings = settings
        self.tenant_label = settings.tenant_label
        self.aliases = frozenset(aliases)
        self.registry = CollectorRegistry(auto_describe=False)
        # Requests begun and not yet finished, per endpoint (read when scraped).
        self.inflight: dict[str, int] = {}
        self._series: dict[tuple[Any, ...], _Series] = {}
        self._small: dict[tuple[Any, ...], Any] = {}
        self._runner: Any = None
        t = ("tenant",) if self.tenant_label else ()
        r = self.registry
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of chat and embeddings requests, as the client saw them.",
            [*GEN_AI, "status", "error_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per request, by token type (input, output).",
            [*GEN_AI, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first streamed token (streams; cache hits excluded).",
            GEN_AI,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first (streams; cache hits excluded).",
            GEN_AI,
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.tokens_per_s = Histogram(
            "strata_output_tokens_per_second",
            "Completion tokens over request duration (cache hits excluded).",
            GEN_AI,
            buckets=TOKENS_PER_S_BUCKETS,
            registry=r,
        )
        deployment = ("alias", "deployment", "provider")
        self.tokens = Counter(
            "strata_tokens_total",
            "Tokens processed, by token type (input, output).",
            [*deployment, "gen_ai_token_type", *t],
            registry=r,
        )
        self.requests = Counter(
            "strata_requests_total",
            "Chat and embeddings requests, by outcome and cache result.",
            [*deployment, "status", "cache", *t],
            registry=r,
        )
        self.cost = Counter(
            "strata_cost_usd_total",
            "Provider cost in USD (failed attempts' billed prompts included).",
            [*deployment, *t],
            registry=r,
        )
        self.saved = Counter(
            "strata_cache_saved_usd_total",
            "USD saved by cache hits (what the cached call had cost).",
            ["alias", *t],
            registry=r,
        )
        self.cache_requests = Counter(
            "strata_cache_requests_total",
            "Chat cache lookups: hit-exact, hit-semantic, miss, bypass.",
            ["alias", "result"],
            registry=r,
        )
        self.rejections = Counter(
            "strata_limit_rejections_total",
            "Requests turned away by limits: rate, budget, unavailable (store down, fail-closed).",
            ["alias", "reason", *t],
            registry=r,
        )
        self.retries = Counter(
            "strata_retries_total",
            "Provider attempts after the first.",
            ["alias"],
            registry=r,
        )
        self.fallbacks = Counter(
            "strata_fallbacks_total",
            "Requests answered by (or ended on) a deployment other than the first choice.",
            ["alias"],
            registry=r,
        )

    def started(self, endpoint: str) -> None:
        """A request began (its meter was made): counted in flight until observed."""
        self.inflight[endpoint] = self.inflight.get(endpoint, 0) + 1

    def observe(self, e: UsageEvent, exc: BaseException | None = None) -> None:
        """Hot path: the one update per request, from its finished usage event."""
        self.inflight[e.endpoint] = self.inflight.get(e.endpoint, 1) - 1
        alias = e.alias if e.alias in self.aliases or not e.alias else OTHER_ALIAS
        tenant = e.tenant_id if self.tenant_label else ""
        key = (e.endpoint, alias, e.provider, e.model, e.status, e.error_type, e.cache, tenant)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(self, key)
        latency = e.latency_ms / 1000
        s.duration.observe(latency)
        s.requests.inc()
        if s.cache is not None:
            s.cache.inc()
        if e.prompt_tokens:
            s.input_hist.observe(e.prompt_tokens)
            s.input_total.inc(e.prompt_tokens)
        if e.completion_tokens:
            s.output_hist.observe(e.completion_tokens)
            s.output_total.inc(e.completion_tokens)
        if e.cost_usd:
            s.cost.inc(float(e.cost_usd))
        hit = e.cache is not None and e.cache.startswith("hit-")
        if hit:
            if e.saved_usd:
                s.saved.inc(float(e.saved_usd))
        elif e.status == "ok" and e.completion_tokens:
            if latency > 0:
                s.tokens_per_s.observe(e.completion_tokens / latency)
            if e.stream and e.ttft_ms is not None:
                ttft = e.ttft_ms / 1000
                s.ttft.observe(ttft)
                if e.completion_tokens > 1:
                    s.tpot.observe(max(0.0, latency - ttft) / (e.completion_tokens - 1))
        if e.attempts > 1:
            self._child(self.retries, (alias,)).inc(e.attempts - 1)
        if e.fallback:
            self._child(self.fallbacks, (alias,)).inc()
        if exc is not None:
            reason = rejection_reason(exc)
            if reason is not None:
                t = (tenant,) if self.tenant_label else ()
                self._child(self.rejections, (alias, reason, *t)).inc()

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), labels)
        child = self._small.get(key)
        if child is None:
            child = self._small[key] = metric.labels(*labels)
        return child

    def watch(self, runtime: Any) -> None:
        """Read this runtime's state (breakers, queues, buffers, errors) when scraped."""
        self.registry.register(RuntimeCollector(self, runtime))

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(_WithoutCreated(self.registry))

    async def render_async(self) -> bytes:
        """render() on a thread: a scrape of a few hundred label sets takes tens of
        milliseconds, which the event loop should not stall for. Safe: children
        update under their own locks, and the runtime collector only reads."""
        return await asyncio.to_thread(self.render)

    async def serve(self, port: int, token: str | None = None) -> None:
        """Serve GET /metrics on 127.0.0.1:port, on this event loop; with ``token``
        (``hardening.metrics_token``) a scrape needs ``Authorization: Bearer``
        with it, as on the API port."""
        from aiohttp import web

        from strata.security.hardening import token_matches

        async def handle(request: web.Request) -> web.Response:
            if token is not None and not token_matches(request.headers.get("authorization"), token):
                err = AuthenticationError("/metrics needs 'Authorization: Bearer <metrics token>'.")
                return web.json_response(
                    err.to_dict(), status=err.status, headers={"www-authenticate": "Bearer"}
                )
            body = await self.render_async()
            return web.Response(body=body, headers={"content-type": CONTENT_TYPE})

        app = web.Application()
        app.router.add_get("/metrics", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, METRICS_HOST, port).start()
        self._runner = runner
        log.info("metrics on http://%s:%d/metrics", METRICS_HOST, port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class _WithoutCreated:
    """A registry's metrics less the ``*_created`` samples, which would double the
    series count for a timestamp Prometheus' text format does not need."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class RuntimeCollector:
    """Gauges and error counters read from a runtime's live objects at scrape time."""

    def __init__(self, metrics: Metrics, rt: Any) -> None:
        self.metrics = metrics
        self.rt = rt

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        rt = self.rt
        inflight = GaugeMetricFamily(
            "strata_requests_in_flight", "Requests being served now.", labels=["endpoint"]
        )
        for endpoint in ("chat", "embeddings"):
            inflight.add_metric([endpoint], self.metrics.inflight.get(endpoint, 0))
        yield inflight

        breakers = GaugeMetricFamily(
            "strata_circuit_breaker_state",
            "Circuit breaker per alias and deployment: 0 closed, 1 half-open, 2 open "
            "(this instance's view).",
            labels=["alias", "deployment"],
        )
        cb = rt.dispatcher.breakers
        for name, alias in rt.router.aliases.items():
            for t in rt.router.candidates(name, alias.kind):
                breakers.add_metric([name, t.label], BREAKER_VALUES.get(cb.state(t.key), 0))
        yield breakers

        queues = GaugeMetricFamily(
            "strata_local_queue_depth",
            "Requests waiting for a local model.",
            labels=["provider"],
        )
        for name, provider in rt.providers.items():
            queue = getattr(provider, "queue", None)
            if queue is not None:
                queues.add_metric([name], queue.depth)
        yield queues

        rec = rt.recorder
        yield GaugeMetricFamily(
            "strata_usage_buffer_records",
            "Usage records in memory, not yet written to PostgreSQL.",
            value=rec.depth,
        )
        yield CounterMetricFamily(
            "strata_usage_write_failures",
            "Failed usage batch writes (each retried with backoff).",
            value=rec.write_failures,
        )
        yield CounterMetricFamily(
            "strata_usage_spilled_records",
            "Usage records spilled to the local file while the buffer was full.",
            value=rec.spilled,
        )

        redis = CounterMetricFamily(
            "strata_redis_errors", "Redis failures, by component.", labels=["component"]
        )
        for component, n in self._redis_errors():
            redis.add_metric([component], n)
        yield redis
        db = CounterMetricFamily(
            "strata_db_errors", "PostgreSQL failures, by component.", labels=["component"]
        )
        for component, n in self._db_errors():
            db.add_metric([component], n)
        yield db

    def _redis_errors(self) -> list[tuple[str, int]]:
        rt = self.rt
        return [
            ("cache", rt.chat.cache.errors),
            ("rate_limits", rt.rate.errors),
            ("budgets", rt.budgets.errors),
        ]

    def _db_errors(self) -> list[tuple[str, int]]:
        rt = self.rt
        out = [("usage", rt.recorder.write_failures), ("limit_overrides", rt.overrides.errors)]
        if rt.chat.semantic is not None:
            out.append(("semantic_cache", rt.chat.semantic.errors))
        return out
