"""Forecasts as a Rich table, Markdown or JSON."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rich.table import Table

from strata.planner.forecast import Forecast
from strata.planner.model import MILLION, num, plain, usd


def forecast_tables(fc: Forecast) -> tuple[Table, Table]:
    by = Table(title=f"Projected month from the last {fc.days} days (x{num(fc.growth)} growth)")
    for col in ("alias", "provider", "model", "requests", "tokens", "cost (USD)"):
        by.add_column(
            col, justify="right" if col in ("requests", "tokens", "cost (USD)") else "left"
        )
    for m in fc.models:
        by.add_row(
            m.alias,
            m.provider or "-",
            m.model or "-",
            num(m.requests.quantize(Decimal(1))),
            f"{num((m.tokens / MILLION).quantize(Decimal('0.01')))}M",
            usd(m.cost),
        )
    by.add_row("[bold]total[/bold]", "", "", "", "", f"[bold]{usd(fc.total)}[/bold]")
    recs = Table(title="Recommendations (estimated monthly saving)")
    for col in ("alias", "strategy", "saving", "own cost", "why"):
        recs.add_column(col, overflow="fold")
    for r in fc.recommendations:
        saving = ("up to " if r.upper_bound else "") + usd(r.saving)
        recs.add_row(r.alias, r.strategy, saving, usd(r.own_cost), r.text)
    return by, recs


def forecast_json(fc: Forecast) -> dict[str, Any]:
    return {
        "days": fc.days,
        "growth": plain(fc.growth),
        "models": [
            {
                "alias": m.alias,
                "provider": m.provider,
                "model": m.model,
                "monthly_requests": plain(m.requests),
                "monthly_prompt_tokens": plain(m.prompt_tokens),
                "monthly_completion_tokens": plain(m.completion_tokens),
                "monthly_cost_usd": plain(m.cost),
                "measured_cost_usd": plain(m.measured_cost),
            }
            for m in fc.models
        ],
        "by_alias_usd": {k: plain(v) for k, v in fc.by_alias().items()},
        "total_usd": plain(fc.total),
        "recommendations": [
            {
                "alias": r.alias,
                "strategy": r.strategy,
                "saving_usd": plain(r.saving),
                "upper_bound": r.upper_bound,
                "own_cost_usd": plain(r.own_cost),
                "text": r.text,
            }
            for r in fc.recommendations
        ],
        "notes": fc.notes,
    }


def forecast_md(fc: Forecast) -> str:
    out = [
        "| alias | provider | model | requests | tokens | cost (USD) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for m in fc.models:
        requests, tokens = num(m.requests.quantize(Decimal(1))), num(m.tokens.quantize(Decimal(1)))
        out.append(
            f"| {m.alias} | {m.provider or '-'} | {m.model or '-'} | {requests} "
            f"| {tokens} | {usd(m.cost)} |"
        )
    out.append(f"| **total** | | | | | **{usd(fc.total)}** |")
    out += ["", "| alias | strategy | saving | why |", "|---|---|---:|---|"]
    for r in fc.recommendations:
        saving = ("up to " if r.upper_bound else "") + usd(r.saving)
        out.append(f"| {r.alias} | {r.strategy} | {saving} | {r.text} |")
    out += [""] + [f"> note: {n}" for n in fc.notes]
    return "\n".join(out).rstrip() + "\n"
