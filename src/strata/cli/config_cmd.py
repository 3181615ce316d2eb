"""strata config check | show"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from strata.cli.common import console, err_console
from strata.errors import ConfigError
from strata.providers.registry import build_providers
from strata.settings import load_settings

app = typer.Typer(no_args_is_help=True, help="Validate and inspect configuration.")


@app.command()
def check(
    path: Path | None = typer.Argument(None, help="strata.yaml (default: $STRATA_CONFIG)"),
) -> None:
    """Validate a config file and explain every problem with its path."""
    try:
        settings = load_settings(path)
        build_providers(settings)
    except ConfigError as exc:
        err_console.print(f"[red]invalid[/red]\n{exc.message}")
        raise typer.Exit(1) from None
    console.print(
        f"[green]ok[/green]: {len(settings.providers)} providers, {len(settings.models)} models "
        f"({', '.join(settings.models)})"
    )


@app.command()
def show(path: Path | None = typer.Argument(None)) -> None:
    """Print the effective configuration (secret references only, never values)."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        err_console.print(f"[red]invalid[/red]\n{exc.message}")
        raise typer.Exit(1) from None
    data = settings.model_dump(mode="json")
    for key in ("database_url", "redis_url"):
        if data.get(key):
            data[key] = _mask_url(data[key])
    typer.echo(json.dumps(data, indent=2))


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "****"
