"""strata cache stats | purge | eval"""

from __future__ import annotations

from pathlib import Path

import redis
import typer
from rich.table import Table

from strata.cache.keys import PREFIX, pattern
from strata.cli.cache_eval import eval_command
from strata.cli.common import ConfigOpt, console, err_console, running_services, settings_or_exit

app = typer.Typer(no_args_is_help=True, help="Inspect, purge and evaluate the response cache.")
app.command("eval")(eval_command)


def _scan(r: redis.Redis, match: str) -> list[bytes]:
    return list(r.scan_iter(match=match, count=1000))


@app.command()
def stats(config: Path | None = ConfigOpt) -> None:
    """Entries and bytes per tenant namespace and alias."""
    settings = settings_or_exit(config)
    with running_services(settings, upgrade=False) as live:
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
    table = Table("namespace", "alias", "entries", "bytes")
    for (ns, alias), (n, size) in sorted(counts.items()):
        table.add_row(ns, alias, str(n), f"{size:,}")
    console.print(table)


@app.command()
def purge(
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="a tenant (or 'shared')"),
    alias: str | None = typer.Option(None, "--alias", "-a"),
    config: Path | None = ConfigOpt,
) -> None:
    """Delete cached answers (all, or one tenant's, or one alias's)."""
    settings = settings_or_exit(config)
    with running_services(settings, upgrade=False) as live:
        try:
            with redis.Redis.from_url(live.redis_url or "", socket_timeout=5) as r:
                keys = _scan(r, pattern(tenant, alias))
                for i in range(0, len(keys), 500):
                    r.delete(*keys[i : i + 500])
        except redis.RedisError as exc:
            err_console.print(f"[red]Redis unreachable[/red]: {type(exc).__name__}")
            raise typer.Exit(1) from None
    console.print(f"purged {len(keys)} cached answers")
