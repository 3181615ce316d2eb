"""strata usage: cost by day, model and user."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import typer
from rich.table import Table

from strata.cli.common import ConfigOpt, console, running_services, settings_or_exit, with_engine
from strata.storage.repositories import usage as usage_repo


def usage(
    days: int = typer.Option(
        7, "--days", "-d", min=1, help="how many UTC days back, today included"
    ),
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="default: all tenants"),
    user: str | None = typer.Option(None, "--user", "-u"),
    model: str | None = typer.Option(None, "--model", "-m", help="a model alias"),
    as_json: bool = typer.Option(False, "--json"),
    config: Path | None = ConfigOpt,
) -> None:
    """Summarise requests, tokens and cost (USD) by day, model and user."""
    settings = settings_or_exit(config)
    start = datetime.now(UTC).date() - timedelta(days=days - 1)
    with running_services(settings) as live:
        rows = with_engine(
            live,
            lambda e: usage_repo.summarize(
                e, tenant_id=tenant, user_id=user, alias=model, start=start
            ),
        )
    total = sum((r.cost_usd for r in rows), start=Decimal(0))
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "data": [r.as_dict() for r in rows],
                    "total_cost_usd": usage_repo.decimal_str(total),
                }
            )
        )
        return
    table = Table(
        "date", "model", "user", "requests", "errors", "prompt tok", "completion tok", "cost (USD)"
    )
    for r in rows:
        table.add_row(
            r.day.isoformat(),
            r.alias,
            r.user_id,
            str(r.requests),
            str(r.errors),
            f"{r.prompt_tokens:,}",
            f"{r.completion_tokens:,}",
            f"{r.cost_usd:.6f}",
        )
    console.print(table)
    console.print(f"total since {start}: [bold]${total:.6f}[/bold]")
