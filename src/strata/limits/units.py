"""Money and time units of budgets: exact integer amounts, UTC calendar periods."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

# Amounts in Redis are integers of this many USD: exact, like usage records' numeric(20,10).
UNIT = Decimal("1e-10")

Period = Literal["day", "month"]


def to_units(usd: Decimal, rounding: str = ROUND_HALF_UP) -> int:
    return int((usd / UNIT).to_integral_value(rounding))


def from_units(units: int) -> Decimal:
    return (Decimal(units) * UNIT).normalize()


def worst_case_usd(
    prompt_tokens: int, max_tokens: int, price_in_per_1m: Decimal, price_out_per_1m: Decimal
) -> Decimal:
    """The most a call can cost: its prompt plus ``max_tokens`` of output."""
    return (prompt_tokens * price_in_per_1m + max_tokens * price_out_per_1m) / Decimal(1_000_000)


def period_start(period: Period, at: datetime) -> date:
    d = at.astimezone(UTC).date()
    return d if period == "day" else d.replace(day=1)


def period_end(period: Period, start: date) -> datetime:
    if period == "day":
        nxt = start + timedelta(days=1)
    else:
        nxt = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime(nxt.year, nxt.month, nxt.day, tzinfo=UTC)
