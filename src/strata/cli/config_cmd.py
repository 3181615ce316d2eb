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
    typer.echo(json.dumps(_mask_secrets(data), indent=2))


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "****"


# A string under one of these names is secret-bearing: shown if it is a reference
# (env:/file:/vault:), masked otherwise (an Authorization header in a provider's
# `headers`, a literal DSN). URLs lose any password; alert webhook URLs, whose path
# is often the credential (Slack), also lose their path.
_SECRET_NAMES = ("key", "token", "secret", "password", "dsn", "authorization", "cookie")


def _mask_secrets(node: object, name: str = "", in_alerts: bool = False) -> object:
    from strata.security.credentials import is_reference

    if isinstance(node, dict):
        return {
            k: v
            if k in ("database_url", "redis_url") and not name  # masked above
            else _mask_secrets(v, str(k).lower(), in_alerts or k == "alerts")
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_mask_secrets(v, name, in_alerts) for v in node]
    if not isinstance(node, str) or is_reference(node):
        return node
    if any(s in name for s in _SECRET_NAMES):
        return "****"
    if name.endswith("url") or "://" in node:
        return _mask_literal_url(node, hide_path=in_alerts)
    return node


def _mask_literal_url(url: str, hide_path: bool) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "****"
    if not parts.scheme or not host:
        return url
    user = f"{parts.username}:****@" if parts.password else ""
    if hide_path and (parts.path.strip("/") or parts.query):
        return f"{parts.scheme}://{user}{host}{port}/****"
    if parts.password:
        return parts._replace(netloc=f"{user}{host}{port}").geturl()
    return url
