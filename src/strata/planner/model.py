"""The monthly cost of a plan, by layer, line by line, with exact decimals.

APIs: each mix entry's share of the monthly tokens (after growth), split into
input and output, priced per 1M; cache hits cost nothing, and the batched share
gets the provider's batch discount. Compute: GPU hours x $/hour (spot: less the
spot discount), or the reserved monthly price. Services: quantity x price.
Every line keeps the arithmetic that produced it (``basis``) and, when the plan
quotes a source's figure, whether that figure agrees at its own precision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

from strata.errors import ConfigError
from strata.planner.catalog import PriceTable, Sourced, StalePrice, stale
from strata.planner.plan import LAYERS, ComputeLine, MixEntry, Plan, ServiceLine

MILLION = Decimal(1_000_000)
SECONDS_PER_HOUR = Decimal(3600)
CENT = Decimal("0.01")
# Line costs are kept to ten decimal places (as usage records store them), so
# subtotals, totals and savings are exact sums with no rounding drift.
QUANTUM = Decimal("0.0000000001")


def usd(value: Decimal) -> str:
    q = value.quantize(CENT, rounding=ROUND_HALF_UP)
    return f"-${-q:,}" if q < 0 else f"${q:,}"


def plain(value: Decimal) -> str:
    """Exact, without trailing zeros or exponent: JSON money as a string."""
    return format(value.normalize(), "f") if value else "0"


def rate(value: Decimal) -> str:
    """A unit price: cents, or up to four decimals when they matter ($0.934)."""
    q = value.quantize(Decimal("0.0001")).normalize()
    return usd(value) if q == q.quantize(CENT) else f"${q:,}"


def num(value: Decimal) -> str:
    """Thousands separators; no trailing zeros."""
    q = value.quantize(Decimal(1)) if value == value.to_integral() else value.normalize()
    return f"{q:,}"


def agrees(stated: Decimal, computed: Decimal) -> bool:
    """True when ``computed`` rounds to ``stated`` at the precision it is stated with."""
    exp = stated.as_tuple().exponent
    if not isinstance(exp, int):
        return False
    return abs(computed - stated) <= Decimal(5) * Decimal(10) ** (exp - 1)


def slug(ref: str) -> str:
    """A price ref as a formula name: ``together/llama-3.1-70b`` -> ``together_llama_3_1_70b``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", ref)


@dataclass(frozen=True)
class Line:
    layer: str
    id: str
    name: str
    cost: Decimal
    basis: str
    reference: Decimal | None = None
    note: str = ""
    prices: tuple[str, ...] = ()
    use: str = ""

    @property
    def agrees(self) -> bool | None:
        return None if self.reference is None else agrees(self.reference, self.cost)


@dataclass
class CostReport:
    name: str
    lines: list[Line]
    subtotals: dict[str, Decimal]
    total: Decimal
    reference_subtotals: dict[str, Decimal]
    reference_total: Decimal | None
    stale: list[StalePrice]
    variables: dict[str, Decimal] = field(default_factory=dict)

    def layer(self, layer: str) -> list[Line]:
        return [ln for ln in self.lines if ln.layer == layer]

    def line(self, line_id: str) -> Line:
        for ln in self.lines:
            if ln.id == line_id:
                return ln
        raise KeyError(line_id)

    def reference_sum(self, layer: str) -> Decimal | None:
        """The sum of the source's own line figures for a layer (None if any is missing)."""
        refs = [ln.reference for ln in self.layer(layer)]
        if not refs or any(r is None for r in refs):
            return None
        return sum((r for r in refs if r is not None), Decimal(0))


def _api_line(plan: Plan, table: PriceTable, m: MixEntry, v: dict[str, Decimal]) -> Line:
    w = plan.workload
    price = table.api(m.model)
    if price is None:
        raise ConfigError(f"workload.mix: unknown API price {m.model!r}")
    weights = sum((e.weight for e in w.mix), Decimal(0))
    tokens = w.tokens() * w.growth * m.weight / weights
    share = m.input_share if m.input_share is not None else w.input_share
    tin, tout = tokens * share, tokens * (1 - share)
    cin, cout = tin * price.input_per_1m / MILLION, tout * price.output_per_1m / MILLION
    gross = cin + cout
    # Cache hits never reach the provider; of the rest, the batched share is discounted.
    served = 1 - w.cache_hit_rate
    discount = price.batch_discount if price.batch_discount is not None else w.batch_discount
    factor = served * (1 - w.batch_share * (discount or Decimal(0)))
    cost = gross * factor
    basis = (
        f"{num(tin / MILLION)}M in x ${price.input_per_1m}/1M = {usd(cin)}; "
        f"{num(tout / MILLION)}M out x ${price.output_per_1m}/1M = {usd(cout)}"
    )
    if factor != 1:
        basis += f"; x {num(factor)} (cache {num(w.cache_hit_rate)}, batch {num(w.batch_share)})"
    blended = share * price.input_per_1m + (1 - share) * price.output_per_1m
    pre = f"api.{m.id}"
    v.update(
        {
            f"{pre}.tokens": tokens,
            f"{pre}.input_tokens": tin,
            f"{pre}.output_tokens": tout,
            f"{pre}.input_cost": cin,
            f"{pre}.output_cost": cout,
            f"{pre}.gross": gross,
            f"{pre}.cost": cost,
            f"{pre}.input_per_1m": price.input_per_1m,
            f"{pre}.output_per_1m": price.output_per_1m,
            f"{pre}.blended_per_1m": blended,
        }
    )
    return Line("apis", m.id, m.name, cost, basis, m.reference, m.note, (m.model,), "api")


def _compute_line(plan: Plan, table: PriceTable, c: ComputeLine, v: dict[str, Decimal]) -> Line:
    gpu = table.gpus[c.gpu]
    pre = f"line.{c.id}"
    if c.billing == "reserved":
        per_month = gpu.reserved_per_month or Decimal(0)
        cost = per_month * c.count
        basis = f"{c.count} x {usd(per_month)}/month reserved"
        hours = plan.hours_per_month * c.count
        v[f"{pre}.per_hour"] = per_month / plan.hours_per_month
    else:
        hourly = gpu.on_demand_per_hour or Decimal(0)
        hours = c.billed_hours() * c.count
        if c.billing == "spot":
            spot = gpu.spot_discount if gpu.spot_discount is not None else Decimal(0)
            hourly = hourly * (1 - spot)
        cost = hours * hourly
        runs = f"{c.runs} runs x {num(c.hours_per_run or Decimal(0))} h" if c.runs else ""
        basis = f"{runs or num(hours) + ' h'} x ${num(hourly)}/h {c.billing.replace('_', '-')}"
        if c.count > 1:
            basis = f"{c.count} GPUs x " + basis
        v[f"{pre}.per_hour"] = hourly
    v[f"{pre}.hours"] = hours
    if gpu.tokens_per_s is not None:
        v[f"{pre}.capacity_tokens"] = gpu.tokens_per_s * SECONDS_PER_HOUR * hours
    return Line("compute", c.id, c.name, cost, basis, c.reference, c.note, (c.gpu,), c.use)


def _service_line(layer: str, table: PriceTable, s: ServiceLine, v: dict[str, Decimal]) -> Line:
    price = table.services[s.service]
    if price.per_unit is not None:
        cost = s.quantity * price.per_unit
        basis = f"{num(s.quantity)} {price.unit}s x ${num(price.per_unit)}"
    else:
        per_month = price.per_month or Decimal(0)
        cost = s.quantity * per_month
        basis = f"{usd(per_month)}/month" + (f" x {num(s.quantity)}" if s.quantity != 1 else "")
    v[f"line.{s.id}.quantity"] = s.quantity
    return Line(layer, s.id, s.name, cost, basis, s.reference, s.note, (s.service,), s.role)


def _price_variables(table: PriceTable, v: dict[str, Decimal]) -> None:
    for ref in table.api_refs():
        p = table.api(ref)
        if p is not None:
            v[f"price.{slug(ref)}.input_per_1m"] = p.input_per_1m
            v[f"price.{slug(ref)}.output_per_1m"] = p.output_per_1m
    for name, g in table.gpus.items():
        for f in ("on_demand_per_hour", "reserved_per_month", "spot_discount", "tokens_per_s"):
            if getattr(g, f) is not None:
                v[f"price.{slug(name)}.{f}"] = getattr(g, f)
    for name, s in table.services.items():
        for f in ("per_month", "per_unit"):
            if getattr(s, f) is not None:
                v[f"price.{slug(name)}.{f}"] = getattr(s, f)


def used_prices(plan: Plan, table: PriceTable) -> dict[str, Sourced]:
    out: dict[str, Sourced] = {}
    for m in plan.workload.mix:
        price = table.api(m.model)
        if price is not None:
            out[m.model] = price
    for c in plan.compute:
        out[c.gpu] = table.gpus[c.gpu]
    for s in (*plan.infrastructure, *plan.deployment):
        out[s.service] = table.services[s.service]
    return out


def cost_plan(plan: Plan, table: PriceTable, today: date | None = None) -> CostReport:
    """The plan's monthly cost. ``table`` must already hold the plan's own prices."""
    v: dict[str, Decimal] = {"hours_per_month": plan.hours_per_month}
    lines = [_compute_line(plan, table, c, v) for c in plan.compute]
    lines += [_api_line(plan, table, m, v) for m in plan.workload.mix]
    lines += [_service_line("infrastructure", table, s, v) for s in plan.infrastructure]
    lines += [_service_line("deployment", table, s, v) for s in plan.deployment]
    lines = [replace(ln, cost=ln.cost.quantize(QUANTUM)) for ln in lines]
    subtotals = {
        layer: sum((ln.cost for ln in lines if ln.layer == layer), Decimal(0)) for layer in LAYERS
    }
    total = sum(subtotals.values(), Decimal(0))
    w = plan.workload
    v.update({f"line.{ln.id}": ln.cost for ln in lines})
    v.update({f"subtotal.{k}": s for k, s in subtotals.items()})
    v["total"] = total
    v["workload.tokens"] = w.tokens() * w.growth
    requests = w.requests()
    if requests is not None:
        v["workload.requests"] = requests * w.growth
    _price_variables(table, v)
    today = today or datetime.now(UTC).date()
    return CostReport(
        name=plan.name,
        lines=lines,
        subtotals=subtotals,
        total=total,
        reference_subtotals={str(k): v for k, v in plan.reference_subtotals.items()},
        reference_total=plan.reference_total,
        stale=stale(used_prices(plan, table), today, plan.max_price_age_days),
        variables=v,
    )
