"""Cost per call: per-token API prices and GPU-hour pricing for self-hosted models.

Figures come from the reference architecture
(shared/reference/production-ai-architecture.txt).
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import pytest

from strata.settings import Price, Settings, load_settings
from strata.usage import pricing
from strata.usage.pricing import Pricer, ThroughputWindow

LLAMA_70B = "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"
H100_PER_HOUR = "2.0548"  # $1,500/month reserved
H100_FALLBACK_TPH = 720_000  # ~200 tokens/s


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STRATA_"):
            monkeypatch.delenv(name)


class Clock:
    def __init__(self) -> None:
        self.now = 50_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(pricing, "time", c)
    return c


def make_settings(**usage: Any) -> Settings:
    return load_settings(
        None,
        usage=usage,
        providers={
            "together": {"type": "openai_compat", "base_url": "https://api.together.xyz/v1"},
            "openai": {
                "type": "openai_compat",
                "base_url": "https://api.openai.com/v1",
                "price": {"input_per_1m": "0.50", "output_per_1m": "1.50"},
            },
            "vllm": {
                "type": "openai_compat",
                "base_url": "http://127.0.0.1:9/v1",
                "price": {
                    "gpu_usd_per_hour": H100_PER_HOUR,
                    "fallback_tokens_per_hour": H100_FALLBACK_TPH,
                },
            },
            "local": {"type": "local_llama"},
        },
        models={
            "llama-70b": {
                "provider": "together",
                "model": LLAMA_70B,
                "price": {"input_per_1m": 0.88, "output_per_1m": 1.06},
            },
            "gpt-3.5-turbo": {"provider": "openai", "model": "gpt-3.5-turbo"},
            "gpt-cheap": {
                "provider": "openai",
                "model": "gpt-cheap",
                "price": {"input_per_1m": "0.10", "output_per_1m": "0.20"},
            },
            "llama-8b": {"provider": "vllm", "model": "llama-8b"},
            "llama-8b-ft": {"provider": "vllm", "model": "llama-8b-ft"},
            "default": {"provider": "local", "model": "smollm2-135m-instruct"},
        },
    )


@pytest.fixture
def pricer() -> Pricer:
    return Pricer(make_settings(throughput_window_s=3600, throughput_min_observed_s=300))


def test_together_llama_70b_reference_month(pricer: Pricer) -> None:
    # Reference: 21M input x $0.88 = $18.48; 9M output x $1.06 = $9.54. The
    # reference prints the monthly total as $27.92, an arithmetic slip: its own two
    # lines sum to $28.02 (its cost breakdown later rounds Together AI to $28).
    assert pricer.cost("together", LLAMA_70B, 21_000_000, 0) == Decimal("18.48")
    assert pricer.cost("together", LLAMA_70B, 0, 9_000_000) == Decimal("9.54")
    month = pricer.cost("together", LLAMA_70B, 21_000_000, 9_000_000)
    assert month == Decimal("18.48") + Decimal("9.54") == Decimal("28.02")


def test_gpt_35_turbo_reference_prices(pricer: Pricer) -> None:
    # Reference: 5M tokens monthly, input $2.50 and output $7.50.
    assert pricer.cost("openai", "gpt-3.5-turbo", 5_000_000, 0) == Decimal("2.50")
    assert pricer.cost("openai", "gpt-3.5-turbo", 0, 5_000_000) == Decimal("7.50")
    # One ordinary request: 1,000 prompt + 500 completion tokens.
    assert pricer.cost("openai", "gpt-3.5-turbo", 1000, 500) == Decimal("0.00125")


def test_costs_are_exact_decimals(pricer: Pricer) -> None:
    one = pricer.cost("together", LLAMA_70B, 1, 0)
    assert isinstance(one, Decimal)
    assert one == Decimal("0.00000088")
    assert pricer.cost("together", LLAMA_70B, 0, 3) == Decimal("0.00000318")
    # A thousand small calls add up to exactly the price of one big call: no float drift.
    small = sum((pricer.cost("together", LLAMA_70B, 7, 3) for _ in range(1000)), Decimal(0))
    assert small == pricer.cost("together", LLAMA_70B, 7000, 3000) == Decimal("0.0093400")
    # Ten decimal places, as stored in Numeric(20, 10).
    assert pricer.cost("together", LLAMA_70B, 123_457, 0).as_tuple().exponent == -10


def test_yaml_float_prices_are_exact() -> None:
    price = Price(input_per_1m=0.1, output_per_1m=1.06)
    assert price.input_per_1m == Decimal("0.1")
    assert price.output_per_1m == Decimal("1.06")


def test_deployment_price_overrides_provider_price(pricer: Pricer) -> None:
    assert pricer.price_of("openai", "gpt-cheap").input_per_1m == Decimal("0.10")
    assert pricer.cost("openai", "gpt-cheap", 1_000_000, 1_000_000) == Decimal("0.30")
    assert pricer.price_of("openai", "gpt-3.5-turbo").input_per_1m == Decimal("0.50")


def test_unpriced_and_unknown_deployments_cost_nothing(pricer: Pricer) -> None:
    assert pricer.cost("local", "smollm2-135m-instruct", 1000, 1000) == Decimal(0)
    assert pricer.cost("together", "not-configured", 1000, 1000) == Decimal(0)
    assert pricer.cost("nobody", "nothing", 1000, 1000) == Decimal(0)
    assert pricer.price_of("nobody", "nothing") == Price()


def test_reference_h100_hourly_price() -> None:
    # $1,500 per month over 8,760 / 12 = 730 hours a month.
    hourly = Decimal(1500) * 12 / Decimal(8760)
    assert hourly.quantize(Decimal("0.0001")) == Decimal(H100_PER_HOUR)
    # ~200 tokens per second.
    assert H100_FALLBACK_TPH / 3600 == 200


def test_self_hosted_uses_fallback_throughput_at_first(pricer: Pricer, clock: Clock) -> None:
    # An hour's worth of tokens at the fallback throughput costs the GPU hour.
    assert pricer.cost("vllm", "llama-8b", 500_000, 220_000) == Decimal(H100_PER_HOUR)
    clock.now += 60
    per_token = Decimal(H100_PER_HOUR) / H100_FALLBACK_TPH
    assert pricer.cost("vllm", "llama-8b", 100, 100) == (200 * per_token).quantize(pricing.QUANTUM)


def test_throughput_window_needs_min_observed_history() -> None:
    w = ThroughputWindow(window_s=3600, min_observed_s=300)
    assert w.tokens_per_hour(now=0) is None  # nothing seen yet
    for t in (0, 60, 120, 180, 240):
        w.add(12_000, now=t)
    assert w.tokens_per_hour(now=240) is None
    assert w.tokens_per_hour(now=299.9) is None
    # 60,000 tokens in 300 s = 720,000 tokens per hour.
    assert w.tokens_per_hour(now=300) == pytest.approx(720_000)
    assert w.tokens_per_hour(now=600) == pytest.approx(360_000)


def test_throughput_window_forgets_old_traffic() -> None:
    w = ThroughputWindow(window_s=600, min_observed_s=60)
    w.add(600_000, now=0)
    w.add(6_000, now=700)
    # The burst at t=0 is out of the 600 s window; 6,000 tokens in 600 s remain.
    assert w.tokens_per_hour(now=700) == pytest.approx(36_000)
    w.add(6_000, now=701)  # same minute bucket
    assert w.tokens_per_hour(now=701) == pytest.approx(72_000)


def test_self_hosted_switches_to_measured_throughput(pricer: Pricer, clock: Clock) -> None:
    start = clock.now
    # 2,000 tokens every 10 s: 720,000 tokens/h, the fallback rate, for 5 minutes.
    costs = []
    while clock.now - start < 300:
        costs.append(pricer.cost("vllm", "llama-8b", 1500, 500))
        clock.now += 10
    fallback_cost = (2000 * Decimal(H100_PER_HOUR) / H100_FALLBACK_TPH).quantize(pricing.QUANTUM)
    assert set(costs) == {fallback_cost}
    # The GPU then serves four times as much: measured throughput lowers the price.
    for _ in range(300):
        pricer.cost("vllm", "llama-8b", 6000, 2000)
        clock.now += 2.5  # 8,000 tokens per 2.5 s
    busy = pricer.cost("vllm", "llama-8b", 1500, 500)
    assert busy < fallback_cost / 2


def test_idle_gpu_makes_tokens_dearer(clock: Clock) -> None:
    settings = make_settings(throughput_window_s=3600, throughput_min_observed_s=300)
    busy, idle = Pricer(settings), Pricer(settings)
    start = clock.now
    while clock.now - start < 600:
        busy.cost("vllm", "llama-8b", 1500, 500)
        clock.now += 10
    clock.now = start
    idle.cost("vllm", "llama-8b", 1500, 500)
    clock.now = start + 600
    busy_cost = busy.cost("vllm", "llama-8b", 1500, 500)
    idle_cost = idle.cost("vllm", "llama-8b", 1500, 500)
    # Same request, same GPU price: the idle GPU served 4,000 tokens in 10 minutes,
    # the busy one 122,000.
    assert idle_cost > 20 * busy_cost
    assert float(idle_cost) == pytest.approx(2000 * 2.0548 / (4000 / 600 * 3600), rel=1e-6)


@pytest.mark.parametrize("seconds_between", [5, 10, 20, 60])
def test_an_hour_of_self_hosted_traffic_costs_about_the_gpu_hour(
    pricer: Pricer, clock: Clock, seconds_between: int
) -> None:
    # Whatever the utilisation, once the window is warm the tokens served in an
    # hour are charged, together, about what the GPU costs for that hour.
    def one_hour() -> Decimal:
        start, total = clock.now, Decimal(0)
        while clock.now - start < 3600:
            total += pricer.cost("vllm", "llama-8b", 1500, 500)
            clock.now += seconds_between
        return total

    one_hour()  # warm-up: the first five minutes use the fallback throughput
    assert float(one_hour()) == pytest.approx(2.0548, rel=0.03)


def test_models_on_one_gpu_share_its_throughput(pricer: Pricer, clock: Clock) -> None:
    start = clock.now
    while clock.now - start < 600:
        pricer.cost("vllm", "llama-8b", 1500, 500)
        clock.now += 10
    # The fine-tuned model runs on the same GPU: it is priced from the same window,
    # not from the fallback as if it had seen no traffic.
    shared = pricer.cost("vllm", "llama-8b-ft", 1500, 500)
    fallback = (2000 * Decimal(H100_PER_HOUR) / H100_FALLBACK_TPH).quantize(pricing.QUANTUM)
    assert shared != fallback
    # 60 calls of 2,000 tokens plus this one, in 600 s.
    assert float(shared) == pytest.approx(2000 * 2.0548 / (122_000 / 600 * 3600), rel=1e-6)
