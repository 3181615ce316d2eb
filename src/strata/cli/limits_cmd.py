"""strata limits show|set|clear and strata budgets show|set|clear

A subject is one of: a key id (the argument), ``--user TENANT/USER``,
``--tenant T`` or (limits only) ``--alias A``. ``show`` with a key id also shows
the limits of the key's user and tenant, all of which apply to its requests.

``set`` changes only the fields it is given and keeps the rest of the subject's
override; ``clear`` removes the override, so strata.yaml's defaults apply again.
Running servers apply a change within ``limits.overrides_refresh_s`` (5 s).
Spend (``budgets show``) is read from Redis, as the servers count it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import typer
from pydantic import BaseModel, ValidationError
from rich.table import Column, Table
from sqlalchemy.ext.asyncio import AsyncEngine

from strata.api.admin_limits import (
    BUDGET_SCOPES,
    LIMIT_SCOPES,
    budget_view,
    check_subject,
    key_owner,
    limits_view,
)
from strata.cli.common import (
    ConfigOpt,
    console,
    err_console,
    running_services,
    settings_or_exit,
    with_engine,
)
from strata.errors import InvalidRequest
from strata.limits.budget import Budgets
from strata.limits.config import BudgetCaps, RuleSet
from strata.limits.overrides import user_subject
from strata.security import audit
from strata.settings import Settings
from strata.storage.repositories import limits as repo

app = typer.Typer(no_args_is_help=True, help="Show and override rate limits.")
budgets_app = typer.Typer(no_args_is_help=True, help="Show spend and set budget caps (USD).")

KeyArg = typer.Argument(None, metavar="KEY_ID", help="a key id (key_…)")
UserOpt = typer.Option(None, "--user", "-u", metavar="TENANT/USER")
TenantOpt = typer.Option(None, "--tenant", "-t")
AliasOpt = typer.Option(None, "--alias", "-a", help="a model alias (limits only)")
JsonOpt = typer.Option(False, "--json")

Subjects = list[tuple[str, str]]


class _Failed(Exception):
    """A user error found inside the async part: message, exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def _one_subject(
    key_id: str | None, user: str | None, tenant: str | None, alias: str | None
) -> tuple[str, str]:
    given = [
        (scope, value)
        for scope, value in (("key", key_id), ("user", user), ("tenant", tenant), ("alias", alias))
        if value is not None
    ]
    if len(given) != 1:
        err_console.print("[red]name exactly one of KEY_ID, --user, --tenant, --alias[/red]")
        raise typer.Exit(2)
    return given[0]


def _checked(scope: str, subject: str, scopes: tuple[str, ...]) -> None:
    try:
        check_subject(scope, subject, scopes)
    except InvalidRequest as exc:
        err_console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None


async def _expand(engine: AsyncEngine, scope: str, subject: str, *, expand: bool) -> Subjects:
    """The subject (a key must exist); with ``expand`` also its user's and tenant's."""
    if scope == "key":
        owner = await key_owner(engine, subject)
        if owner is None:
            raise _Failed(f"no key {subject!r}")
        if expand:
            tenant, user = owner
            return [("key", subject), ("user", user_subject(tenant, user)), ("tenant", tenant)]
    elif scope == "user" and expand:
        return [("user", subject), ("tenant", subject.split("/", 1)[0])]
    return [(scope, subject)]


def _run(settings: Settings, fn: Any) -> Any:
    with running_services(settings) as live:
        try:
            return with_engine(live, lambda engine: fn(live, engine))
        except _Failed as exc:
            err_console.print(f"[red]{exc.message}[/red]")
            raise typer.Exit(exc.code) from None


def _validated(model: type[BaseModel], fields: dict[str, Any]) -> Any:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise _Failed(f"invalid value for {'.'.join(map(str, e['loc']))}: {e['msg']}", 2) from None


def _cell(view: dict[str, Any], field: str, fmt: Any = str) -> str:
    value = view["effective"][field]
    text = "-" if value is None else fmt(value)
    overridden = view["override"] is not None and field in view["override"]
    return f"[bold]{text}*[/bold]" if overridden else text


def _money(value: str | None) -> str:
    return "-" if value is None else f"${value}"


# ---- limits -------------------------------------------------------------------------


@app.command("show")
def limits_show(
    key_id: str | None = KeyArg,
    user: str | None = UserOpt,
    tenant: str | None = TenantOpt,
    alias: str | None = AliasOpt,
    as_json: bool = JsonOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Effective rate limits (strata.yaml merged with overrides; * marks an override)."""
    scope, subject = _one_subject(key_id, user, tenant, alias)
    _checked(scope, subject, LIMIT_SCOPES)

    async def run(live: Settings, engine: AsyncEngine) -> list[dict[str, Any]]:
        out = []
        for sc, sid in await _expand(engine, scope, subject, expand=True):
            override = await repo.get_limit_override(engine, sc, sid)
            out.append(limits_view(live.limits, sc, sid, override))
        return out

    views = _run(settings_or_exit(config), run)
    if as_json:
        typer.echo(json.dumps({"object": "list", "data": views}))
        return
    table = Table(
        "scope", Column("subject", overflow="fold"), "req/s", "req/min", "tok/min", "burst", "fail"
    )
    for v in views:
        table.add_row(
            v["scope"],
            v["subject"],
            _cell(v, "requests_per_second"),
            _cell(v, "requests_per_minute"),
            _cell(v, "tokens_per_minute"),
            _cell(v, "burst"),
            _cell(v, "failure_mode"),
        )
    console.print(table)
    if not views[0]["enabled"]:
        console.print("[yellow]rate limits are disabled (limits.enabled: false)[/yellow]")
    console.print(
        "-: unlimited. fail: open (per-instance limits) or closed (503) while Redis is down.\n"
        "* set by an override (strata limits set); the rest follows strata.yaml"
    )


@app.command("set")
def limits_set(
    key_id: str | None = KeyArg,
    user: str | None = UserOpt,
    tenant: str | None = TenantOpt,
    alias: str | None = AliasOpt,
    rps: int | None = typer.Option(None, "--rps", min=0, help="requests/second (0: unlimited)"),
    rpm: int | None = typer.Option(None, "--rpm", min=0, help="requests/minute (0: unlimited)"),
    tpm: int | None = typer.Option(None, "--tpm", min=0, help="tokens/minute (0: unlimited)"),
    burst: float | None = typer.Option(None, "--burst", help="bucket size, x one period"),
    failure_mode: str | None = typer.Option(
        None, "--failure-mode", metavar="open|closed", help="while Redis is unreachable"
    ),
    config: Path | None = ConfigOpt,
) -> None:
    """Override rate limits of one subject (only the given fields; the rest stay)."""
    scope, subject = _one_subject(key_id, user, tenant, alias)
    _checked(scope, subject, LIMIT_SCOPES)
    fields: dict[str, Any] = {}
    for name, value in (
        ("requests_per_second", rps),
        ("requests_per_minute", rpm),
        ("tokens_per_minute", tpm),
    ):
        if value is not None:
            fields[name] = value or None  # 0: unlimited, even against a default
    if burst is not None:
        fields["burst"] = burst
    if failure_mode is not None:
        fields["failure_mode"] = failure_mode
    if not fields:
        err_console.print(
            "[red]give at least one of --rps --rpm --tpm --burst --failure-mode[/red]"
        )
        raise typer.Exit(2)

    async def run(live: Settings, engine: AsyncEngine) -> dict[str, Any]:
        await _expand(engine, scope, subject, expand=False)
        current = await repo.get_limit_override(engine, scope, subject) or {}
        rules = _validated(RuleSet, {**current, **fields})
        await repo.set_limit_override(engine, scope, subject, rules)
        await audit.record_cli_change(
            engine, "limits.set", scope, subject, rules.model_dump(mode="json", exclude_unset=True)
        )
        return limits_view(live.limits, scope, subject, rules.model_dump(exclude_unset=True))

    view = _run(settings_or_exit(config), run)
    console.print(
        f"limits of {scope} [bold]{subject}[/bold] set: {json.dumps(view['override'])}; "
        "running servers apply them within seconds"
    )


@app.command("clear")
def limits_clear(
    key_id: str | None = KeyArg,
    user: str | None = UserOpt,
    tenant: str | None = TenantOpt,
    alias: str | None = AliasOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Remove a subject's limit override (strata.yaml's defaults apply again)."""
    scope, subject = _one_subject(key_id, user, tenant, alias)
    _checked(scope, subject, LIMIT_SCOPES)

    async def run(live: Settings, engine: AsyncEngine) -> bool:
        deleted = await repo.delete_limit_override(engine, scope, subject)
        await audit.record_cli_change(engine, "limits.clear", scope, subject, {"deleted": deleted})
        return deleted

    if _run(settings_or_exit(config), run):
        console.print(f"limit override of {scope} [bold]{subject}[/bold] removed")
    else:
        console.print(f"{scope} {subject} had no limit override")


# ---- budgets ------------------------------------------------------------------------


def _usd(value: str | None, option: str) -> Decimal | str | None:
    """A dollar amount, or None for 'none' (no cap, even against a default)."""
    if value is None:
        return "unset"
    if value.strip().lower() in ("none", "unlimited"):
        return None
    try:
        return Decimal(value.strip().lstrip("$"))
    except InvalidOperation:
        err_console.print(f"[red]{option} must be an amount in USD or 'none', not {value!r}[/red]")
        raise typer.Exit(2) from None


@budgets_app.command("show")
def budgets_show(
    key_id: str | None = KeyArg,
    user: str | None = UserOpt,
    tenant: str | None = TenantOpt,
    as_json: bool = JsonOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Caps, spend today and this month (UTC), and when each resets."""
    scope, subject = _one_subject(key_id, user, tenant, None)
    _checked(scope, subject, BUDGET_SCOPES)

    async def run(live: Settings, engine: AsyncEngine) -> tuple[list[dict[str, Any]], int]:
        client = aioredis.from_url(live.redis_url or "", socket_timeout=5)
        budgets = Budgets(client, live.budgets)
        try:
            out = []
            for sc, sid in await _expand(engine, scope, subject, expand=True):
                override = await repo.get_budget_caps(engine, sc, sid)
                spend = await budgets.spend(sc, sid)
                out.append(budget_view(live.budgets, sc, sid, override, spend, datetime.now(UTC)))
            return out, budgets.errors
        finally:
            await client.aclose()

    views, errors = _run(settings_or_exit(config), run)
    if errors:
        err_console.print("[yellow]Redis unreachable: spend is shown as 0[/yellow]")
    if as_json:
        typer.echo(json.dumps({"object": "list", "data": views}))
        return
    table = Table(
        "scope",
        Column("subject", overflow="fold"),
        "period",
        "cap",
        "soft",
        "spent",
        "left",
        "resets (UTC)",
    )
    for v in views:
        for i, period in enumerate(("day", "month")):
            p = v[period]
            field = "daily_usd" if period == "day" else "monthly_usd"
            cap = _money(p["cap_usd"]) if p["cap_usd"] is not None else "none"
            if v["override"] is not None and field in v["override"]:
                cap = f"[bold]{cap}*[/bold]"
            table.add_row(
                v["scope"] if i == 0 else "",
                v["subject"] if i == 0 else "",
                period,
                cap,
                _money(p["soft_limit_usd"]),
                _money(p["spent_usd"]),
                _money(p["remaining_usd"]),
                p["resets_at"][:10],  # always 00:00 UTC
            )
    console.print(table)
    if not views[0]["enabled"]:
        console.print("[yellow]budgets are disabled (budgets.enabled: false)[/yellow]")
    console.print(
        "Periods are UTC days and months; each resets at 00:00 UTC on the date shown.\n"
        "* set by an override (strata budgets set); the rest follows strata.yaml"
    )


@budgets_app.command("set")
def budgets_set(
    key_id: str | None = KeyArg,
    user: str | None = UserOpt,
    tenant: str | None = TenantOpt,
    daily: str | None = typer.Option(None, "--daily", metavar="USD", help="or 'none'"),
    monthly: str | None = typer.Option(None, "--monthly", metavar="USD", help="or 'none'"),
    soft_pct: float | None = typer.Option(
        None, "--soft-pct", metavar="P", help="soft limit, percent of each cap"
    ),
    config: Path | None = ConfigOpt,
) -> None:
    """Set spend caps of one subject (only the given fields; the rest stay)."""
    scope, subject = _one_subject(key_id, user, tenant, None)
    _checked(scope, subject, BUDGET_SCOPES)
    fields: dict[str, Any] = {}
    for name, value in (
        ("daily_usd", _usd(daily, "--daily")),
        ("monthly_usd", _usd(monthly, "--monthly")),
    ):
        if value != "unset":
            fields[name] = value
    if soft_pct is not None:
        fields["soft_pct"] = soft_pct
    if not fields:
        err_console.print("[red]give at least one of --daily --monthly --soft-pct[/red]")
        raise typer.Exit(2)

    async def run(live: Settings, engine: AsyncEngine) -> dict[str, Any]:
        await _expand(engine, scope, subject, expand=False)
        current = await repo.get_budget_caps(engine, scope, subject) or {}
        caps = _validated(BudgetCaps, {**current, **fields})
        await repo.set_budget_caps(engine, scope, subject, caps)
        await audit.record_cli_change(
            engine, "budgets.set", scope, subject, caps.model_dump(mode="json", exclude_unset=True)
        )
        return dict(caps.model_dump(mode="json", exclude_unset=True))

    override = _run(settings_or_exit(config), run)
    console.print(
        f"budget of {scope} [bold]{subject}[/bold] set: {json.dumps(override)}; "
        "running servers apply it within seconds"
    )


@budgets_app.command("clear")
def budgets_clear(
    key_id: str | None = KeyArg,
    user: str | None = UserOpt,
    tenant: str | None = TenantOpt,
    config: Path | None = ConfigOpt,
) -> None:
    """Remove a subject's budget caps (strata.yaml's defaults apply again)."""
    scope, subject = _one_subject(key_id, user, tenant, None)
    _checked(scope, subject, BUDGET_SCOPES)

    async def run(live: Settings, engine: AsyncEngine) -> bool:
        deleted = await repo.delete_budget_caps(engine, scope, subject)
        await audit.record_cli_change(engine, "budgets.clear", scope, subject, {"deleted": deleted})
        return deleted

    if _run(settings_or_exit(config), run):
        console.print(f"budget caps of {scope} [bold]{subject}[/bold] removed")
    else:
        console.print(f"{scope} {subject} had no budget caps")
