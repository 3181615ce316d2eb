"""strata crypto rotate | status

Field encryption keys (strata.security.crypto): the master key comes from
``crypto.master_key``; data keys live wrapped in the ``data_keys`` table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.cli.audit_cmd import record_cli
from strata.cli.common import ConfigOpt, console, running_services, settings_or_exit, with_engine
from strata.security import crypto as crypto_mod

app = typer.Typer(no_args_is_help=True, help="Field encryption keys: rotate, status.")


@app.command()
def rotate(
    batch: int = typer.Option(500, min=1, help="Rows re-encrypted per transaction."),
    config: Path | None = ConfigOpt,
) -> None:
    """New active data key; re-encrypt stored fields under it (online); retire old keys."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:

        async def run(engine: AsyncEngine) -> dict[str, Any]:
            crypto = crypto_mod.Crypto(crypto_mod.load_master_key(live.crypto, live.data_dir))
            return await crypto_mod.rotate(engine, crypto, batch, grace_s=2 * live.crypto.refresh_s)

        report = with_engine(live, run)
        record_cli(
            live,
            tenant=None,
            action="crypto.rotate",
            target=f"data_key:{report['key_id']}",
            details={
                "reencrypted": report["reencrypted"],
                "stores": report["stores"],
                "retired": report["retired"],
            },
        )
    retired = ", ".join(map(str, report["retired"])) or "none"
    stores = ", ".join(f"{k} {v}" for k, v in report["stores"].items()) or "none"
    console.print(
        f"active data key [bold]{report['key_id']}[/bold]; re-encrypted "
        f"{report['reencrypted']} rows ({stores}); retired keys: {retired} (a key is retired "
        "once no row uses it and servers have had time to stop writing under it). Running "
        "servers switch "
        f"within {settings.crypto.refresh_s:g}s; Redis cache entries expire with their TTL."
    )


@app.command()
def status(config: Path | None = ConfigOpt) -> None:
    """Data keys: id, created, active."""
    settings = settings_or_exit(config)
    with running_services(settings) as live:

        async def run(engine: AsyncEngine) -> list[Any]:
            t = crypto_mod.data_keys
            async with engine.connect() as conn:
                result = await conn.execute(
                    select(t.c.id, t.c.created_at, t.c.active).order_by(t.c.id)
                )
                return list(result)

        rows = with_engine(live, run)
    table = Table("data key", "created", "active")
    for r in rows:
        table.add_row(
            str(r.id), r.created_at.isoformat(timespec="seconds"), "yes" if r.active else ""
        )
    console.print(table)
