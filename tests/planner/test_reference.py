"""The reference architecture's cost tables, line by line (examples/plans/reference.yaml).

Expected figures are worked by hand from the reference's own prices and
quantities (shared/reference/production-ai-architecture.txt); the reference's
printed figure stands beside each.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from strata.planner.catalog import SHIPPED, PriceTable, Sourced, load_table
from strata.planner.checks import CheckResult, run_checks
from strata.planner.model import CostReport, cost_plan
from strata.planner.plan import Plan, load_plan

REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "plans" / "reference.yaml"
D = Decimal


@pytest.fixture(scope="module")
def loaded() -> tuple[Plan, PriceTable]:
    return load_plan(REFERENCE)


@pytest.fixture(scope="module")
def report(loaded: tuple[Plan, PriceTable]) -> CostReport:
    plan, table = loaded
    return cost_plan(plan, table, today=date(2026, 3, 15))


# (line id, the reference's table figure, the planner's figure, do they agree)
LINES = [
    ("development", "20", "13.60", False),  # 40 h x $0.34
    ("production_h100", "1500", "1500", True),  # reserved, $1,500/month
    ("fine_tuning", "120", "137.28", False),  # 8 runs x 6 h x $2.86
    ("together_70b", "28", "28.02", True),  # 21M x $0.88/1M + 9M x $1.06/1M
    ("openai", "10", "4.00", False),  # 3.5M x $0.50/1M + 1.5M x $1.50/1M
    ("database", "50", "50", True),
    ("cache", "15", "15", True),
    ("object_storage", "5", "5", True),
    ("cdn", "0", "0", True),
    ("ci", "10", "2.00", False),  # 250 minutes x $0.008
    ("sentry", "29", "29", True),
]


@pytest.mark.parametrize(("line_id", "reference", "planner", "agrees"), LINES)
def test_each_line(
    report: CostReport, line_id: str, reference: str, planner: str, agrees: bool
) -> None:
    line = report.line(line_id)
    assert line.reference == D(reference)
    assert line.cost == D(planner)
    assert line.agrees is agrees


def test_every_line_of_the_reference_table_is_in_the_plan(report: CostReport) -> None:
    assert [ln.id for ln in report.lines] == [
        "development",
        "production_h100",
        "fine_tuning",
        "together_70b",
        "openai",
        "database",
        "cache",
        "object_storage",
        "cdn",
        "ci",
        "sentry",
    ]


@pytest.mark.parametrize(
    ("layer", "stated", "sum_of_its_lines", "planner"),
    [
        ("compute", "1640", "1640", "1650.88"),
        ("apis", "38", "38", "32.02"),
        ("infrastructure", "70", "70", "70"),
        ("deployment", "39", "39", "31.00"),
    ],
)
def test_subtotals(
    report: CostReport, layer: str, stated: str, sum_of_its_lines: str, planner: str
) -> None:
    assert report.reference_subtotals[layer] == D(stated)
    # The reference's own subtotals do add up its own lines.
    assert report.reference_sum(layer) == D(sum_of_its_lines)
    assert report.subtotals[layer] == D(planner)


def test_total(report: CostReport) -> None:
    assert report.reference_total == D(1787)
    assert sum(report.reference_subtotals.values(), D(0)) == D(1787)
    # 13.60 + 1500 + 137.28 + 28.02 + 4.00 + 50 + 15 + 5 + 0 + 2.00 + 29
    assert report.total == D("1783.90")


def test_api_arithmetic(report: CostReport) -> None:
    v = report.variables
    assert v["api.together_70b.input_tokens"] == D(21_000_000)
    assert v["api.together_70b.output_tokens"] == D(9_000_000)
    assert v["api.together_70b.input_cost"] == D("18.48")
    assert v["api.together_70b.output_cost"] == D("9.54")
    assert v["api.openai.input_tokens"] == D(3_500_000)
    assert v["api.openai.output_tokens"] == D(1_500_000)
    assert v["api.together_70b.blended_per_1m"] == D("0.934")


@pytest.fixture(scope="module")
def checks(loaded: tuple[Plan, PriceTable], report: CostReport) -> dict[str, CheckResult]:
    plan, table = loaded
    return {c.claim: c for c in run_checks(plan, table, report)}


# (start of the claim, computed value (rounded as shown), consistent?)
CLAIMS = [
    ("Development: 40 hours", "13.60", True),
    ("Fine-tuning: 8 runs", "137.28", True),
    ("Together AI: 100K tokens daily", "1000000", False),
    ("Input tokens (70% of total)", "18.48", True),
    ("Output tokens (30% of total)", "9.54", True),
    ("Together AI monthly cost: $27.92", "28.02", False),
    ("OpenAI, 5M tokens monthly: input", "1.75", False),
    ("OpenAI, 5M tokens monthly: output", "2.25", False),
    ("H100 utilization-based cost", "0.0029", False),  # 1500 / 525.6M x 1000
    ("... which is $1,500 spread", "0.05", True),  # 1500 / 30M x 1000
    ("H100 at ~200 tokens/s handles", "205.7", False),  # 720,000 / 3,500
    ("Sub-5M monthly API calls", "1460000", False),  # 2,000 x 730
    ("This supports: 5M monthly", "35000000", False),
    ("This supports: 2-3 fine-tuning", "8", False),
    ("8B runs on RTX 4090, 20x cheaper than H100 (reserved", "6.04", False),
    ("... 20x cheaper than H100 (Lambda SXM", "11.12", False),
    ("CI/CD: 50 deployments", "2.00", False),
    ("Caching at a 50% hit rate", "28.1", False),  # 15 / (0.5 x 32.02 / 30)
    ("FAQ: self-hosted pays for 5M+", "1605995717", False),  # 1500 / 0.934 x 1M
    ("FAQ: a fine-tuning run costing $150", "22.68", False),
    ("Minimum viable stack", "107.02", True),
    ("Monitoring and observability", "29", True),
]


@pytest.mark.parametrize(("start", "value", "consistent"), CLAIMS)
def test_claims(checks: dict[str, CheckResult], start: str, value: str, consistent: bool) -> None:
    (claim,) = [c for c in checks if c.startswith(start)]
    result = checks[claim]
    exp = D(value).as_tuple().exponent
    assert isinstance(exp, int)
    assert result.computed.quantize(D(10) ** exp) == D(value)
    assert result.ok is consistent
    if not consistent:
        assert result.why, "an inconsistency must say why"


def test_every_claim_is_tested(checks: dict[str, CheckResult]) -> None:
    assert len(checks) == len(CLAIMS)


def test_reference_prices_match_the_shipped_table(loaded: tuple[Plan, PriceTable]) -> None:
    plan, _ = loaded
    shipped = load_table(SHIPPED)
    for provider, prov in plan.prices.apis.items():
        for key, price in prov.models.items():
            ship = shipped.api(f"{provider}/{key}")
            assert ship is not None, f"{provider}/{key} is missing from prices.yaml"
            assert (ship.input_per_1m, ship.output_per_1m) == (
                price.input_per_1m,
                price.output_per_1m,
            )
            assert ship.model == price.model
    for name, gpu in plan.prices.gpus.items():
        fields = ("on_demand_per_hour", "reserved_per_month", "tokens_per_s", "spot_discount")
        for f in fields:
            assert getattr(shipped.gpus[name], f) == getattr(gpu, f), (name, f)
    for name, svc in plan.prices.services.items():
        assert (shipped.services[name].per_month, shipped.services[name].per_unit) == (
            svc.per_month,
            svc.per_unit,
        )


def test_every_price_has_a_source_and_date() -> None:
    raw = yaml.safe_load(SHIPPED.read_text())
    table = load_table(SHIPPED)
    assert raw["version"]
    entries: list[Sourced] = [p for prov in table.apis.values() for p in prov.models.values()]
    entries += [*table.gpus.values(), *table.services.values()]
    assert len(entries) >= 14
    for e in entries:
        assert e.source.strip()
        assert e.as_of <= date.today()


def test_stale_prices_are_reported(loaded: tuple[Plan, PriceTable]) -> None:
    plan, table = loaded
    fresh = cost_plan(plan, table, today=date(2026, 3, 2))
    assert fresh.stale == []
    old = cost_plan(
        plan.model_copy(update={"max_price_age_days": 30}), table, today=date(2026, 6, 1)
    )
    refs = {s.ref for s in old.stale}
    assert "coreweave-h100" in refs and "together/llama-3.1-70b" in refs
    assert all(s.age_days == 92 for s in old.stale)
    assert "92 days old" in old.stale[0].message()
