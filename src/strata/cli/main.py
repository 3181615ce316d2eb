"""The ``strata`` command."""

from __future__ import annotations

from pathlib import Path

import typer
import uvicorn
from rich.panel import Panel
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.cli import (
    alerts_cmd,
    audit_cmd,
    batches_cmd,
    cache_cmd,
    config_cmd,
    cost_cmd,
    crypto_cmd,
    jobs_cmd,
    keys_cmd,
    limits_cmd,
    models_cmd,
    privacy_cmd,
    rag_cmd,
    route_cmd,
    usage_cmd,
    worker_cmd,
)
from strata.cli.common import (
    ConfigOpt,
    console,
    err_console,
    running_services,
    settings_or_exit,
    with_engine,
)
from strata.errors import ConfigError
from strata.observability.logging import configure_logging
from strata.providers.registry import build_providers
from strata.settings import Settings
from strata.storage import migrate as migrate_mod
from strata.storage.repositories import keys as key_repo

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Strata: the production AI stack in one server.",
)
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(config_cmd.app, name="config")
app.add_typer(route_cmd.app, name="route")
app.add_typer(cache_cmd.app, name="cache")
app.add_typer(alerts_cmd.app, name="alerts")
app.add_typer(limits_cmd.app, name="limits")
app.add_typer(limits_cmd.budgets_app, name="budgets")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(crypto_cmd.app, name="crypto")
app.add_typer(privacy_cmd.app, name="privacy")
app.add_typer(cost_cmd.app, name="cost")
app.add_typer(rag_cmd.app, name="rag")
app.command("ingest")(rag_cmd.ingest)
app.command("usage")(usage_cmd.usage)
app.add_typer(jobs_cmd.app, name="jobs")
app.add_typer(batches_cmd.app, name="batches")
app.command("worker")(worker_cmd.worker)
app.command("models")(models_cmd.models)


@app.command()
def serve(
    config: Path | None = ConfigOpt,
    host: str | None = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int | None = typer.Option(None, help="port (default 8000)"),
    data_dir: Path | None = typer.Option(None, help="embedded data directory (default ./.strata)"),
) -> None:
    """Start the API server (and embedded PostgreSQL and Redis unless URLs are set)."""
    settings = settings_or_exit(config, host=host, port=port, data_dir=data_dir)
    configure_logging(settings.log_level)
    try:
        build_providers(settings)  # fail now, with the fix spelled out, on a bad provider
    except ConfigError as exc:
        err_console.print(f"[red]configuration error[/red]\n{exc.message}")
        raise typer.Exit(2) from None
    with running_services(settings) as live:
        if live.auth.bootstrap_admin:
            _bootstrap_admin(live)
        from strata.app import create_app

        console.print(
            f"[green]Strata[/green] serving on http://{live.host}:{live.port}/v1 "
            f"(data in {live.data_dir.resolve()}); Ctrl-C stops everything."
        )
        uvicorn.run(
            create_app(live),
            host=live.host,
            port=live.port,
            loop="uvloop",
            http="httptools",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )


def _bootstrap_admin(settings: Settings) -> None:
    async def create(engine: AsyncEngine) -> key_repo.NewKey | None:
        if await key_repo.count_keys(engine) > 0:
            return None
        return await key_repo.create_key(
            engine, tenant_id="default", user_id="admin", name="bootstrap admin", is_admin=True
        )

    new = with_engine(settings, create)
    if new is not None:
        console.print(
            Panel(
                f"[bold]{new.key}[/bold]\n\nThis admin API key is shown once and only its hash is "
                "stored. Keep it somewhere safe.\nMore keys: strata keys create --user NAME",
                title="first run: admin API key",
                border_style="yellow",
            )
        )


@app.command()
def migrate(config: Path | None = ConfigOpt) -> None:
    """Apply database migrations (starts embedded PostgreSQL if no URL is set)."""
    settings = settings_or_exit(config)
    with running_services(settings, upgrade=False) as live:
        migrate_mod.upgrade(live.database_url or "")
    console.print("[green]database is up to date[/green]")
