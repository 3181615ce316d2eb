"""Break-even and capacity formulas on hand-computed cases."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from strata.errors import ConfigError
from strata.planner.breakeven import breakeven
from strata.planner.catalog import PriceTable

D = Decimal
SRC = {"source": "test", "as_of": date(2026, 1, 1)}


def table(**gpu: Any) -> PriceTable:
    return PriceTable.model_validate(
        {
            "apis": {
                "api": {
                    "models": {
                        "m": {"input_per_1m": "1", "output_per_1m": "3", **SRC},
                        "free": {"input_per_1m": "0", "output_per_1m": "0", **SRC},
                    }
                }
            },
            "gpus": {"g": {**gpu, **SRC}},
        }
    )


def test_breaks_even_below_capacity() -> None:
    # Blended: 0.5 x $1 + 0.5 x $3 = $2 per 1M tokens. GPU: $500/month, 100 tokens/s.
    # Capacity: 100 x 3600 x 730 = 262,800,000 tokens. Break-even: 500 / 2 = 250M tokens.
    be = breakeven(
        table(reserved_per_month="500", tokens_per_s="100"), "api/m", "g", input_share=D("0.5")
    )
    assert be.api_per_1m == D(2)
    assert be.capacity == D(262_800_000)
    assert be.tokens == D(250_000_000)
    assert be.utilisation == D(250_000_000) / D(262_800_000)
    assert float(be.utilisation or 0) == pytest.approx(0.951294, rel=1e-6)
    assert not be.never
    # $500 over 262.8M tokens = $1.9026/1M at full load.
    assert float(be.gpu_per_1m_at_capacity) == pytest.approx(1.902587, rel=1e-6)
    assert "breaks even at 250M tokens a month: 95.1%" in be.verdict()


def test_never_breaks_even_above_capacity() -> None:
    # $1,000/month needs 500M tokens at $2/1M: 190% of 262.8M.
    be = breakeven(
        table(reserved_per_month="1000", tokens_per_s="100"), "api/m", "g", input_share=D("0.5")
    )
    assert be.tokens == D(500_000_000)
    assert be.never
    assert be.verdict().startswith("never breaks even")
    assert "190.3%" in be.verdict()


def test_on_demand_always_on_is_hourly_times_hours() -> None:
    be = breakeven(
        table(on_demand_per_hour="2", tokens_per_s="1000"),
        "api/m",
        "g",
        billing="on_demand",
        input_share=D(1),
        hours_per_month=D(720),
    )
    assert be.gpu_month == D(1440)
    assert be.capacity == D(2_592_000_000)  # 1000 x 3600 x 720
    assert be.tokens == D(1_440_000_000)  # $1,440 at $1/1M


def test_gpu_cost_steps_with_gpus_needed() -> None:
    be = breakeven(
        table(reserved_per_month="500", tokens_per_s="100"), "api/m", "g", input_share=D("0.5")
    )
    assert be.gpus_needed(D(0)) == 1
    assert be.gpus_needed(D(262_800_000)) == 1
    assert be.gpus_needed(D(262_800_001)) == 2
    assert be.gpu_cost(D(600_000_000)) == D(1500)  # three GPUs
    assert be.api_cost(D(600_000_000)) == D(1200)


def test_free_api_never_breaks_even() -> None:
    be = breakeven(table(reserved_per_month="500", tokens_per_s="100"), "api/free", "g")
    assert be.tokens is None and be.utilisation is None and be.never
    assert "never breaks even" in be.verdict()


def test_measured_throughput_overrides_the_table() -> None:
    be = breakeven(
        table(reserved_per_month="500", tokens_per_s="100"),
        "api/m",
        "g",
        tokens_per_s=D(400),
        input_share=D("0.5"),
    )
    assert be.capacity == D(1_051_200_000)
    assert be.utilisation == D(250_000_000) / D(1_051_200_000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"api": "api/nope"}, "api: unknown API price 'api/nope'"),
        ({"gpu": "nope"}, "gpu: unknown GPU price 'nope'"),
        ({"billing": "on_demand"}, "billing: g has no on_demand_per_hour price"),
    ],
)
def test_errors_name_the_input(kwargs: dict[str, str], message: str) -> None:
    args: dict[str, Any] = {"api": "api/m", "gpu": "g", **kwargs}
    t = table(reserved_per_month="500", tokens_per_s="100")
    with pytest.raises(ConfigError) as err:
        breakeven(t, args.pop("api"), args.pop("gpu"), **args)
    assert message in err.value.message


def test_gpu_without_throughput_needs_one() -> None:
    with pytest.raises(ConfigError, match="tokens_per_s"):
        breakeven(table(reserved_per_month="500"), "api/m", "g")
