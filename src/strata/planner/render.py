"""Cost reports as rows, then as a Rich table, Markdown or JSON.

Beside each planner figure stands the source's own (``reference``) when the
plan quotes one; a figure that does not agree at the precision it is stated
with is marked, with the arithmetic that gives the planner's figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rich.table import Table

from strata.planner.checks import CheckResult
from strata.planner.model import CostReport, num, plain, usd
from strata.planner.plan import LAYER_NAMES, LAYERS
from strata.planner.strategies import Outcome

MARK_OK, MARK_BAD = "=", "≠"


@dataclass(frozen=True)
class Row:
    label: str
    reference: str
    planner: str
    mark: str  # "", MARK_OK or MARK_BAD
    basis: str
    kind: str = "line"  # line | subtotal | total | layer


def _ref(value: Decimal | None) -> str:
    return "" if value is None else usd(value) if value != value.to_integral() else f"${value:,}"


def report_rows(report: CostReport) -> list[Row]:
    rows: list[Row] = []
    for layer in LAYERS:
        lines = report.layer(layer)
        if not lines and layer not in report.reference_subtotals:
            continue
        rows.append(Row(LAYER_NAMES[layer], "", "", "", "", "layer"))
        for ln in lines:
            mark = "" if ln.agrees is None else MARK_OK if ln.agrees else MARK_BAD
            basis = ln.basis + (f". {ln.note}" if ln.note else "")
            rows.append(Row("  " + ln.name, _ref(ln.reference), usd(ln.cost), mark, basis))
        stated = report.reference_subtotals.get(layer)
        rows.append(
            _sum_row("  Subtotal", stated, report.subtotals[layer], report.reference_sum(layer))
        )
    own = [report.reference_subtotals.get(k) for k in LAYERS]
    ref_sum = None if any(v is None for v in own) else sum((v for v in own if v), Decimal(0))
    rows.append(_sum_row("Total", report.reference_total, report.total, ref_sum, "total"))
    return rows


def _sum_row(
    label: str,
    stated: Decimal | None,
    computed: Decimal,
    ref_sum: Decimal | None,
    kind: str = "subtotal",
) -> Row:
    if stated is None:
        return Row(label, "", usd(computed), "", "", kind)
    notes = []
    if ref_sum is not None and ref_sum != stated:
        notes.append(f"the reference's own figures sum to {_ref(ref_sum)}")
    elif ref_sum is not None:
        notes.append("the reference's figures add up")
    ok = stated == computed.quantize(
        Decimal(1) if stated == stated.to_integral() else Decimal("0.01")
    )
    return Row(
        label, _ref(stated), usd(computed), MARK_OK if ok else MARK_BAD, "; ".join(notes), kind
    )


def rich_table(report: CostReport) -> Table:
    has_ref = report.reference_total is not None or any(
        ln.reference is not None for ln in report.lines
    )
    table = Table(title=f"{report.name}: monthly cost (USD)")
    table.add_column("line", no_wrap=True)
    if has_ref:
        table.add_column("reference", justify="right")
    table.add_column("planner", justify="right")
    if has_ref:
        table.add_column("")
    table.add_column("basis", overflow="fold")
    for r in report_rows(report):
        label = f"[bold]{r.label}[/bold]" if r.kind != "line" else r.label
        mark = f"[red]{r.mark}[/red]" if r.mark == MARK_BAD else r.mark
        planner = f"[bold]{r.planner}[/bold]" if r.kind in ("subtotal", "total") else r.planner
        cells = (
            [label, r.reference, planner, mark, r.basis] if has_ref else [label, planner, r.basis]
        )
        table.add_row(*cells, end_section=r.kind in ("subtotal",))
    return table


def checks_table(results: list[CheckResult]) -> Table:
    table = Table(title="The source's claims, recomputed")
    for col in ("claim", "stated", "computed", "", "why"):
        table.add_column(col, overflow="fold")
    for c in results:
        mark = MARK_OK if c.ok else f"[red]{MARK_BAD}[/red]"
        table.add_row(
            c.claim,
            c.stated,
            _fmt(c.computed, c.unit) + ("" if c.unit == "USD" else f" {c.unit}"),
            mark,
            "" if c.ok else c.why,
        )
    return table


def _fmt(value: Decimal, unit: str = "") -> str:
    if unit == "USD" and abs(value) >= Decimal("0.01"):
        return usd(value)
    if abs(value) >= 100:
        return num(value.quantize(Decimal(1)))
    return num(value.quantize(Decimal("0.0001")).normalize())


def markdown(report: CostReport, results: list[CheckResult]) -> str:
    out = [f"# {report.name}: monthly cost (USD)", ""]
    out += ["| line | reference | planner | | basis |", "|---|---:|---:|---|---|"]
    for r in report_rows(report):
        label = f"**{r.label.strip()}**" if r.kind != "line" else r.label.strip()
        out.append(f"| {label} | {r.reference} | {r.planner} | {r.mark} | {r.basis} |")
    if results:
        out += ["", "## Claims, recomputed", "", "| claim | stated | computed | | why |"]
        out.append("|---|---:|---:|---|---|")
        for c in results:
            mark = MARK_OK if c.ok else MARK_BAD
            why = "" if c.ok else c.why
            unit = "" if c.unit == "USD" else f" {c.unit}"
            computed = _fmt(c.computed, c.unit) + unit
            out.append(f"| {c.claim} | {c.stated} | {computed} | {mark} | {why} |")
    out += [""] + [f"> warning: {s.message()}" for s in report.stale]
    return "\n".join(out).rstrip() + "\n"


def as_json(report: CostReport, results: list[CheckResult]) -> dict[str, Any]:
    return {
        "name": report.name,
        "lines": [
            {
                "layer": ln.layer,
                "id": ln.id,
                "name": ln.name,
                "cost_usd": plain(ln.cost),
                "reference_usd": None if ln.reference is None else plain(ln.reference),
                "agrees": ln.agrees,
                "basis": ln.basis,
                "note": ln.note,
                "prices": list(ln.prices),
            }
            for ln in report.lines
        ],
        "subtotals_usd": {k: plain(v) for k, v in report.subtotals.items()},
        "total_usd": plain(report.total),
        "reference": {
            "subtotals_usd": {k: plain(v) for k, v in report.reference_subtotals.items()},
            "total_usd": None if report.reference_total is None else plain(report.reference_total),
        },
        "checks": [c.as_dict() for c in results],
        "stale_prices": [s.message() for s in report.stale],
    }


def outcome_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [
        {
            "strategy": o.strategy,
            "description": o.description,
            "acts_on": o.acts_on,
            "before_usd": plain(o.before.total),
            "after_usd": plain(o.after.total),
            "acted_lines_before_usd": plain(o.acted_before),
            "gross_saving_usd": plain(o.gross_saving),
            "own_cost_usd": plain(o.own_cost),
            "net_saving_usd": plain(o.saving),
        }
        for o in outcomes
    ]


def compare_table(outcomes: list[Outcome]) -> Table:
    table = Table(title="Strategies: monthly cost before and after (USD)")
    table.add_column("strategy", no_wrap=True)
    for col in ("before", "after", "acts on (before)", "saving", "own cost", "net"):
        table.add_column(col, justify="right")
    for o in outcomes:
        net = usd(o.saving)
        net = (
            f"[green]{net}[/green]"
            if o.saving > 0
            else f"[red]{net}[/red]"
            if o.saving < 0
            else net
        )
        table.add_row(
            o.strategy.replace(" + ", "\n+ "),
            usd(o.before.total),
            usd(o.after.total),
            usd(o.acted_before),
            usd(o.gross_saving),
            usd(o.own_cost),
            net,
        )
    return table


def lines_table(o: Outcome) -> Table:
    """Line by line, before and after one outcome (the combined one for several)."""
    table = Table(title=f"{o.strategy}: before and after, line by line (USD)")
    table.add_column("line", no_wrap=True)
    for col in ("before", "after", "change"):
        table.add_column(col, justify="right")
    for row in line_changes(o):
        table.add_row(*row)
    return table


def line_changes(o: Outcome) -> list[tuple[str, str, str, str]]:
    before = {ln.id: ln.cost for ln in o.before.lines}
    rows = []
    for layer in LAYERS:
        for ln in o.after.layer(layer):
            was = before.get(ln.id, Decimal(0))
            change = "" if ln.cost == was else usd(ln.cost - was)
            rows.append((ln.name, usd(was) if ln.id in before else "-", usd(ln.cost), change))
        was_sub, sub = o.before.subtotals[layer], o.after.subtotals[layer]
        rows.append((f"{LAYER_NAMES[layer]} subtotal", usd(was_sub), usd(sub), usd(sub - was_sub)))
    rows.append(("Total", usd(o.before.total), usd(o.after.total), usd(-o.saving)))
    return rows


def compare_markdown(outcomes: list[Outcome]) -> str:
    out = [
        "| strategy | before | after | acts on (before) | saving | own cost | net | what it does |"
    ]
    out.append("|---|---:|---:|---:|---:|---:|---:|---|")
    for o in outcomes:
        money = [
            o.before.total,
            o.after.total,
            o.acted_before,
            o.gross_saving,
            o.own_cost,
            o.saving,
        ]
        out.append(
            f"| {o.strategy} | " + " | ".join(usd(m) for m in money) + f" | {o.description} |"
        )
    last = outcomes[-1]
    out += ["", f"| {last.strategy}: line | before | after | change |", "|---|---:|---:|---:|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in line_changes(last)]
    return "\n".join(out) + "\n"
