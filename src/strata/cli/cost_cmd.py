"""strata cost: plan, compare, breakeven, forecast."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from strata.cli.common import (
    ConfigOpt,
    console,
    err_console,
    running_services,
    settings_or_exit,
    with_engine,
)
from strata.errors import ConfigError
from strata.planner import render, render_forecast
from strata.planner.breakeven import Breakeven, breakeven
from strata.planner.catalog import DEFAULT_MAX_AGE_DAYS, PriceTable, load_table, stale
from strata.planner.checks import plan_breakeven, run_checks
from strata.planner.forecast import forecast, parse_growth
from strata.planner.model import cost_plan, num, plain, rate, usd
from strata.planner.plan import Plan, load_plan
from strata.planner.strategies import compare, parse_strategy
from strata.storage.repositories.usage_traffic import traffic_by_model

app = typer.Typer(
    no_args_is_help=True,
    help="Cost planner: monthly cost by layer, strategies, API vs self-hosted, forecast.",
)

FormatOpt = typer.Option("table", "--format", "-f", help="table, md or json")
PricesOpt = typer.Option(None, "--prices", help="a price table (default: the shipped one)")
MaxAgeOpt = typer.Option(
    None, "--max-price-age", min=0, help="warn about prices older than this many days"
)


def _fail(exc: ConfigError) -> typer.Exit:
    err_console.print(f"[red]error[/red]: {exc.message}")
    return typer.Exit(2)


def _format(fmt: str) -> str:
    if fmt not in ("table", "md", "json"):
        err_console.print(f"[red]error[/red]: --format must be table, md or json, not {fmt!r}")
        raise typer.Exit(2)
    return fmt


def _plan(path: Path, prices: Path | None, max_age: int | None) -> tuple[Plan, PriceTable]:
    try:
        plan, table = load_plan(path, load_table(prices) if prices else None)
    except ConfigError as exc:
        raise _fail(exc) from None
    if max_age is not None:
        plan = plan.model_copy(update={"max_price_age_days": max_age})
    return plan, table


def _dec(text: str | None, what: str) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        err_console.print(f"[red]error[/red]: {what}: {text!r} is not a number")
        raise typer.Exit(2) from None


@app.command("plan")
def plan_cmd(
    plan_file: Path = typer.Argument(..., help="plan YAML, e.g. examples/plans/reference.yaml"),
    fmt: str = FormatOpt,
    prices: Path | None = PricesOpt,
    max_price_age: int | None = MaxAgeOpt,
) -> None:
    """Monthly cost by layer, line by line, beside the figures the plan quotes."""
    fmt = _format(fmt)
    plan, table = _plan(plan_file, prices, max_price_age)
    try:
        report = cost_plan(plan, table)
        results = run_checks(plan, table, report)
    except ConfigError as exc:
        raise _fail(exc) from None
    for s in report.stale:
        err_console.print(f"[yellow]warning[/yellow]: {s.message()}")
    if fmt == "json":
        typer.echo(json.dumps(render.as_json(report, results), indent=2))
    elif fmt == "md":
        typer.echo(render.markdown(report, results), nl=False)
    else:
        console.print(render.rich_table(report))
        if results:
            console.print(render.checks_table(results))


@app.command("compare")
def compare_cmd(
    plan_file: Path = typer.Argument(...),
    strategy: list[str] = typer.Option(
        ...,
        "--strategy",
        "-s",
        help="cache=0.5 | batch=0.3[,discount=0.15] | model=8b[,from=ID] | "
        "spot[=0.5][,rerun=0.1] | route=0.1,to=openai/gpt-3.5-turbo (repeatable)",
    ),
    fmt: str = FormatOpt,
    prices: Path | None = PricesOpt,
) -> None:
    """What each strategy saves, and what it costs, against the plan."""
    fmt = _format(fmt)
    plan, table = _plan(plan_file, prices, None)
    try:
        outcomes = compare(plan, table, [parse_strategy(s) for s in strategy])
    except ConfigError as exc:
        raise _fail(exc) from None
    if fmt == "json":
        typer.echo(json.dumps({"strategies": render.outcome_rows(outcomes)}, indent=2))
    elif fmt == "md":
        typer.echo(render.compare_markdown(outcomes), nl=False)
    else:
        console.print(render.compare_table(outcomes))
        for o in outcomes:
            console.print(f"[bold]{o.strategy}[/bold]: {o.description}")
        console.print(render.lines_table(outcomes[-1]))


def _breakeven_dict(be: Breakeven) -> dict[str, Any]:
    return {
        "api": be.api,
        "gpu": be.gpu,
        "billing": be.billing,
        "api_usd_per_1m_blended": plain(be.api_per_1m),
        "gpu_usd_per_month": plain(be.gpu_month),
        "tokens_per_s": plain(be.tokens_per_s),
        "concurrency": be.concurrency,
        "capacity_tokens_per_month": plain(be.capacity),
        "gpu_usd_per_1m_at_capacity": plain(be.gpu_per_1m_at_capacity),
        "breakeven_tokens_per_month": None if be.tokens is None else plain(be.tokens),
        "utilisation_needed": None if be.utilisation is None else plain(be.utilisation),
        "never_breaks_even": be.never,
        "verdict": be.verdict(),
    }


@app.command("breakeven")
def breakeven_cmd(
    plan_file: Path | None = typer.Argument(None, help="a plan with a breakeven: section"),
    api: str | None = typer.Option(None, help="API price, e.g. together/llama-3.1-70b"),
    gpu: str | None = typer.Option(None, help="GPU price, e.g. coreweave-h100"),
    billing: str | None = typer.Option(None, help="reserved or on_demand (always on)"),
    tokens_per_s: str | None = typer.Option(None, help="measured throughput (default: table)"),
    input_share: str | None = typer.Option(None, help="input share of tokens (default 0.7)"),
    chart: Path | None = typer.Option(None, "--chart", help="write a PNG chart here"),
    fmt: str = FormatOpt,
    prices: Path | None = PricesOpt,
    max_price_age: int | None = MaxAgeOpt,
) -> None:
    """API vs self-hosted: break-even monthly tokens, utilisation it needs, capacity."""
    fmt = _format(fmt)
    mark = None
    try:
        if plan_file is not None:
            plan, table = _plan(plan_file, prices, None)
            spec = plan.breakeven
            be0 = plan_breakeven(plan, table)
            mark = plan.workload.tokens() * plan.workload.growth
            share = _dec(input_share, "--input-share") or (
                spec.input_share if spec and spec.input_share is not None
                else plan.workload.input_share
            )  # fmt: skip
            api = api or (spec.api if spec else None)
            gpu = gpu or (spec.gpu if spec else None)
            billing = billing or (be0.billing if be0 else None)
            hours = plan.hours_per_month
        else:
            table = load_table(prices)
            share = _dec(input_share, "--input-share") or Decimal("0.7")
            hours = Decimal(730)
        if not api or not gpu:
            raise ConfigError("name --api and --gpu (or give a plan with a breakeven: section)")
        be = breakeven(
            table,
            api,
            gpu,
            billing=billing or "reserved",
            input_share=share,
            hours_per_month=hours,
            tokens_per_s=_dec(tokens_per_s, "--tokens-per-s"),
        )
    except ConfigError as exc:
        raise _fail(exc) from None
    used = {api: table.api(api), gpu: table.gpus.get(gpu)}
    age = max_price_age if max_price_age is not None else DEFAULT_MAX_AGE_DAYS
    today = datetime.now(UTC).date()
    for w in stale({k: v for k, v in used.items() if v is not None}, today, age):
        err_console.print(f"[yellow]warning[/yellow]: {w.message()}")
    if chart is not None:
        from strata.planner.chart import breakeven_chart

        breakeven_chart(be, chart, mark)
    if fmt == "json":
        typer.echo(json.dumps(_breakeven_dict(be), indent=2))
        return
    rows = [
        ("API, blended per 1M tokens", rate(be.api_per_1m)),
        ("GPU per month", usd(be.gpu_month)),
        ("GPU capacity per month", f"{num(be.capacity)} tokens at {num(be.tokens_per_s)} tokens/s"),
        ("GPU per 1M tokens at full load", rate(be.gpu_per_1m_at_capacity)),
        (
            "break-even",
            "never (API is free)"
            if be.tokens is None
            else f"{num(be.tokens.quantize(Decimal(1)))} tokens/month",
        ),
        (
            "utilisation needed",
            "-"
            if be.utilisation is None
            else f"{(be.utilisation * 100).quantize(Decimal('0.1'))}%",
        ),
    ]
    if fmt == "md":
        lines = [f"| {be.api} vs {be.gpu} ({be.billing}) | |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        typer.echo("\n".join(lines) + f"\n\n{be.verdict()}\n", nl=False)
    else:
        table_out = Table(title=f"{be.api} vs {be.gpu} ({be.billing})", show_header=False)
        for k, v in rows:
            table_out.add_row(k, v)
        console.print(table_out)
        console.print(("[red]" if be.never else "[green]") + be.verdict())
    if chart is not None:
        err_console.print(f"chart written to {chart}")


@app.command("forecast")
def forecast_cmd(
    days: int = typer.Option(30, "--days", "-d", min=1, help="measured window, days back from now"),
    growth: str = typer.Option("1x", "--growth", "-g", help="traffic multiplier, e.g. 10x"),
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="default: all tenants"),
    fmt: str = FormatOpt,
    prices: Path | None = PricesOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Project the monthly bill from usage records; recommend what would pay off."""
    fmt = _format(fmt)
    try:
        mult = parse_growth(growth)
        table = load_table(prices)
    except ConfigError as exc:
        raise _fail(exc) from None
    settings = settings_or_exit(config)
    end = datetime.now(UTC)
    start = end - timedelta(days=days)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=err_console, transient=True
    ) as bar:
        bar.add_task("reading usage records", total=None)
        with running_services(settings) as live:
            rows = with_engine(
                live, lambda e: traffic_by_model(e, start=start, end=end, tenant_id=tenant)
            )
    urls = {n: p.options().get("base_url") for n, p in settings.providers.items()}
    fc = forecast(rows, days, mult, table, {n: u for n, u in urls.items() if isinstance(u, str)})
    if fmt == "json":
        typer.echo(json.dumps(render_forecast.forecast_json(fc), indent=2))
        return
    by, recs = render_forecast.forecast_tables(fc)
    if fmt == "md":
        typer.echo(render_forecast.forecast_md(fc), nl=False)
        return
    console.print(by)
    console.print(recs if fc.recommendations else "no strategy would pay off on this traffic")
    for note in fc.notes:
        console.print(f"note: {note}")
