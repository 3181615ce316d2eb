"""strata privacy export | erase | purge

GDPR requests for one data subject (a Strata user: ``--tenant`` and ``--user``)
and the retention purge. See docs/data-retention.md.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.cli.common import ConfigOpt, console, err_console, running_services, settings_or_exit
from strata.privacy import retention
from strata.privacy import subject as privacy
from strata.security import audit
from strata.security.crypto import open_crypto
from strata.settings import Settings
from strata.storage.engine import make_engine

app = typer.Typer(no_args_is_help=True, help="GDPR export and erasure; retention purge.")
T = TypeVar("T")

TenantOpt = typer.Option(..., "--tenant", "-t")
UserOpt = typer.Option(..., "--user", "-u")


def _run(live: Settings, fn: Callable[[AsyncEngine, aioredis.Redis], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = make_engine(live.database_url or "", pool_size=1)
        redis = aioredis.from_url(live.redis_url or "", socket_timeout=5)
        try:
            return await fn(engine, redis)
        finally:
            await redis.aclose()
            await engine.dispose()

    try:
        return asyncio.run(run())
    except Exception as exc:
        # A half-done request must not pass quietly: say so and fail.
        err_console.print(f"[red]failed[/red]: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None


async def _export(
    engine: AsyncEngine, redis: aioredis.Redis, live: Settings, tenant: str, user: str
) -> dict[str, Any]:
    crypto = await open_crypto(engine, live.crypto, live.data_dir)
    return await privacy.export(
        engine,
        redis,
        tenant,
        user,
        actor=audit.cli_actor(),
        data_dir=live.data_dir,
        crypto=crypto,
    )


@app.command("export")
def export_cmd(
    tenant: str = TenantOpt,
    user: str = UserOpt,
    output: Path | None = typer.Option(None, "--output", "-o", help="file (default: stdout)"),
    config: Path | None = ConfigOpt,
) -> None:
    """Everything Strata stores about a user, as JSON."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        data: dict[str, Any] = _run(
            live,
            lambda e, r: _export(e, r, live, tenant, user),
        )
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n")
        err_console.print(f"wrote {output}")


@app.command()
def erase(
    tenant: str = TenantOpt,
    user: str = UserOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    config: Path | None = ConfigOpt,
) -> None:
    """Delete a user's data everywhere (usage records keep their numbers, anonymised)."""
    if not yes:
        typer.confirm(
            f"Erase every trace of {tenant}/{user} (keys, cache, overrides)? This cannot be undone",
            abort=True,
        )
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        receipt = _run(
            live,
            lambda e, r: privacy.erase(
                e, r, tenant, user, actor=audit.cli_actor(), data_dir=live.data_dir
            ),
        )
    console.print_json(json.dumps(receipt.to_json(), default=str))


@app.command()
def purge(config: Path | None = ConfigOpt) -> None:
    """Run the retention purge once (servers run it every retention.interval_s)."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        counts = _run(live, lambda e, r: retention.purge(e, live.retention))
    for name, n in counts.items():
        console.print(f"{name}: {n} deleted")
