"""Forecast the monthly bill from measured traffic, and what would pay off on it.

The usage records give, per alias and deployment: requests, prompt and
completion tokens, cost, cache hits and misses, and whether a request streamed.
They hold no prompt text and no prompt hash, so the identical-prompt share is
bounded from above by the requests whose prompt token count repeats an earlier
one (identical prompts to one model have identical counts); the cache
recommendation says "up to". Non-streamed requests are the batch candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from strata.errors import ConfigError
from strata.planner.breakeven import Breakeven
from strata.planner.catalog import PriceTable, gateway_default
from strata.planner.model import MILLION, num, usd
from strata.storage.repositories.usage_traffic import TrafficRow

MONTH_DAYS = Decimal(30)
HOURS_PER_MONTH = Decimal(730)  # 8,760 / 12


def parse_growth(text: str) -> Decimal:
    """``10x``, ``1.5``, ``150%`` -> a multiplier on traffic."""
    t = text.strip().lower()
    try:
        if t.endswith("x"):
            value = Decimal(t[:-1])
        elif t.endswith("%"):
            value = Decimal(t[:-1]) / 100
        else:
            value = Decimal(t)
    except InvalidOperation:
        raise ConfigError(f"--growth: {text!r} is not a multiplier (e.g. 10x, 1.5, 150%)") from None
    if value <= 0:
        raise ConfigError(f"--growth: {text!r} must be more than zero")
    return value


@dataclass(frozen=True)
class ModelForecast:
    alias: str
    provider: str | None
    model: str | None
    requests: Decimal
    prompt_tokens: Decimal
    completion_tokens: Decimal
    cost: Decimal
    measured_cost: Decimal

    @property
    def tokens(self) -> Decimal:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Recommendation:
    alias: str
    strategy: str
    saving: Decimal  # monthly, estimated
    own_cost: Decimal
    text: str
    upper_bound: bool = False


@dataclass
class Forecast:
    days: int
    growth: Decimal
    models: list[ModelForecast]
    recommendations: list[Recommendation]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> Decimal:
        return sum((m.cost for m in self.models), Decimal(0))

    def by_alias(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for m in self.models:
            out[m.alias] = out.get(m.alias, Decimal(0)) + m.cost
        return out


def forecast(
    rows: list[TrafficRow],
    days: int,
    growth: Decimal,
    table: PriceTable,
    base_urls: dict[str, str] | None = None,
) -> Forecast:
    """``base_urls``: provider name -> base URL from strata.yaml, so a provider
    named differently from the price table still matches by its API host."""
    factor = MONTH_DAYS / Decimal(days) * growth
    models = [
        ModelForecast(
            r.alias,
            r.provider,
            r.model,
            r.requests * factor,
            r.prompt_tokens * factor,
            r.completion_tokens * factor,
            r.cost_usd * factor,
            r.cost_usd,
        )
        for r in rows
    ]
    fc = Forecast(days, growth, models, [])
    _cache(rows, factor, fc)
    _per_deployment(rows, factor, table, fc, base_urls or {})
    _self_host(models, table, fc)
    fc.recommendations.sort(key=lambda r: r.saving, reverse=True)
    return fc


def _cache(rows: list[TrafficRow], factor: Decimal, fc: Forecast) -> None:
    aliases = sorted({r.alias for r in rows})
    for alias in aliases:
        mine = [r for r in rows if r.alias == alias]
        cost = sum((r.cost_usd for r in mine), Decimal(0)) * factor
        hits = sum(r.cache_hits for r in mine)
        if hits or cost <= 0:
            continue
        if sum(r.cache_misses for r in mine):
            fc.notes.append(
                f"{alias}: the cache is on and found no identical prompt within its TTL; "
                "caching would not pay on this traffic"
            )
            continue
        n = sum(r.requests for r in mine)
        repeats = sum(max(0, r.uncached - r.distinct_prompt_sizes) for r in mine)
        share = Decimal(repeats) / Decimal(n) if n else Decimal(0)
        if share <= 0:
            continue
        fc.recommendations.append(
            Recommendation(
                alias,
                "cache",
                share * cost,
                Decimal(0),
                f"cache hit rate on {alias} is 0% (cache off or bypassed): identical prompts "
                f"are at most {share:.0%} of its traffic ({repeats} of {n} requests repeat an "
                "earlier prompt's token count; no prompt hashes are recorded, so this is an "
                f"upper bound). The exact cache could save up to {usd(share * cost)}/month; "
                "it uses the Redis Strata already runs",
                upper_bound=True,
            )
        )


def _per_deployment(
    rows: list[TrafficRow],
    factor: Decimal,
    table: PriceTable,
    fc: Forecast,
    base_urls: dict[str, str],
) -> None:
    for r in rows:
        if r.provider is None or r.model is None:
            continue
        price = gateway_default(table, r.provider, base_urls.get(r.provider), r.model)
        if price is None:
            continue
        pin, pout = r.prompt_tokens * factor, r.completion_tokens * factor
        at_table = (pin * price.input_per_1m + pout * price.output_per_1m) / MILLION
        smaller = table.api(price.smaller) if price.smaller else None
        if smaller is not None:
            cheaper = (pin * smaller.input_per_1m + pout * smaller.output_per_1m) / MILLION
            if cheaper < at_table:
                fc.recommendations.append(
                    Recommendation(
                        r.alias,
                        "model",
                        at_table - cheaper,
                        Decimal(0),
                        f"{r.alias}: {price.smaller} instead of {r.model} would cost "
                        f"{usd(cheaper)} instead of {usd(at_table)}/month; benchmark its "
                        "quality on your prompts first",
                    )
                )
        if price.batch_discount and r.unstreamed_cost_usd > 0:
            saving = price.batch_discount * r.unstreamed_cost_usd * factor
            fc.recommendations.append(
                Recommendation(
                    r.alias,
                    "batch",
                    saving,
                    Decimal(0),
                    f"{r.alias}: {r.requests - r.streamed} of {r.requests} requests did not "
                    f"stream; those that can wait for the provider's batch API "
                    f"({price.batch_discount:.0%} off) would save up to {usd(saving)}/month",
                    upper_bound=True,
                )
            )


def _self_host(models: list[ModelForecast], table: PriceTable, fc: Forecast) -> None:
    by_alias: dict[str, list[ModelForecast]] = {}
    for m in models:
        by_alias.setdefault(m.alias, []).append(m)
    for alias, ms in sorted(by_alias.items()):
        cost = sum((m.cost for m in ms), Decimal(0))
        tokens = sum((m.tokens for m in ms), Decimal(0))
        if cost <= 0 or tokens <= 0:
            continue
        for name, gpu in sorted(table.gpus.items()):
            if gpu.tokens_per_s is None or gpu.reserved_per_month is None:
                continue
            # The alias's own price per token: what it costs now.
            be = Breakeven(
                alias,
                name,
                "reserved",
                cost / tokens * MILLION,
                gpu.reserved_per_month,
                gpu.tokens_per_s,
                gpu.concurrency,
                HOURS_PER_MONTH,
            )
            gpu_cost = be.gpu_cost(tokens)
            if gpu_cost < cost:
                fc.recommendations.append(
                    Recommendation(
                        alias,
                        "self_host",
                        cost - gpu_cost,
                        gpu_cost,
                        f"{alias}: {be.gpus_needed(tokens)} x {name} reserved "
                        f"({usd(gpu_cost)}/month) would serve its {num(tokens / MILLION)}M "
                        f"tokens/month for less than the API's {usd(cost)}",
                    )
                )
            else:
                fc.notes.append(f"{alias} on {name}: {be.verdict()}")
