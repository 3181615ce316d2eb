"""The plan file: a deployment described in YAML, validated field by field.

A plan names its workload (tokens, or requests x tokens per request; input
share; growth; cache hit rate; batch share; the model mix by routing weight),
its compute, infrastructure and deployment line items by price-table id, and
optionally the figures a document quotes for them (``reference``) so the
planner can show where those figures disagree with their own inputs.
Errors name the field: ``workload.mix.0.model: unknown API price ...``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from strata.errors import ConfigError
from strata.planner.catalog import DEFAULT_MAX_AGE_DAYS, PriceTable, load_table
from strata.settings import format_validation_error, read_yaml

Use = Literal["development", "inference", "fine_tuning", "batch"]
Billing = Literal["on_demand", "reserved", "spot"]
LAYERS = ("compute", "apis", "infrastructure", "deployment")
LAYER_NAMES = {
    "compute": "Compute",
    "apis": "APIs",
    "infrastructure": "Infrastructure",
    "deployment": "Deployment and Monitoring",
}
ID = r"^[a-z][a-z0-9_]*$"


class Quoted(BaseModel):
    """What a source document says a line costs, and context for a difference."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID)
    name: str = Field(min_length=1)
    reference: Decimal | None = None
    note: str = ""


class MixEntry(Quoted):
    model: str  # an API price ref, "provider/key"
    weight: Decimal = Field(gt=0)  # routing share = weight / sum of weights
    input_share: Decimal | None = Field(default=None, ge=0, le=1)


class ComputeLine(Quoted):
    gpu: str
    billing: Billing = "on_demand"
    use: Use = "inference"
    count: int = Field(default=1, ge=1)
    hours: Decimal | None = Field(default=None, ge=0)
    runs: int | None = Field(default=None, ge=0)
    hours_per_run: Decimal | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _hours(self) -> ComputeLine:
        per_run = (self.runs is None) == (self.hours_per_run is None)
        if not per_run:
            raise ValueError("runs and hours_per_run go together")
        if self.billing == "reserved":
            if self.hours is not None or self.runs is not None:
                raise ValueError("a reserved GPU is billed by the month: drop hours/runs")
        elif self.hours is None and self.runs is None:
            raise ValueError(f"{self.billing} billing needs hours, or runs and hours_per_run")
        elif self.hours is not None and self.runs is not None:
            raise ValueError("give hours or runs x hours_per_run, not both")
        return self

    def billed_hours(self) -> Decimal:
        if self.runs is not None and self.hours_per_run is not None:
            return self.runs * self.hours_per_run
        return self.hours or Decimal(0)


class ServiceLine(Quoted):
    service: str
    quantity: Decimal = Field(default=Decimal(1), ge=0)  # months, or units of per_unit
    role: Literal["cache", "database", "storage", "cdn", "ci", "monitoring", "other"] = "other"


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monthly_tokens: Decimal | None = Field(default=None, ge=0)
    monthly_requests: Decimal | None = Field(default=None, ge=0)
    tokens_per_request: Decimal | None = Field(default=None, ge=0)
    input_share: Decimal = Field(default=Decimal("0.7"), ge=0, le=1)
    growth: Decimal = Field(default=Decimal(1), gt=0)  # multiplier on all traffic
    cache_hit_rate: Decimal = Field(default=Decimal(0), ge=0, le=1)
    batch_share: Decimal = Field(default=Decimal(0), ge=0, le=1)
    # Discount on the batched share for models whose price has no batch_discount.
    batch_discount: Decimal | None = Field(default=None, ge=0, le=1)
    mix: list[MixEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _volume(self) -> Workload:
        t, r, per = self.monthly_tokens, self.monthly_requests, self.tokens_per_request
        if t is None and (r is None or per is None):
            raise ValueError("give monthly_tokens, or monthly_requests and tokens_per_request")
        if t is not None and r is not None and per is not None and r * per != t:
            raise ValueError(
                f"monthly_requests x tokens_per_request = {r * per} but monthly_tokens = {t}"
            )
        _unique([m.id for m in self.mix], "mix")
        return self

    def tokens(self) -> Decimal:
        """Monthly tokens before growth."""
        if self.monthly_tokens is not None:
            return self.monthly_tokens
        return (self.monthly_requests or Decimal(0)) * (self.tokens_per_request or Decimal(0))

    def requests(self) -> Decimal | None:
        if self.monthly_requests is not None:
            return self.monthly_requests
        if self.tokens_per_request:
            return self.tokens() / self.tokens_per_request
        return None


class Check(BaseModel):
    """A claim the source makes, recomputed by ``formula`` from the plan's own numbers."""

    model_config = ConfigDict(extra="forbid")

    claim: str = Field(min_length=1)
    formula: str = Field(min_length=1)
    stated: Decimal | None = None
    stated_min: Decimal | None = None
    stated_max: Decimal | None = None
    unit: str = "USD"
    why: str = ""

    @model_validator(mode="after")
    def _stated(self) -> Check:
        if self.stated is None and self.stated_min is None and self.stated_max is None:
            raise ValueError("give stated, or stated_min and/or stated_max")
        return self


class BreakevenSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api: str
    gpu: str
    billing: Literal["on_demand", "reserved"] = "reserved"
    input_share: Decimal | None = Field(default=None, ge=0, le=1)


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: Literal[1] = 1  # schema version
    name: str = "plan"
    hours_per_month: Decimal = Field(default=Decimal(730), gt=0, le=744)  # 8,760 / 12
    max_price_age_days: int = Field(default=DEFAULT_MAX_AGE_DAYS, ge=0)
    prices: PriceTable = Field(default_factory=PriceTable)
    workload: Workload
    compute: list[ComputeLine] = Field(default_factory=list)
    infrastructure: list[ServiceLine] = Field(default_factory=list)
    deployment: list[ServiceLine] = Field(default_factory=list)
    reference_subtotals: dict[
        Literal["compute", "apis", "infrastructure", "deployment"], Decimal
    ] = Field(default_factory=dict)
    reference_total: Decimal | None = None
    checks: list[Check] = Field(default_factory=list)
    breakeven: BreakevenSpec | None = None

    @model_validator(mode="after")
    def _ids(self) -> Plan:
        ids = [m.id for m in self.workload.mix]
        ids += [c.id for c in self.compute]
        ids += [s.id for s in (*self.infrastructure, *self.deployment)]
        _unique(ids, "line")
        return self


def _unique(ids: list[str], what: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"{what} id {i!r} is used twice")
        seen.add(i)


def resolve_table(plan: Plan, table: PriceTable | None = None) -> PriceTable:
    """The shipped (or given) table with the plan's own prices on top."""
    return (table or load_table()).merged(plan.prices)


def check_refs(plan: Plan, table: PriceTable) -> list[str]:
    """Every price reference that the table lacks, as 'field: problem' lines."""
    problems = []
    for i, m in enumerate(plan.workload.mix):
        if table.api(m.model) is None:
            problems.append(
                f"workload.mix.{i}.model: unknown API price {m.model!r} "
                f"(known: {', '.join(table.api_refs()) or 'none'})"
            )
    for i, c in enumerate(plan.compute):
        gpu = table.gpus.get(c.gpu)
        if gpu is None:
            problems.append(
                f"compute.{i}.gpu: unknown GPU price {c.gpu!r} "
                f"(known: {', '.join(sorted(table.gpus)) or 'none'})"
            )
        elif c.billing == "reserved" and gpu.reserved_per_month is None:
            problems.append(f"compute.{i}.billing: {c.gpu} has no reserved_per_month price")
        elif c.billing != "reserved" and gpu.on_demand_per_hour is None:
            problems.append(f"compute.{i}.billing: {c.gpu} has no on_demand_per_hour price")
    for layer in ("infrastructure", "deployment"):
        for i, s in enumerate(getattr(plan, layer)):
            if s.service not in table.services:
                problems.append(
                    f"{layer}.{i}.service: unknown service price {s.service!r} "
                    f"(known: {', '.join(sorted(table.services)) or 'none'})"
                )
    if plan.breakeven is not None:
        if table.api(plan.breakeven.api) is None:
            problems.append(f"breakeven.api: unknown API price {plan.breakeven.api!r}")
        gpu = table.gpus.get(plan.breakeven.gpu)
        if gpu is None:
            problems.append(f"breakeven.gpu: unknown GPU price {plan.breakeven.gpu!r}")
        elif gpu.tokens_per_s is None:
            problems.append(f"breakeven.gpu: {plan.breakeven.gpu} has no tokens_per_s")
    return problems


def parse_plan(data: Any, source: str = "plan") -> Plan:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_plan(path: Path, table: PriceTable | None = None) -> tuple[Plan, PriceTable]:
    """The plan at ``path`` and its price table; ConfigError lists every bad field."""
    plan = parse_plan(read_yaml(path), str(path))
    resolved = resolve_table(plan, table)
    problems = check_refs(plan, resolved)
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))
    return plan, resolved
