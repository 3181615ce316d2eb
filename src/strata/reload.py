"""Config reload without a restart: ``SIGHUP`` or ``POST /v1/admin/config/reload``.

The config file the server started with (``--config`` / ``STRATA_CONFIG``) is read
and validated again. A file that does not validate changes nothing (the error says
what is wrong). Sections that running components can take over in place are applied:

- ``limits``: default rate limits (per key, user, tenant, alias);
- ``budgets``: default spend caps and the over-budget status;
- ``alerts``: channels (their secrets resolved first), thresholds, daily alert;
- ``retention``: periods and purge interval (the purge task restarts).

Any other section that differs (models, providers, database, cache, ...) is reported
as ``restart_required`` and left as it was; so is switching limits or budgets on or
off. Every reload is recorded in the audit log as ``config.reload`` with the lists
of applied and restart-required sections (names only, never values).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from strata.errors import ConfigError
from strata.settings import Settings, load_settings, read_yaml

if TYPE_CHECKING:
    from strata.runtime import Runtime

log = logging.getLogger("strata.reload")

RELOADABLE = ("limits", "budgets", "alerts", "retention")
# Sections whose ``enabled`` switch decides which components exist at start-up.
SWITCHED = ("limits", "budgets")


@dataclass
class ReloadResult:
    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "config.reload",
            "applied": self.applied,
            "restart_required": self.restart_required,
        }


def _dump(settings: Settings, name: str) -> Any:
    value = getattr(settings, name)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def plan(
    old: Settings, new: Settings, file_before: dict[str, Any], file_now: dict[str, Any]
) -> ReloadResult:
    """Which sections changed: those that apply in place, and those (by the file's
    top-level keys) that need a restart."""
    result = ReloadResult()
    for name in RELOADABLE:
        if _dump(old, name) == _dump(new, name):
            continue
        switched = name in SWITCHED and getattr(old, name).enabled != getattr(new, name).enabled
        (result.restart_required if switched else result.applied).append(name)
    for name in sorted(file_before.keys() | file_now.keys()):
        if name not in RELOADABLE and file_before.get(name) != file_now.get(name):
            result.restart_required.append(name)
    return result


def read(rt: Runtime) -> tuple[Settings, dict[str, Any]]:
    """The config file again: the settings to apply (everything but the reloadable
    sections kept as running) and the file's raw content. ConfigError when there is
    no file or it does not validate as a whole."""
    path = rt.settings.config
    if path is None:
        raise ConfigError(
            "this server was started without a config file (--config or STRATA_CONFIG): "
            "there is nothing to reload"
        )
    raw = read_yaml(path)
    load_settings(path)  # every section must validate, not only the applied ones
    skip = (*RELOADABLE, "config")
    keep = {n: getattr(rt.settings, n) for n in Settings.model_fields if n not in skip}
    return load_settings(path, **keep), raw


def apply(rt: Runtime, new: Settings, raw: dict[str, Any]) -> ReloadResult:
    """Apply what can change in place; the runtime's settings follow."""
    result = plan(rt.settings, new, rt.config_file or {}, raw)
    if "alerts" in result.applied:  # first: resolving its secrets may fail
        rt.alerts.reconfigure(new.alerts)
    if "limits" in result.applied:
        rt.rate.reconfigure(new.limits)
    if "budgets" in result.applied or "alerts" in result.applied:
        rt.budgets.reconfigure(new.budgets, new.alerts.thresholds, new.alerts.daily_alert_usd)
    if "retention" in result.applied:
        _restart_purge(rt, new)
    rt.settings = rt.settings.model_copy(
        update={name: getattr(new, name) for name in result.applied}
    )
    rt.config_file = raw
    return result


def _restart_purge(rt: Runtime, new: Settings) -> None:
    from strata.privacy.retention import purge_forever
    from strata.runtime import PURGE_TASK

    for task in [t for t in rt.tasks if t.get_name() == PURGE_TASK]:
        task.cancel()
        rt.tasks.remove(task)
    rt.tasks.append(asyncio.create_task(purge_forever(rt.engine, new.retention), name=PURGE_TASK))


async def reload(rt: Runtime, *, actor: str, request_id: str | None = None) -> ReloadResult:
    """Read, validate, apply and audit. Raises ConfigError (nothing changed) for a
    missing or invalid file or an unresolvable secret."""
    from strata.security import audit

    new, raw = await asyncio.to_thread(read, rt)
    result = apply(rt, new, raw)
    log.info(
        "config reloaded: applied %s; restart required for %s",
        result.applied or "nothing",
        result.restart_required or "nothing",
    )
    try:
        await audit.record(
            rt.engine,
            tenant=None,
            actor=actor,
            action="config.reload",
            target=str(rt.settings.config),
            request_id=request_id,
            details={"applied": result.applied, "restart_required": result.restart_required},
        )
    except Exception as exc:  # applied already; the log line above stands for it
        log.error("config.reload not recorded in the audit log (%s)", type(exc).__name__)
    return result


_PENDING: set[asyncio.Task[None]] = set()


def install_sighup(rt: Runtime) -> bool:
    """Reload on SIGHUP; False where signals cannot be handled here (a server run
    in a thread, as tests do, or a platform without SIGHUP)."""
    loop = asyncio.get_running_loop()

    def fire() -> None:
        task = loop.create_task(on_signal(rt))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, fire)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError):
        return False
    return True


def remove_sighup() -> None:
    asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


async def on_signal(rt: Runtime) -> None:
    """SIGHUP: reload; a bad file is logged and changes nothing."""
    try:
        await reload(rt, actor="signal:SIGHUP")
    except ConfigError as exc:
        log.error("config reload refused, nothing changed: %s", exc.message)
