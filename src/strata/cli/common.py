"""Shared CLI plumbing: settings, embedded services, friendly errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.errors import ConfigError
from strata.settings import Settings, load_settings
from strata.storage import migrate
from strata.storage.embedded import EmbeddedServices
from strata.storage.engine import make_engine

# soft_wrap: never break a printed key or command across lines.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

ConfigOpt = typer.Option(None, "--config", "-c", help="strata.yaml (default: $STRATA_CONFIG)")


def settings_or_exit(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        err_console.print(f"[red]configuration error[/red]\n{exc.message}")
        raise typer.Exit(2) from None


@contextmanager
def running_services(settings: Settings, *, upgrade: bool = True) -> Iterator[Settings]:
    """Start embedded services where no URL is set, migrate, yield settings with URLs."""
    embedded = EmbeddedServices(settings.data_dir)
    try:
        db, rd = embedded.start(settings.database_url, settings.redis_url)
    except ConfigError as exc:
        err_console.print(f"[red]cannot start services[/red]: {exc.message}")
        raise typer.Exit(2) from None
    try:
        if upgrade:
            migrate.upgrade(db)
        yield settings.model_copy(update={"database_url": db, "redis_url": rd})
    finally:
        embedded.stop()


def with_engine(settings: Settings, fn: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = make_engine(settings.database_url or "", pool_size=1)
        try:
            return await fn(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())
