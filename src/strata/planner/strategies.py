"""Cost strategies as what-ifs: change the plan, cost it again, compare.

Each strategy names the lines it acts on, and any line it adds is its own cost
(a cache costs its Redis). Specs, as given to ``--strategy``:

    cache=0.5                   responses served from cache at a 50% hit rate
    batch=0.3[,discount=0.15]   30% of API traffic through batch APIs
    model=8b[,from=ID]          a smaller model of the same provider
    spot[=0.5][,rerun=0.1]      spot GPUs for fine-tuning and batch work
    route=0.1,to=openai/gpt-3.5-turbo   a share of traffic to another model
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from strata.errors import ConfigError
from strata.planner.catalog import PriceTable
from strata.planner.model import CostReport, cost_plan
from strata.planner.plan import MixEntry, Plan, ServiceLine

# The reference: "Batch size 32 ... Expected savings: 10-20% on inference costs".
# Its low end, for models whose provider has no batch discount in the table.
REFERENCE_BATCH_SAVING = Decimal("0.10")
# The reference: "H100 spot instances cost 50% less than on-demand".
REFERENCE_SPOT_DISCOUNT = Decimal("0.5")
# Work redone after spot interruptions (lost since the last checkpoint): an assumption.
DEFAULT_SPOT_RERUN = Decimal("0.10")
DEFAULT_CACHE_SERVICE = "redis-cloud-5gb"
KINDS = ("cache", "batch", "model", "spot", "route")


@dataclass(frozen=True)
class Strategy:
    kind: str
    value: str | None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        opts = "".join(f",{k}={v}" for k, v in self.options.items())
        return self.kind + (f"={self.value}" if self.value is not None else "") + opts


def _fraction(text: str | None, what: str, default: Decimal | None = None) -> Decimal:
    if text is None:
        if default is None:
            raise ConfigError(f"strategy {what}: needs a value")
        return default
    try:
        value = Decimal(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except InvalidOperation:
        raise ConfigError(f"strategy {what}: {text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise ConfigError(f"strategy {what}: {text!r} must be between 0 and 1 (or 0-100%)")
    return value


def parse_strategy(spec: str) -> Strategy:
    head, *rest = spec.split(",")
    kind, sep, value = head.partition("=")
    kind = kind.strip()
    if kind not in KINDS:
        raise ConfigError(f"strategy {spec!r}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    options = {}
    for item in rest:
        k, eq, v = item.partition("=")
        if not eq:
            raise ConfigError(f"strategy {spec!r}: option {item!r} is not key=value")
        options[k.strip()] = v.strip()
    return Strategy(kind, value.strip() if sep else None, options)


@dataclass
class Outcome:
    strategy: str
    description: str
    before: CostReport
    after: CostReport
    acts_on: list[str]
    added: list[str]

    @property
    def saving(self) -> Decimal:
        return self.before.total - self.after.total

    @property
    def acted_before(self) -> Decimal:
        return sum(
            (self.before.line(i).cost for i in self.acts_on if i not in self.added), Decimal(0)
        )

    @property
    def own_cost(self) -> Decimal:
        return sum((self.after.line(i).cost for i in self.added), Decimal(0))

    @property
    def gross_saving(self) -> Decimal:
        """Saving on the lines acted on, before the strategy's own cost."""
        after = sum(
            (self.after.line(i).cost for i in self.acts_on if i not in self.added), Decimal(0)
        )
        return self.acted_before - after


def _resolve_model(table: PriceTable, target: str) -> str:
    if table.api(target) is not None and "/" in target:
        return target
    hits = [r for r in table.api_refs() if r.split("/", 1)[1].endswith(target) or r == target]
    if len(hits) != 1:
        known = ", ".join(table.api_refs())
        why = "matches several" if hits else "matches no API price"
        raise ConfigError(f"strategy model={target}: {why} (known: {known})")
    return hits[0]


Applied = tuple[list[str], list[str], str]  # acts on, adds, description


def _cache(p: Plan, table: PriceTable, s: Strategy) -> Applied:
    w = p.workload
    w.cache_hit_rate = _fraction(s.value, "cache")
    added = []
    if not any(x.role == "cache" for x in p.infrastructure):
        service = s.options.get("service", DEFAULT_CACHE_SERVICE)
        if service not in table.services:
            raise ConfigError(f"strategy cache: unknown service price {service!r}")
        p.infrastructure.append(
            ServiceLine(id="strategy_cache", name="Response cache", service=service, role="cache")
        )
        added.append("strategy_cache")
    own = "adds the cache's cost" if added else "the plan already pays for a cache"
    desc = f"hit rate {w.cache_hit_rate:%}: API spend avoided; {own}"
    return [m.id for m in w.mix], added, desc


def _batch(p: Plan, table: PriceTable, s: Strategy) -> Applied:
    w = p.workload
    w.batch_share = _fraction(s.value, "batch")
    w.batch_discount = _fraction(
        s.options.get("discount"), "batch discount", REFERENCE_BATCH_SAVING
    )
    desc = (
        f"{w.batch_share:%} of API tokens batched at the provider's batch discount, else "
        f"{w.batch_discount:%}; a reserved GPU costs the same batched or not"
    )
    return [m.id for m in w.mix], [], desc


def _model(p: Plan, table: PriceTable, s: Strategy) -> Applied:
    target = _resolve_model(table, s.value or "")
    provider = target.split("/", 1)[0]
    frm = s.options.get("from")
    acted = []
    for m in p.workload.mix:
        same = m.model.split("/", 1)[0] == provider and m.model != target
        if (frm is None and same) or m.id == frm or m.model == frm:
            m.model = target
            acted.append(m.id)
    if not acted:
        raise ConfigError(f"strategy {s.label}: no mix entry to move to {target}")
    return acted, [], f"{', '.join(acted)} served by {target}; benchmark quality first"


def _spot(p: Plan, table: PriceTable, s: Strategy) -> Applied:
    rerun = _fraction(s.options.get("rerun"), "spot rerun", DEFAULT_SPOT_RERUN)
    acted = []
    for c in p.compute:
        if c.use not in ("fine_tuning", "batch") or c.billing != "on_demand":
            continue
        gpu = table.gpus[c.gpu]
        # Given on the command line, else the GPU's own, else the reference's 50%.
        disc = (gpu.spot_discount if s.value is None else None) or _fraction(
            s.value, "spot", REFERENCE_SPOT_DISCOUNT
        )
        p.prices.gpus[c.gpu] = gpu.model_copy(update={"spot_discount": disc})
        c.billing = "spot"
        if c.hours_per_run is not None:
            c.hours_per_run *= 1 + rerun
        elif c.hours is not None:
            c.hours *= 1 + rerun
        acted.append(c.id)
    if not acted:
        raise ConfigError("strategy spot: no on-demand fine-tuning or batch compute line")
    desc = (
        f"{', '.join(acted)} on spot GPUs ({s.value or 'table or reference'} off); "
        f"{rerun:%} more hours for work lost to interruptions"
    )
    return acted, [], desc


def _route(p: Plan, table: PriceTable, s: Strategy) -> Applied:
    w = p.workload
    share = _fraction(s.value, "route")
    to = s.options.get("to")
    if not to:
        raise ConfigError("strategy route: name the model, e.g. route=0.1,to=openai/gpt-3.5-turbo")
    target = _resolve_model(table, to)
    acts = [m.id for m in w.mix]
    total = sum((m.weight for m in w.mix), Decimal(0))
    for m in w.mix:
        m.weight *= 1 - share
    existing = [m for m in w.mix if m.model == target]
    added = []
    if existing:
        existing[0].weight += share * total
    else:
        name = f"Routed to {target}"
        w.mix.append(MixEntry(id="strategy_route", name=name, model=target, weight=share * total))
        added.append("strategy_route")
    return [*acts, *added], added, f"{share:%} of tokens routed to {target}"


_APPLY = {"cache": _cache, "batch": _batch, "model": _model, "spot": _spot, "route": _route}


def apply(plan: Plan, table: PriceTable, s: Strategy) -> tuple[Plan, list[str], list[str], str]:
    """The changed plan, the ids of lines it acts on, the ids it adds, a description."""
    p = plan.model_copy(deep=True)
    acts, added, desc = _APPLY[s.kind](p, table, s)
    return p, acts, added, desc


def compare(plan: Plan, table: PriceTable, strategies: list[Strategy]) -> list[Outcome]:
    """Each strategy alone against the plan, then (for several) all of them together."""
    before = cost_plan(plan, table)
    out = []
    for s in strategies:
        changed, acts, added, desc = apply(plan, table, s)
        after = cost_plan(changed, table.merged(changed.prices))
        out.append(Outcome(s.label, desc, before, after, acts, added))
    if len(strategies) > 1:
        p, acts_all, added_all, descs = plan, [], [], []
        for s in strategies:
            p, acts, added, desc = apply(p, table.merged(p.prices), s)
            acts_all += [a for a in acts if a not in acts_all]
            added_all += added
            descs.append(desc)
        after = cost_plan(p, table.merged(p.prices))
        label = " + ".join(s.label for s in strategies)
        out.append(Outcome(label, "; ".join(descs), before, after, acts_all, added_all))
    return out
