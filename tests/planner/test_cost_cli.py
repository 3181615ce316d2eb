"""``strata cost plan|compare|breakeven`` in-process (Typer's runner), like tests/cli."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from strata.cli import app
from tests.planner.test_reference import CLAIMS, LINES, REFERENCE

PLAN = str(REFERENCE)


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False, terminal_width=250)


def money(value: str) -> str:
    d = float(value)
    return f"${d:,.0f}" if d == int(d) else f"${d:,.2f}"


def test_plan_table_reproduces_every_line_of_the_reference() -> None:
    result = run("cost", "plan", PLAN)
    assert result.exit_code == 0, result.output
    out = result.stdout
    names = yaml.safe_load(REFERENCE.read_text())
    by_id = {x["id"]: x["name"] for layer in ("compute", "infrastructure", "deployment")
             for x in names[layer]}  # fmt: skip
    by_id.update({m["id"]: m["name"] for m in names["workload"]["mix"]})
    for line_id, reference, planner, agrees in LINES:
        (row,) = [r for r in out.splitlines() if f" {by_id[line_id]} " in r]
        cells = [c.strip() for c in re.split(r"[│|]", row)]
        assert money(reference) in cells, (line_id, row)
        assert f"${float(planner):,.2f}" in cells, (line_id, row)
        assert ("=" if agrees else "≠") in cells, (line_id, row)
    for figure in ("$1,640", "$1,650.88", "$38", "$32.02", "$70", "$70.00", "$39", "$31.00"):
        assert figure in out
    (total,) = [r for r in out.splitlines() if "│ Total" in r]
    assert "$1,787" in total and "$1,783.90" in total and "≠" in total
    assert "$27.92" in out and "$28.02" in out  # the claims table


def test_plan_markdown_and_json_agree() -> None:
    md = run("cost", "plan", PLAN, "--format", "md")
    assert md.exit_code == 0
    assert "| Development | $20 | $13.60 | ≠ | 40 h x $0.34/h on-demand." in md.stdout
    assert "| **Total** | $1,787 | $1,783.90 | ≠ |" in md.stdout
    data = json.loads(run("cost", "plan", PLAN, "-f", "json").stdout)
    assert data["total_usd"] == "1783.9"
    assert data["reference"]["total_usd"] == "1787"
    lines = {x["id"]: x for x in data["lines"]}
    for line_id, reference, planner, agrees in LINES:
        assert float(lines[line_id]["cost_usd"]) == float(planner)
        assert float(lines[line_id]["reference_usd"]) == float(reference)
        assert lines[line_id]["agrees"] is agrees
    assert len(data["checks"]) == len(CLAIMS)
    assert sum(not c["consistent"] for c in data["checks"]) == sum(not c[2] for c in CLAIMS)


def test_stale_prices_warn_with_a_configurable_age() -> None:
    fresh = run("cost", "plan", PLAN, "--max-price-age", "100000")
    assert "warning" not in fresh.stderr
    old = run("cost", "plan", PLAN, "--max-price-age", "0", "-f", "json")
    assert old.exit_code == 0
    assert "warning: price coreweave-h100 is" in old.stderr
    assert "days old (as of 2026-03-01" in old.stderr
    assert json.loads(old.stdout)["stale_prices"]


def test_plan_errors_name_the_field(tmp_path: Path) -> None:
    data: dict[str, Any] = yaml.safe_load(REFERENCE.read_text())
    data["compute"][0]["gpu"] = "tpu-v9"
    data["workload"]["input_share"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run("cost", "plan", str(path))
    assert result.exit_code == 2
    assert "workload.input_share" in result.stderr
    assert "Traceback" not in result.output
    data["workload"]["input_share"] = 0.7
    path.write_text(yaml.safe_dump(data))
    result = run("cost", "plan", str(path))
    assert result.exit_code == 2
    assert "compute.0.gpu: unknown GPU price 'tpu-v9'" in result.stderr
    assert run("cost", "plan", PLAN, "--format", "xml").exit_code == 2


def test_compare() -> None:
    result = run("cost", "compare", PLAN, "-s", "cache=0.5", "-s", "model=8b", "-f", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["strategies"]
    assert [r["strategy"] for r in rows] == ["cache=0.5", "model=8b", "cache=0.5 + model=8b"]
    assert rows[0]["net_saving_usd"] == "16.01"
    assert rows[1]["net_saving_usd"] == "22.62"
    assert rows[2]["after_usd"] == "1756.58"  # 1783.90 - 32.02 + 4.70
    table = run("cost", "compare", PLAN, "--strategy", "spot")
    assert "$61.78" in table.stdout and "fine_tuning on spot GPUs" in table.stdout
    # The before/after table, line by line: 8 x 6.6 h x $1.43 = $75.50.
    (ft,) = [r for r in table.stdout.splitlines() if "│ Fine-tuning" in r]
    assert [c.strip() for c in ft.split("│")[2:5]] == ["$137.28", "$75.50", "-$61.78"]
    md = run("cost", "compare", PLAN, "-s", "batch=0.5", "-f", "md")
    assert "| batch=0.5 | $1,783.90 | $1,781.50 |" in md.stdout
    assert "| OpenAI (GPT-3.5 Turbo) | $4.00 | $3.00 | -$1.00 |" in md.stdout
    bad = run("cost", "compare", PLAN, "-s", "warp=9")
    assert bad.exit_code == 2 and "unknown kind 'warp'" in bad.stderr


def test_breakeven_on_the_reference_and_chart(tmp_path: Path) -> None:
    chart = tmp_path / "be.png"
    result = run("cost", "breakeven", PLAN, "--chart", str(chart), "-f", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["api_usd_per_1m_blended"] == "0.934"
    assert data["capacity_tokens_per_month"] == "525600000"
    assert data["never_breaks_even"] is True
    assert data["verdict"].startswith("never breaks even")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart.stat().st_size > 10_000


@pytest.mark.parametrize("fmt", ["table", "md"])
def test_breakeven_without_a_plan(tmp_path: Path, fmt: str) -> None:
    chart = tmp_path / "be.png"
    args = ["--api", "together/llama-3.1-8b", "--gpu", "runpod-rtx-4090", "--billing", "on_demand"]
    result = run(
        "cost", "breakeven", *args, "--tokens-per-s", "1000", "-f", fmt, "--chart", str(chart)
    )
    assert result.exit_code == 0, result.output
    # $0.34 x 730 h = $248.20 over $0.18/1M: 1,378.9M tokens, 52.5% of 2,628M.
    assert "breaks even at 1,378.9M tokens a month: 52.5%" in result.stdout
    assert chart.exists()
    # The 8B price is older than the default maximum age.
    assert "warning: price together/llama-3.1-8b" in result.stderr


def test_breakeven_errors() -> None:
    missing = run("cost", "breakeven")
    assert missing.exit_code == 2 and "--api and --gpu" in missing.stderr
    bad = run("cost", "breakeven", "--api", "x/y", "--gpu", "coreweave-h100")
    assert bad.exit_code == 2 and "unknown API price 'x/y'" in bad.stderr
    nan = run("cost", "breakeven", PLAN, "--tokens-per-s", "fast")
    assert nan.exit_code == 2 and "--tokens-per-s" in nan.stderr
