"""Settings for rate limits and budgets (``limits:`` and ``budgets:`` in strata.yaml).

Rate limits (``RuleSet``), per scope: ``key``, ``user``, ``tenant`` and per model
alias (``aliases``, shared by everyone calling that alias). Every limit that applies
to a request is checked together; ``None`` means unlimited.

Burst: each limit is a bucket holding ``burst`` x one period's allowance (never
less than one request, or the request's tokens), refilled continuously at the
configured rate. The default 1.0 lets a whole second's (minute's) allowance arrive
at once; over any window of length ``w`` at most ``burst*limit + rate*w`` pass, and
the long-run rate is exactly the limit, however many instances share the Redis.
A smaller burst smooths traffic: 0.1 on 10 requests/second admits one request
every 100 ms.

Failure mode, per rule set (see ``strata.limits.rate``): ``open`` enforces the
same limits per instance in memory while Redis is unreachable (N instances may
then admit up to N times the limit); ``closed`` rejects the requests it applies to
with 503 until Redis answers again.

Budgets (``BudgetCaps``) are USD per calendar day and month, UTC. Overrides per
key, user or tenant come from PostgreSQL (``strata limits|budgets set``) and
replace, field by field, the defaults here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FailureMode = Literal["open", "closed"]
Scope = Literal["key", "user", "tenant", "alias"]
BudgetScope = Literal["key", "user", "tenant"]


class RuleSet(BaseModel):
    """The rate limits of one scope. ``None``: unlimited in that dimension."""

    model_config = ConfigDict(extra="forbid")

    requests_per_second: int | None = Field(default=None, gt=0)
    requests_per_minute: int | None = Field(default=None, gt=0)
    # Input + output tokens: estimated before the call, corrected after it.
    tokens_per_minute: int | None = Field(default=None, gt=0)
    # Bucket size as a multiple of one period's allowance (see the module docstring).
    burst: float = Field(default=1.0, gt=0, le=100)
    failure_mode: FailureMode = "open"

    @property
    def empty(self) -> bool:
        return (
            self.requests_per_second is None
            and self.requests_per_minute is None
            and self.tokens_per_minute is None
        )


class LimitsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    key: RuleSet = RuleSet()
    # The reference architecture: "10 requests/second per user typical".
    user: RuleSet = RuleSet(requests_per_second=10)
    tenant: RuleSet = RuleSet()
    aliases: dict[str, RuleSet] = Field(default_factory=dict)
    # One check may not hold a request longer than this; then the fallback applies.
    # Redis answers in well under a millisecond; this is for a Redis that hangs.
    # Shorter, and a busy event loop's own lateness reads as Redis timing out.
    redis_timeout_s: float = Field(default=0.25, gt=0)
    # After a Redis failure, skip Redis this long (no request waits on a dead Redis).
    down_backoff_s: float = Field(default=2.0, ge=0)
    # How often each instance reloads the per-key/user/tenant overrides.
    overrides_refresh_s: float = Field(default=5.0, gt=0)


class BudgetCaps(BaseModel):
    """Spend caps in USD for one scope. ``None``: no cap for that period."""

    model_config = ConfigDict(extra="forbid")

    daily_usd: Decimal | None = Field(default=None, ge=0)
    monthly_usd: Decimal | None = Field(default=None, ge=0)
    # Soft limit, percent of each cap: requests still pass, flagged (header, log).
    soft_pct: float | None = Field(default=None, gt=0, le=100)

    @property
    def empty(self) -> bool:
        return self.daily_usd is None and self.monthly_usd is None


class BudgetsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    key: BudgetCaps = BudgetCaps()
    user: BudgetCaps = BudgetCaps()
    tenant: BudgetCaps = BudgetCaps()
    # Worst case of a call that sets no max_tokens (capped by the model's context).
    default_max_tokens: int = Field(default=4096, gt=0)
    # 429 like OpenAI's insufficient_quota, or 402 Payment Required.
    over_budget_status: Literal[429, 402] = 429
    # A reservation not settled within this long (a crashed instance) is released.
    reservation_ttl_s: float = Field(default=900.0, gt=0)
    # Redis answers in well under a millisecond; this is for a Redis that hangs.
    # Shorter, and a busy event loop's own lateness reads as Redis timing out.
    redis_timeout_s: float = Field(default=0.25, gt=0)
    down_backoff_s: float = Field(default=2.0, ge=0)
