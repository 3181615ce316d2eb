"""Per-key, per-user and per-tenant overrides of limits and budget caps.

Overrides live in PostgreSQL (``storage.repositories.limits``). Every instance
holds all of them in memory and reloads the whole set every few seconds in the
background, so a request never waits on PostgreSQL: lookups are dict reads. An
admin change is visible at once on the instance that made it (call ``refresh``)
and on the others within ``refresh_s``. If PostgreSQL is unreachable the last
loaded set stays in force.

Subjects: a key by its id (``key_…``), a user as ``tenant/user`` (user ids are
unique per tenant only), a tenant by its id, an alias by its name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from strata.limits.config import BudgetCaps, RuleSet

log = logging.getLogger("strata.limits")

# (scope, subject) -> the fields the override sets.
Table = dict[tuple[str, str], dict[str, Any]]
Loader = Callable[[], Awaitable[tuple[Table, Table]]]


def user_subject(tenant: str, user: str) -> str:
    return f"{tenant}/{user}"


class Overrides:
    """The override set in memory; ``version`` changes whenever its content does."""

    def __init__(self, loader: Loader | None = None, *, refresh_s: float = 5.0) -> None:
        self._loader = loader
        self.refresh_s = refresh_s
        self._rules: Table = {}
        self._caps: Table = {}
        self.version = 0
        self.errors = 0

    @classmethod
    def from_engine(cls, engine: Any, *, refresh_s: float = 5.0) -> Overrides:
        import strata.storage.repositories.limits as repo

        async def load() -> tuple[Table, Table]:
            return await repo.all_limit_overrides(engine), await repo.all_budget_caps(engine)

        return cls(load, refresh_s=refresh_s)

    def rules(self, scope: str, subject: str) -> dict[str, Any] | None:
        return self._rules.get((scope, subject))

    def caps(self, scope: str, subject: str) -> dict[str, Any] | None:
        return self._caps.get((scope, subject))

    def set(self, rules: Table, caps: Table) -> None:
        """Replace the whole set (what ``refresh`` does; tests call it directly)."""
        rules = {k: v for k, v in rules.items() if _valid(RuleSet, k, v)}
        caps = {k: v for k, v in caps.items() if _valid(BudgetCaps, k, v)}
        if rules != self._rules or caps != self._caps:
            self._rules, self._caps = rules, caps
            self.version += 1

    async def refresh(self) -> None:
        if self._loader is None:
            return
        rules, caps = await self._loader()
        self.set(rules, caps)

    async def run(self) -> None:
        """Refresh forever (a background task); failures keep the last set."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                log.warning("limit overrides not refreshed (%s); keeping the last set", exc)
            await asyncio.sleep(self.refresh_s)


def _valid(model: type[RuleSet] | type[BudgetCaps], key: tuple[str, str], fields: Any) -> bool:
    # A bad row (written by hand, or by a newer version) must not break requests.
    try:
        model.model_validate(fields)
    except ValidationError as exc:
        log.warning("ignoring invalid override %s: %s", key, exc.errors()[0]["msg"])
        return False
    return True


def merged(default: Any, fields: dict[str, Any] | None) -> Any:
    """The default model with an override's fields replaced (None: the default)."""
    if not fields:
        return default
    return type(default).model_validate({**default.model_dump(exclude_unset=False), **fields})
