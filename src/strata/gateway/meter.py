"""Per-request metering: exactly one usage record per request, whatever happens."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from strata.cache.exact import Hit
from strata.errors import StrataError
from strata.routing.auto import Decision
from strata.routing.dispatch import Outcome
from strata.routing.router import Target
from strata.security.keys import Principal
from strata.usage.pricing import Pricer
from strata.usage.recorder import UsageEvent, UsageRecorder

if TYPE_CHECKING:
    from strata.observability.metrics import Metrics


class Meter:
    __slots__ = (
        "_done",
        "_start",
        "admission",
        "decision",
        "event",
        "exc",
        "gate",
        "metrics",
        "outcome",
        "pricer",
        "principal",
        "prompt_estimate",
        "recorder",
        "similarity",
    )

    def __init__(
        self,
        recorder: UsageRecorder,
        pricer: Pricer,
        principal: Principal,
        request_id: str,
        endpoint: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.recorder = recorder
        self.metrics = metrics
        self.exc: BaseException | None = None
        if metrics is not None:
            metrics.started(endpoint)
        self.pricer = pricer
        self._start = time.perf_counter()
        self._done = False
        self.principal = principal
        self.prompt_estimate = 0
        self.similarity: float | None = None
        self.gate: Any = None  # strata.limits.gate.Gate, once admitted
        self.admission: Any = None
        self.event = UsageEvent(
            request_id=request_id,
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            key_id=principal.key_id,
            endpoint=endpoint,
            alias="",
        )
        self.outcome = Outcome()
        self.decision: Decision | None = None

    def admitted(self, gate: Any, admission: Any) -> None:
        """Rate limits passed and the worst case reserved: settled when this finishes."""
        self.gate, self.admission = gate, admission

    def quota_headers(self) -> list[tuple[bytes, bytes]]:
        return self.admission.headers() if self.admission is not None else []

    def on_target(self, target: Target) -> None:
        """Called before each attempt: the record names the deployment that answered
        (under the alias the client asked for, which may be a routed one)."""
        self.event.alias = self.event.alias or target.alias
        self.event.provider = target.provider.name
        self.event.model = target.model

    def first_token(self) -> None:
        if self.event.ttft_ms is None:
            self.event.ttft_ms = (time.perf_counter() - self._start) * 1000

    def tokens(self, prompt: int, completion: int) -> None:
        self.event.prompt_tokens = prompt
        self.event.completion_tokens = completion

    def ok(self) -> None:
        self._finish("ok", 200, None)

    def cancelled(self) -> None:
        self._finish("cancelled", 499, "client_disconnected")

    def failed(self, exc: BaseException) -> None:
        self.exc = exc
        if isinstance(exc, StrataError):
            self._finish("error", exc.status, type(exc).__name__)
        else:
            self._finish("error", 500, type(exc).__name__)

    @property
    def done(self) -> bool:
        return self._done

    def _finish(self, status: str, code: int, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        e = self.event
        e.status, e.status_code, e.error_type = status, code, error
        e.latency_ms = (time.perf_counter() - self._start) * 1000
        e.attempts = self.outcome.attempts
        e.fallback = self.outcome.fallback
        if e.cache is not None and e.cache.startswith("hit-"):
            e.cost_usd = Decimal(0)
        elif e.provider and (e.prompt_tokens or e.completion_tokens):
            e.cost_usd = self.pricer.cost(
                e.provider, e.model or "", e.prompt_tokens, e.completion_tokens
            )
        else:
            e.cost_usd = Decimal(0)
        if self.outcome.billed_failures:
            # Prompt tokens of timed-out attempts, at each deployment's input price.
            prompt = e.prompt_tokens or self.prompt_estimate
            e.failed_cost_usd = sum(
                (
                    self.pricer.cost(t.provider.name, t.model, prompt, 0)
                    for t in self.outcome.billed_failures
                ),
                start=Decimal(0),
            )
            e.cost_usd += e.failed_cost_usd
        if self.admission is not None:
            # The budget is charged what the usage record says, exactly once.
            self.gate.finish(
                self.admission,
                tokens=e.prompt_tokens + e.completion_tokens,
                cost_usd=e.cost_usd,
            )
        self.recorder.record(e)
        if self.metrics is not None:
            self.metrics.observe(e, self.exc)

    def routed(self, decision: Decision) -> None:
        self.decision = decision
        score = "" if decision.score is None else f":{decision.score:.3f}"
        self.event.route = f"{decision.tier}:{decision.reason}{score}"

    def cache_hit(self, hit: Hit) -> None:
        """Served from cache: costs nothing, and saves what the original call cost."""
        self.event.cache = "hit-exact" if hit.similarity is None else "hit-semantic"
        self.similarity = hit.similarity
        self.event.provider, self.event.model = hit.provider, hit.model
        self.tokens(hit.prompt_tokens, hit.completion_tokens)
        self.event.saved_usd = hit.cost_usd
        self.first_token()

    def headers(self) -> list[tuple[bytes, bytes]]:
        """What happened, for the client: x-strata-model, -attempts, -fallback, -route,
        -cache."""
        o = self.outcome
        out = self.quota_headers()
        if self.event.cache is not None:
            out.append((b"x-strata-cache", self.event.cache.encode()))
            if self.similarity is not None:
                out.append((b"x-strata-cache-similarity", f"{self.similarity:.4f}".encode()))
        if o.target is not None:
            out += [
                (b"x-strata-model", o.target.label.encode()),
                (b"x-strata-attempts", str(o.attempts).encode()),
                (b"x-strata-fallback", b"true" if o.fallback else b"false"),
            ]
        if self.decision is not None:
            out.append((b"x-strata-route", self.decision.header()))
        return out
