"""Per-call cost from the price table.

API deployments are priced per token. A self-hosted deployment is priced by its
GPU: ``gpu_usd_per_hour`` divided by the tokens per hour it actually served over
a sliding window, so an idle GPU makes each token dear, as it is. Until the
window has seen enough traffic, the configured fallback throughput is used.
A deployment strata.yaml leaves unpriced takes its price from the planner's
price table (strata/planner/prices.yaml), the one the cost planner uses.
"""

from __future__ import annotations

import time
from collections import deque
from decimal import Decimal

from strata.planner.catalog import gateway_default, load_table
from strata.settings import Price, Settings

MILLION = Decimal(1_000_000)
HOUR = Decimal(3600)
# Ten decimal places matches the Numeric(20, 10) column.
QUANTUM = Decimal("0.0000000001")
# Bucket width of the throughput window; one minute keeps memory tiny.
BUCKET_S = 60.0


class ThroughputWindow:
    """Tokens served in a sliding window, bucketed by minute."""

    def __init__(self, window_s: float, min_observed_s: float) -> None:
        self.window_s = window_s
        self.min_observed_s = min_observed_s
        self._buckets: deque[list[float]] = deque()  # [bucket_start, tokens]
        self._first_seen: float | None = None

    def add(self, tokens: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._first_seen is None:
            self._first_seen = now
        start = now - (now % BUCKET_S)
        if self._buckets and self._buckets[-1][0] == start:
            self._buckets[-1][1] += tokens
        else:
            self._buckets.append([start, float(tokens)])
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] + BUCKET_S <= now - self.window_s:
            self._buckets.popleft()

    def tokens_per_hour(self, now: float | None = None) -> float | None:
        """Measured throughput, or None until ``min_observed_s`` of traffic history."""
        now = time.monotonic() if now is None else now
        if self._first_seen is None:
            return None
        observed = min(now - self._first_seen, self.window_s)
        if observed < self.min_observed_s:
            return None
        self._expire(now)
        total = sum(b[1] for b in self._buckets)
        return total / observed * 3600.0 if total > 0 else None


def _table_price(settings: Settings, provider: str, model: str) -> Price | None:
    """The shared price table's price, for a deployment strata.yaml leaves unpriced."""
    if not settings.usage.default_prices:
        return None
    base_url = settings.providers[provider].options().get("base_url")
    found = gateway_default(
        load_table(settings.usage.price_file),
        provider,
        base_url if isinstance(base_url, str) else None,
        model,
    )
    if found is None:
        return None
    return Price(input_per_1m=found.input_per_1m, output_per_1m=found.output_per_1m)


class Pricer:
    def __init__(self, settings: Settings) -> None:
        self._prices: dict[tuple[str, str], Price] = {}
        self._windows: dict[str, ThroughputWindow] = {}
        for alias in settings.models.values():
            for dep in alias.deployments:
                provider = settings.providers[dep.provider]
                price = (
                    dep.price
                    or provider.price
                    or _table_price(settings, dep.provider, dep.model)
                    or Price()
                )
                self._prices[(dep.provider, dep.model)] = price
                if price.gpu_usd_per_hour is not None:
                    # One window per provider: the GPU is shared by its models.
                    self._windows.setdefault(
                        dep.provider,
                        ThroughputWindow(
                            settings.usage.throughput_window_s,
                            settings.usage.throughput_min_observed_s,
                        ),
                    )

    def price_of(self, provider: str, model: str) -> Price:
        return self._prices.get((provider, model)) or Price()

    def cost(
        self, provider: str, model: str, prompt_tokens: int, completion_tokens: int
    ) -> Decimal:
        price = self._prices.get((provider, model))
        if price is None:
            return Decimal(0)
        if price.gpu_usd_per_hour is not None:
            return self._self_hosted(
                provider, price, price.gpu_usd_per_hour, prompt_tokens + completion_tokens
            )
        cost = (
            Decimal(prompt_tokens) * price.input_per_1m
            + Decimal(completion_tokens) * price.output_per_1m
        ) / MILLION
        return cost.quantize(QUANTUM)

    def _self_hosted(
        self, provider: str, price: Price, gpu_hourly: Decimal, tokens: int
    ) -> Decimal:
        window = self._windows[provider]
        window.add(tokens)
        tph = window.tokens_per_hour() or float(price.fallback_tokens_per_hour or 1)
        return (Decimal(tokens) * gpu_hourly / Decimal(repr(tph))).quantize(QUANTUM)
