"""strata keys create | list | revoke"""

from __future__ import annotations

import json
from pathlib import Path

import redis
import typer
from rich.table import Table
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
from strata.security.auth import REVOKED_CHANNEL
from strata.storage.repositories import keys as key_repo

app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")


@app.command()
def create(
    user: str = typer.Option(..., "--user", "-u", help="the user the key belongs to"),
    tenant: str = typer.Option("default", "--tenant", "-t"),
    name: str = typer.Option("", "--name", "-n", help="a label for people"),
    admin: bool = typer.Option(False, "--admin", help="may administer the tenant"),
    auto_routing: bool = typer.Option(
        True, "--auto-routing/--no-auto-routing", help="may 'auto' aliases pick the strong tier"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON (for scripts)"),
    config: Path | None = ConfigOpt,
) -> None:
    """Create a key. The key is printed once; only its hash is stored."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        new = with_engine(
            live,
            lambda e: key_repo.create_key(
                e,
                tenant_id=tenant,
                user_id=user,
                name=name,
                is_admin=admin,
                auto_routing=auto_routing,
            ),
        )
        with_engine(
            live,
            lambda e: audit.record_cli_change(
                e, "key.create", "key", new.id, {"user_id": user, "admin": admin}
            ),
        )
    if as_json:
        typer.echo(
            json.dumps(
                {"id": new.id, "key": new.key, "tenant": tenant, "user": user, "admin": admin}
            )
        )
        return
    console.print(
        f"created [bold]{new.id}[/bold] for {tenant}/{user}" + (" (admin)" if admin else "")
    )
    console.print(f"key (shown once): [bold]{new.key}[/bold]")


@app.command("list")
def list_keys(
    tenant: str | None = typer.Option(None, "--tenant", "-t"),
    as_json: bool = typer.Option(False, "--json"),
    config: Path | None = ConfigOpt,
) -> None:
    """List keys (never the keys themselves: only ids and display prefixes)."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        rows = with_engine(live, lambda e: key_repo.list_keys(e, tenant_id=tenant))
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": k.id,
                        "prefix": k.display_prefix,
                        "tenant": k.tenant_id,
                        "user": k.user_id,
                        "name": k.name,
                        "admin": k.is_admin,
                        "created_at": k.created_at.isoformat() if k.created_at else None,
                        "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                    }
                    for k in rows
                ]
            )
        )
        return
    table = Table("id", "prefix", "tenant/user", "name", "admin", "created", "last used", "status")
    for k in rows:
        table.add_row(
            k.id,
            k.display_prefix,
            f"{k.tenant_id}/{k.user_id}",
            k.name,
            "yes" if k.is_admin else "",
            f"{k.created_at:%Y-%m-%d %H:%M}" if k.created_at else "",
            f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never",
            "revoked" if k.revoked_at else "active",
        )
    console.print(table)


@app.command()
def revoke(key_id: str, config: Path | None = ConfigOpt) -> None:
    """Revoke a key; every running instance stops accepting it within seconds."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:

        async def run(engine: AsyncEngine) -> str | None:
            key_hash = await key_repo.revoke_key(engine, key_id)
            if key_hash is not None:
                await audit.record_cli_change(engine, "key.revoke", "key", key_id)
            return key_hash

        key_hash = with_engine(live, run)
        if key_hash is None:
            err_console.print(f"[red]no active key {key_id}[/red]")
            raise typer.Exit(1)
        _evict_everywhere(live.redis_url or "", key_hash)
    console.print(f"revoked {key_id}")


@app.command()
def routing(
    key_id: str,
    on: bool = typer.Option(..., "--on/--off", help="capability-based routing for this key"),
    config: Path | None = ConfigOpt,
) -> None:
    """Turn 'auto' routing on or off for a key (off: always the cheap tier)."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:

        async def run(engine: AsyncEngine) -> str | None:
            return await key_repo.set_auto_routing(engine, key_id, on)

        key_hash = with_engine(live, run)
        if key_hash is None:
            err_console.print(f"[red]no active key {key_id}[/red]")
            raise typer.Exit(1)
        _evict_everywhere(live.redis_url or "", key_hash)
    console.print(f"auto routing {'on' if on else 'off'} for {key_id}")


SEMANTIC_CHOICES = {"on": True, "off": False, "alias": None}


@app.command("semantic-cache")
def semantic_cache(
    key_id: str,
    setting: str = typer.Argument(..., help="on, off, or alias (as each alias says)"),
    config: Path | None = ConfigOpt,
) -> None:
    """Opt a key in to or out of the semantic cache, or leave it to each alias."""
    if setting not in SEMANTIC_CHOICES:
        raise typer.BadParameter("use on, off or alias", param_hint="SETTING")
    settings = settings_or_exit(config)
    with running_services(settings) as live:

        async def run(engine: AsyncEngine) -> str | None:
            return await key_repo.set_semantic_cache(engine, key_id, SEMANTIC_CHOICES[setting])

        key_hash = with_engine(live, run)
        if key_hash is None:
            err_console.print(f"[red]no active key {key_id}[/red]")
            raise typer.Exit(1)
        _evict_everywhere(live.redis_url or "", key_hash)
    console.print(f"semantic cache {setting} for {key_id}")


def _evict_everywhere(redis_url: str, key_hash: str) -> None:
    try:
        # Instances drop the cached key at once; if Redis is down, within the cache TTL.
        with redis.Redis.from_url(redis_url, socket_timeout=2) as r:
            r.publish(REVOKED_CHANNEL, key_hash)
    except redis.RedisError:
        err_console.print(
            "[yellow]Redis unreachable: instances notice within the key cache TTL[/yellow]"
        )
