"""strata jobs list | show KEY | retry KEY

The queue's jobs (SAQ, in Redis): queued, running, finished within the last day.
``retry`` puts a finished, failed or stuck job back on the queue; a batch job
resumes its batch where it stopped (results already stored are kept).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from strata.cli.common import ConfigOpt, console, err_console, running_services, settings_or_exit
from strata.jobs import queue as jobq
from strata.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Inspect and retry background jobs.")


def _with_queue(settings: Settings, fn: Any) -> Any:
    async def run() -> Any:
        q = jobq.make_queue(settings)
        try:
            return await fn(q)
        finally:
            await q.disconnect()

    return asyncio.run(run())


@app.command("list")
def list_cmd(
    status: str | None = typer.Option(None, help="queued, active, complete, failed, aborted"),
    as_json: bool = typer.Option(False, "--json"),
    config: Path | None = ConfigOpt,
) -> None:
    """Jobs on the queue, newest first, and the workers taking them."""

    async def go(q: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        jobs = [jobq.describe(j) async for j in q.iter_jobs()]
        info = await q.info()
        return jobs, info

    settings = settings_or_exit(config)
    with running_services(settings) as live:
        jobs, info = _with_queue(live, go)
    if status is not None:
        jobs = [j for j in jobs if j["status"] == status]
    jobs.sort(key=lambda j: j["queued"] or 0, reverse=True)
    if as_json:
        console.print_json(json.dumps({"jobs": jobs, "workers": len(info["workers"])}))
        return
    table = Table("key", "function", "status", "attempts", "error")
    for j in jobs:
        table.add_row(
            j["key"], j["function"], j["status"], str(j["attempts"]), " ".join(j["error"] or [])
        )
    console.print(table)
    console.print(
        f"{len(info['workers'])} worker(s); queued {info['queued']}, active {info['active']}"
    )


@app.command("show")
def show(key: str, config: Path | None = ConfigOpt) -> None:
    """One job, in full (JSON)."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        job = _with_queue(live, lambda q: q.job(key))
    if job is None:
        err_console.print(f"[red]no job {key!r}[/red] (finished jobs are kept for a day)")
        raise typer.Exit(1)
    out = job.to_dict()
    out["status"] = jobq.describe(job)["status"]
    console.print_json(json.dumps(out, default=str))


@app.command("retry")
def retry(key: str, config: Path | None = ConfigOpt) -> None:
    """Queue a job again (a batch resumes where it stopped)."""

    async def go(q: Any) -> bool:
        job = await q.job(key)
        if job is None:
            if key.startswith("batch:"):
                return await jobq.enqueue_batch(q, live, key.removeprefix("batch:")) is not None
            return False
        await q.retry(job, error="retried from the CLI")
        return True

    settings = settings_or_exit(config)
    with running_services(settings) as live:
        ok = _with_queue(live, go)
    if not ok:
        err_console.print(f"[red]no job {key!r}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]queued[/green] {key}")
