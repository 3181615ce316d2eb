"""strata batches list | watch ID

``watch`` follows one batch with a progress bar (requests completed and failed of
the total) until it reaches a final status; it reads PostgreSQL, the state of
record, so it works from any machine with the database URL.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from strata.cli.common import ConfigOpt, console, err_console, running_services, settings_or_exit
from strata.settings import Settings
from strata.storage.engine import make_engine
from strata.storage.repositories import batches as repo

app = typer.Typer(no_args_is_help=True, help="Follow batches (the Batch API).")


@app.command("list")
def list_cmd(
    tenant: str | None = typer.Option(None, "--tenant", "-t"),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000),
    as_json: bool = typer.Option(False, "--json"),
    config: Path | None = ConfigOpt,
) -> None:
    """The newest batches (all tenants unless --tenant)."""

    async def go(settings: Settings) -> list[repo.BatchRow]:
        engine = make_engine(settings.database_url or "", pool_size=1)
        try:
            return await repo.list_batches(engine, tenant, limit=limit)
        finally:
            await engine.dispose()

    settings = settings_or_exit(config)
    with running_services(settings) as live:
        rows = asyncio.run(go(live))
    if as_json:
        keys = ("id", "tenant_id", "endpoint", "status", "total", "completed", "failed")
        console.print_json(json.dumps({"data": [{k: getattr(b, k) for k in keys} for b in rows]}))
        return
    table = Table("id", "tenant", "endpoint", "status", "total", "completed", "failed")
    for b in rows:
        table.add_row(
            b.id, b.tenant_id, b.endpoint, b.status, str(b.total), str(b.completed), str(b.failed)
        )
    console.print(table)


async def _watch(settings: Settings, batch_id: str, interval_s: float, timeout_s: float) -> str:
    engine = make_engine(settings.database_url or "", pool_size=1)
    deadline = time.monotonic() + timeout_s
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(batch_id, total=None, failed=0)
            while True:
                b = await repo.get(engine, None, batch_id)
                if b is None:
                    return "missing"
                bar.update(
                    task,
                    total=b.total or None,
                    completed=b.completed + b.failed,
                    failed=b.failed,
                    description=f"{batch_id} [{b.status}]",
                )
                if b.status in repo.FINAL or time.monotonic() > deadline:
                    return b.status
                await asyncio.sleep(interval_s)
    finally:
        await engine.dispose()


@app.command("watch")
def watch(
    batch_id: str,
    interval: float = typer.Option(1.0, min=0.1, help="seconds between reads"),
    timeout: float = typer.Option(86_400.0, min=1, help="give up after this many seconds"),
    config: Path | None = ConfigOpt,
) -> None:
    """A progress bar until the batch completes, fails, expires or is cancelled."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        status = asyncio.run(_watch(live, batch_id, interval, timeout))
    if status == "missing":
        err_console.print(f"[red]no batch {batch_id!r}[/red]")
        raise typer.Exit(1)
    console.print(f"{batch_id}: {status}")
    if status not in repo.FINAL:
        raise typer.Exit(3)
