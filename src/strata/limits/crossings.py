"""Which alert thresholds one settle's spend crossed (strata.limits.budget reports
them; strata.alerts delivers them). An increment crosses a value at most once, so
each crossing is reported by exactly one settle, in whichever process makes it."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from strata.limits.budget_types import Crossing, Slot
from strata.limits.units import from_units


def crossings(s: Slot, before: int, after: int, thresholds: Sequence[float]) -> list[Crossing]:
    """Crossings of ``thresholds`` x the slot's cap as spend went from ``before`` to
    ``after`` (units). The deployment-wide daily alert has one threshold: its cap."""
    if s.cap is None or after <= before:
        return []
    kind: Literal["budget_threshold", "daily_spend"] = "budget_threshold"
    if s.scope == "deployment":
        kind, thresholds = "daily_spend", [1.0]
    out = []
    for t in thresholds:
        mark = s.cap * Decimal(str(t))
        if before < mark <= after:
            out.append(
                Crossing(
                    kind, s.scope, s.id, s.period, s.start, t, from_units(after), from_units(s.cap)
                )
            )
    return out
