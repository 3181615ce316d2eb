"""strata alerts test | list"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import redis.asyncio as aioredis
import typer
from rich.table import Table

from strata.alerts.config import AlertsSettings
from strata.alerts.events import Alert
from strata.cli.common import (
    ConfigOpt,
    console,
    err_console,
    running_services,
    settings_or_exit,
    with_engine,
)
from strata.errors import ConfigError
from strata.settings import Settings
from strata.storage.engine import make_engine
from strata.storage.repositories import alerts as alert_repo

app = typer.Typer(no_args_is_help=True, help="Send a test alert; list alert deliveries.")


def alerts_settings(settings: Settings) -> AlertsSettings:
    """``settings.alerts`` (defaults when the settings tree has none)."""
    found = getattr(settings, "alerts", None)
    return found if isinstance(found, AlertsSettings) else AlertsSettings()


async def _send(
    settings: Settings, cfg: AlertsSettings, alert: Alert, channel: str | None
) -> dict[str, str | None]:
    from strata.alerts.dispatcher import AlertDispatcher

    client = aioredis.from_url(settings.redis_url or "", socket_timeout=2, socket_connect_timeout=2)
    engine = make_engine(settings.database_url or "", pool_size=1)
    try:
        dispatcher = AlertDispatcher(client, engine, cfg)
        try:
            return await dispatcher.send(alert, channel)
        finally:
            await dispatcher.aclose()
    finally:
        await client.aclose()
        await engine.dispose()


@app.command("test")
def send_test(
    channel: str | None = typer.Option(None, "--channel", help="only this channel (by name)"),
    message: str = typer.Option("", "--message", "-m", help="text instead of the default"),
    config: Path | None = ConfigOpt,
) -> None:
    """Send a test alert through every configured channel (or one) and report each."""
    settings = settings_or_exit(config)
    cfg = alerts_settings(settings)
    names = [c.name for c in cfg.channels]
    if not names:
        err_console.print(
            "[red]no alert channels configured[/red]: add alerts.channels to strata.yaml "
            "(type webhook, slack or email)"
        )
        raise typer.Exit(2)
    if channel is not None and channel not in names:
        err_console.print(f"[red]no channel {channel!r}[/red] (configured: {', '.join(names)})")
        raise typer.Exit(2)
    with running_services(settings) as live:
        try:
            results = asyncio.run(_send(live, cfg, Alert.test(message), channel))
        except ConfigError as exc:
            err_console.print(f"[red]configuration error[/red]\n{exc.message}")
            raise typer.Exit(2) from None
    table = Table("channel", "result")
    for name in names:
        if name in results:
            err = results[name]
            table.add_row(
                name, "[green]sent[/green]" if err is None else f"[red]failed[/red]: {err}"
            )
    console.print(table)
    if any(err is not None for err in results.values()):
        raise typer.Exit(1)


@app.command("list")
def list_deliveries(
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=10_000),
    scope_id: str | None = typer.Option(None, "--scope-id", help="only this budget owner"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (for scripts)"),
    config: Path | None = ConfigOpt,
) -> None:
    """Recorded alert deliveries, newest first: one row per alert and channel."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:
        rows = with_engine(
            live, lambda e: alert_repo.list_deliveries(e, limit=limit, scope_id=scope_id)
        )
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "created_at": r.created_at.isoformat(),
                        "kind": r.kind,
                        "scope": r.scope,
                        "scope_id": r.scope_id,
                        "period": r.period,
                        "period_start": r.period_start.isoformat(),
                        "threshold": r.threshold,
                        "channel": r.channel,
                        "channel_type": r.channel_type,
                        "status": r.status,
                        "attempts": r.attempts,
                        "error": r.error,
                        "delivered_at": r.delivered_at.isoformat() if r.delivered_at else None,
                        "message": r.payload.get("message"),
                    }
                    for r in rows
                ]
            )
        )
        return
    table = Table("time", "kind", "budget", "period", "threshold", "channel", "status", "tries")
    for r in rows:
        status = {"sent": "[green]sent[/green]", "failed": f"[red]failed[/red] {r.error or ''}"}
        table.add_row(
            f"{r.created_at:%Y-%m-%d %H:%M:%S}",
            r.kind,
            f"{r.scope} {r.scope_id}",
            f"{r.period} {r.period_start.isoformat()}",
            f"{r.threshold:.0%}" if r.kind == "budget_threshold" else "",
            r.channel,
            status.get(r.status, r.status),
            str(r.attempts),
        )
    console.print(table)
