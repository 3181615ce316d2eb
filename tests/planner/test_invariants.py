"""Invariants over volumes and strategies: costs never negative, monotone in
tokens, and no strategy saves more than the lines it acts on cost."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from strata.planner.catalog import PriceTable
from strata.planner.model import cost_plan
from strata.planner.plan import Plan, load_plan
from strata.planner.strategies import compare, parse_strategy
from tests.planner.test_reference import REFERENCE

VOLUMES = [0, 1, 999, 1_000_000, 35_000_000, 2_000_000_000, 10**12]
STRATEGIES = [
    "cache=0",
    "cache=0.5",
    "cache=1",
    "batch=1",
    "batch=0.5,discount=1",
    "model=8b",
    "spot",
    "spot=0.9,rerun=0",
    "route=0.5,to=openai/gpt-3.5-turbo",
    "route=1,to=together/llama-3.1-70b",
]


def at(plan: Plan, tokens: int, **workload: Any) -> Plan:
    w = plan.workload.model_copy(update={"monthly_tokens": Decimal(tokens), **workload})
    return plan.model_copy(update={"workload": w})


@pytest.fixture(scope="module", params=["reference", "small"])
def plan(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "reference":
        return load_plan(REFERENCE)
    from tests.planner.conftest import BASE

    path: Path = tmp_path_factory.mktemp("plan") / "p.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return load_plan(path)


@pytest.mark.parametrize("tokens", VOLUMES)
@pytest.mark.parametrize("cache", [Decimal(0), Decimal("0.3"), Decimal(1)])
def test_costs_never_negative(plan: tuple[Plan, PriceTable], tokens: int, cache: Decimal) -> None:
    p, table = plan
    report = cost_plan(at(p, tokens, cache_hit_rate=cache, batch_share=Decimal(1)), table)
    assert all(line.cost >= 0 for line in report.lines)
    assert report.total >= 0


def test_costs_are_monotone_in_tokens(plan: tuple[Plan, PriceTable]) -> None:
    p, table = plan
    reports = [cost_plan(at(p, t), table) for t in VOLUMES]
    for lower, higher in itertools.pairwise(reports):
        assert higher.total >= lower.total
        for a, b in zip(lower.lines, higher.lines, strict=True):
            assert b.cost >= a.cost, a.id
    # Strictly so on the API layer once there are tokens to price.
    assert reports[-1].subtotals["apis"] > reports[1].subtotals["apis"] > 0


@pytest.mark.parametrize("tokens", VOLUMES)
@pytest.mark.parametrize("spec", STRATEGIES)
def test_no_strategy_saves_more_than_its_lines_cost(
    plan: tuple[Plan, PriceTable], tokens: int, spec: str
) -> None:
    p, table = plan
    try:
        (o,) = compare(at(p, tokens), table, [parse_strategy(spec)])
    except Exception as exc:  # a strategy that does not apply to this plan says so
        assert "no mix entry" in str(exc) or "matches no API price" in str(exc)
        return
    assert o.gross_saving <= o.acted_before
    assert o.saving <= o.acted_before
    assert o.own_cost >= 0
    assert all(line.cost >= 0 for line in o.after.lines)
    # Lines it does not act on are untouched.
    for line in o.before.lines:
        if line.id not in o.acts_on:
            assert o.after.line(line.id).cost == line.cost


@pytest.mark.parametrize("tokens", VOLUMES[1:])
def test_full_cache_hit_rate_saves_exactly_the_api_layer(
    plan: tuple[Plan, PriceTable], tokens: int
) -> None:
    p, table = plan
    (o,) = compare(at(p, tokens), table, [parse_strategy("cache=1")])
    assert o.gross_saving == o.before.subtotals["apis"]
    assert o.after.subtotals["apis"] == 0
