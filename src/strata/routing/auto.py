"""Capability-based routing for aliases with a ``route``: cheap tier or strong tier.

Order of precedence for one request:
1. the key has auto-routing turned off by an operator: the cheap tier;
2. the caller forces a tier (``x-strata-tier`` header, or ``metadata.strata_tier``);
3. the conversation was escalated before (sticky, in Redis): the strong tier;
4. the complexity score against the alias's calibrated threshold.

Scoring failures never fail a request: the scorer falls back to features alone.
Stickiness needs Redis; without it each turn is scored on its own.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from strata.errors import InvalidRequest
from strata.providers.base import Provider
from strata.routing.cues import last_user_text
from strata.security.keys import Principal
from strata.settings import AutoRoute, Settings

log = logging.getLogger("strata.route")

STICKY_PREFIX = "strata:route:sticky:"
TIERS = ("cheap", "strong")


@dataclass(frozen=True, slots=True)
class Decision:
    tier: str
    alias: str
    score: float | None
    reason: str  # score | sticky | forced | disabled

    def header(self) -> bytes:
        score = "" if self.score is None else f"; score={self.score:.3f}"
        return f"{self.tier}; reason={self.reason}{score}".encode()


class AutoRouter:
    def __init__(self, settings: Settings, providers: dict[str, Provider], redis: Any) -> None:
        self.redis = redis
        self.routes = {n: a.route for n, a in settings.models.items() if a.route is not None}
        self._scorers: dict[str, Any] = {}
        if self.routes:
            # Here, not at import: the scorer pulls in numpy, which a server
            # without auto aliases need not carry (about 10 MiB).
            from strata.routing.complexity import ComplexityScorer
        for name, route in self.routes.items():
            embed = None
            if route.embeddings is not None:
                dep = settings.models[route.embeddings].deployments[0]
                embed = _embedder(providers[dep.provider], dep.model)
            self._scorers[name] = ComplexityScorer(embed)

    async def prepare(self) -> None:
        """Embed the exemplars ahead of the first request (best effort)."""
        for name, scorer in self._scorers.items():
            try:
                await scorer.prepare()
            except Exception as exc:
                log.warning("route %s: exemplars not embedded yet (%s)", name, type(exc).__name__)

    def is_routed(self, alias: str) -> bool:
        return alias in self.routes

    async def decide(
        self, alias: str, body: dict[str, Any], principal: Principal, forced: str | None
    ) -> Decision:
        route = self.routes[alias]
        # Always taken out of the body, even when the header wins: it is ours.
        from_metadata = _pop_metadata_tier(body)
        forced = forced or from_metadata
        if not principal.auto_routing:
            return Decision("cheap", route.cheap, None, "disabled")
        if forced is not None:
            if forced not in TIERS:
                raise InvalidRequest(
                    f"unknown tier {forced!r}: use 'cheap' or 'strong'", param="x-strata-tier"
                )
            return Decision(forced, getattr(route, forced), None, "forced")
        sticky = _conversation_key(principal, body)
        if route.sticky_s and sticky and await self._is_sticky(sticky):
            return Decision("strong", route.strong, None, "sticky")
        score = await self._scorers[alias].score(body)
        if score >= route.threshold:
            if route.sticky_s and sticky:
                await self._stick(sticky, route)
            return Decision("strong", route.strong, score, "score")
        return Decision("cheap", route.cheap, score, "score")

    async def _is_sticky(self, key: str) -> bool:
        try:
            return bool(await self.redis.exists(STICKY_PREFIX + key))
        except Exception as exc:
            log.info("stickiness unavailable (%s)", type(exc).__name__)
            return False

    async def _stick(self, key: str, route: AutoRoute) -> None:
        try:
            await self.redis.set(STICKY_PREFIX + key, "1", ex=max(1, int(route.sticky_s)))
        except Exception as exc:
            log.info("stickiness unavailable (%s)", type(exc).__name__)


def _embedder(provider: Provider, model: str) -> Any:
    """The scorer's embedding function. For the embedded model, its input word-piece
    vectors (no transformer pass: ~0.4 ms instead of ~24 ms here, and as good for
    the exemplar vote, see bench/routing/README.md); else the provider's endpoint."""
    static: list[Any] = []

    async def embed(texts: list[str]) -> list[list[float]]:
        if not static:
            loaded = getattr(provider, "sentence_transformer", None)
            if loaded is None:
                return (await provider.embed(texts, model)).vectors
            from strata.routing.complexity import static_token_embed

            static.append(static_token_embed(loaded))
        vectors: list[list[float]] = await static[0](texts)
        return vectors

    return embed


def _pop_metadata_tier(body: dict[str, Any]) -> str | None:
    """Take ``metadata.strata_tier`` out of the body: it is for Strata, not upstreams."""
    meta = body.get("metadata")
    if not isinstance(meta, dict) or "strata_tier" not in meta:
        return None
    meta = dict(meta)
    tier = meta.pop("strata_tier")
    if meta:
        body["metadata"] = meta
    else:
        del body["metadata"]
    return str(tier)


def _conversation_key(principal: Principal, body: dict[str, Any]) -> str | None:
    """A conversation is its tenant, system prompt and first user turn: escalating
    any turn (the first included) keeps the later turns on the strong tier."""
    messages = body.get("messages") or []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return None
    system: dict[str, Any] = next(
        (m for m in messages if isinstance(m, dict) and m.get("role") in ("system", "developer")),
        {},
    )
    first = last_user_text({"messages": [users[0]]})
    raw = f"{principal.tenant_id}\x00{system.get('content')!s}\x00{first}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]
