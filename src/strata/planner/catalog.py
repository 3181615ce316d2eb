"""The price table: API, GPU and service prices, each with its source and date.

The shipped table (``prices.yaml`` beside this module) is the one source of
truth for the planner and for the gateway's default per-call prices. Plans may
extend or override it in their own ``prices:`` section, in the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from strata.errors import ConfigError
from strata.settings import format_validation_error, read_yaml

SHIPPED = Path(__file__).with_name("prices.yaml")
# Prices older than this get a warning unless the plan or command says otherwise.
DEFAULT_MAX_AGE_DAYS = 180

Money = Decimal


class Sourced(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1)
    as_of: date


class ApiPrice(Sourced):
    """Per-1M-token prices of one model at one API provider."""

    model: str | None = None  # the provider's model id (default: the table key)
    aliases: list[str] = Field(default_factory=list)
    input_per_1m: Money = Field(ge=0)
    output_per_1m: Money = Field(ge=0)
    # Fraction off for the provider's asynchronous batch API (0.5 = half price).
    batch_discount: Decimal | None = Field(default=None, ge=0, le=1)
    # A cheaper model of the same provider to suggest ("provider/key").
    smaller: str | None = None


class ApiProvider(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hosts: list[str] = Field(default_factory=list)
    models: dict[str, ApiPrice] = Field(default_factory=dict)


class GpuPrice(Sourced):
    name: str = ""
    on_demand_per_hour: Money | None = Field(default=None, ge=0)
    reserved_per_month: Money | None = Field(default=None, ge=0)
    spot_discount: Decimal | None = Field(default=None, ge=0, lt=1)
    # Measured generation throughput, all streams together, at `concurrency`.
    tokens_per_s: Decimal | None = Field(default=None, gt=0)
    concurrency: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _some_price(self) -> GpuPrice:
        if self.on_demand_per_hour is None and self.reserved_per_month is None:
            raise ValueError("give on_demand_per_hour or reserved_per_month (or both)")
        return self


class ServicePrice(Sourced):
    name: str = ""
    per_month: Money | None = Field(default=None, ge=0)
    per_unit: Money | None = Field(default=None, ge=0)
    unit: str | None = None

    @model_validator(mode="after")
    def _one_price(self) -> ServicePrice:
        if (self.per_month is None) == (self.per_unit is None):
            raise ValueError("give exactly one of per_month or per_unit")
        if self.per_unit is not None and not self.unit:
            raise ValueError("per_unit needs unit (e.g. minute)")
        return self


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = "plan"
    apis: dict[str, ApiProvider] = Field(default_factory=dict)
    gpus: dict[str, GpuPrice] = Field(default_factory=dict)
    services: dict[str, ServicePrice] = Field(default_factory=dict)

    def api(self, ref: str) -> ApiPrice | None:
        """``provider/key`` (or ``provider/alias``, ``provider/model-id``)."""
        provider, _, key = ref.partition("/")
        prov = self.apis.get(provider)
        if prov is None:
            return None
        if key in prov.models:
            return prov.models[key]
        for name, price in prov.models.items():
            if key == (price.model or name) or key in price.aliases:
                return price
        return None

    def api_refs(self) -> list[str]:
        return [f"{p}/{m}" for p, prov in self.apis.items() for m in prov.models]

    def merged(self, other: PriceTable) -> PriceTable:
        """This table with ``other``'s entries added or replacing same-named ones."""
        apis = {k: v.model_copy(deep=True) for k, v in self.apis.items()}
        for name, prov in other.apis.items():
            if name in apis:
                apis[name].models.update(prov.models)
                apis[name].hosts = sorted({*apis[name].hosts, *prov.hosts})
            else:
                apis[name] = prov
        return PriceTable(
            version=f"{self.version}+{other.version}",
            apis=apis,
            gpus={**self.gpus, **other.gpus},
            services={**self.services, **other.services},
        )


@dataclass(frozen=True)
class StalePrice:
    ref: str
    as_of: date
    age_days: int
    source: str

    def message(self) -> str:
        return (
            f"price {self.ref} is {self.age_days} days old (as of {self.as_of}, "
            f"source: {self.source}); check it"
        )


def stale(entries: dict[str, Sourced], today: date, max_age_days: int) -> list[StalePrice]:
    out = []
    for ref, entry in sorted(entries.items()):
        age = (today - entry.as_of).days
        if age > max_age_days:
            out.append(StalePrice(ref, entry.as_of, age, entry.source))
    return out


def parse_table(data: Any, source: str) -> PriceTable:
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_table(path: Path | None = None) -> PriceTable:
    """The shipped table, or the one at ``path``; ConfigError names the bad field."""
    path = path or SHIPPED
    return _load(path.resolve(), path.stat().st_mtime_ns if path.exists() else 0)


@lru_cache(maxsize=8)
def _load(path: Path, _mtime: int) -> PriceTable:
    return parse_table(read_yaml(path), str(path))


def gateway_default(
    table: PriceTable, provider_name: str, base_url: str | None, model: str
) -> ApiPrice | None:
    """The table's price for a deployment strata.yaml leaves unpriced.

    A provider matches by its name in strata.yaml (``together``) or by its
    base URL's host (``api.together.xyz``); the model by its provider model id,
    table key or an alias. No match: None (the call is then free, as before).
    """
    host = urlparse(base_url).hostname if base_url else None
    for name, prov in table.apis.items():
        if name == provider_name or (host is not None and host in prov.hosts):
            found = table.api(f"{name}/{model}")
            if found is not None:
                return found
    return None
