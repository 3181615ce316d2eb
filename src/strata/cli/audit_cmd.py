"""strata audit list | verify

``list`` shows the newest entries of the audit log (admin actions), optionally
of one tenant or one action. ``verify`` walks the whole hash chain and exits 1
naming the first entry that was edited, inserted or removed out of band.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Column, Table
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.cli.common import (
    ConfigOpt,
    console,
    err_console,
    running_services,
    settings_or_exit,
    with_engine,
)
from strata.security import audit
from strata.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Read and verify the audit log of admin actions.")


def record_cli(
    live: Settings,
    *,
    tenant: str | None,
    action: str,
    target: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    """Record an admin action taken by this CLI (actor ``cli:<os user>``)."""
    with_engine(
        live,
        lambda e: audit.record(
            e,
            tenant=tenant,
            actor=audit.cli_actor(),
            action=action,
            target=target,
            details=details,
        ),
    )


@app.command("list")
def list_cmd(
    tenant: str | None = typer.Option(None, "--tenant", "-t"),
    action: str | None = typer.Option(None, "--action", "-a", help="e.g. key.create"),
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=10000),
    as_json: bool = typer.Option(False, "--json"),
    config: Path | None = ConfigOpt,
) -> None:
    """The newest audit entries first."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        entries = with_engine(
            live, lambda e: audit.list_entries(e, tenant=tenant, limit=limit, action=action)
        )
    if as_json:
        typer.echo(json.dumps({"object": "list", "data": [e.to_json() for e in entries]}))
        return
    table = Table(
        "id",
        "at (UTC)",
        "tenant",
        Column("actor", overflow="fold"),
        Column("action", no_wrap=True),
        Column("target", overflow="fold"),
        "request id",
        Column("details", overflow="fold"),
    )
    for e in entries:
        table.add_row(
            str(e.id),
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.tenant_id or "-",
            e.actor,
            e.action,
            e.target or "-",
            e.request_id or "-",
            json.dumps(e.details, sort_keys=True) if e.details else "",
        )
    console.print(table)


@app.command("verify")
def verify_cmd(config: Path | None = ConfigOpt) -> None:
    """Check the hash chain; exit 1 naming the first bad entry."""
    settings = settings_or_exit(config)

    async def run(engine: AsyncEngine) -> tuple[bool, int | None, int]:
        ok, bad = await audit.verify(engine)
        latest = await audit.list_entries(engine, limit=1)
        return ok, bad, latest[0].id if latest else 0

    with running_services(settings) as live:
        ok, bad, last = with_engine(live, run)
    if not ok:
        err_console.print(
            f"[red]audit chain broken at entry {bad}[/red]: it or the entry before it "
            "was changed, inserted or removed outside Strata"
        )
        raise typer.Exit(1)
    console.print("audit chain ok (" + (f"up to entry {last}" if last else "empty") + ")")
