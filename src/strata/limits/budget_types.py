"""What budgets are made of: subjects, their per-period Redis slots, reservations,
threshold crossings, and the error a spent budget raises (see strata.limits.budget)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal

from strata.errors import StrataError
from strata.limits.config import BudgetCaps
from strata.limits.units import Period, from_units


@dataclass(frozen=True, slots=True)
class Subject:
    """One budget subject: ``scope`` key|user|tenant, ``id`` as overrides name it."""

    scope: str
    id: str
    caps: BudgetCaps


@dataclass(frozen=True, slots=True)
class Slot:
    """One subject in one period: a Redis hash."""

    scope: str
    id: str
    period: Period
    start: date
    key: str
    cap: int | None  # units
    soft: int | None  # units
    expire_at: int  # unix seconds

    def ttl_s(self, now_s: int) -> int:
        # Relative to the caller's clock (Redis' own clock may differ from an injected
        # one); ``now_s``: unix seconds.
        return max(1, self.expire_at - now_s)


@dataclass(frozen=True, slots=True)
class Crossing:
    """Spend crossed ``threshold`` x ``cap`` (maps onto ``strata.alerts.events.Alert``)."""

    kind: Literal["budget_threshold", "daily_spend"]
    scope: str  # key | user | tenant | deployment
    scope_id: str
    period: Period
    period_start: date
    threshold: float
    spent: Decimal
    cap: Decimal


@dataclass(slots=True)
class Reservation:
    id: str
    worst_units: int
    slots: tuple[Slot, ...]  # reserved against (and charged)
    charge_only: tuple[Slot, ...] = ()  # charged, never capped (deployment-wide)
    local: bool = False  # made in memory while Redis was unreachable
    soft_exceeded: list[tuple[str, str, Period]] = field(default_factory=list)
    settled: bool = False
    made_at: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)

    @property
    def worst_case_usd(self) -> Decimal:
        return from_units(self.worst_units)


class BudgetExceeded(StrataError):
    """A spend cap would be exceeded (429 ``insufficient_quota``, or 402 if configured)."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"

    def __init__(
        self,
        scope: str,
        subject: str,
        period: Period,
        cap: Decimal,
        resets_at: datetime,
        *,
        status: int = 429,
        now: datetime | None = None,
    ) -> None:
        when = resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        label = "daily" if period == "day" else "monthly"
        wait = (resets_at - (now or datetime.now(UTC))).total_seconds()
        super().__init__(
            f"The {label} budget of ${cap} for {scope} {subject!r} is spent; "
            f"it resets at {when} (UTC).",
            retry_after=max(1.0, wait),
        )
        self.status = status
        self.scope, self.subject, self.period = scope, subject, period
        self.cap, self.resets_at = cap, resets_at
