"""The check formulas: exact arithmetic over named figures, and nothing else."""

from __future__ import annotations

from decimal import Decimal

import pytest

from strata.errors import ConfigError
from strata.planner.formula import evaluate

NAMES = {"line.a": Decimal("1.10"), "line.a.hours": Decimal(40), "total": Decimal(3)}


@pytest.mark.parametrize(
    ("formula", "value"),
    [
        ("line.a + 2.2", "3.30"),  # exact: no float 3.3000000000000003
        ("line.a.hours * 0.34", "13.60"),
        ("-total / 4", "-0.75"),
        ("min(total, line.a) * 2", "2.20"),
        ("max(1, 2, total)", "3"),
        ("ceil(total / 2)", "2"),
        ("1_000_000 / 4", "250000"),
    ],
)
def test_arithmetic(formula: str, value: str) -> None:
    assert evaluate(formula, NAMES) == Decimal(value)


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("line.b", "unknown name 'line.b' (did you mean line.a"),
        ("__import__('os')", "only numbers, names"),
        ("line.a ** 2", "only numbers, names"),
        ("'text'", "only numbers, names"),
        ("total.__class__", "unknown name 'total.__class__'"),
        ("total(", "not an arithmetic expression"),
        ("total / 0", "division by zero"),
        ("True + 1", "booleans are not numbers"),
    ],
)
def test_rejects(formula: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        evaluate(formula, NAMES)
    assert message in err.value.message
