"""strata cache stats | purge | forget | eval

Exact entries live in Redis, semantic entries in PostgreSQL; every command
covers both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.cache.keys import PREFIX, owner_key, pattern
from strata.cli.audit_cmd import record_cli
from strata.cli.cache_eval import eval_command
from strata.cli.common import (
    ConfigOpt,
    console,
    err_console,
    running_services,
    settings_or_exit,
    with_engine,
)
from strata.settings import Settings
from strata.storage.repositories import semantic_cache as semantic_repo

app = typer.Typer(no_args_is_help=True, help="Inspect, purge and evaluate the response cache.")
app.command("eval")(eval_command)


def _scan(r: redis.Redis, match: str) -> list[bytes]:
    return list(r.scan_iter(match=match, count=1000))


def _semantic(live: Settings, what: str, fn: Any) -> Any:
    """Run a semantic-cache repository call; None (with a warning) when unavailable."""

    async def run(engine: AsyncEngine) -> Any:
        if not await semantic_repo.available(engine):
            return None
        return await fn(engine)

    try:
        return with_engine(live, run)
    except Exception as exc:
        err_console.print(f"[yellow]semantic cache: cannot {what}[/yellow]: {type(exc).__name__}")
        return None


@app.command()
def stats(config: Path | None = ConfigOpt) -> None:
    """Entries and bytes per tenant namespace and alias (exact and semantic)."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        semantic = _semantic(live, "read statistics", semantic_repo.stats) or []
        try:
            with redis.Redis.from_url(live.redis_url or "", socket_timeout=5) as r:
                counts: dict[tuple[str, str], list[int]] = {}
                for key in _scan(r, pattern()):
                    ns, alias = key.decode()[len(PREFIX) :].split(":", 2)[:2]
                    row = counts.setdefault((ns, alias), [0, 0])
                    row[0] += 1
                    row[1] += int(r.memory_usage(key) or 0)
        except redis.RedisError as exc:
            err_console.print(f"[red]Redis unreachable[/red]: {type(exc).__name__}")
            raise typer.Exit(1) from None
    table = Table("cache", "namespace", "alias", "entries", "bytes")
    for (ns, alias), (n, size) in sorted(counts.items()):
        table.add_row("exact", ns, alias, str(n), f"{size:,}")
    for ns, alias, n, size in semantic:
        table.add_row("semantic", ns, alias, str(n), f"{size:,}")
    console.print(table)


@app.command()
def purge(
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="a tenant (or 'shared')"),
    alias: str | None = typer.Option(None, "--alias", "-a"),
    config: Path | None = ConfigOpt,
) -> None:
    """Delete cached answers (all, or one tenant's, or one alias's)."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        semantic = _semantic(
            live, "purge", lambda engine: semantic_repo.purge(engine, tenant, alias)
        )
        try:
            with redis.Redis.from_url(live.redis_url or "", socket_timeout=5) as r:
                keys = _scan(r, pattern(tenant, alias))
                for i in range(0, len(keys), 500):
                    r.delete(*keys[i : i + 500])
        except redis.RedisError as exc:
            err_console.print(f"[red]Redis unreachable[/red]: {type(exc).__name__}")
            raise typer.Exit(1) from None
    console.print(f"purged {len(keys)} exact and {semantic or 0} semantic cached answers")


@app.command()
def forget(
    tenant: str = typer.Option(..., "--tenant", "-t"),
    user: str = typer.Option(..., "--user", "-u"),
    config: Path | None = ConfigOpt,
) -> None:
    """Delete every cached answer a user's requests stored (erasure), in any namespace."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:

        async def erase(engine: AsyncEngine) -> int:
            if not await semantic_repo.available(engine):
                return 0
            return await semantic_repo.delete_user(engine, tenant, user)

        try:
            # Erasure must not half-succeed quietly: a database error fails the command.
            semantic = with_engine(live, erase)
        except Exception as exc:
            err_console.print(f"[red]PostgreSQL unreachable[/red]: {type(exc).__name__}")
            raise typer.Exit(1) from None
        try:
            with redis.Redis.from_url(live.redis_url or "", socket_timeout=5) as r:
                owner = owner_key(tenant, user)
                keys = list(r.smembers(owner))
                deleted = 0
                for i in range(0, len(keys), 500):
                    deleted += int(r.delete(*keys[i : i + 500]))
                r.delete(owner)
        except redis.RedisError as exc:
            err_console.print(f"[red]Redis unreachable[/red]: {type(exc).__name__}")
            raise typer.Exit(1) from None
        record_cli(
            live,
            tenant=tenant,
            action="cache.forget",
            target=f"user:{tenant}/{user}",
            details={"exact": deleted, "semantic": semantic or 0},
        )
    console.print(
        f"forgot {deleted} exact and {semantic or 0} semantic cached answers of {tenant}/{user}"
    )
