"""strata privacy export | erase | purge

GDPR requests for one data subject — a Strata user (``--tenant`` and ``--user``)
or an end user a client named in OpenAI's ``user`` field (``--tenant`` and
``--end-user``) — and the retention purge. See docs/data-retention.md.
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
from strata.privacy import end_user as end_user_privacy
from strata.privacy import retention
from strata.privacy import subject as privacy
from strata.security import audit
from strata.security.crypto import open_crypto
from strata.settings import Settings
from strata.storage.engine import make_engine

app = typer.Typer(no_args_is_help=True, help="GDPR export and erasure; retention purge.")
T = TypeVar("T")

TenantOpt = typer.Option(..., "--tenant", "-t")
UserOpt = typer.Option(None, "--user", "-u", help="a Strata user id")
EndUserOpt = typer.Option(
    None, "--end-user", "-e", help="an end-user id sent as OpenAI's `user` field"
)


def _one_subject(user: str | None, end_user: str | None) -> None:
    if (user is None) == (end_user is None):
        err_console.print("[red]error[/red]: give exactly one of --user and --end-user")
        raise typer.Exit(2)


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
    engine: AsyncEngine,
    redis: aioredis.Redis,
    live: Settings,
    tenant: str,
    user: str | None,
    end_user: str | None,
) -> dict[str, Any]:
    crypto = await open_crypto(engine, live.crypto, live.data_dir)
    if end_user is not None:
        return await end_user_privacy.export(
            engine, tenant, end_user, crypto, actor=audit.cli_actor(), data_dir=live.data_dir
        )
    assert user is not None  # _one_subject checked
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
    user: str | None = UserOpt,
    end_user: str | None = EndUserOpt,
    output: Path | None = typer.Option(None, "--output", "-o", help="file (default: stdout)"),
    config: Path | None = ConfigOpt,
) -> None:
    """Everything Strata stores about a user or an end user, as JSON."""
    _one_subject(user, end_user)
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        data: dict[str, Any] = _run(
            live,
            lambda e, r: _export(e, r, live, tenant, user, end_user),
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
    user: str | None = UserOpt,
    end_user: str | None = EndUserOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
    config: Path | None = ConfigOpt,
) -> None:
    """Delete a user's data everywhere (usage records keep their numbers, anonymised),
    or unlink an end user from every usage record."""
    _one_subject(user, end_user)
    if not yes:
        what = (
            f"end user {end_user!r} of tenant {tenant} (unlinked from usage records)"
            if end_user is not None
            else f"{tenant}/{user} (keys, cache, overrides)"
        )
        typer.confirm(f"Erase every trace of {what}? This cannot be undone", abort=True)
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        receipt = _run(live, lambda e, r: _erase(e, r, live, tenant, user, end_user))
    console.print_json(json.dumps(receipt.to_json(), default=str))


async def _erase(
    engine: AsyncEngine,
    redis: aioredis.Redis,
    live: Settings,
    tenant: str,
    user: str | None,
    end_user: str | None,
) -> privacy.Receipt:
    if end_user is not None:
        crypto = await open_crypto(engine, live.crypto, live.data_dir)
        return await end_user_privacy.erase(
            engine, tenant, end_user, crypto, actor=audit.cli_actor(), data_dir=live.data_dir
        )
    assert user is not None  # _one_subject checked
    return await privacy.erase(
        engine, redis, tenant, user, actor=audit.cli_actor(), data_dir=live.data_dir
    )


@app.command()
def purge(config: Path | None = ConfigOpt) -> None:
    """Run the retention purge once (servers run it every retention.interval_s)."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        counts = _run(live, lambda e, r: retention.purge(e, live.retention))
    for name, n in counts.items():
        console.print(f"{name}: {n} deleted")
