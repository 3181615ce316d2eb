"""Rate limits and budgets shared by every instance through Redis.

``rate.RateLimiter`` (GCRA, one round trip per request for all limits) and
``budget.Budgets`` (reserve the worst case, settle the actual), both in one round
trip per request through ``gate.Gate``; their settings in
``config``, per-subject overrides from PostgreSQL in ``overrides``.
"""

from strata.limits.budget import (
    BudgetExceeded,
    Budgets,
    Crossing,
    Reservation,
    Subject,
)
from strata.limits.config import BudgetCaps, BudgetsSettings, LimitsSettings, RuleSet
from strata.limits.gate import Admission, Gate
from strata.limits.overrides import Overrides
from strata.limits.rate import Decision, Quota, RateLimiter, format_duration
from strata.limits.units import worst_case_usd

__all__ = [
    "Admission",
    "BudgetCaps",
    "BudgetExceeded",
    "Budgets",
    "BudgetsSettings",
    "Crossing",
    "Decision",
    "Gate",
    "LimitsSettings",
    "Overrides",
    "Quota",
    "RateLimiter",
    "Reservation",
    "RuleSet",
    "Subject",
    "format_duration",
    "worst_case_usd",
]
