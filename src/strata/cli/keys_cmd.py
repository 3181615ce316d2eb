"""strata keys create | list | rotate | revoke"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
import typer
from rich.console import Console
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
from strata.errors import InvalidRequest
from strata.security import audit
from strata.security.auth import REVOKED_CHANNEL
from strata.security.keys import SCOPES, check_scopes, parse_networks
from strata.storage.repositories import keys as key_repo

app = typer.Typer(no_args_is_help=True, help="Create, list, rotate and revoke API keys.")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``90d``, ``24h``, ``30m``, ``45s``, ``2w`` (or plain seconds) to a timedelta."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text.lower())
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90d, 24h, 30m)")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2) or "s"])


def _duration_opt(text: str, option: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


@app.command()
def create(
    user: str = typer.Option(..., "--user", "-u", help="the user the key belongs to"),
    tenant: str = typer.Option("default", "--tenant", "-t"),
    name: str = typer.Option("", "--name", "-n", help="a label for people"),
    admin: bool = typer.Option(False, "--admin", help="may administer the tenant"),
    auto_routing: bool = typer.Option(
        True, "--auto-routing/--no-auto-routing", help="may 'auto' aliases pick the strong tier"
    ),
    scope: list[str] | None = typer.Option(
        None, "--scope", help=f"repeatable; one of {', '.join(SCOPES)} (default: all but admin)"
    ),
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="repeatable; the model aliases it may use (default: all)"
    ),
    expires_in: str | None = typer.Option(
        None, "--expires-in", help="e.g. 90d, 12h (default: never)"
    ),
    ip: list[str] | None = typer.Option(
        None, "--ip", help="repeatable; a CIDR it may be used from, e.g. 10.0.0.0/8"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON (for scripts)"),
    config: Path | None = ConfigOpt,
) -> None:
    """Create a key. The key is printed once; only its hash is stored."""
    try:
        expires_at = datetime.now(UTC) + parse_duration(expires_in) if expires_in else None
        scopes = check_scopes(scope) if scope else None
        nets = [str(n) for n in parse_networks(ip)] if ip else None
    except (ValueError, InvalidRequest) as exc:
        raise typer.BadParameter(str(exc)) from None
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
                scopes=scopes,
                allowed_models=model or None,
                expires_at=expires_at,
                ip_allow=nets,
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
                        "scopes": k.scopes,
                        "models": k.allowed_models,
                        "ip_allow": k.ip_allow,
                        "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                        "rotated_at": k.rotated_at.isoformat() if k.rotated_at else None,
                        "created_at": k.created_at.isoformat() if k.created_at else None,
                        "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                    }
                    for k in rows
                ]
            )
        )
        return
    table = Table(
        Column("id", no_wrap=True),
        "prefix",
        "tenant/user",
        "name",
        "scopes",
        "models",
        "created",
        "expires",
        "last used",
        "status",
    )
    now = datetime.now(UTC)
    for k in rows:
        if k.scopes is not None:
            scopes = ",".join(k.scopes)
        else:
            scopes = "all" if k.is_admin else "all but admin"
        status = "active"
        if k.revoked_at:
            status = "revoked"
        elif k.expires_at and k.expires_at <= now:
            status = "expired"
        elif k.previous_expires_at and k.previous_expires_at > now:
            status = f"rotated (old key until {k.previous_expires_at:%Y-%m-%d %H:%M})"
        table.add_row(
            k.id,
            k.display_prefix,
            f"{k.tenant_id}/{k.user_id}",
            k.name,
            scopes + (f" ip:{','.join(k.ip_allow)}" if k.ip_allow else ""),
            ",".join(k.allowed_models) if k.allowed_models is not None else "all",
            f"{k.created_at:%Y-%m-%d %H:%M}" if k.created_at else "",
            f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "never",
            f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never",
            status,
        )
    console.print(table)


@app.command()
def rotate(
    key_id: str | None = typer.Argument(None, help="the key to rotate (or use --older-than)"),
    older_than: str | None = typer.Option(
        None, "--older-than", help="rotate every key whose secret is older, e.g. 90d"
    ),
    grace: str = typer.Option(
        "0s", "--grace", help="how long the old secret keeps working, e.g. 24h (default: 0)"
    ),
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="with --older-than: one tenant"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (for scripts)"),
    config: Path | None = ConfigOpt,
) -> None:
    """Issue a new secret for a key (same id and settings), or for every key older
    than --older-than. New secrets are printed once: redeploy them before the grace ends."""
    if (key_id is None) == (older_than is None):
        raise typer.BadParameter("give a KEY_ID or --older-than, not both")
    grace_s = _duration_opt(grace, "--grace").total_seconds()
    age = _duration_opt(older_than, "--older-than") if older_than is not None else None
    settings = settings_or_exit(config)
    with running_services(settings) as live:

        async def run(engine: AsyncEngine) -> list[key_repo.RotatedKey]:
            if age is not None:
                done = await key_repo.rotate_older_than(
                    engine, age, grace_s=grace_s, tenant_id=tenant
                )
            else:
                assert key_id is not None
                one = await key_repo.rotate_key(engine, key_id, grace_s=grace_s)
                done = [one] if one is not None else []
            for r in done:
                await audit.record_cli_change(
                    engine, "key.rotate", "key", r.id, {"grace_s": grace_s}
                )
            return done

        rotated = with_engine(live, run)
        if key_id is not None and not rotated:
            err_console.print(f"[red]no active key {key_id}[/red]")
            raise typer.Exit(1)
        for r in rotated:
            for h in r.evict:
                _evict_everywhere(live.redis_url or "", h)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "name": r.name,
                        "tenant": r.tenant_id,
                        "user": r.user_id,
                        "key": r.key,
                        "old_key_valid_until": (
                            r.previous_expires_at.isoformat() if r.previous_expires_at else None
                        ),
                    }
                    for r in rotated
                ]
            )
        )
        return
    if not rotated:
        console.print("no keys to rotate")
        return
    until = rotated[0].previous_expires_at
    # Never wrapped or cut, whatever the terminal width: ids and keys must be copyable.
    table = Table(*(Column(h, no_wrap=True) for h in ("id", "name", "tenant", "user")))
    table.add_column("new key (shown once)", no_wrap=True)
    for r in rotated:
        table.add_row(r.id, r.name, r.tenant_id, r.user_id, r.key)
    Console(soft_wrap=True, width=max(console.width, 200)).print(table)
    console.print(
        f"rotated {len(rotated)} key(s); redeploy the new keys: the old ones "
        + (f"work until {until:%Y-%m-%d %H:%M} UTC" if until else "no longer work")
    )


@app.command()
def revoke(key_id: str, config: Path | None = ConfigOpt) -> None:
    """Revoke a key; every running instance stops accepting it within seconds."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:

        async def run(engine: AsyncEngine) -> list[str]:
            # Every hash: a previous secret in its grace window is evicted too.
            hashes = await key_repo.revoke_key_hashes(engine, key_id)
            if hashes:
                await audit.record_cli_change(engine, "key.revoke", "key", key_id)
            return hashes

        hashes = with_engine(live, run)
        if not hashes:
            err_console.print(f"[red]no active key {key_id}[/red]")
            raise typer.Exit(1)
        for key_hash in hashes:
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
