"""The alert event and the threshold arithmetic that produces it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

AlertKind = Literal["budget_threshold", "daily_spend", "test"]
Period = Literal["day", "month"]


def _now() -> datetime:
    return datetime.now(UTC)


def period_start(period: Period, at: datetime | None = None) -> date:
    """Start of the calendar-aligned UTC period containing ``at`` (default: now)."""
    d = (at or _now()).astimezone(UTC).date()
    return d if period == "day" else d.replace(day=1)


@dataclass(frozen=True, slots=True)
class Alert:
    """Spend crossed a threshold. One alert per ``dedupe_key`` is ever delivered.

    ``threshold`` is a fraction of ``cap`` (0.8 = 80%); for ``daily_spend`` it is 1.0
    and ``cap`` is the configured deployment-wide daily amount.
    """

    kind: AlertKind
    scope: str  # "key" | "user" | "tenant" | "deployment" (whatever the budget names)
    scope_id: str
    period: Period
    period_start: date
    threshold: float
    spent: Decimal
    cap: Decimal
    message: str = ""
    fired_at: datetime = field(default_factory=_now)
    # Only test alerts set it: each one is distinct, so each is delivered.
    nonce: str = ""

    @property
    def dedupe_key(self) -> str:
        key = (
            f"{self.kind}:{self.scope}:{self.scope_id}:{self.period}:"
            f"{self.period_start.isoformat()}:{self.threshold:g}"
        )
        return f"{key}:{self.nonce}" if self.nonce else key

    @property
    def text(self) -> str:
        """One line for people: Slack text, email body's first line, logs."""
        if self.message:
            return self.message
        if self.kind == "test":
            return "Strata test alert: this channel is configured correctly."
        pct = Decimal(0) if not self.cap else self.spent / self.cap * 100
        what = (
            "Deployment-wide spend today"
            if self.kind == "daily_spend"
            else f"Spend for {self.scope} {self.scope_id!r} this {self.period}"
        )
        return (
            f"{what} is ${self.spent:.2f} of ${self.cap:.2f} ({pct:.0f}%), "
            f"crossing the {self.threshold:.0%} alert threshold "
            f"(period started {self.period_start.isoformat()}, UTC)."
        )

    @property
    def subject(self) -> str:
        if self.kind == "test":
            return "Test alert"
        if self.kind == "daily_spend":
            return f"Daily spend ${self.spent:.2f} reached ${self.cap:.2f}"
        return f"{self.scope} {self.scope_id}: {self.threshold:.0%} of {self.period} budget"

    def payload(self) -> dict[str, Any]:
        """The JSON a generic webhook receives (and what is recorded)."""
        return {
            "kind": self.kind,
            "scope": self.scope,
            "scope_id": self.scope_id,
            "period": self.period,
            "period_start": self.period_start.isoformat(),
            "threshold": self.threshold,
            # Strings: JSON numbers would lose cents to binary floats.
            "spent_usd": str(self.spent),
            "cap_usd": str(self.cap),
            "message": self.text,
            "subject": self.subject,
            "dedupe_key": self.dedupe_key,
            "fired_at": self.fired_at.isoformat(),
        }

    @classmethod
    def test(cls, message: str = "") -> Alert:
        now = _now()
        return cls(
            kind="test",
            scope="deployment",
            scope_id="*",
            period="day",
            period_start=now.date(),
            threshold=0.0,
            spent=Decimal(0),
            cap=Decimal(0),
            message=message,
            fired_at=now,
            nonce=uuid.uuid4().hex[:12],
        )


def crossed(spent: Decimal, cap: Decimal, thresholds: list[float]) -> list[float]:
    """Thresholds that ``spent`` has reached (a cap of 0 or less has none)."""
    if cap <= 0:
        return []
    return [t for t in thresholds if spent >= cap * Decimal(str(t))]
