"""API versus self-hosted: break-even tokens, the utilisation it needs, capacity.

A GPU rented by the month (reserved, or on demand and left running) costs the
same whatever it serves; an API costs its blended price per token. With
    C = the GPU's monthly cost, K = its monthly capacity = tokens/s x 3600 x hours,
    p = the API's blended price per token (input share x input + rest x output),
the two cost the same at T* = C / p tokens a month, which needs T* / K of the
GPU. Above 100% one GPU cannot serve T*; more GPUs raise cost and capacity
together, so the needed utilisation never drops: self-hosting never breaks even.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from strata.errors import ConfigError
from strata.planner.catalog import PriceTable
from strata.planner.model import MILLION, SECONDS_PER_HOUR, num, rate, usd


@dataclass(frozen=True)
class Breakeven:
    api: str
    gpu: str
    billing: str
    api_per_1m: Decimal  # blended
    gpu_month: Decimal  # one GPU, one month, always on
    tokens_per_s: Decimal
    concurrency: int
    hours_per_month: Decimal

    @property
    def capacity(self) -> Decimal:
        """Tokens one GPU serves in a month at 100% utilisation."""
        return self.tokens_per_s * SECONDS_PER_HOUR * self.hours_per_month

    @property
    def gpu_per_1m_at_capacity(self) -> Decimal:
        return self.gpu_month / self.capacity * MILLION

    @property
    def tokens(self) -> Decimal | None:
        """Break-even monthly tokens (None: the API is free, so never)."""
        if self.api_per_1m <= 0:
            return None
        return self.gpu_month / self.api_per_1m * MILLION

    @property
    def utilisation(self) -> Decimal | None:
        t = self.tokens
        return None if t is None else t / self.capacity

    @property
    def never(self) -> bool:
        u = self.utilisation
        return u is None or u > 1

    def api_cost(self, tokens: Decimal) -> Decimal:
        return tokens * self.api_per_1m / MILLION

    def gpus_needed(self, tokens: Decimal) -> int:
        return max(1, math.ceil(tokens / self.capacity))

    def gpu_cost(self, tokens: Decimal) -> Decimal:
        return self.gpu_month * self.gpus_needed(tokens)

    def verdict(self) -> str:
        t, u = self.tokens, self.utilisation
        tenth = Decimal("0.1")
        cap = (
            f"the {num((self.capacity / MILLION).quantize(tenth))}M tokens one GPU serves in a "
            f"month at {num(self.tokens_per_s)} tokens/s"
        )
        if t is None or u is None:
            return f"the API costs nothing per token: {self.gpu} never breaks even"
        need = f"{num((t / MILLION).quantize(tenth))}M tokens a month"
        pct = f"{(u * 100).quantize(tenth)}%"
        if u > 1:
            return (
                f"never breaks even: {usd(self.gpu_month)} a month buys {need} of {self.api} "
                f"at {rate(self.api_per_1m)}/1M, {pct} of {cap} (at full load the GPU costs "
                f"{rate(self.gpu_per_1m_at_capacity)}/1M tokens)"
            )
        return f"breaks even at {need}: {pct} of {cap}"


def breakeven(
    table: PriceTable,
    api: str,
    gpu: str,
    *,
    billing: str = "reserved",
    input_share: Decimal = Decimal("0.7"),
    hours_per_month: Decimal = Decimal(730),
    tokens_per_s: Decimal | None = None,
) -> Breakeven:
    price = table.api(api)
    if price is None:
        raise ConfigError(f"api: unknown API price {api!r} (known: {', '.join(table.api_refs())})")
    g = table.gpus.get(gpu)
    if g is None:
        raise ConfigError(
            f"gpu: unknown GPU price {gpu!r} (known: {', '.join(sorted(table.gpus))})"
        )
    tps = tokens_per_s if tokens_per_s is not None else g.tokens_per_s
    if tps is None or tps <= 0:
        raise ConfigError(f"gpu: {gpu} has no tokens_per_s; give --tokens-per-s")
    if billing == "reserved":
        if g.reserved_per_month is None:
            raise ConfigError(f"billing: {gpu} has no reserved_per_month price")
        month = g.reserved_per_month
    else:
        if g.on_demand_per_hour is None:
            raise ConfigError(f"billing: {gpu} has no on_demand_per_hour price")
        month = g.on_demand_per_hour * hours_per_month
    blended = input_share * price.input_per_1m + (1 - input_share) * price.output_per_1m
    return Breakeven(api, gpu, billing, blended, month, tps, g.concurrency, hours_per_month)
