"""Rate limits and budgets on the request path.

Before a call, one Redis round trip (``strata.limits.gate``) checks every rate
limit that applies (key, user, tenant, alias) and reserves the call's worst-case
cost against every budget; after it, whatever the outcome, the meter settles the
actual cost and corrects the token estimate (in the background).

Estimates: tokens = the prompt estimate plus ``max_tokens`` when the caller sets
it (the correction after the call makes the minute's count exact). Worst-case
cost = prompt estimate plus ``max_tokens`` (``budgets.default_max_tokens`` when
unset) at the dearest deployment the alias could fall back to.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from strata.gateway.meter import Meter
from strata.limits.gate import Gate
from strata.observability import tracing
from strata.routing.router import Router
from strata.usage.pricing import Pricer


class Quota:
    def __init__(
        self, gate: Gate | None, router: Router, pricer: Pricer, default_max_tokens: int
    ) -> None:
        self.gate = gate
        self.router = router
        self.pricer = pricer
        self.default_max_tokens = default_max_tokens

    async def admit(
        self,
        meter: Meter,
        *,
        requested: str,
        alias: str,
        kind: str,
        prompt_tokens: int,
        max_tokens: int | None = None,
    ) -> None:
        """Raise RateLimited / BudgetExceeded (with the x-ratelimit-* headers), or let
        the request through; the meter settles the admission when it finishes."""
        if self.gate is None:
            return
        p = meter.principal
        with tracing.span("limits"):
            admission = await self.gate.admit(
                tenant=p.tenant_id,
                user=p.user_id,
                key=p.key_id,
                alias=requested,
                tokens=prompt_tokens + (max_tokens or 0),
                worst_case_usd=self.worst_case(alias, kind, prompt_tokens, max_tokens),
            )
        meter.admitted(self.gate, admission)

    def worst_case(
        self, alias: str, kind: str, prompt_tokens: int, max_tokens: int | None
    ) -> Decimal:
        out = 0 if kind == "embedding" else (max_tokens or self.default_max_tokens)
        return max(
            (
                self.pricer.cost(t.provider.name, t.model, prompt_tokens, out)
                for t in self.router.candidates(alias, kind)
            ),
            default=Decimal(0),
        )


def max_tokens_of(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(value) if isinstance(value, int) and value > 0 else None
