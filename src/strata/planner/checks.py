"""A plan's ``checks``: a source's claims recomputed from the plan's own numbers."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from strata.planner.breakeven import Breakeven, breakeven
from strata.planner.catalog import PriceTable
from strata.planner.formula import evaluate
from strata.planner.model import CostReport, agrees, plain
from strata.planner.plan import Plan


@dataclass(frozen=True)
class CheckResult:
    claim: str
    stated: str
    computed: Decimal
    unit: str
    ok: bool
    formula: str
    why: str

    def as_dict(self) -> dict[str, object]:
        return {
            "claim": self.claim,
            "stated": self.stated,
            "computed": plain(self.computed),
            "unit": self.unit,
            "consistent": self.ok,
            "formula": self.formula,
            "why": self.why,
        }


def plan_breakeven(plan: Plan, table: PriceTable) -> Breakeven | None:
    spec = plan.breakeven
    if spec is None:
        return None
    share = spec.input_share if spec.input_share is not None else plan.workload.input_share
    return breakeven(
        table,
        spec.api,
        spec.gpu,
        billing=spec.billing,
        input_share=share,
        hours_per_month=plan.hours_per_month,
    )


def names(plan: Plan, table: PriceTable, report: CostReport) -> dict[str, Decimal]:
    """Every name a check's formula may use."""
    out = dict(report.variables)
    be = plan_breakeven(plan, table)
    if be is not None:
        out["breakeven.api_per_1m"] = be.api_per_1m
        out["breakeven.gpu_month"] = be.gpu_month
        out["breakeven.capacity"] = be.capacity
        out["breakeven.gpu_per_1m_at_capacity"] = be.gpu_per_1m_at_capacity
        if be.tokens is not None and be.utilisation is not None:
            out["breakeven.tokens"] = be.tokens
            out["breakeven.utilisation"] = be.utilisation
    return out


def _stated(stated: Decimal | None, lo: Decimal | None, hi: Decimal | None) -> str:
    if stated is not None:
        return f"{stated:,}"
    if lo is not None and hi is not None:
        return f"{lo:,}-{hi:,}"
    return f"{lo:,}+" if lo is not None else f"at most {hi or Decimal(0):,}"


def run_checks(plan: Plan, table: PriceTable, report: CostReport) -> list[CheckResult]:
    ns = names(plan, table, report)
    out = []
    for c in plan.checks:
        value = evaluate(c.formula, ns)
        if c.stated is not None:
            ok = agrees(c.stated, value)
        else:
            ok = (c.stated_min is None or value >= c.stated_min - _half(c.stated_min)) and (
                c.stated_max is None or value <= c.stated_max + _half(c.stated_max)
            )
        text = _stated(c.stated, c.stated_min, c.stated_max)
        out.append(CheckResult(c.claim, text, value, c.unit, ok, c.formula, c.why))
    return out


def _half(stated: Decimal) -> Decimal:
    exp = stated.as_tuple().exponent
    return Decimal(5) * Decimal(10) ** ((exp if isinstance(exp, int) else 0) - 1)
