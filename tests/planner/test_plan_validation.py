"""Plan files: every error names the field, and the whole file is checked at once."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from strata.errors import ConfigError
from strata.planner.model import cost_plan
from strata.planner.plan import load_plan


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_base_plan_is_valid(tmp_path: Path, plan_data: dict[str, Any]) -> None:
    plan, table = load_plan(write(tmp_path, plan_data))
    report = cost_plan(plan, table)
    # main: 7.5M tokens: 5.625M in x $2 + 1.875M out x $6 = 11.25 + 11.25
    assert report.line("main").cost == Decimal("22.50")
    # side: 2.5M tokens x $1
    assert report.line("side").cost == Decimal("2.5")
    assert report.line("train").cost == Decimal(20)
    assert report.line("serve").cost == Decimal(1000)
    assert report.line("ci").cost == Decimal(3)
    assert report.total == Decimal("1088.00")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


_DELETE = object()

CASES = [
    ("workload", _DELETE, "workload: Field required"),
    ("workload.mix.0.weight", 0, "workload.mix.0.weight: Input should be greater than 0"),
    ("workload.input_share", 1.5, "workload.input_share: Input should be less than or equal to 1"),
    ("workload.cache_hit_rate", -0.1, "workload.cache_hit_rate: Input should be greater than"),
    ("workload.monthly_tokens", _DELETE, "workload: give monthly_tokens, or"),
    ("workload.mix.1.id", "main", "mix id 'main' is used twice"),
    ("workload.mix.0.model", "acme/nope", "workload.mix.0.model: unknown API price 'acme/nope'"),
    (
        "compute.0.gpu",
        "gpu-x",
        "compute.0.gpu: unknown GPU price 'gpu-x' (known: coreweave-h100, gpu-a, ",
    ),
    ("compute.0.hourz", 3, "compute.0.hourz: Extra inputs are not permitted"),
    ("compute.1.hours", 3, "compute.1: a reserved GPU is billed by the month"),
    ("compute.0.hours", _DELETE, "compute.0: on_demand billing needs hours"),
    ("compute.0.billing", "hourly", "compute.0.billing: Input should be 'on_demand'"),
    ("infrastructure.0.service", "dbx", "infrastructure.0.service: unknown service price 'dbx'"),
    ("deployment.0.quantity", -1, "deployment.0.quantity: Input should be greater than"),
    ("prices.gpus.gpu-a.reserved_per_month", _DELETE, "compute.1.billing: gpu-a has no reserved"),
    ("prices.services.db.source", _DELETE, "prices.services.db.source: Field required"),
    ("prices.services.db.per_unit", "1", "prices.services.db: give exactly one of"),
    ("hours_per_month", 800, "hours_per_month: Input should be less than or equal to 744"),
    ("plan", 2, "plan: Input should be 1"),
    ("checks", [{"claim": "x", "formula": "total"}], "checks.0: give stated"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES, ids=[c[0] for c in CASES])
def test_errors_name_the_field(
    tmp_path: Path, plan_data: dict[str, Any], path: str, value: Any, message: str
) -> None:
    _set(path, value)(plan_data)
    with pytest.raises(ConfigError) as err:
        load_plan(write(tmp_path, plan_data))
    assert message in err.value.message
    assert str(tmp_path / "plan.yaml") in err.value.message


def test_requests_times_tokens_must_match_tokens(tmp_path: Path, plan_data: dict[str, Any]) -> None:
    plan_data["workload"].update(monthly_requests=1000, tokens_per_request=500)
    with pytest.raises(ConfigError) as err:
        load_plan(write(tmp_path, plan_data))
    assert "workload: monthly_requests x tokens_per_request = 500000" in (err.value.message)
    del plan_data["workload"]["monthly_tokens"]
    plan, _ = load_plan(write(tmp_path, plan_data))
    assert plan.workload.tokens() == 500_000


def test_every_problem_is_listed(tmp_path: Path, plan_data: dict[str, Any]) -> None:
    plan_data["compute"][0]["gpu"] = "nope"
    plan_data["infrastructure"][0]["service"] = "nope"
    with pytest.raises(ConfigError) as err:
        load_plan(write(tmp_path, plan_data))
    assert "2 problem(s)" in err.value.message
    assert "compute.0.gpu" in err.value.message
    assert "infrastructure.0.service" in err.value.message


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("workload: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_plan(path)
    path.write_text("- a list")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_plan(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_plan(tmp_path / "missing.yaml")
