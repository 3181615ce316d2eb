"""strata models: aliases, their deployments and circuit state (shared through Redis)."""

from __future__ import annotations

import json
from pathlib import Path

import redis
import typer
from rich.table import Table

from strata.cli.common import ConfigOpt, console, running_services, settings_or_exit
from strata.routing.breaker import PREFIX
from strata.routing.dispatch import LATENCY_KEY


def models(
    as_json: bool = typer.Option(False, "--json"),
    config: Path | None = ConfigOpt,
) -> None:
    """List model aliases with their deployments and circuit state."""
    settings = settings_or_exit(config)
    rows: list[dict[str, str]] = []
    with running_services(settings, upgrade=False) as live:
        states: dict[tuple[str, str, str], str] = {}
        latency: dict[str, str] = {}
        try:
            with redis.Redis.from_url(live.redis_url or "", socket_timeout=2) as r:
                shared = r.hgetall(LATENCY_KEY)
                latency = {k.decode(): v.decode() for k, v in shared.items()}
                for name, alias in live.models.items():
                    for d in alias.deployments:
                        key = f"{PREFIX}{name}|{d.provider}|{d.model}"
                        if r.exists(key + ":open"):
                            states[(name, d.provider, d.model)] = "open"
                        elif r.exists(key + ":tripped"):
                            states[(name, d.provider, d.model)] = "half_open"
        except redis.RedisError:
            states.clear()
        for name, alias in live.models.items():
            for i, d in enumerate(alias.deployments):
                rows.append(
                    {
                        "alias": name,
                        "kind": alias.kind,
                        "provider": d.provider,
                        "model": d.model,
                        "rank": str(d.rank if d.rank is not None else i),
                        "weight": str(d.weight),
                        "circuit": states.get((name, d.provider, d.model), "closed"),
                        "latency_ms": latency.get(f"{name}|{d.provider}|{d.model}", ""),
                    }
                )
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("alias", "kind", "deployment", "rank", "weight", "circuit", "latency ms")
    for row in rows:
        table.add_row(
            row["alias"],
            row["kind"],
            f"{row['provider']}/{row['model']}",
            str(row["rank"]),
            str(row["weight"]),
            row["circuit"],
            row["latency_ms"] or "-",
        )
    console.print(table)
