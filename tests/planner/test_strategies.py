"""Strategies as what-ifs: hand-computed savings on the reference plan and a small one."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from strata.errors import ConfigError
from strata.planner.catalog import PriceTable
from strata.planner.plan import Plan, load_plan
from strata.planner.strategies import Outcome, compare, parse_strategy
from tests.planner.test_reference import REFERENCE

D = Decimal


@pytest.fixture(scope="module")
def reference() -> tuple[Plan, PriceTable]:
    return load_plan(REFERENCE)


def one(plan: tuple[Plan, PriceTable], spec: str) -> Outcome:
    (outcome,) = compare(plan[0], plan[1], [parse_strategy(spec)])
    return outcome


def test_cache_on_the_reference(reference: tuple[Plan, PriceTable]) -> None:
    o = one(reference, "cache=0.5")
    # Half of $28.02 + $4.00; the plan already pays for Redis, so no added cost.
    assert o.acts_on == ["together_70b", "openai"]
    assert o.acted_before == D("32.02")
    assert o.saving == o.gross_saving == D("16.01")
    assert o.own_cost == 0
    assert one(reference, "cache=70%").saving == D("22.414")


def test_cache_adds_its_own_cost_when_the_plan_has_none(tmp_path: Path, plan_data: Any) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(plan_data))
    o = one(load_plan(path), "cache=0.5,service=redis")
    # API lines: $22.50 + $2.50 = $25; half avoided; Redis $15 a month.
    assert o.gross_saving == D("12.5")
    assert o.own_cost == D(15)
    assert o.saving == D("-2.5")
    assert o.added == ["strategy_cache"]


def test_batch_uses_the_provider_discount_else_the_reference_low_end(
    reference: tuple[Plan, PriceTable],
) -> None:
    o = one(reference, "batch=0.5")
    # OpenAI's batch API: 50% off half of $4.00 = $1.00. Together: no batch price in
    # the table, so the reference's low end (10%) on half of $28.02 = $1.401.
    assert o.saving == D("2.401")
    assert one(reference, "batch=0.5,discount=0.2").saving == D("1.00") + D("2.802")


def test_smaller_model(reference: tuple[Plan, PriceTable]) -> None:
    o = one(reference, "model=8b")
    # 30M tokens at $0.18/1M = $5.40 instead of $28.02.
    assert o.acts_on == ["together_70b"]
    assert o.saving == D("22.62")


def test_spot_for_fine_tuning(reference: tuple[Plan, PriceTable]) -> None:
    o = one(reference, "spot")
    # 8 runs x 6.6 h (10% rerun) x $2.86 x 0.5 = $75.504 instead of $137.28.
    assert o.acts_on == ["fine_tuning"]
    assert o.saving == D("137.28") - D("75.504")
    assert one(reference, "spot=0.6,rerun=0").saving == D("137.28") * D("0.6")


def test_route_a_share_to_another_model(reference: tuple[Plan, PriceTable]) -> None:
    o = one(reference, "route=0.1,to=openai/gpt-3.5-turbo")
    # 10% of each entry's tokens move to OpenAI: Together keeps 27M (x $0.934/1M
    # blended = $25.218); OpenAI serves 4.5M + 3.5M = 8M (x $0.80/1M = $6.40).
    assert o.after.line("together_70b").cost == D("25.218")
    assert o.after.line("openai").cost == D("6.40")
    # GPT-3.5 Turbo is cheaper per token than Llama 3.1 70B here: routing saves.
    assert o.saving == D("32.02") - D("31.618")


def test_combined_applies_all(reference: tuple[Plan, PriceTable]) -> None:
    plan, table = reference
    outs = compare(plan, table, [parse_strategy("cache=0.5"), parse_strategy("model=8b")])
    assert len(outs) == 3
    both = outs[-1]
    # After the model change: $5.40 + $4.00, then half avoided.
    assert both.after.subtotals["apis"] == D("4.70")
    assert both.strategy == "cache=0.5 + model=8b"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("teleport=1", "unknown kind 'teleport'"),
        ("cache", "strategy cache: needs a value"),
        ("cache=1.5", "must be between 0 and 1"),
        ("cache=lots", "is not a number"),
        ("model=9000b", "matches no API price"),
        ("route=0.1", "name the model"),
        ("batch=0.1,discount", "is not key=value"),
    ],
)
def test_bad_specs(reference: tuple[Plan, PriceTable], spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        compare(reference[0], reference[1], [parse_strategy(spec)])
    assert message in err.value.message
