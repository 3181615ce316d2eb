"""strata worker [--ray]: run queued jobs (batches, scheduled work) until stopped.

Several workers may run against the same PostgreSQL and Redis, on any machines;
each takes jobs from the queue (``jobs.queue``). ``--ray`` (or
``STRATA_RAY_ADDRESS``) sends large batches to a Ray cluster in shards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from strata.cli.common import ConfigOpt, console, running_services, settings_or_exit
from strata.observability.logging import configure_logging


def worker(
    ray: bool = typer.Option(
        False, "--ray", help="run large batches as Ray tasks (ray.init(); STRATA_RAY_ADDRESS)"
    ),
    concurrency: int | None = typer.Option(None, min=1, help="jobs at once (jobs.concurrency)"),
    config: Path | None = ConfigOpt,
) -> None:
    """Run background jobs: batches, the retention purge, batch reconciliation."""
    overrides = {}
    if concurrency is not None:
        overrides["jobs"] = {"concurrency": concurrency}
    settings = settings_or_exit(config, **overrides)
    configure_logging(settings.log_level)
    from strata.jobs.worker import serve

    with running_services(settings) as live:
        console.print(
            f"[green]Strata worker[/green] on queue {live.jobs.queue!r}"
            + (" with Ray" if ray or live.ray_address else "")
            + "; Ctrl-C stops it."
        )
        asyncio.run(serve(live, ray=ray))
